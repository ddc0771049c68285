"""RoPE shift: re-rotate cached K by a per-token position delta (Triton kernel + torch reference).

Reusing KV computed at position p for the same token at position p + delta (KVShare) needs K rotated
by delta: rotations compose, R(p + delta) = R(delta) R(p), so no un-rotation is needed. Convention:
rotate-half (Hugging Face Llama, `engine.model.apply_rope`): for the halves x1, x2 of a head and angle
a_i = delta * inv_freq[i], out1 = x1 cos a - x2 sin a, out2 = x2 cos a + x1 sin a. `inv_freq` is
the model's own ([head_dim // 2] float32, `engine.model.rope_inv_freq`, Llama-3 scaling included),
so scaling needs nothing here. Angles and arithmetic are float32 whatever the storage dtype.

- `rope_shift_ref(k, delta, inv_freq)` / `rope_shift(...)`: k [n, kv_heads, head_dim], delta [n]
  int64 -> a rotated copy of k (same shape and dtype).
- `rope_shift_cache_ref_(k_cache, slot_mapping, delta, inv_freq)` / `rope_shift_cache_(...)`: rotate
  in place the cache rows at `slot_mapping` [n] (block * block_size + row; -1 = skip) of a K cache
  `[layers, num_blocks, kv_heads, block_size, head_dim]` (every layer) or one layer's
  `[num_blocks, kv_heads, block_size, head_dim]`.
"""

from __future__ import annotations

import torch

from kernels._triton import require, tl, triton


def rope_shift_ref(k: torch.Tensor, delta: torch.Tensor, inv_freq: torch.Tensor) -> torch.Tensor:
    """Torch reference: k [n, kv_heads, head_dim] rotated by delta [n] positions (a copy)."""
    half = k.shape[-1] // 2
    angle = delta.to(torch.float32)[:, None] * inv_freq.to(torch.float32)[None, :]
    cos, sin = angle.cos()[:, None, :], angle.sin()[:, None, :]
    x = k.to(torch.float32)
    x1, x2 = x[..., :half], x[..., half:]
    return torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1).to(k.dtype)


def rope_shift_cache_ref_(k_cache: torch.Tensor, slot_mapping: torch.Tensor, delta: torch.Tensor,
                          inv_freq: torch.Tensor) -> None:
    """Torch reference of the in-place cache variant (every layer of a 5-d cache)."""
    layers = k_cache if k_cache.dim() == 5 else k_cache.unsqueeze(0)
    keep = slot_mapping >= 0
    slots, delta = slot_mapping[keep], delta[keep]
    block_size = layers.shape[3]
    block, row = slots // block_size, slots % block_size
    for cache in layers:
        cache[block, :, row] = rope_shift_ref(cache[block, :, row], delta, inv_freq)


@triton.jit
def _rope_shift_kernel(x_ptr, row_off_ptr, delta_ptr, inv_freq_ptr, kv_heads, half, stride_layer, stride_h,
                       BLOCK_H: tl.constexpr, BLOCK_HALF: tl.constexpr):
    """Program (token, layer): rotates the kv_heads x head_dim row at element offset row_off[token]."""
    token = tl.program_id(0)
    layer = tl.program_id(1).to(tl.int64)
    off = tl.load(row_off_ptr + token).to(tl.int64)
    delta = tl.load(delta_ptr + token).to(tl.float32)
    i = tl.arange(0, BLOCK_HALF)
    inv = tl.load(inv_freq_ptr + i, mask=i < half, other=0.0).to(tl.float32)
    angle = delta * inv
    cos = tl.cos(angle)[None, :]
    sin = tl.sin(angle)[None, :]
    h = tl.arange(0, BLOCK_H)[:, None]
    mask = (h < kv_heads) & (i[None, :] < half) & (off >= 0)
    ptr = x_ptr + layer * stride_layer + off + h * stride_h + i[None, :]
    x1 = tl.load(ptr, mask=mask).to(tl.float32)
    x2 = tl.load(ptr + half, mask=mask).to(tl.float32)
    tl.store(ptr, (x1 * cos - x2 * sin).to(x_ptr.dtype.element_ty), mask=mask)
    tl.store(ptr + half, (x2 * cos + x1 * sin).to(x_ptr.dtype.element_ty), mask=mask)


def _launch(x: torch.Tensor, row_off: torch.Tensor, delta: torch.Tensor, inv_freq: torch.Tensor, layers: int,
            stride_layer: int, kv_heads: int, head_dim: int, stride_h: int) -> None:
    require()
    if head_dim % 2 or inv_freq.numel() != head_dim // 2:
        raise ValueError(f"inv_freq has {inv_freq.numel()} entries; head_dim {head_dim} needs {head_dim // 2}")
    if row_off.numel() == 0:
        return
    _rope_shift_kernel[(row_off.numel(), layers)](
        x, row_off, delta, inv_freq.to(torch.float32).contiguous(), kv_heads, head_dim // 2, stride_layer, stride_h,
        BLOCK_H=triton.next_power_of_2(kv_heads), BLOCK_HALF=triton.next_power_of_2(head_dim // 2))


def rope_shift(k: torch.Tensor, delta: torch.Tensor, inv_freq: torch.Tensor) -> torch.Tensor:
    """Triton kernel; same contract as `rope_shift_ref`."""
    out = k.clone(memory_format=torch.contiguous_format)
    n, kv_heads, head_dim = out.shape
    row_off = torch.arange(n, device=k.device, dtype=torch.int64) * out.stride(0)
    _launch(out, row_off, delta, inv_freq, 1, 0, kv_heads, head_dim, out.stride(1))
    return out


def rope_shift_cache_(k_cache: torch.Tensor, slot_mapping: torch.Tensor, delta: torch.Tensor,
                      inv_freq: torch.Tensor) -> None:
    """Triton kernel; same contract as `rope_shift_cache_ref_` (the cache must be contiguous)."""
    if not k_cache.is_contiguous():
        raise ValueError("rope_shift_cache_ needs a contiguous K cache")
    layers = k_cache if k_cache.dim() == 5 else k_cache.unsqueeze(0)
    _, _, kv_heads, block_size, head_dim = layers.shape
    block, row = slot_mapping // block_size, slot_mapping % block_size
    # -1 stays -1 (skip); the kernel reads each row's element offset instead of its slot.
    row_off = torch.where(slot_mapping >= 0, block * layers.stride(1) + row * layers.stride(3), -1)
    _launch(k_cache, row_off, delta, inv_freq, layers.shape[0], layers.stride(0), kv_heads, head_dim, layers.stride(2))
