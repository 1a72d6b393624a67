#!/usr/bin/env python3
"""PyTorch peer of Finetrace's device forward benchmark (issue #18): tokens/s of an eager bf16 forward of a checkpoint
folder (config.json + model.safetensors, e.g. from `finetrace model synth`) on the first CUDA GPU.

Prints ONE JSON line: tokens_per_s, seconds per forward (median of --repeat after --warmup), the FLOPs counted and the
fraction of the card's dense bf16 matmul peak.

FLOPs per forward = 2 · (matmul parameters run) · tokens + attention 4 · B · T² · heads · head_dim per layer
(QKᵀ and P·V counted over the full T×T square, as Finetrace's `bench forward` counts them). Matmul parameters are the
attention and MLP projections of every layer, plus the unembedding (vocab × hidden) when --to logits.

Model: transformers' AutoModelForCausalLM (attn_implementation='eager', bf16) when transformers is importable, else a
plain-torch Llama / Gemma 2 forward reading config.json and the safetensors file with the small reader below
(--impl plain forces it).
"""
import argparse
import json
import os
import struct
import sys
import time


from torch_common import need_torch  # noqa: E402  (beside this script)


# Dense bf16 tensor-core peaks (no sparsity) from NVIDIA's data sheets, TFLOP/s; matched on the device name.
BF16_PEAK_TFLOPS = [
    ("H200", 989.4), ("H100 PCIe", 756.0), ("H100 NVL", 835.0), ("H100", 989.4), ("GH200", 989.4),
    ("B200", 2250.0), ("A100", 312.0), ("L40S", 362.0), ("A10G", 70.0), ("L4", 121.0),
]


def peak_tflops(name):
    for key, value in BF16_PEAK_TFLOPS:
        if key in name:
            return value
    return None


def read_safetensors(path, torch, device):
    """The safetensors format: u64 little-endian header length, a JSON header {name: {dtype, shape, data_offsets}},
    then the raw little-endian tensor bytes."""
    dtypes = {"BF16": torch.bfloat16, "F16": torch.float16, "F32": torch.float32, "I64": torch.int64}
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
        base = 8 + n
        out = {}
        for name, info in header.items():
            if name == "__metadata__":
                continue
            begin, end = info["data_offsets"]
            f.seek(base + begin)
            buf = bytearray(f.read(end - begin))
            t = torch.frombuffer(buf, dtype=dtypes[info["dtype"]]) if end > begin else torch.empty(0, dtype=dtypes[info["dtype"]])
            out[name] = t.reshape(info["shape"]).to(device=device, dtype=torch.bfloat16)
    return out


