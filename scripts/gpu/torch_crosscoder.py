#!/usr/bin/env python3
"""PyTorch peer of Finetrace's device crosscoder trainer benchmark (issue #18): tokens/s of one BatchTopK crosscoder
training step written the way the reference Python trainers write it (dense encoder GEMM, batch top-k over the whole
[B, F] matrix, dense decoder GEMM on the masked codes, autograd backward, gradient clipping, torch.optim.Adam) on the
first CUDA GPU, on one random batch kept on the GPU. Prints ONE JSON line. Finetrace's step (`bench device-train`)
also updates the threshold EMA and the dead-latent counters, which cost little; no latent dies in so few steps, so
neither side computes an AuxK term.

Step (methods.md §2.1–2.5, reconstruction mode `mse`, code normalisation CROSSCODER, no AuxK: nothing is dead in a
timed run this short):
  pre = Σ_m x_m · W_enc[m] + b_enc            [B, F]     (one GEMM: x [B, M·D] · W_enc [M·D, F])
  f = ReLU(pre); s = f ⊙ c, c_j = Σ_m ‖W_dec[m, j, :]‖
  keep the k·B largest s over the whole batch; f̃ = f on the kept entries, 0 elsewhere
  x̂ = f̃ · W_dec + b_dec                      [B, M, D]  (one dense GEMM: f̃ [B, F] · W_dec [F, M·D])
  loss = (1/B) Σ_b Σ_m ‖x_bm − x̂_bm‖²; backward; clip the global gradient norm at 1; Adam(0.9, 0.999)
FLOPs counted: 3 × (2·B·M·D·F) for each of the two dense GEMMs (forward + two backward products) = 12·B·M·D·F.
"""
import argparse
import json
import sys
import time


from torch_common import need_torch  # noqa: E402  (beside this script)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--d", type=int, default=2304, help="activation width per model")
    ap.add_argument("--f", type=int, default=73728, help="dictionary size (latents)")
    ap.add_argument("--k", type=int, default=100, help="mean active latents per token (BatchTopK keeps k·batch)")
    ap.add_argument("--batch", type=int, default=4096, help="tokens per step")
    ap.add_argument("--models", type=int, default=2)
    ap.add_argument("--steps", type=int, default=10, help="timed steps")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--precision", choices=["fp32", "tf32", "bf16"], default="tf32",
                    help="matrix-product precision: fp32 (full float32), tf32 (float32 params, tf32 tensor cores), "
                         "bf16 (autocast: bf16 products, float32 params and Adam)")
    args = ap.parse_args()
    torch = need_torch()
    torch.backends.cuda.matmul.allow_tf32 = args.precision == "tf32"
    torch.backends.cudnn.allow_tf32 = args.precision == "tf32"
    dev = "cuda"
    b, m, d, f, k = args.batch, args.models, args.d, args.f, args.k
    g = torch.Generator(device=dev).manual_seed(0)
    w_enc = torch.nn.Parameter(torch.randn(m * d, f, device=dev, generator=g) / d ** 0.5)    # W_enc [M, D, F] flattened
    b_enc = torch.nn.Parameter(torch.zeros(f, device=dev))
    w_dec = torch.nn.Parameter(w_enc.detach().T.clone().contiguous())                        # W_dec [F, M·D] (= [M, F, D] permuted)
    b_dec = torch.nn.Parameter(torch.zeros(m * d, device=dev))
    params = [w_enc, b_enc, w_dec, b_dec]
    opt = torch.optim.Adam(params, lr=1e-4, betas=(0.9, 0.999))
    # One batch generated once and kept on the GPU, as Finetrace's `bench device-train` does (the store read is not
    # what is timed here).
    x = torch.randn(b, m * d, device=dev, generator=g)

    def step(x):
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=args.precision == "bf16"):
            pre = x @ w_enc + b_enc
        fr = torch.relu(pre.float())
        with torch.no_grad():
            c = w_dec.view(f, m, d).norm(dim=-1).sum(dim=1)                                  # [F]
            s = (fr * c).flatten()
            kept = s.topk(k * b, sorted=False).indices
            mask = torch.zeros_like(s).scatter_(0, kept, 1.0).view(b, f)
        codes = fr * mask
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=args.precision == "bf16"):
            recon = codes @ w_dec + b_dec
        loss = (recon.float() - x).pow(2).sum(dim=-1).mean()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss

    for _ in range(args.warmup):
        step(x)
    torch.cuda.synchronize()
    t = time.perf_counter()
    loss = None
    for _ in range(args.steps):
        loss = step(x)
    torch.cuda.synchronize()
    seconds = time.perf_counter() - t
    flops = 12.0 * b * m * d * f * args.steps
    print(json.dumps({
        "status": "ok", "device": torch.cuda.get_device_name(0), "precision": args.precision,
        "d": d, "f": f, "k": k, "batch": b, "models": m, "steps": args.steps,
        "seconds_per_step": seconds / args.steps, "tokens_per_s": b * args.steps / seconds,
        "dense_tflops": flops / seconds / 1e12, "final_loss": float(loss),
        "torch": torch.__version__, "max_memory_gib": torch.cuda.max_memory_allocated() / 2 ** 30,
    }))


if __name__ == "__main__":
    main()
