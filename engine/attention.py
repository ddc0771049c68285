"""Attention over the paged KV cache, behind one backend interface.

The KV cache is one tensor per K and V of shape `[layers, num_blocks, kv_heads, block_size, head_dim]`
(vLLM's layout): a token at position p of a sequence lives in block `block_table[p // bs]`, row
`p % bs`, and one (block, head) pair is a contiguous `[block_size, head_dim]` tile, so gathering a
sequence's tiles yields K/V already in SDPA's `[batch, heads, tokens, head_dim]` layout.
A step's batch is described once by `AttentionMetadata` (built by the model runner) and read by every
layer. `TorchAttentionBackend` is the reference: it writes new K/V into their slots, then
- prefill of a sequence with no cached context: causal SDPA over the fresh K/V (no gather),
- prefill over a cached prefix (or a resumed chunk, or sparse queries): gather the sequence's tiles,
  then per chunk of queries SDPA over the keys up to the chunk's last query, masked kv_pos <= q_pos,
- decodes (one query each): one batched SDPA over the gathered, padded tiles of all decoding sequences.
Gathers write into reused workspace buffers: fresh multi-MB tensors per layer cost more in page
faults than the copy itself on CPU. It is correct on CPU and CUDA. `CpuAttentionBackend` replaces
the decode path with a C kernel that reads the tiles in place (float32 or bfloat16); `TritonAttentionBackend`
(engine/attention_triton.py) implements the same interface for GPUs with the kernels in kernels/.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from kernels import cpu_attention
from kernels.kv_store import head_rows


@dataclass(slots=True)
class PrefillSpan:
    """One sequence's queries in this step: flat tokens [start, end) at positions [ctx_len, ctx_len + end - start)."""

    start: int
    end: int
    ctx_len: int  # tokens of this sequence already in the cache before this step
    tiles: torch.Tensor | None  # tile rows (see tile_rows) of its blocks; None when ctx_len == 0
    # Explicit absolute positions of the queries (ascending), for sparse queries such as DHD's
    # selective recompute; None means the contiguous positions [ctx_len, ctx_len + end - start).
    q_pos: torch.Tensor | None = None


@dataclass(slots=True)
class AttentionMetadata:
    slot_mapping: torch.Tensor  # [num_tokens] int64: block_id * block_size + row of each new token
    prefills: list[PrefillSpan]
    decode_token_idx: torch.Tensor | None  # [num_decodes] flat index of each decode query
    decode_block_tables: torch.Tensor | None  # [num_decodes, max_blocks] int64, padded with block 0
    decode_ctx_lens: torch.Tensor | None  # [num_decodes] int64: tokens each decode attends to


