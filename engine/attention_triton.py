"""Triton attention backend: the engine's attention on GPUs, through the kernels in kernels/.

Per step, `begin_step` turns the metadata into the kernels' varlen form once for every layer: the
batch's sequences in flat-token order (prefill spans and decodes alike; each owns a contiguous run of
flat tokens), their block tables, each query's absolute position and the query tiles. Per layer,
`forward` stores the new K/V into their slots and runs one paged-attention launch over the cache.
A decode-only batch takes `paged_decode_attention` instead (split-KV, no host synchronisation), which
is what the CUDA graphs of engine/cuda_graphs.py capture. On CPU tensors it runs only under Triton's
interpreter (TRITON_INTERPRET=1), which the tests use to compare it with the torch backend.
"""

from __future__ import annotations

import torch
from torch.nn.utils.rnn import pad_sequence

from engine.attention import AttentionBackend, AttentionMetadata, PrefillSpan
from kernels._triton import interpreting, require
from kernels.kv_store import store_kv
from kernels.paged_attention import (
    TilePlan,
    decode_splits,
    paged_attention,
    paged_decode_attention,
    plan_tiles,
)


class TritonAttentionBackend(AttentionBackend):
    def __init__(self, k_cache: torch.Tensor, v_cache: torch.Tensor):
        require()
        if k_cache.device.type != "cuda" and not interpreting():
            raise ValueError("attention backend 'triton' needs a CUDA cache (or TRITON_INTERPRET=1 on CPU, for tests); "
                             "use 'torch' or 'cpu' here")
        super().__init__(k_cache, v_cache)
        self.scale = self.head_dim ** -0.5
        # (block tables, cu_seqlens, q_pos) of a batch with prefills; None for decode-only batches
        self._varlen: tuple[torch.Tensor, list[int], torch.Tensor] | None = None
        self._plan: TilePlan | None = None  # its query tiles, made by the first layer (which knows q's heads)
        self._splits = 1

    def begin_step(self, meta: AttentionMetadata) -> None:
        super().begin_step(meta)
        self._plan = None
        if meta.prefills:
            self._varlen = self._varlen_batch(meta)
        else:
            self._varlen = None
            if meta.decode_block_tables is not None:
                batch, width = meta.decode_block_tables.shape
                self._splits = decode_splits(batch, self.kv_heads, width * self.block_size,
                                             meta.decode_block_tables.device)

    def _span_blocks(self, span: PrefillSpan, slot_mapping: torch.Tensor) -> torch.Tensor:
        if span.tiles is None:  # no cached context: positions 0, bs, 2bs, ... each open one block
            return slot_mapping[span.start:span.end:self.block_size] // self.block_size
        # tile rows are head-major, and head 0's row of block b is b * kv_heads (AttentionBackend.tile_rows)
        return span.tiles[: span.tiles.numel() // self.kv_heads] // self.kv_heads

    def _varlen_batch(self, meta: AttentionMetadata) -> tuple[torch.Tensor, list[int], torch.Tensor]:
        slots = meta.slot_mapping
        tokens = slots.numel()
        q_pos = torch.empty(tokens, dtype=torch.int64, device=slots.device)
        starts: list[int] = []
        tables: list[torch.Tensor] = []
        for span in meta.prefills:
            q_pos[span.start:span.end] = span.q_pos if span.q_pos is not None else torch.arange(
                span.ctx_len, span.ctx_len + span.end - span.start, device=slots.device)
            starts.append(span.start)
            tables.append(self._span_blocks(span, slots))
        if meta.decode_token_idx is not None:
            q_pos[meta.decode_token_idx] = meta.decode_ctx_lens - 1
            starts.extend(meta.decode_token_idx.tolist())
            tables.extend(meta.decode_block_tables.unbind(0))
        order = sorted(range(len(starts)), key=starts.__getitem__)
        cu = [starts[i] for i in order] + [tokens]
        return pad_sequence([tables[i] for i in order], batch_first=True), cu, q_pos

    def forward(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        meta = self.meta
        k_cache, v_cache = self.k_cache[layer], self.v_cache[layer]
        store_kv(k, v, k_cache, v_cache, meta.slot_mapping)
        if self._varlen is None:  # decode-only: flat token i is decode i
            return paged_decode_attention(q, k_cache, v_cache, meta.decode_block_tables, meta.decode_ctx_lens,
                                          self.scale, num_splits=self._splits)
        block_tables, cu, q_pos = self._varlen
        if self._plan is None:
            self._plan = plan_tiles(cu, q.shape[1], self.kv_heads, q.device)
        return paged_attention(q, k_cache, v_cache, block_tables, cu, q_pos, self.scale, plan=self._plan)
