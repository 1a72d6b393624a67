"""What the PyTorch peers of scripts/gpu-check share: torch with a visible CUDA GPU, or one JSON error line and exit 2."""
import json
import sys


def need_torch():
    try:
        import torch  # noqa: F401
    except ImportError:
        print(json.dumps({"status": "error", "message": "PyTorch is not installed (python3 -c 'import torch' failed); "
                          "run this on the GPU machine, where python3 has torch"}))
        sys.exit(2)
    import torch
    if not torch.cuda.is_available():
        print(json.dumps({"status": "error", "message": "torch.cuda.is_available() is False: no CUDA GPU visible"}))
        sys.exit(2)
    return torch
