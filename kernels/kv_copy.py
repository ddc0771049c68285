"""KV reuse copy: cached K/V rows copied to a new request's slots, K re-rotated to the new positions.

KVShare reuses a token's KV computed at position p for the same token at position p + delta: V is
copied as is, K is rotated by delta (RoPE composes; see kernels/rope.py). Shapes: k_cache / v_cache
`[layers, num_blocks, kv_heads, block_size, head_dim]`; src_slots, dst_slots, delta [n] int64 (slot =
block * block_size + row); inv_freq [head_dim // 2] float32; `layers` the range of layers copied.
Source and destination rows must not overlap (a request copies into its own fresh blocks).

- `copy_reused_kv_ref_(...)`: torch (index_select, rotate, index_copy_), any device and dtype;
  `shift` picks the rotation (the Triton `rope.rope_shift` on CUDA).
- `copy_reused_kv_(...)`: a C kernel (kernels/csrc/kv_reuse_copy.c) for float32 CPU caches that
  does it in one pass over the rows, where the torch path makes five (a 2k-token reuse on the
  default model, 28 layers: 94 -> 6 ms in the engine); the reference elsewhere or where there is
  no C compiler (a failed build where one exists raises `kernels._cc.KernelBuildError`).
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable
from functools import cache

import torch

from kernels import _cc, rope
from kernels.kv_store import head_rows


def copy_reused_kv_ref_(k_cache: torch.Tensor, v_cache: torch.Tensor, src_slots: torch.Tensor, dst_slots: torch.Tensor,
                        delta: torch.Tensor, inv_freq: torch.Tensor, layers: range,
                        shift: Callable = rope.rope_shift_ref) -> None:
    """Torch reference (in place)."""
    if len(layers) == 0:
        return
    _, _, kv_heads, block_size, head_dim = k_cache.shape
    src, dst = head_rows(src_slots, kv_heads, block_size), head_rows(dst_slots, kv_heads, block_size)
    n = src_slots.shape[0]
    for kv_cache, rotate in ((k_cache, True), (v_cache, False)):
        flat = kv_cache[layers.start:layers.stop].view(len(layers), -1, head_dim)  # [l, NB * KVH * bs, D]
        rows = flat.index_select(1, src)  # [l, n * KVH, D], token-major
        if rotate:
            per_token = rows.view(len(layers), n, kv_heads, head_dim).transpose(0, 1).reshape(n, -1, head_dim)
            rotated = shift(per_token, delta, inv_freq).view(n, len(layers), -1, head_dim)
            rows = rotated.transpose(0, 1).reshape(rows.shape)
        flat.index_copy_(1, dst, rows)


@cache
def _library() -> ctypes.CDLL | None:
    return _cc.load("kv_reuse_copy", "kv_reuse_copy_f32", [ctypes.c_void_p] * 6 + [ctypes.c_int64] * 7)


def copy_reused_kv_(k_cache: torch.Tensor, v_cache: torch.Tensor, src_slots: torch.Tensor, dst_slots: torch.Tensor,
                    delta: torch.Tensor, inv_freq: torch.Tensor, layers: range) -> None:
    """Same contract as the reference: the C kernel on contiguous float32 CPU caches, else the reference."""
    if len(layers) == 0 or src_slots.numel() == 0:
        return
    c_ok = (k_cache.device.type == "cpu" and k_cache.dtype == v_cache.dtype == torch.float32
            and k_cache.is_contiguous() and v_cache.is_contiguous() and _library() is not None)
    if not c_ok:
        shift = rope.rope_shift if k_cache.is_cuda else rope.rope_shift_ref
        copy_reused_kv_ref_(k_cache, v_cache, src_slots, dst_slots, delta, inv_freq, layers, shift)
        return
    _, num_blocks, kv_heads, block_size, head_dim = k_cache.shape
    if not 0 <= layers.start <= layers.stop <= k_cache.shape[0] or layers.step != 1:
        raise ValueError(f"layers {layers} outside the cache's {k_cache.shape[0]}")
    src = src_slots.to(torch.int64).contiguous()
    dst = dst_slots.to(torch.int64).contiguous()
    d = delta.to(torch.int64).contiguous()
    inv = inv_freq.to(torch.float32).contiguous()
    slots = num_blocks * block_size
    if not (src.shape == dst.shape == d.shape and int(torch.minimum(src.min(), dst.min())) >= 0
            and int(torch.maximum(src.max(), dst.max())) < slots):
        raise ValueError(f"copy_reused_kv_: slots must be [n] in [0, {slots}) with a delta each")
    if torch.isin(dst // block_size, src // block_size).any():
        raise ValueError("copy_reused_kv_: source and destination blocks overlap")
    _library().kv_reuse_copy_f32(k_cache.data_ptr(), v_cache.data_ptr(), src.data_ptr(), dst.data_ptr(), d.data_ptr(),
                                 inv.data_ptr(), src.shape[0], layers.start, layers.stop, num_blocks, kv_heads,
                                 block_size, head_dim)