class PlainModel:
    """Llama (llama/mistral/qwen2 without biases) and Gemma 2 eager forward in bf16, as transformers computes it:
    bf16 weights and activations, fp32 softmax, rotate-half RoPE."""

    def __init__(self, cfg, weights, torch):
        self.t, self.cfg, self.w = torch, cfg, weights
        self.gemma = cfg["model_type"] == "gemma2"
        if cfg["model_type"] not in ("llama", "mistral", "qwen2", "gemma2"):
            raise SystemExit(f"--impl plain supports llama, mistral, qwen2 and gemma2, not {cfg['model_type']}")
        self.hidden = cfg["hidden_size"]
        self.heads = cfg["num_attention_heads"]
        self.kv = cfg.get("num_key_value_heads") or self.heads
        self.hd = cfg.get("head_dim") or self.hidden // self.heads
        self.eps = cfg.get("rms_norm_eps", 1e-6)
        self.layers = cfg["num_hidden_layers"]
        theta = cfg.get("rope_theta", 10000.0)
        self.inv_freq = 1.0 / (theta ** (torch.arange(0, self.hd, 2, dtype=torch.float32, device="cuda") / self.hd))

    def norm(self, x, w):
        t = self.t
        xf = x.float()
        y = xf * t.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return (y * (1.0 + w.float())).to(x.dtype) if self.gemma else w * y.to(x.dtype)

    def rope(self, x, cos, sin):
        half = x.shape[-1] // 2
        rotated = self.t.cat((-x[..., half:], x[..., :half]), dim=-1)
        return x * cos + rotated * sin

    def __call__(self, ids, to_logits):
        t, w, cfg = self.t, self.w, self.cfg
        b, n = ids.shape
        e = w["model.embed_tokens.weight"]
        h = e[ids]
        if self.gemma:
            h = h * t.tensor(self.hidden ** 0.5, dtype=h.dtype, device=h.device)
        pos = t.arange(n, device="cuda", dtype=t.float32)
        ang = t.outer(pos, self.inv_freq)
        emb = t.cat((ang, ang), dim=-1)
        cos, sin = emb.cos().to(h.dtype)[None, None], emb.sin().to(h.dtype)[None, None]
        causal = t.full((n, n), float("-inf"), device="cuda").triu(1)
        scale = (cfg.get("query_pre_attn_scalar") or self.hd) ** -0.5 if self.gemma else self.hd ** -0.5
        window = cfg.get("sliding_window")
        for i in range(self.layers):
            p = f"model.layers.{i}."
            x = self.norm(h, w[p + "input_layernorm.weight"])
            q = (x @ w[p + "self_attn.q_proj.weight"].T).view(b, n, self.heads, self.hd).transpose(1, 2)
            k = (x @ w[p + "self_attn.k_proj.weight"].T).view(b, n, self.kv, self.hd).transpose(1, 2)
            v = (x @ w[p + "self_attn.v_proj.weight"].T).view(b, n, self.kv, self.hd).transpose(1, 2)
            q, k = self.rope(q, cos, sin), self.rope(k, cos, sin)
            rep = self.heads // self.kv
            k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
            s = (q @ k.transpose(-1, -2)) * scale
            if self.gemma and cfg.get("attn_logit_softcapping"):
                c = cfg["attn_logit_softcapping"]
                s = t.tanh(s / c) * c
            mask = causal
            if self.gemma and window and i % 2 == 0 and window < n:
                mask = mask + t.full((n, n), float("-inf"), device="cuda").tril(-window)
            s = s + mask.to(s.dtype)
            a = t.softmax(s.float(), dim=-1).to(q.dtype) @ v
            a = a.transpose(1, 2).reshape(b, n, self.heads * self.hd) @ w[p + "self_attn.o_proj.weight"].T
            if self.gemma:
                a = self.norm(a, w[p + "post_attention_layernorm.weight"])
                h = h + a
                x = self.norm(h, w[p + "pre_feedforward_layernorm.weight"])
                g = t.nn.functional.gelu(x @ w[p + "mlp.gate_proj.weight"].T, approximate="tanh")
            else:
                h = h + a
                x = self.norm(h, w[p + "post_attention_layernorm.weight"])
                g = t.nn.functional.silu(x @ w[p + "mlp.gate_proj.weight"].T)
            m = (g * (x @ w[p + "mlp.up_proj.weight"].T)) @ w[p + "mlp.down_proj.weight"].T
            if self.gemma:
                m = self.norm(m, w[p + "post_feedforward_layernorm.weight"])
            h = h + m
        if not to_logits:
            return h
        h = self.norm(h, w["model.norm.weight"])
        logits = h @ w.get("lm_head.weight", e).T
        if self.gemma and cfg.get("final_logit_softcapping"):
            c = cfg["final_logit_softcapping"]
            logits = t.tanh(logits / c) * c
        return logits


