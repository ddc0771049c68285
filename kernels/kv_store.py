"""KV store: write a step's new K/V rows into their paged-cache slots (Triton kernel + torch reference).

Shapes: k, v [tokens, kv_heads, head_dim] (any strides with a contiguous last dim); k_cache, v_cache
[num_blocks, kv_heads, block_size, head_dim] for one layer; slot_mapping [tokens] int64, where slot
`block * block_size + row` names the cache row and -1 means "do not store" (padding rows of a
CUDA-graph batch, tokens whose KV is already cached). Both functions write the caches in place.
`head_rows` maps slots to their rows in a layer's flat `[blocks * kv_heads * block_size, head_dim]`
view (the torch attention backend's store and the KV reuse copy index the cache through it).
"""

from __future__ import annotations

import torch

from kernels._triton import require, tl, triton


def head_rows(slots: torch.Tensor, kv_heads: int, block_size: int) -> torch.Tensor:
    """[n * kv_heads] rows of the slots' (token, head) pairs in a layer's [blocks * kv_heads * bs, D]
    view, token-major."""
    heads = torch.arange(kv_heads, device=slots.device)
    block, row = slots // block_size, slots % block_size
    return ((block[:, None] * kv_heads + heads) * block_size + row[:, None]).reshape(-1)


def store_kv_ref(k: torch.Tensor, v: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                 slot_mapping: torch.Tensor) -> None:
    """Torch reference: index_copy of the kept rows into the `[blocks * block_size, head_dim]` row view per head."""
    keep = slot_mapping >= 0
    slots = slot_mapping[keep]
    block_size = k_cache.shape[2]
    block, row = slots // block_size, slots % block_size
    k_cache[block, :, row] = k[keep].to(k_cache.dtype)
    v_cache[block, :, row] = v[keep].to(v_cache.dtype)


@triton.jit
def _store_kv_kernel(k_ptr, v_ptr, k_cache_ptr, v_cache_ptr, slot_ptr, kv_heads, head_dim, block_size,
                     stride_kt, stride_kh, stride_vt, stride_vh,
                     stride_cb, stride_ch, stride_cr,
                     BLOCK_H: tl.constexpr, BLOCK_D: tl.constexpr):
    token = tl.program_id(0)
    slot = tl.load(slot_ptr + token).to(tl.int64)
    block = slot // block_size
    row = slot % block_size
    h = tl.arange(0, BLOCK_H)[:, None]
    d = tl.arange(0, BLOCK_D)[None, :]
    mask = (h < kv_heads) & (d < head_dim) & (slot >= 0)
    k = tl.load(k_ptr + token * stride_kt + h * stride_kh + d, mask=mask)
    v = tl.load(v_ptr + token * stride_vt + h * stride_vh + d, mask=mask)
    dst = block * stride_cb + h * stride_ch + row * stride_cr + d
    tl.store(k_cache_ptr + dst, k.to(k_cache_ptr.dtype.element_ty), mask=mask)
    tl.store(v_cache_ptr + dst, v.to(v_cache_ptr.dtype.element_ty), mask=mask)


def store_kv(k: torch.Tensor, v: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
             slot_mapping: torch.Tensor) -> None:
    """Triton kernel: one program per token, all its heads; same contract as `store_kv_ref`."""
    require()
    tokens, kv_heads, head_dim = k.shape
    if k.stride(-1) != 1 or v.stride(-1) != 1 or not k_cache.is_contiguous() or k_cache.stride() != v_cache.stride():
        raise ValueError("store_kv needs k/v with a contiguous last dim and contiguous caches of one layout")
    if tokens == 0:
        return
    _store_kv_kernel[(tokens,)](
        k, v, k_cache, v_cache, slot_mapping, kv_heads, head_dim, k_cache.shape[2],
        k.stride(0), k.stride(1), v.stride(0), v.stride(1),
        k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
        BLOCK_H=triton.next_power_of_2(kv_heads), BLOCK_D=triton.next_power_of_2(head_dim))
