"""Paged decode attention for the CPU: a small C kernel (OpenMP; float32 or bfloat16 cache) and its torch reference.

Decoding on a CPU is memory-bound, and the torch path first gathers every sequence's K/V tiles
into a padded batch, then runs SDPA over the copy: three passes over the context per layer. The C
kernel reads the tiles in place, once. It is compiled on first use with the system C compiler
(kernels/_cc.py): `available()` is False where there is no compiler, and callers fall back to the
reference; where a compiler exists but the build fails, it raises `KernelBuildError`.

The kernel reads a bfloat16 cache directly (each element widened to float32 as it is loaded) and
computes in float32 whatever the cache's dtype; q is taken in float32 and the output has q's dtype.

Shapes: q [batch, heads, head_dim]; k_cache / v_cache [num_blocks, kv_heads, block_size, head_dim]
(one layer); block_tables [batch, max_blocks] int64; ctx_lens [batch] int64 (>= 1).
"""

from __future__ import annotations

import ctypes
from functools import cache

import torch
import torch.nn.functional as F

from kernels import _cc


def paged_decode_attention_ref(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                               block_tables: torch.Tensor, ctx_lens: torch.Tensor, scale: float) -> torch.Tensor:
    """Torch reference: gather each sequence's tiles, mask past its length, SDPA with GQA."""
    b, heads, hd = q.shape
    _, kvh, bs, _ = k_cache.shape
    width = block_tables.shape[1] * bs
    k = k_cache[block_tables].permute(0, 2, 1, 3, 4).reshape(b, kvh, width, hd)
    v = v_cache[block_tables].permute(0, 2, 1, 3, 4).reshape(b, kvh, width, hd)
    mask = (torch.arange(width, device=q.device)[None, :] < ctx_lens[:, None])[:, None, None, :]
    out = F.scaled_dot_product_attention(q.unsqueeze(2), k, v, attn_mask=mask, scale=scale, enable_gqa=True)
    return out.squeeze(2)


@cache
def _library() -> ctypes.CDLL | None:
    args = [ctypes.c_void_p] * 6 + [ctypes.c_int64] * 7 + [ctypes.c_float]
    lib = _cc.load("paged_decode_attention", "paged_decode_attention_f32", args)
    if lib is not None:
        lib.paged_decode_attention_bf16.restype = None
        lib.paged_decode_attention_bf16.argtypes = args
    return lib


CACHE_DTYPES = (torch.float32, torch.bfloat16)


def available() -> bool:
    """True when the C kernel compiled and loaded on this machine; False where there is no C
    compiler (raises `kernels._cc.KernelBuildError` where one exists but the build fails)."""
    return _library() is not None


def paged_decode_attention(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                           block_tables: torch.Tensor, ctx_lens: torch.Tensor, scale: float,
                           max_ctx: int | None = None) -> torch.Tensor:
    """Same contract as the reference; CPU tensors, contiguous float32 or bfloat16 caches. `max_ctx`
    (the largest of ctx_lens) may be given by a caller that calls once per layer with the same lens."""
    lib = _library()
    if lib is None:
        raise RuntimeError("the CPU attention kernel is not available (no working C compiler)")
    if k_cache.dtype not in CACHE_DTYPES or v_cache.dtype != k_cache.dtype or q.device.type != "cpu" \
            or not q.dtype.is_floating_point or q.dtype == torch.float64:
        raise TypeError("paged_decode_attention takes CPU tensors with a float32 or bfloat16 cache")
    out_dtype = q.dtype
    q = q.to(torch.float32).contiguous()
    block_tables = block_tables.contiguous()
    ctx_lens = ctx_lens.contiguous()
    b, heads, hd = q.shape
    _, kvh, bs, _ = k_cache.shape
    assert k_cache.is_contiguous() and v_cache.is_contiguous() and heads % kvh == 0
    out = torch.empty_like(q)
    if max_ctx is None:
        max_ctx = int(ctx_lens.max()) if b else 0
    fn = lib.paged_decode_attention_f32 if k_cache.dtype == torch.float32 else lib.paged_decode_attention_bf16
    fn(q.data_ptr(), k_cache.data_ptr(), v_cache.data_ptr(), block_tables.data_ptr(), ctx_lens.data_ptr(),
       out.data_ptr(), b, heads, kvh, hd, bs, block_tables.shape[1], max_ctx, scale)
    return out if out_dtype == torch.float32 else out.to(out_dtype)