def matmul_parameters(cfg, to_logits):
    """Parameters of the matrix products of one forward (projections of every layer, + unembedding to logits)."""
    if cfg["model_type"] not in ("llama", "mistral", "qwen2", "qwen3", "gemma2"):
        raise SystemExit(f"FLOP count: model_type {cfg['model_type']} not handled")
    d = cfg["hidden_size"]
    heads = cfg["num_attention_heads"]
    kv = cfg.get("num_key_value_heads") or heads
    hd = cfg.get("head_dim") or d // heads
    ff = cfg["intermediate_size"]
    per_layer = d * heads * hd * 2 + d * kv * hd * 2 + 3 * d * ff
    return per_layer * cfg["num_hidden_layers"] + (cfg["vocab_size"] * d if to_logits else 0), heads, hd


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True, help="checkpoint folder (config.json + model.safetensors)")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--seq", type=int, default=1024)
    ap.add_argument("--repeat", type=int, default=3, help="timed forwards (the median is reported)")
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--to", choices=["logits", "hidden"], default="logits",
                    help="logits: the whole forward; hidden: the blocks only (no final norm, no unembedding)")
    ap.add_argument("--impl", choices=["auto", "transformers", "plain"], default="auto")
    args = ap.parse_args()
    torch = need_torch()
    with open(os.path.join(args.model, "config.json")) as f:
        cfg = json.load(f)

    impl = args.impl
    if impl == "auto":
        try:
            import transformers  # noqa: F401
            impl = "transformers"
        except ImportError:
            impl = "plain"
    t0 = time.time()
    if impl == "transformers":
        from transformers import AutoModelForCausalLM
        try:
            model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.bfloat16, attn_implementation="eager")
        except TypeError:  # transformers < 4.56 names it torch_dtype
            model = AutoModelForCausalLM.from_pretrained(args.model, torch_dtype=torch.bfloat16, attn_implementation="eager")
        model = model.to("cuda").eval()

        def forward(ids):
            if args.to == "hidden":
                return model.model(input_ids=ids, use_cache=False).last_hidden_state
            return model(input_ids=ids, use_cache=False).logits
    else:
        model = PlainModel(cfg, read_safetensors(os.path.join(args.model, "model.safetensors"), torch, "cuda"), torch)

        def forward(ids):
            return model(ids, args.to == "logits")
    load_s = time.time() - t0

    gen = torch.Generator(device="cpu").manual_seed(1)
    # Micro-batches: the whole batch × seq at once when it fits; halved on out-of-memory (reported).
    micro = args.batch
    ids = torch.randint(0, cfg["vocab_size"], (args.batch, args.seq), generator=gen).to("cuda")

    def run_all():
        for s in range(0, args.batch, micro):
            out = forward(ids[s:s + micro])
            del out
        torch.cuda.synchronize()

    with torch.inference_mode():
        while True:
            try:
                for _ in range(max(1, args.warmup)):
                    run_all()
                break
            except torch.cuda.OutOfMemoryError:
                torch.cuda.empty_cache()
                if micro == 1:
                    raise
                micro //= 2
        times = []
        for _ in range(args.repeat):
            torch.cuda.synchronize()
            t = time.perf_counter()
            run_all()
            times.append(time.perf_counter() - t)
    # The median of the timed forwards, as Finetrace's `bench device-forward` reports.
    times.sort()
    n = len(times)
    best = times[n // 2] if n % 2 else (times[n // 2 - 1] + times[n // 2]) / 2

    params, heads, hd = matmul_parameters(cfg, args.to == "logits")
    tokens = args.batch * args.seq
    flops = 2.0 * params * tokens + 4.0 * args.batch * args.seq * args.seq * heads * hd * cfg["num_hidden_layers"]
    name = torch.cuda.get_device_name(0)
    peak = peak_tflops(name)
    print(json.dumps({
        "status": "ok", "impl": impl, "device": name, "model_type": cfg["model_type"], "to": args.to,
        "batch": args.batch, "seq": args.seq, "micro_batch": micro, "seconds": best, "all_seconds": times, "tokens_per_s": tokens / best,
        "flops_per_token": flops / tokens, "tflops": flops / best / 1e12, "peak_bf16_tflops": peak,
        "fraction_of_peak": (flops / best / 1e12 / peak) if peak else None,
        "matmul_parameters": params, "load_s": load_s,
        "torch": torch.__version__, "max_memory_gib": torch.cuda.max_memory_allocated() / 2 ** 30,
    }))


if __name__ == "__main__":
    main()