class AttentionBackend:
    """Interface: the model calls `forward(layer, q, k, v)` with this step's flat q/k/v."""

    def __init__(self, k_cache: torch.Tensor, v_cache: torch.Tensor):
        self.k_cache, self.v_cache = k_cache, v_cache
        _, self.num_blocks, self.kv_heads, self.block_size, self.head_dim = k_cache.shape
        self.meta: AttentionMetadata | None = None

    def tile_rows(self, block_ids: torch.Tensor) -> torch.Tensor:
        """[..., n] block ids -> [..., kv_heads * n] rows of the `[blocks * kv_heads, bs * hd]` view, head-major."""
        heads = torch.arange(self.kv_heads, device=block_ids.device)
        rows = block_ids.unsqueeze(-2) * self.kv_heads + heads[:, None]
        return rows.reshape(*block_ids.shape[:-1], -1)

    def begin_step(self, meta: AttentionMetadata) -> None:
        self.meta = meta

    def forward(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


class TorchAttentionBackend(AttentionBackend):
    def __init__(self, k_cache: torch.Tensor, v_cache: torch.Tensor):
        super().__init__(k_cache, v_cache)
        self._work = torch.empty(0, dtype=k_cache.dtype, device=k_cache.device)
        self._store_idx: torch.Tensor | None = None
        self._decode_tiles: torch.Tensor | None = None
        self._decode_mask: torch.Tensor | None = None

    def begin_step(self, meta: AttentionMetadata) -> None:
        super().begin_step(meta)
        # element row of each (token, head) in the [blocks * kv_heads * bs, hd] view
        self._store_idx = head_rows(meta.slot_mapping, self.kv_heads, self.block_size)
        if meta.decode_block_tables is not None:
            self._prepare_decode(meta)

    def _prepare_decode(self, meta: AttentionMetadata) -> None:
        width = meta.decode_block_tables.shape[1] * self.block_size
        self._decode_tiles = self.tile_rows(meta.decode_block_tables).reshape(-1)
        positions = torch.arange(width, device=meta.decode_block_tables.device)
        self._decode_mask = (positions[None, :] < meta.decode_ctx_lens[:, None])[:, None, None, :]

    def _decode(self, layer: int, qd: torch.Tensor) -> torch.Tensor:
        """qd: [B, H, D] one query per decoding sequence -> [B, H, D]."""
        kd, vd = self._gather(layer, self._decode_tiles, qd.shape[0])
        o = F.scaled_dot_product_attention(qd.unsqueeze(2), kd, vd, attn_mask=self._decode_mask, enable_gqa=True)
        return o.squeeze(2)

    def _workspace(self, rows: int) -> tuple[torch.Tensor, torch.Tensor]:
        width = self.block_size * self.head_dim
        if self._work.shape[0] < 2 * rows:
            self._work = torch.empty(2 * rows, width, dtype=self.k_cache.dtype, device=self.k_cache.device)
        return self._work[:rows], self._work[rows:2 * rows]

    def _gather(self, layer: int, rows: torch.Tensor, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
        """K and V tiles for `rows` as [batch, kv_heads, tokens, head_dim] (views of the workspace)."""
        kbuf, vbuf = self._workspace(rows.numel())
        width = self.block_size * self.head_dim
        kc = self.k_cache[layer].view(-1, width)
        vc = self.v_cache[layer].view(-1, width)
        kg = torch.index_select(kc, 0, rows, out=kbuf).view(batch, self.kv_heads, -1, self.head_dim)
        vg = torch.index_select(vc, 0, rows, out=vbuf).view(batch, self.kv_heads, -1, self.head_dim)
        return kg, vg

    @staticmethod
    def _attend_cached(qs: torch.Tensor, ks: torch.Tensor, vs: torch.Tensor, q_pos: torch.Tensor,
                       chunk: int) -> torch.Tensor:
        """qs [1, H, L, D] at ascending positions q_pos over the sequence's keys ks/vs [1, KVH, T, D]
        (position = index), causal. In chunks of queries, each over the keys up to its last query
        only: one masked SDPA over all T keys computes every masked-out score too (on CPU a third
        slower for DHD's sparse queries, half again as slow for a long chunk over a short prefix)."""
        out = torch.empty_like(qs)
        for c0 in range(0, qs.shape[2], chunk):
            pos = q_pos[c0:c0 + chunk]
            hi = int(pos[-1]) + 1
            mask = torch.arange(hi, device=qs.device)[None, :] <= pos[:, None]
            out[:, :, c0:c0 + chunk] = F.scaled_dot_product_attention(
                qs[:, :, c0:c0 + chunk], ks[:, :, :hi], vs[:, :, :hi], attn_mask=mask, enable_gqa=True)
        return out

    def forward(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        meta = self.meta
        hd = self.head_dim
        self.k_cache[layer].view(-1, hd).index_copy_(0, self._store_idx, k.reshape(-1, hd))
        self.v_cache[layer].view(-1, hd).index_copy_(0, self._store_idx, v.reshape(-1, hd))
        out = torch.empty_like(q)
        for span in meta.prefills:
            qs = q[span.start:span.end].transpose(0, 1).unsqueeze(0)  # [1, H, L, D]
            n = span.end - span.start
            if span.tiles is None:
                ks = k[span.start:span.end].transpose(0, 1).unsqueeze(0)
                vs = v[span.start:span.end].transpose(0, 1).unsqueeze(0)
                o = F.scaled_dot_product_attention(qs, ks, vs, is_causal=True, enable_gqa=True)
            else:
                ks, vs = self._gather(layer, span.tiles, 1)
                q_pos = span.q_pos if span.q_pos is not None else torch.arange(span.ctx_len, span.ctx_len + n,
                                                                                device=q.device)
                o = self._attend_cached(qs, ks, vs, q_pos, chunk=64 if span.q_pos is not None else 256)
            out[span.start:span.end] = o[0].transpose(0, 1)
        if meta.decode_token_idx is not None:
            o = self._decode(layer, q.index_select(0, meta.decode_token_idx))
            out.index_copy_(0, meta.decode_token_idx, o)
        return out


class CpuAttentionBackend(TorchAttentionBackend):
    """The torch backend with decodes through the C paged-attention kernel, which reads the cache
    tiles in place instead of gathering them (a float32 or bfloat16 CPU cache; see kernels/cpu_attention.py)."""

    def _prepare_decode(self, meta: AttentionMetadata) -> None:
        self._tables, self._lens = meta.decode_block_tables, meta.decode_ctx_lens
        self._max_ctx = int(self._lens.max())  # once per step, not once per layer

    def _decode(self, layer: int, qd: torch.Tensor) -> torch.Tensor:
        return cpu_attention.paged_decode_attention(qd, self.k_cache[layer], self.v_cache[layer], self._tables,
                                                    self._lens, self.head_dim ** -0.5, self._max_ctx)


def make_attention_backend(name: str, k_cache: torch.Tensor, v_cache: torch.Tensor) -> AttentionBackend:
    """`auto` takes the Triton kernels on a CUDA cache (when triton is installed), the C decode kernel
    on a float32 or bfloat16 CPU cache when it compiles here, else torch."""
    if name == "auto":
        if k_cache.device.type == "cuda":
            from kernels import _triton

            name = "triton" if _triton.AVAILABLE else "torch"
        else:
            cpu_ok = (k_cache.device.type == "cpu" and k_cache.dtype in cpu_attention.CACHE_DTYPES
                      and cpu_attention.available())
            name = "cpu" if cpu_ok else "torch"
    if name == "triton":  # imported here: CPU-only runs never load triton
        from engine.attention_triton import TritonAttentionBackend

        return TritonAttentionBackend(k_cache, v_cache)
    if name == "torch":
        return TorchAttentionBackend(k_cache, v_cache)
    if name == "cpu":
        if not cpu_attention.available():
            raise ValueError("attention backend 'cpu' needs a working C compiler (cc) on this machine")
        return CpuAttentionBackend(k_cache, v_cache)
    raise ValueError(f"unknown attention backend {name!r}; choose from 'auto', 'torch', 'cpu', 'triton'")
