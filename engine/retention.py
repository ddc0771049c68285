"""KV retention between an agent program's turns (Continuum): pins with a time-to-live.

When a non-final turn of a program finishes (its reply asks for a tool), the request's retention
callback may return a TTL; the program's full, cached blocks are then *pinned*: the pin holds a
reference on each, so they stay out of the free list and cannot be evicted while the tool runs.
The next turn finds them through the prefix index, takes its own references, and the pin ends
(a hit). Rules:
- a pin ends when it has expired *and* no request of its program is waiting;
- all pins of a program end at its last turn;
- when a request cannot get blocks, pins are released, latest-arriving program first (with
  `protect_earlier_pins`, a waiting request may release only pins of programs that arrived after its
  own: it waits for an earlier program's pin to end instead of evicting it);
- a program holds at most one pin (a newer turn's pin replaces the older one).
Counters: hits, expiries, forced releases, pinned block-seconds.
"""

from __future__ import annotations

from dataclasses import dataclass

from engine.block_pool import Block, BlockPool


@dataclass(slots=True)
class Pin:
    program_id: str
    blocks: list[Block]
    created_at: float
    expires_at: float
    program_arrival: float  # orders forced releases: the latest-arriving program goes first


@dataclass(slots=True)
class PinStats:
    pins: int = 0
    hits: int = 0  # the program's next turn arrived while the pin held
    expiries: int = 0
    forced_releases: int = 0  # released under memory pressure
    last_turn_releases: int = 0
    pinned_block_seconds: float = 0.0


class PinManager:
    def __init__(self, pool: BlockPool):
        self.pool = pool
        self.pins: dict[str, Pin] = {}
        self.stats = PinStats()
        self._pinned: dict[int, int] = {}  # block id -> pins holding it (kept as pins come and go: read every step)

    @property
    def num_pinned_blocks(self) -> int:
        """Distinct blocks held by pins (programs sharing a prefix may pin the same block)."""
        return len(self._pinned)

    def pin(self, program_id: str, blocks: list[Block], ttl_s: float, now: float, program_arrival: float) -> None:
        """Pins `blocks` (which must be cached full blocks) for `ttl_s` seconds."""
        self.release(program_id, now)
        if ttl_s <= 0 or not blocks:
            return
        self.pool.acquire(blocks)
        self.pins[program_id] = Pin(program_id, list(blocks), now, now + ttl_s, program_arrival)
        for b in blocks:
            self._pinned[b.block_id] = self._pinned.get(b.block_id, 0) + 1
        self.stats.pins += 1

    def release(self, program_id: str, now: float) -> bool:
        pin = self.pins.pop(program_id, None)
        if pin is None:
            return False
        self.stats.pinned_block_seconds += len(pin.blocks) * max(0.0, now - pin.created_at)
        self.pool.release(pin.blocks[::-1])
        for b in pin.blocks:
            if self._pinned[b.block_id] == 1:
                del self._pinned[b.block_id]
            else:
                self._pinned[b.block_id] -= 1
        return True

    def take(self, program_id: str | None, now: float) -> bool:
        """The program's next request got its blocks: its references replace the pin's. True on a hit."""
        if program_id is None or program_id not in self.pins:
            return False
        self.stats.hits += 1
        return self.release(program_id, now)

    def end_program(self, program_id: str | None, now: float) -> None:
        if program_id is not None and self.release(program_id, now):
            self.stats.last_turn_releases += 1

    def expire(self, now: float, waiting_programs: set[str]) -> None:
        for pid in [p.program_id for p in self.pins.values() if p.expires_at <= now and p.program_id not in waiting_programs]:
            self.release(pid, now)
            self.stats.expiries += 1

    def force_release(self, program_id: str, now: float) -> bool:
        """Memory pressure, last resort: the waiting request's own program gives up its pin."""
        released = self.release(program_id, now)
        self.stats.forced_releases += released
        return released

    def release_latest(self, now: float, keep: str | None = None, after: float | None = None) -> bool:
        """Memory pressure: drops the pin of the latest-arriving program (never `keep`'s; with `after`,
        only a program that arrived after that time). False if none."""
        candidates = [p for p in self.pins.values()
                      if p.program_id != keep and (after is None or p.program_arrival > after)]
        if not candidates:
            return False
        victim = max(candidates, key=lambda p: p.program_arrival)
        self.release(victim.program_id, now)
        self.stats.forced_releases += 1
        return True
