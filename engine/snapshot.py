"""What the engine publishes: an immutable `EngineSnapshot` after every step (gauges and counters).

It is the one view of engine state that code outside the engine reads (agentrt's retention policy,
the server's metrics, the dashboard's samples, the benchmarks): a frozen record, safe to read from
any thread while the engine steps, since the engine replaces it rather than changing it. The
turn-end retention protocol hands the finished request's output and a fresh snapshot to the
request's retention callback: `retention(output, snapshot) -> ttl_s`.
"""

from __future__ import annotations

from dataclasses import dataclass

from engine.reload import ReloadModel


@dataclass(slots=True, frozen=True)
class EngineSnapshot:
    time_s: float  # the engine's clock when it was taken
    num_steps: int
    num_running: int
    num_waiting: int
    num_blocks: int
    num_free_blocks: int  # blocks on the free list (cached-but-unreferenced blocks count as free)
    num_pinned_blocks: int  # distinct blocks held by KV pins
    pinned_programs: frozenset[str]
    next_pin_expiry_s: float | None  # the earliest pin expiry still ahead, on the engine's clock
    # pin counters (engine/retention.py)
    num_pins: int
    num_pin_hits: int
    num_pin_expiries: int
    num_pin_forced_releases: int
    num_pin_last_turn_releases: int
    pinned_block_seconds: float
    num_preemptions: int
    # token counters (EngineStats)
    num_prompt_tokens: int
    num_prefix_hit_tokens: int
    num_computed_tokens: int
    num_generated_tokens: int
    num_recomputed_prefill_tokens: int
    num_reuse_requests: int
    num_reused_tokens: int
    forward_s: float
    step_s: float
    # the retention cost model's inputs (Continuum's T and reload(r))
    queue_delay_s: float | None  # moving average of the queueing of turns whose KV was not held
    reload: ReloadModel | None  # profiled re-prefill time, when the engine profiled it

    @property
    def num_used_blocks(self) -> int:
        return self.num_blocks - self.num_free_blocks

    @property
    def kv_usage(self) -> float:
        """Share of the KV pool in use, 0..1."""
        return self.num_used_blocks / self.num_blocks if self.num_blocks else 0.0

    def reload_time_s(self, num_tokens: int) -> float:
        """Estimated time to prefill `num_tokens` again: the profiled model, else the engine's mean
        forward time per computed token so far (0 before any step)."""
        if self.reload is not None:
            return self.reload(num_tokens)
        if not self.num_computed_tokens:
            return 0.0
        return self.forward_s / self.num_computed_tokens * num_tokens
