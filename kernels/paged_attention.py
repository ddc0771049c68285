"""Paged attention with explicit query positions (Triton kernels + torch references).

One kernel family serves every attention shape the engine has: decode (one query per sequence),
prefill over a cached prefix, chunked prefill, and the sparse queries of DHD's selective recompute.
Each query carries its own absolute position and attends causally (key position <= query position)
over its sequence's KV, found through a block table; nothing else about the batch is assumed.

Shapes (one layer): q [tokens, heads, head_dim]; k_cache, v_cache [num_blocks, kv_heads, block_size,
head_dim] (the engine's cache with the layer index taken); block_tables [seqs, max_blocks] int (rows
padded with any valid block id); scale is the softmax scale (head_dim ** -0.5 for Llama).
- `paged_attention(q, k_cache, v_cache, block_tables, cu_seqlens_q, q_pos, scale)`: sequence s owns
  the query rows [cu_seqlens_q[s], cu_seqlens_q[s + 1]) (possibly none); q_pos [tokens] int64 is each
  query's absolute position, and every key at positions 0..q_pos must be in the cache already.
- `paged_decode_attention(q, k_cache, v_cache, block_tables, ctx_lens, scale)`: q [batch, heads,
  head_dim], one query per sequence at position ctx_lens - 1; no host synchronisation, so it can be
  captured in a CUDA graph. Its reference is `kernels.cpu_attention.paged_decode_attention_ref`.

Kernel design: a program takes one tile of up to BLOCK_Q queries of one sequence and one KV head; its
rows are (query, head-of-the-GQA-group) pairs, so each K/V tile is read once for all heads sharing it.
It walks the keys in BLOCK_N-wide tiles (any mix of page boundaries: each key's block id is loaded from
the table and its address computed from it) with an online softmax in float32 (exp2, running max and
sum), dot products in the storage dtype with float32 accumulation on GPUs. The split-KV variant
(long-context decode, few sequences) cuts each query's key range into `num_splits` equal chunks run
by separate programs, each writing a normalised partial output and its log-sum-exp, and a second
kernel combines them. On CPU tensors (Triton's interpreter) operands are upcast to float32 after
loading, since the interpreter's bf16/fp16 arithmetic is not faithful.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from kernels._triton import require, tl, triton
from kernels.cpu_attention import paged_decode_attention_ref

__all__ = ["TilePlan", "decode_splits", "paged_attention", "paged_attention_ref", "paged_decode_attention",
           "paged_decode_attention_ref", "plan_tiles"]

_LOG2E = 1.4426950408889634


def paged_attention_ref(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, block_tables: torch.Tensor,
                        cu_seqlens_q: Sequence[int] | torch.Tensor, q_pos: torch.Tensor, scale: float) -> torch.Tensor:
    """Torch reference: per sequence, gather its keys up to its last query, mask kv_pos <= q_pos, SDPA
    (GQA) in float32; returns [tokens, heads, head_dim] in q's dtype."""
    _, kv_heads, block_size, head_dim = k_cache.shape
    cu = [int(x) for x in cu_seqlens_q]
    out = torch.zeros_like(q)
    for s in range(len(cu) - 1):
        lo, hi = cu[s], cu[s + 1]
        if lo == hi:
            continue
        pos = q_pos[lo:hi]
        width = int(pos.max()) + 1
        blocks = block_tables[s, : -(-width // block_size)]
        k = k_cache[blocks].transpose(0, 1).reshape(kv_heads, -1, head_dim)[:, :width].float()
        v = v_cache[blocks].transpose(0, 1).reshape(kv_heads, -1, head_dim)[:, :width].float()
        mask = torch.arange(width, device=q.device)[None, :] <= pos[:, None]
        o = F.scaled_dot_product_attention(q[lo:hi].transpose(0, 1).float(), k, v, attn_mask=mask, scale=scale,
                                           enable_gqa=True)
        out[lo:hi] = o.transpose(0, 1).to(q.dtype)
    return out


@triton.jit
def _paged_attention_kernel(
        q_ptr, k_ptr, v_ptr, out_ptr, lse_ptr,
        tile_seq_ptr, tile_lo_ptr, tile_hi_ptr, q_pos_ptr, block_tables_ptr,
        scale_log2, block_size, head_dim,
        stride_qt, stride_qh, stride_kb, stride_kh, stride_kr, stride_vb, stride_vh, stride_vr,
        stride_os, stride_ot, stride_oh, stride_ls, stride_lt, stride_bt,
        G: tl.constexpr, BLOCK_Q: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
        BLOCK_D: tl.constexpr, NUM_SPLITS: tl.constexpr, UPCAST: tl.constexpr, DOT_PRECISION: tl.constexpr):
    tile = tl.program_id(0)
    kv_head = tl.program_id(1)
    split = tl.program_id(2)
    seq = tl.load(tile_seq_ptr + tile).to(tl.int64)
    q_lo = tl.load(tile_lo_ptr + tile).to(tl.int64)
    q_hi = tl.load(tile_hi_ptr + tile).to(tl.int64)

    rows = tl.arange(0, BLOCK_M)
    tok = q_lo + rows // G
    head = kv_head * G + rows % G
    row_ok = (rows < BLOCK_Q * G) & (tok < q_hi)
    pos = tl.load(q_pos_ptr + tok, mask=row_ok, other=-1).to(tl.int64)  # -1: a padding row sees no key
    d = tl.arange(0, BLOCK_D)
    d_ok = d < head_dim
    q = tl.load(q_ptr + tok[:, None] * stride_qt + head[:, None] * stride_qh + d[None, :],
                mask=row_ok[:, None] & d_ok[None, :], other=0.0)
    if UPCAST:
        q = q.to(tl.float32)

    # Keys [kv_lo, kv_hi): up to the tile's last query, and this split's chunk of that range.
    kv_hi = tl.max(pos, axis=0) + 1
    kv_lo = kv_hi * 0
    if NUM_SPLITS > 1:
        chunk = tl.cdiv(tl.cdiv(kv_hi, NUM_SPLITS), BLOCK_N) * BLOCK_N
        kv_lo = split * chunk
        kv_hi = tl.minimum(kv_hi, kv_lo + chunk)

    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    for start in range(kv_lo, kv_hi, BLOCK_N):
        n = start + tl.arange(0, BLOCK_N)
        n_ok = n < kv_hi
        block = tl.load(block_tables_ptr + seq * stride_bt + n // block_size, mask=n_ok, other=0).to(tl.int64)
        row = (n % block_size).to(tl.int64)
        kv_mask = n_ok[:, None] & d_ok[None, :]
        k = tl.load(k_ptr + block[:, None] * stride_kb + kv_head * stride_kh + row[:, None] * stride_kr + d[None, :],
                    mask=kv_mask, other=0.0)
        v = tl.load(v_ptr + block[:, None] * stride_vb + kv_head * stride_vh + row[:, None] * stride_vr + d[None, :],
                    mask=kv_mask, other=0.0)
        if UPCAST:
            k = k.to(tl.float32)
            v = v.to(tl.float32)
        s = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION) * scale_log2
        s = tl.where(n_ok[None, :] & (n[None, :] <= pos[:, None]), s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, axis=1))
        # A row with no visible key so far keeps m = -inf; subtracting 0 instead keeps exp2 at 0, not NaN.
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
        p = tl.exp2(s - m_safe[:, None])
        alpha = tl.exp2(m_i - m_safe)
        l_i = l_i * alpha + tl.sum(p, axis=1)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=DOT_PRECISION)
        m_i = m_new

    o = acc / tl.where(l_i > 0, l_i, 1.0)[:, None]
    out_off = split * stride_os + tok[:, None] * stride_ot + head[:, None] * stride_oh + d[None, :]
    tl.store(out_ptr + out_off, o.to(out_ptr.dtype.element_ty), mask=row_ok[:, None] & d_ok[None, :])
    if NUM_SPLITS > 1:
        lse = tl.where(l_i > 0, m_i + tl.log2(tl.where(l_i > 0, l_i, 1.0)), float("-inf"))
        tl.store(lse_ptr + split * stride_ls + tok * stride_lt + head, lse, mask=row_ok)


