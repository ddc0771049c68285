"""What the engine keeps per agent program between its turns: KV pins, queueing delay, reload time.

A request's `ProgramHint` names its program. When a non-final turn ends, the request's retention
callback gets the finished output and a fresh `EngineSnapshot` and answers a TTL; the program's
cached blocks are pinned for it (engine/retention.py holds the pin rules). At the program's last
turn everything held for it is dropped. On each turn's first scheduling this part counts the
earlier context that had to be computed again, and updates T, the moving average of the queueing
delay of turns whose KV was not held (the TTL cost model's T). No torch, no model.
"""

from __future__ import annotations

from collections.abc import Callable

from engine.block_pool import BlockPool
from engine.reload import ReloadModel
from engine.request import Request, RequestOutput
from engine.retention import PinManager
from engine.scheduler import Scheduler
from engine.snapshot import EngineSnapshot


class Programs:
    def __init__(self, pool: BlockPool, pins: PinManager, scheduler: Scheduler, clock: Callable[[], float]):
        self.pool, self.pins, self.scheduler, self.clock = pool, pins, scheduler, clock
        self.context_tokens: dict[str, int] = {}  # tokens of each live program's last finished turn
        self.queue_delay_s: float | None = None
        self.reload_model: ReloadModel | None = None

    def first_scheduled(self, req: Request, now: float) -> int:
        """A turn is scheduled for the first time: updates T; returns how many tokens of the
        program's earlier context it computes again (0 for a first turn or a full cache hit)."""
        pid = req.hint.program_id
        if pid is None:
            return 0
        before = self.context_tokens.get(pid)
        recomputed = 0 if before is None else max(0, min(before, req.num_prompt_tokens) - req.num_cached_tokens)
        if not req.pin_hit:  # queueing of a turn whose KV was not held
            delay = now - req.metrics.arrival_time
            self.queue_delay_s = delay if self.queue_delay_s is None else 0.9 * self.queue_delay_s + 0.1 * delay
        return recomputed

    def turn_ended(self, req: Request, out: RequestOutput, snapshot: Callable[[], EngineSnapshot]) -> None:
        """End of a program's turn: pin its KV for the TTL its retention callback gives (asked with
        `snapshot()`), or, at the program's last turn, drop everything held for it."""
        pid = req.hint.program_id
        if pid is None or req.finish_reason == "abort":
            return
        now = self.clock()
        if req.hint.is_last_turn:
            self.pins.end_program(pid, now)
            self.scheduler.program_arrival.pop(pid, None)
            self.context_tokens.pop(pid, None)
            return
        self.context_tokens[pid] = req.num_tokens
        ttl = req.retention(out, snapshot()) if req.retention is not None else 0.0
        if ttl > 0:
            # pin what the next turn will find: the indexed block of each prefix hash (a block this
            # request computed twice, alongside another request, is not the indexed one)
            found = (self.pool.lookup(h) for h in req.block_hashes[:req.num_committed_blocks])
            blocks = [b for b in found if b is not None]
            arrival = self.scheduler.program_arrival.get(pid, req.metrics.arrival_time)
            self.pins.pin(pid, blocks, ttl, now, arrival)
