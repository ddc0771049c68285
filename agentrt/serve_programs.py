"""The server's agent programs: identity, turn counting and lifetime (`ProgramTable`), on the
app's injectable clock. A program ends at its explicit last turn, or once idle longer than both its
last pin's TTL and the idle timeout."""

from __future__ import annotations

import math
import threading
from collections.abc import Callable
from dataclasses import dataclass

from agentrt.types import ToolCall


@dataclass(slots=True)
class _PendingCall:
    """The tool call a program's last reply asked for: the gap until its next request is its duration."""

    call: ToolCall
    reply_end_s: float
    predicted_s: float | None  # the predictor's median, when the TTL came from a prediction


@dataclass(slots=True)
class _Program:
    first_seen_s: float
    last_active_s: float
    turns: int = 0  # its requests so far (the turn index of the next one, unless the client says)
    in_flight: int = 0
    ttl_s: float = 0.0  # its last pin's
    pending: _PendingCall | None = None


@dataclass(slots=True, frozen=True)
class _EndedProgram:
    program_id: str
    turns: int
    jct_s: float


class ProgramTable:
    """The server's view of live programs, on the app's clock. Turn ends are reported from the
    engine's worker thread while the event loop reads and updates the table: hence the lock."""

    def __init__(self, clock: Callable[[], float], idle_timeout_s: float):
        self.clock, self.idle_timeout_s = clock, idle_timeout_s
        self.programs: dict[str, _Program] = {}
        self._lock = threading.Lock()
        self._last_sweep_s = -math.inf

    def __len__(self) -> int:
        return len(self.programs)

    def arrive(self, pid: str, turn: int | None) -> tuple[int, _PendingCall | None, float, list[_EndedProgram]]:
        """A request of `pid` arrived: (its turn index, the pending tool call whose duration just
        ended, now, programs that ended idle meanwhile)."""
        now = self.clock()
        ended = self.sweep(now)
        with self._lock:
            prog = self.programs.get(pid)
            if prog is None:
                prog = self.programs[pid] = _Program(now, now)
            if turn is None:
                turn = prog.turns
            prog.turns = max(prog.turns + 1, turn + 1)
            prog.in_flight += 1
            prog.last_active_s = now
            pending, prog.pending = prog.pending, None
        return turn, pending, now, ended

    def reply_ended(self, pid: str, ttl_s: float, pending: _PendingCall | None) -> None:
        with self._lock:
            prog = self.programs.get(pid)
            if prog is not None:
                prog.ttl_s, prog.pending, prog.last_active_s = ttl_s, pending, self.clock()

    def request_done(self, pid: str, is_last_turn: bool) -> _EndedProgram | None:
        now = self.clock()
        with self._lock:
            prog = self.programs.get(pid)
            if prog is None:
                return None
            prog.in_flight -= 1
            prog.last_active_s = max(prog.last_active_s, now)
            if not is_last_turn:
                return None
            del self.programs[pid]
            return _EndedProgram(pid, prog.turns, now - prog.first_seen_s)

    def sweep(self, now: float | None = None) -> list[_EndedProgram]:
        """Ends the programs idle longer than both their pin and the idle timeout (at most once a second)."""
        now = self.clock() if now is None else now
        if now - self._last_sweep_s < 1.0:
            return []
        self._last_sweep_s = now
        with self._lock:
            idle = [pid for pid, p in self.programs.items()
                    if p.in_flight == 0 and now - p.last_active_s > max(p.ttl_s, self.idle_timeout_s)]
            ended = [self.programs.pop(pid) for pid in idle]
        return [_EndedProgram(pid, p.turns, p.last_active_s - p.first_seen_s) for pid, p in zip(idle, ended)]