@triton.jit
def _combine_splits_kernel(part_ptr, lse_ptr, out_ptr, head_dim,
                           stride_ps, stride_pt, stride_ph, stride_ls, stride_lt, stride_ot, stride_oh,
                           NUM_SPLITS: tl.constexpr, BLOCK_S: tl.constexpr, BLOCK_D: tl.constexpr):
    """Program (token, head): weights each split's normalised output by 2^(lse_s - max lse)."""
    t = tl.program_id(0).to(tl.int64)
    h = tl.program_id(1).to(tl.int64)
    s = tl.arange(0, BLOCK_S)
    d = tl.arange(0, BLOCK_D)
    s_ok = s < NUM_SPLITS
    lse = tl.load(lse_ptr + s * stride_ls + t * stride_lt + h, mask=s_ok, other=float("-inf"))
    w = tl.exp2(lse - tl.max(lse, axis=0))  # split 0 always holds key 0, so the max is finite
    part = tl.load(part_ptr + s[:, None] * stride_ps + t * stride_pt + h * stride_ph + d[None, :],
                   mask=s_ok[:, None] & (d[None, :] < head_dim), other=0.0)
    o = tl.sum(part * w[:, None], axis=0) / tl.sum(w, axis=0)
    tl.store(out_ptr + t * stride_ot + h * stride_oh + d, o.to(out_ptr.dtype.element_ty), mask=d < head_dim)


