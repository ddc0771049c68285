"""Attention over the paged KV cache, behind one backend interface.

The KV cache is one tensor per K and V of shape `[layers, num_blocks, block_size, kv_heads, head_dim]`;
a token at position p of a sequence lives in slot `block_table[p // bs] * bs + p % bs`.
A step's batch is described once by `AttentionMetadata` (built by the model runner) and read by every
layer. `TorchAttentionBackend` is the reference: it writes new K/V into their slots, then
- prefill of a sequence with no cached context: causal SDPA over the fresh K/V (no gather),
- prefill over a cached prefix (or a resumed chunk): gather the sequence's blocks, mask kv_pos <= q_pos,
- decodes (one query each): one batched SDPA over the gathered, padded blocks of all decoding sequences.
It is correct on CPU and CUDA; the Triton backend (kernels/) implements the same interface.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(slots=True)
class PrefillSpan:
    """One sequence's queries in this step: flat tokens [start, end) at positions [ctx_len, ctx_len + end - start)."""

    start: int
    end: int
    ctx_len: int  # tokens of this sequence already in the cache before this step
    block_table: torch.Tensor  # [num_blocks covering ctx_len + (end - start)], int64


@dataclass(slots=True)
class AttentionMetadata:
    slot_mapping: torch.Tensor  # [num_tokens] int64: cache slot each new token's K/V is written to
    prefills: list[PrefillSpan]
    decode_token_idx: torch.Tensor | None  # [num_decodes] flat index of each decode query
    decode_block_tables: torch.Tensor | None  # [num_decodes, max_blocks] int64, padded with block 0
    decode_mask: torch.Tensor | None  # [num_decodes, 1, 1, max_blocks * block_size] bool, True = attend


class AttentionBackend:
    """Interface: the model calls `forward(layer, q, k, v)` with this step's flat q/k/v."""

    def __init__(self, k_cache: torch.Tensor, v_cache: torch.Tensor):
        self.k_cache, self.v_cache = k_cache, v_cache
        self.block_size = k_cache.shape[2]
        self.meta: AttentionMetadata | None = None

    def begin_step(self, meta: AttentionMetadata) -> None:
        self.meta = meta

    def forward(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


class TorchAttentionBackend(AttentionBackend):
    def forward(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        meta = self.meta
        kc, vc = self.k_cache[layer], self.v_cache[layer]
        num_blocks, bs, kvh, hd = kc.shape
        flat_k, flat_v = kc.view(num_blocks * bs, kvh, hd), vc.view(num_blocks * bs, kvh, hd)
        flat_k.index_copy_(0, meta.slot_mapping, k)
        flat_v.index_copy_(0, meta.slot_mapping, v)
        out = torch.empty_like(q)
        for span in meta.prefills:
            qs = q[span.start:span.end].transpose(0, 1).unsqueeze(0)  # [1, H, L, D]
            n = span.end - span.start
            if span.ctx_len == 0:
                ks = k[span.start:span.end].transpose(0, 1).unsqueeze(0)
                vs = v[span.start:span.end].transpose(0, 1).unsqueeze(0)
                o = F.scaled_dot_product_attention(qs, ks, vs, is_causal=True, enable_gqa=True)
            else:
                total = span.ctx_len + n
                ks = self._gather(kc, span.block_table)[:total].transpose(0, 1).unsqueeze(0)
                vs = self._gather(vc, span.block_table)[:total].transpose(0, 1).unsqueeze(0)
                q_pos = torch.arange(span.ctx_len, total, device=q.device)
                mask = torch.arange(total, device=q.device)[None, :] <= q_pos[:, None]
                o = F.scaled_dot_product_attention(qs, ks, vs, attn_mask=mask, enable_gqa=True)
            out[span.start:span.end] = o[0].transpose(0, 1)
        if meta.decode_token_idx is not None:
            bt = meta.decode_block_tables
            b = bt.shape[0]
            kd = self._gather(kc, bt.reshape(-1)).view(b, -1, kvh, hd).transpose(1, 2)
            vd = self._gather(vc, bt.reshape(-1)).view(b, -1, kvh, hd).transpose(1, 2)
            qd = q.index_select(0, meta.decode_token_idx).unsqueeze(2)  # [B, H, 1, D]
            o = F.scaled_dot_product_attention(qd, kd, vd, attn_mask=meta.decode_mask, enable_gqa=True)
            out.index_copy_(0, meta.decode_token_idx, o.squeeze(2))
        return out

    @staticmethod
    def _gather(cache: torch.Tensor, block_ids: torch.Tensor) -> torch.Tensor:
        """Copies whole blocks (contiguous rows) out of the cache: [len(block_ids) * bs, kv_heads, head_dim]."""
        nb, bs, kvh, hd = cache.shape
        return cache.view(nb, bs * kvh * hd).index_select(0, block_ids).view(-1, kvh, hd)
