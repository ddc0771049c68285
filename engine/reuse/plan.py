"""KV reuse planning: the options, and which of a new prompt's positions can copy KV that a cached
sequence holds at another position (`plan_reuse` -> `ReusePlan`). No tensors, no model code: the
scheduler plans with this alone; `engine.reuse.execute` carries a plan out. See `engine.reuse`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from engine.block_pool import Block
from engine.kv_manager import KVCacheManager
from engine.request import Request

if TYPE_CHECKING:
    import torch

METHODS = ("naive", "cacheblend", "dhd")
PROBE_DTYPES = ("auto", "model", "bfloat16", "float16", "float32")


@dataclass(slots=True)
class ReuseOptions:
    method: str = "dhd"  # naive | cacheblend | dhd
    ratio: float = 0.2  # share of reused tokens recomputed after the check layer
    check_layer: int = 1
    drift: float = 0.3  # decode stage: recompute when cosine(attention now, at selection) < drift; 0 = off
    decode_tokens: int = 3  # reused tokens recomputed per triggered decode step
    probe_layers: int | None = None  # dhd: layers after the check layer the prompt's tail runs ahead through; None: all
    min_span: int = 32  # shortest reused span, in tokens
    probe_dtype: str = "auto"  # dhd: precision of the tail's run-ahead (see probe_precision)

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"unknown KV reuse method {self.method!r}; choose from {METHODS}")
        if not 0.0 <= self.ratio <= 1.0:
            raise ValueError(f"kv_reuse_ratio must be in [0, 1], got {self.ratio}")
        if self.check_layer < 0:
            raise ValueError(f"kv_reuse_check_layer must be >= 0, got {self.check_layer}")
        if self.probe_layers is not None and self.probe_layers < 1:
            raise ValueError(f"kv_reuse_probe_layers must be >= 1 (or None: all), got {self.probe_layers}")
        if self.probe_dtype not in PROBE_DTYPES:
            raise ValueError(f"kv_reuse_probe_dtype must be one of {PROBE_DTYPES}, got {self.probe_dtype!r}")

    @property
    def full_layers(self) -> int:
        """c: layers computed for every token."""
        return 0 if self.method == "naive" else self.check_layer + 1

    def computed_layers(self, num_layers: int) -> int:
        """c for a model of `num_layers` layers (a check layer past the last computes them all)."""
        return min(self.full_layers, num_layers)

    def probe(self, num_layers: int) -> range:
        """The layers DHD's tail runs ahead through: after the check layer, `probe_layers` of them."""
        c = self.computed_layers(num_layers)
        return range(c, num_layers if self.probe_layers is None else min(c + self.probe_layers, num_layers))

    def reused_token_work(self, num_layers: int) -> float:
        """Share of a computed token's prefill work that a reused token costs: all of layers < c,
        `ratio` of the rest (naive: none)."""
        c = self.computed_layers(num_layers)
        return 0.0 if self.method == "naive" else (c + self.ratio * (num_layers - c)) / num_layers


@dataclass(slots=True)
class ReusePlan:
    """Positions of the prompt whose KV is copied from `src_slots` (slot = block_id * bs + row)."""

    positions: list[int]
    src_slots: list[int]
    src_positions: list[int]
    sources: list[Block]  # source blocks, referenced until the copy is done
    # decode stage state, set by `Reuser.prefill` (engine.reuse.execute)
    remaining: torch.Tensor | None = None  # reused positions not recomputed (ascending)
    hidden: torch.Tensor | None = None  # their hidden states entering layer c
    keys: torch.Tensor | None = None  # their K at the decode probe layer, float32 [KVH, D, len(remaining)]
    reference: torch.Tensor | None = None  # attention distribution over `remaining` at selection time
    pending: tuple[torch.Tensor, torch.Tensor] | None = None  # (positions, hidden) to recompute next step
    num_recomputed: int = 0
    attended_keys: int = 0  # sum of (position + 1) over the recomputed queries: keys they read per layer >= c
    probe_tokens: int = 0  # tail tokens x probe layers (dhd's weighting pass)
    probe_keys: int = 0  # keys the tail's queries read in all probe layers
    copied: bool = False


@dataclass(slots=True)
class _Run:
    """Adjacent reused tokens of a prompt: (prompt position, source block, row in it) each."""

    tokens: list[tuple[int, Block, int]]

    @property
    def start(self) -> int:
        return self.tokens[0][0]

    @property
    def end(self) -> int:
        return self.tokens[-1][0] + 1


def plan_reuse(kv: KVCacheManager, req: Request, start: int, min_span: int) -> ReusePlan | None:
    """Finds cached blocks whose tokens reappear in req's tokens [start, n - 1) at any offset: whole
    blocks through the content index, then each run of them extended token by token into the
    blocks that preceded and followed them in their own sequence (so a span need not be aligned)."""
    bs, pool = kv.block_size, kv.pool
    toks = req.token_ids
    end = req.num_tokens - 1  # the last token is always computed (it gives the logits)
    runs: list[_Run] = []
    i = start
    while i + bs <= end:
        block = pool.lookup_content(kv.content_key(req, toks[i:i + bs]))
        if block is None:
            i += 1
            continue
        hit = [(i + r, block, r) for r in range(bs)]
        if runs and runs[-1].end == i:
            runs[-1].tokens.extend(hit)
        else:
            runs.append(_Run(hit))
        i += bs
    for k, run in enumerate(runs):  # backwards, into the first block's parent
        first = run.tokens[0][1]
        prev = pool.lookup(first.parent_hash) if first.parent_hash else None
        floor = runs[k - 1].end if k else start
        ext = []
        if prev is not None and prev.content_key is not None:
            cached = prev.content_key[1]
            for r in range(bs - 1, -1, -1):
                pos = run.start - (bs - r)
                if pos < floor or toks[pos] != cached[r]:
                    break
                ext.append((pos, prev, r))
        run.tokens[:0] = ext[::-1]
    for k, run in enumerate(runs):  # forwards, into the last block's child
        last = run.tokens[-1][1]
        nxt = pool.lookup(last.child_hash) if last.child_hash else None
        ceiling = runs[k + 1].start if k + 1 < len(runs) else end
        if nxt is not None and nxt.content_key is not None:
            cached = nxt.content_key[1]
            for r in range(bs):
                pos = run.end
                if pos >= ceiling or toks[pos] != cached[r]:
                    break
                run.tokens.append((pos, nxt, r))
    keep = [t for run in runs if len(run.tokens) >= min_span for t in run.tokens]
    if not keep:
        return None
    sources = list({id(b): b for _, b, _ in keep}.values())
    return ReusePlan([p for p, _, _ in keep], [b.block_id * bs + r for _, b, r in keep],
                     [b.position + r for _, b, r in keep], sources)