def _attend(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, block_tables: torch.Tensor,
            tile_seq: torch.Tensor, tile_lo: torch.Tensor, tile_hi: torch.Tensor, q_pos: torch.Tensor, scale: float,
            block_q: int, num_splits: int, block_n: int | None) -> torch.Tensor:
    require()
    tokens, heads, head_dim = q.shape
    _, kv_heads, block_size, _ = k_cache.shape
    if heads % kv_heads:
        raise ValueError(f"{heads} query heads are not a multiple of {kv_heads} KV heads")
    if q.stride(-1) != 1 or k_cache.stride(-1) != 1 or v_cache.stride(-1) != 1:
        raise ValueError("q and the caches need a contiguous head_dim")
    group = heads // kv_heads
    out = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    if tokens == 0 or tile_seq.numel() == 0:
        return out
    on_cpu = q.device.type == "cpu"  # only Triton's interpreter runs CPU tensors
    block_n = block_n or (16 if on_cpu else 64)
    if num_splits > 1:
        dst = torch.empty((num_splits, tokens, heads, head_dim), dtype=torch.float32, device=q.device)
        lse = torch.empty((num_splits, tokens, heads), dtype=torch.float32, device=q.device)
    else:
        dst, lse = out.unsqueeze(0), out.new_empty((1, 1, 1), dtype=torch.float32)
    grid = (tile_seq.numel(), kv_heads, num_splits)
    _paged_attention_kernel[grid](
        q, k_cache, v_cache, dst, lse, tile_seq, tile_lo, tile_hi, q_pos, block_tables,
        scale * _LOG2E, block_size, head_dim,
        q.stride(0), q.stride(1), *k_cache.stride()[:3], *v_cache.stride()[:3],
        dst.stride(0), dst.stride(1), dst.stride(2), lse.stride(0), lse.stride(1), block_tables.stride(0),
        G=group, BLOCK_Q=block_q, BLOCK_M=max(16, triton.next_power_of_2(block_q * group)), BLOCK_N=block_n,
        BLOCK_D=max(16, triton.next_power_of_2(head_dim)), NUM_SPLITS=num_splits, UPCAST=on_cpu,
        DOT_PRECISION="ieee" if q.dtype == torch.float32 else "tf32")
    if num_splits > 1:
        _combine_splits_kernel[(tokens, heads)](
            dst, lse, out, head_dim, dst.stride(0), dst.stride(1), dst.stride(2), lse.stride(0), lse.stride(1),
            out.stride(0), out.stride(1),
            NUM_SPLITS=num_splits, BLOCK_S=triton.next_power_of_2(num_splits),
            BLOCK_D=triton.next_power_of_2(head_dim))
    return out


