"""The machine's roofline, measured: peak GEMM FLOP/s per dtype and memory read bandwidth, and the bounds
they put on a Llama-family model's prefill and decode (`python -m benchmarks.roofline` prints them).

- GEMM: a square [n x n] @ [n x n] through torch (MKL/oneDNN as torch dispatches) and through the
  engine's oneDNN linear with packed weights (kernels/onednn.py); the faster is the peak.
- Bandwidth: `sum()` over a tensor much larger than the caches (bytes read / s, best of `repeat`).
- Bounds (`model_bounds`): prefill tok/s <= peak / FLOPs per prompt token; decode step time >=
  max(weights + KV bytes read / bandwidth, FLOPs / peak), so decode tok/s <= rows / that time.
"""

from __future__ import annotations

import json
import time


def _best_seconds(fn, repeat: int) -> float:
    fn()  # warm-up (thread pool, packing)
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def gemm_flops(dtype: str = "float32", n: int = 2048, repeat: int = 3) -> dict:
    """FLOP/s of an n x n x n GEMM in `dtype`: {"torch": ..., "onednn": ... or None, "peak": max}."""
    import torch

    dt = getattr(torch, dtype)
    a, b = torch.randn(n, n).to(dt), torch.randn(n, n).to(dt)
    flops = 2.0 * n**3
    out = {"n": n, "torch": flops / _best_seconds(lambda: torch.mm(a, b), repeat), "onednn": None}
    try:
        from kernels import onednn

        if onednn.works(dt):
            out["onednn"] = flops / _best_seconds(lambda: onednn.linear(a, b), repeat)
    except ImportError:
        pass
    out["peak"] = max(v for v in (out["torch"], out["onednn"]) if v)
    return out


def memory_bandwidth(mib: int = 1024, repeat: int = 5) -> float:
    """Bytes read per second by `sum()` over a float32 tensor of `mib` MiB."""
    import torch

    x = torch.ones(mib * 2**20 // 4)
    return x.numel() * 4 / _best_seconds(x.sum, repeat)


def measure(dtypes=("float32", "bfloat16"), n: int = 2048, repeat: int = 3) -> dict:
    return {"gemm": {d: gemm_flops(d, n, repeat) for d in dtypes}, "bandwidth_bytes_s": memory_bandwidth()}


def model_counts(cfg) -> dict:
    """Matmul parameters of a Llama-family ModelConfig: per layer (q, k, v, o, gate, up, down) and lm_head."""
    h, d = cfg.hidden_size, cfg.head_dim
    per_layer = h * d * (2 * cfg.num_heads + 2 * cfg.num_kv_heads) + 3 * h * cfg.intermediate_size
    return {"layer_params": cfg.num_layers * per_layer, "lm_head_params": cfg.vocab_size * h,
            "kv_elems_per_token": 2 * cfg.num_layers * cfg.num_kv_heads * d,
            "attn_flops_per_key": 4 * cfg.num_layers * cfg.num_heads * d}  # q.k and p.v, per query per key


def model_bounds(cfg, elem_bytes: int, peak_flops: float, bandwidth: float, rows: int, context: float,
                 prompt_tokens: float) -> dict:
    """Roofline bounds (tok/s) for prefill of prompts of `prompt_tokens` and a decode step of `rows`
    sequences at mean `context`; which resource binds the decode step."""
    c = model_counts(cfg)
    prefill_flops = 2 * c["layer_params"] + c["attn_flops_per_key"] * prompt_tokens / 2  # causal: half the keys
    step_bytes = elem_bytes * (c["layer_params"] + c["lm_head_params"] + rows * context * c["kv_elems_per_token"])
    step_flops = rows * (2 * (c["layer_params"] + c["lm_head_params"]) + c["attn_flops_per_key"] * context)
    mem_s, compute_s = step_bytes / bandwidth, step_flops / peak_flops
    return {"prefill_tok_s": peak_flops / prefill_flops, "decode_tok_s": rows / max(mem_s, compute_s),
            "decode_bound": "memory" if mem_s >= compute_s else "compute",
            "decode_step_bytes": step_bytes, "decode_step_flops": step_flops}


if __name__ == "__main__":
    print(json.dumps(measure(), indent=2))
