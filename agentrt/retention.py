"""Between-turn KV retention for the runtime: predict a tool call's duration, turn it into a TTL.

When a program's non-final turn ends, the engine asks the request's retention callback how long to
pin the program's KV, handing it the finished output and an `EngineSnapshot` (the engine's only
interface here). `Retention.ttl_for` answers from the tool call that follows (named by the agent, or
parsed from the reply), the program's own earlier tool durations, and the snapshot's figures: T
(queueing delay of turns whose KV was not held) and reload(r) (time to re-prefill this context), with
η (memoryfulness of finished programs' turn counts) from the runtime. Finished tool calls feed the
predictor online (`observe`, a runtime tool hook). The callback runs in the engine's worker thread
while the event loop may be updating the predictor, hence the lock.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING

from toolpredict.features import ToolCallRecord
from toolpredict.ttl import TTLAdvisor, TTLContext, TTLDecision, make_advisor, memoryfulness

from agentrt.types import ToolCall, ToolResult

if TYPE_CHECKING:
    from engine.snapshot import EngineSnapshot


class Retention:
    """`pressure_aware`: the cost model charges a pinned second in proportion to how full the KV pool
    is (at least `min_pressure`), not at a flat rate: holding blocks nobody else needs costs nothing,
    so with room to spare pins run longer. Maximizing P(τ)·B − λ·τ is maximizing P(τ)·(B/λ) − τ."""

    def __init__(self, advisor: TTLAdvisor | str, default_queue_delay_s: float = 0.0,
                 pressure_aware: bool = False, min_pressure: float = 0.1):
        self.advisor = make_advisor(advisor) if isinstance(advisor, str) else advisor
        self.default_queue_delay_s = default_queue_delay_s
        self.pressure_aware, self.min_pressure = pressure_aware, min_pressure
        self.histories: dict[str, list[ToolCallRecord]] = {}
        self.turn_counts: list[int] = []
        self._eta: float | None = None  # memoryfulness of turn_counts, cached until a program finishes
        self._lock = threading.Lock()

    @property
    def policy_name(self) -> str:
        return self.advisor.policy.name

    def context(self, context_tokens: int, snapshot: "EngineSnapshot") -> TTLContext:
        queue = snapshot.queue_delay_s if snapshot.queue_delay_s is not None else self.default_queue_delay_s
        if self._eta is None:  # O(finished programs): once per finish, not once per decision
            self._eta = memoryfulness(self.turn_counts)
        eta, reload = self._eta, snapshot.reload_time_s(context_tokens)
        if self.pressure_aware:
            scale = 1.0 / max(snapshot.kv_usage, self.min_pressure)
            queue, reload = queue * scale, reload * scale
        return TTLContext(queue_delay_s=queue, eta=eta, reload_s=reload)

    def ttl_for(self, program_id: str, call: ToolCall, context_tokens: int, snapshot: "EngineSnapshot") -> TTLDecision:
        with self._lock:
            history = list(self.histories.get(program_id, ()))
            return self.advisor.decide(call.name, call.arguments, history, self.context(context_tokens, snapshot))

    def observe(self, program_id: str, result: ToolResult) -> None:
        history = self.histories.setdefault(program_id, [])
        record = ToolCallRecord(result.call.name, dict(result.call.arguments), result.duration_s, program_id,
                                len(history))
        with self._lock:
            history.append(record)
            self.advisor.observe(record)

    def program_finished(self, program_id: str, turns: int) -> None:
        self.histories.pop(program_id, None)
        if turns:
            self.turn_counts.append(turns)
            self._eta = None