@dataclass(frozen=True, slots=True)
class TilePlan:
    """The query tiles of a varlen batch: tile i covers query rows [lo[i], hi[i]) of sequence seq[i]."""

    seq: torch.Tensor  # [tiles] int32
    lo: torch.Tensor
    hi: torch.Tensor
    block_q: int


def plan_tiles(cu_seqlens_q: Sequence[int] | torch.Tensor, heads: int, kv_heads: int, device: torch.device,
               block_q: int | None = None) -> TilePlan:
    """Cuts each sequence's queries into tiles (host work, once per batch: every layer reuses it)."""
    cu = [int(x) for x in cu_seqlens_q]
    longest = max((b - a for a, b in itertools.pairwise(cu)), default=0)
    # Aim at 64 rows of (query, head) per program: enough for tensor cores without wasting decodes.
    block_q = block_q or min(triton.next_power_of_2(max(longest, 1)), max(1, 64 // (heads // kv_heads)))
    tiles = [(s, t, min(t + block_q, hi)) for s, (lo, hi) in enumerate(itertools.pairwise(cu))
             for t in range(lo, hi, block_q)]
    seq, lo, hi = torch.tensor(tiles, dtype=torch.int32).reshape(-1, 3).T.contiguous().to(device)
    return TilePlan(seq, lo, hi, block_q)


def paged_attention(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, block_tables: torch.Tensor,
                    cu_seqlens_q: Sequence[int] | torch.Tensor, q_pos: torch.Tensor, scale: float, *,
                    num_splits: int = 1, plan: TilePlan | None = None, block_q: int | None = None,
                    block_n: int | None = None) -> torch.Tensor:
    """Triton kernel; same contract as `paged_attention_ref`. `cu_seqlens_q` is read on the host (one
    sync if it is a device tensor) unless `plan` (from `plan_tiles` on the same cu_seqlens_q) is given.
    block_q / block_n override the tile sizes (tests put tile edges on page edges and between them)."""
    if plan is None:
        plan = plan_tiles(cu_seqlens_q, q.shape[1], k_cache.shape[1], q.device, block_q)
    return _attend(q, k_cache, v_cache, block_tables, plan.seq, plan.lo, plan.hi, q_pos, scale, plan.block_q,
                   num_splits, block_n)


def decode_splits(batch: int, kv_heads: int, max_kv_len: int, device: torch.device) -> int:
    """Split-KV count for a decode batch: enough programs to fill the GPU twice over when batch x
    kv_heads alone cannot, but no split shorter than 256 keys; 1 off-GPU. Depends on shapes only, so a
    CUDA graph captured for a batch size stays valid."""
    if device.type != "cuda":
        return 1
    sms = torch.cuda.get_device_properties(device).multi_processor_count
    return max(1, min(math.ceil(2 * sms / max(batch * kv_heads, 1)), max_kv_len // 256, 16))


def paged_decode_attention(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, block_tables: torch.Tensor,
                           ctx_lens: torch.Tensor, scale: float, *, num_splits: int | None = None,
                           block_n: int | None = None) -> torch.Tensor:
    """Triton kernel; same contract as `kernels.cpu_attention.paged_decode_attention_ref` (ctx_lens >= 1).
    num_splits None picks `decode_splits` from the shapes."""
    batch = q.shape[0]
    if num_splits is None:
        num_splits = decode_splits(batch, k_cache.shape[1], block_tables.shape[1] * k_cache.shape[2], q.device)
    idx = torch.arange(batch, dtype=torch.int32, device=q.device)
    return _attend(q, k_cache, v_cache, block_tables, idx, idx, idx + 1, ctx_lens - 1, scale, 1, num_splits, block_n)
