"""CUDA graphs of the decode step: one graph per padded batch size, captured on first use.

A small model's decode step is hundreds of tiny kernel launches; replaying them as one CUDA graph
removes the Python and launch overhead (nano-vllm and vLLM do the same). A graph replays fixed
addresses, so a step's inputs are copied into static buffers sized for the largest bucket: a batch
of n decodes runs in the graph of the smallest bucket >= n, its extra rows padded with slot -1 (their
K/V is not stored), context length 1 and a stale but valid block id (their logits are dropped).
Only decode-only batches of the Triton backend qualify: its decode path has no host synchronisation
and picks its split count from shapes alone. Used by the model runner on CUDA only (measured on an
H200: docs/lab/2026-11-27-gpu-h200.md).
"""

from __future__ import annotations

import torch

from engine.attention import AttentionBackend, AttentionMetadata
from engine.model import LlamaModel


class DecodeGraphs:
    def __init__(self, model: LlamaModel, attn: AttentionBackend, max_blocks_per_seq: int, max_batch: int = 256):
        self.model, self.attn = model, attn
        self.buckets = [1, 2, 4, 8, *range(16, max_batch + 1, 16)]
        size = self.buckets[-1]
        i64 = {"dtype": torch.int64, "device": attn.k_cache.device}
        self.token_ids = torch.zeros(size, **i64)
        self.positions = torch.zeros(size, **i64)
        self.slots = torch.full((size,), -1, **i64)
        self.ctx_lens = torch.ones(size, **i64)
        self.block_tables = torch.zeros(size, max_blocks_per_seq, **i64)
        self.rows = torch.arange(size, **i64)
        self.graphs: dict[int, tuple[torch.cuda.CUDAGraph, torch.Tensor]] = {}
        self.pool = None  # one memory pool shared by every bucket's graph

    def can_run(self, meta: AttentionMetadata) -> bool:
        return (not meta.prefills and meta.decode_block_tables is not None
                and meta.decode_block_tables.shape[0] <= self.buckets[-1]
                and meta.decode_block_tables.shape[1] <= self.block_tables.shape[1])

    def run(self, token_ids: torch.Tensor, positions: torch.Tensor, meta: AttentionMetadata) -> torch.Tensor:
        """float32 logits [n, vocab] of a decode-only batch of n (flat token i is decode i)."""
        n, width = meta.decode_block_tables.shape
        bucket = next(b for b in self.buckets if b >= n)
        self.token_ids[:n].copy_(token_ids)
        self.positions[:n].copy_(positions)
        self.slots[:n].copy_(meta.slot_mapping)
        self.slots[n:bucket].fill_(-1)
        self.ctx_lens[:n].copy_(meta.decode_ctx_lens)
        self.ctx_lens[n:bucket].fill_(1)
        self.block_tables[:n, :width].copy_(meta.decode_block_tables)
        graph, logits = self.graphs.get(bucket) or self._capture(bucket)
        graph.replay()
        return logits[:n]

    def _capture(self, bucket: int) -> tuple[torch.cuda.CUDAGraph, torch.Tensor]:
        meta = AttentionMetadata(self.slots[:bucket], [], self.rows[:bucket], self.block_tables[:bucket],
                                 self.ctx_lens[:bucket])
        args = (self.token_ids[:bucket], self.positions[:bucket], self.rows[:bucket], self.attn)
        self.attn.begin_step(meta)
        # Warm-up outside the capture (Triton compiles here). It stores the same K/V the replay will.
        self.model(*args)
        torch.cuda.synchronize()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self.pool):
            logits = self.model(*args)
        self.pool = graph.pool()
        self.graphs[bucket] = (graph, logits)
        return graph, logits


def make_decode_graphs(model: LlamaModel, attn: AttentionBackend, max_blocks_per_seq: int) -> DecodeGraphs | None:
    """Decode graphs for a Triton backend on CUDA; None for any other backend (their decode paths
    synchronise with the host or allocate by data)."""
    if attn.k_cache.device.type != "cuda":
        return None
    # imported here so that CPU runs never load triton
    from engine.attention_triton import TritonAttentionBackend

    return DecodeGraphs(model, attn, max_blocks_per_seq) if isinstance(attn, TritonAttentionBackend) else None
