"""Continuous batching: which requests run in the next step, and how many tokens each computes.

One step mixes decodes and (chunked) prefills under a token budget. Running requests are served
first in policy order; when their next slots don't fit, the lowest-priority running request is
preempted (its blocks freed, its tokens kept, recomputed later). Waiting requests are admitted in
policy order only in a step that preempted nothing, and only while blocks, sequence slots and
budget last. Ordering is a pluggable `SchedulingPolicy`: `fcfs` orders by request arrival (vLLM);
`program` (Continuum) serves requests of programs that hold a KV pin first, then orders by the
arrival of the request's *program*, never of the request; `cache-aware` (KVShare) serves waiting
requests with the least prefill work left after KV reuse first (hit rate and length), aged by their
wait so that nothing starves, and admits a request into a step only while its work is at most that
of the requests admitted so far (a step's requests all get their first token when it ends); and
`program+cache-aware` keeps pinned programs first, then orders the rest cache-aware from their
program's arrival. With KV reuse on, KV at other positions is reused only by a request whose whole
prefill fits this step (the reuse prefill is one selective pass); one whose prefill does not fit
is prefilled in chunks without reuse.
KV pins (engine/retention.py) yield before any request does: expired pins are dropped at the start
of a step (unless their program has a request waiting), and when blocks run out, pins are released
(latest-arriving program first) before a running request is preempted or admission stops.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from engine.kv_manager import KVCacheManager
from engine.reuse.plan import ReuseOptions, plan_reuse
from engine.request import Request, RequestStatus
from engine.retention import PinManager


class SchedulingPolicy:
    """Orders requests: a smaller key runs first and is preempted last."""

    name = "base"

    def key(self, req: Request, sched: Scheduler) -> tuple:
        raise NotImplementedError

    def joins_step(self, req: Request, sched: Scheduler, step_work: float) -> bool:
        """Whether waiting `req`, next in order, may still join a step that has admitted waiting
        requests of `step_work` prefill work (token-equivalents) so far."""
        return True


class FCFSPolicy(SchedulingPolicy):
    """vLLM's default: first come, first served by request arrival."""

    name = "fcfs"

    def key(self, req: Request, sched: Scheduler) -> tuple:
        return (req.metrics.arrival_time, req.seq_no)


def _program_arrival(req: Request, sched: Scheduler) -> float:
    pid = req.hint.program_id
    return sched.program_arrival.get(pid, req.metrics.arrival_time) if pid else req.metrics.arrival_time


class CacheAwarePolicy(SchedulingPolicy):
    """KVShare: the cheapest prefill first. A request's prefill work is estimated at arrival from
    what the cache holds (`Scheduler.estimate_prefill`: uncached tokens, plus reused tokens at the
    share of work selective recompute spends on them), so a high hit rate makes a prompt cheap but a
    short cold prompt still goes ahead of a long warm one (shortest job first, which minimises mean
    TTFT). Waiting raises priority: each `aging_s` seconds of wait is worth one full step of tokens
    (max_num_batched_tokens). A request that has waited `max_wait_s` goes ahead of all that have
    not (oldest first), which bounds any wait to max_wait_s plus the time to serve the overdue
    requests ahead of it. Within a step the same order holds (`joins_step`): a prefill that costs
    more than those already admitted waits for the next step instead of delaying them."""

    name = "cache-aware"
    needs_prefill_estimate = True

    def __init__(self, aging_s: float = 10.0, max_wait_s: float = 30.0, by_program: bool = False):
        self.aging_s, self.max_wait_s, self.by_program = aging_s, max_wait_s, by_program

    def _since(self, req: Request, sched: Scheduler) -> float:
        return _program_arrival(req, sched) if self.by_program else req.metrics.arrival_time

    def key(self, req: Request, sched: Scheduler) -> tuple:
        since = self._since(req, sched)
        wait = sched.now - since
        if wait >= self.max_wait_s:
            return (0, since, req.seq_no)
        return (1, req.prefill_work / sched.max_num_batched_tokens - wait / self.aging_s, req.seq_no)

    def joins_step(self, req: Request, sched: Scheduler, step_work: float) -> bool:
        """Shortest job first within a step too: every request of a step gets its first token when
        the step ends, so a cheap prefill batched with a long one waits for it. A request joins the
        step only when its work is at most that admitted so far (or it is overdue)."""
        return req.prefill_work <= step_work or sched.now - self._since(req, sched) >= self.max_wait_s


class ProgramPolicy(SchedulingPolicy):
    """Continuum: pinned programs first, then program-level FCFS (by the program's first arrival),
    or, given a `then` policy, that policy's order."""

    name = "program"

    def __init__(self, then: SchedulingPolicy | None = None):
        self.then = then
        self.needs_prefill_estimate = getattr(then, "needs_prefill_estimate", False)

    def key(self, req: Request, sched: Scheduler) -> tuple:
        pid = req.hint.program_id
        pinned = pid is not None and pid in sched.pins.pins
        if self.then is not None:
            return (not pinned, *self.then.key(req, sched))
        return (not pinned, _program_arrival(req, sched), req.seq_no)

    def joins_step(self, req: Request, sched: Scheduler, step_work: float) -> bool:
        return self.then is None or self.then.joins_step(req, sched, step_work)


POLICIES = {
    "fcfs": FCFSPolicy,
    "program": ProgramPolicy,
    "cache-aware": CacheAwarePolicy,
    "program+cache-aware": lambda: ProgramPolicy(then=CacheAwarePolicy(by_program=True)),
}


def make_policy(name: str) -> SchedulingPolicy:
    try:
        return POLICIES[name]()
    except KeyError:
        raise ValueError(f"unknown scheduling policy {name!r}; choose from {sorted(POLICIES)}") from None


@dataclass(slots=True)
class ScheduledBatch:
    requests: list[Request] = field(default_factory=list)
    num_new_tokens: list[int] = field(default_factory=list)
    preempted: list[Request] = field(default_factory=list)

    @property
    def num_tokens(self) -> int:
        return sum(self.num_new_tokens)


class Scheduler:
    def __init__(self, kv: KVCacheManager, policy: SchedulingPolicy, max_num_seqs: int,
                 max_num_batched_tokens: int, *, pins: PinManager | None = None,
                 clock: Callable[[], float] = time.monotonic, reuse: ReuseOptions | None = None,
                 protect_earlier_pins: bool = False, reused_token_work: float = 1.0):
        self.kv = kv
        self.reused_token_work = reused_token_work  # see ReuseOptions.reused_token_work
        self.clock = clock  # pin expiry is judged on it (the simulator's is virtual)
        self.now = clock()
        self.reuse = reuse
        self.protect_earlier_pins = protect_earlier_pins  # see engine/retention.py
        self.pins = pins or PinManager(kv.pool)
        self.program_arrival: dict[str, float] = {}  # first arrival of each live program
        self.policy = policy
        self.max_num_seqs = max_num_seqs
        self.max_num_batched_tokens = max_num_batched_tokens
        self.waiting: list[Request] = []
        self.running: list[Request] = []
        self.num_preemptions = 0

    def add(self, req: Request) -> None:
        req.status = RequestStatus.WAITING
        if getattr(self.policy, "needs_prefill_estimate", False) and req.num_computed_tokens == 0:
            self.estimate_prefill(req)
        if req.hint.program_id is not None:
            self.program_arrival.setdefault(req.hint.program_id, req.metrics.arrival_time)
        self.waiting.append(req)

    def remove(self, req: Request) -> None:
        """Takes a finished or aborted request out of the queues and frees its blocks."""
        if req in self.running:
            self.running.remove(req)
        elif req in self.waiting:
            self.waiting.remove(req)
        self.kv.free(req)

    def estimate_prefill(self, req: Request) -> None:
        """Sets req.hit_rate, the share of its prompt the cache holds now (exact prefix plus reusable
        spans), and req.prefill_work, the prefill that leaves in token-equivalents: uncached tokens,
        plus reused ones at `reused_token_work` each."""
        start = len(self.kv.find_cached_prefix(req)) * self.kv.block_size
        reused = 0
        if self.reuse is not None:
            plan = plan_reuse(self.kv, req, start, self.reuse.min_span)
            reused = len(plan.positions) if plan else 0
        n = req.num_prompt_tokens
        req.hit_rate = (start + reused) / n
        req.prefill_work = n - start - reused + self.reused_token_work * reused

    def _plan_reuse(self, req: Request, start: int, n: int) -> None:
        """Plans KV reuse for a request about to be admitted with n tokens after a `start`-token prefix,
        holding the source blocks so that this admission cannot evict them."""
        if self.reuse is None or req.num_computed_tokens or start + n < req.num_tokens:
            return
        plan = plan_reuse(self.kv, req, start, self.reuse.min_span)
        if plan is not None:
            self.kv.pool.acquire(plan.sources)
            req.reuse = plan

    def has_unfinished(self) -> bool:
        return bool(self.waiting or self.running)

    def _preempt(self, req: Request, batch: ScheduledBatch) -> None:
        self.kv.free(req)
        req.status = RequestStatus.WAITING
        req.metrics.num_preemptions += 1
        self.num_preemptions += 1
        self.waiting.append(req)
        batch.preempted.append(req)

    def schedule(self) -> ScheduledBatch:
        batch = ScheduledBatch()
        now = self.now = self.clock()
        pins = self.pins
        if pins.pins:
            pins.expire(now, {r.hint.program_id for r in self.waiting if r.hint.program_id is not None})
        budget = self.max_num_batched_tokens
        self.running.sort(key=lambda r: self.policy.key(r, self))
        running = self.running
        i = 0
        while i < len(running) and budget > 0:
            req = running[i]
            n = min(req.num_tokens - req.num_computed_tokens, budget)
            while not self.kv.allocate(req, n):
                if pins.release_latest(now):
                    continue
                victim = running.pop()  # lowest priority; not yet scheduled in this step
                self._preempt(victim, batch)
                if victim is req:
                    break
            else:
                batch.requests.append(req)
                batch.num_new_tokens.append(n)
                budget -= n
                i += 1
        if batch.preempted:
            return batch
        self.waiting.sort(key=lambda r: self.policy.key(r, self))
        admitted, step_work = 0, 0.0
        for req in self.waiting:
            if budget <= 0 or len(running) >= self.max_num_seqs:
                break
            if admitted and not self.policy.joins_step(req, self, step_work):
                break
            pid = req.hint.program_id
            after = _program_arrival(req, self) if self.protect_earlier_pins else None
            cached = self.kv.find_cached_prefix(req)
            n = min(req.num_tokens - len(cached) * self.kv.block_size, budget)
            self._plan_reuse(req, len(cached) * self.kv.block_size, n)
            while not self.kv.allocate(req, n, cached):
                # others' pins first; the program's own pin last (its blocks that this request reuses
                # stay in `cached` and are taken back by `allocate` before anything is evicted)
                if not (pins.release_latest(now, keep=pid, after=after)
                        or (pid is not None and pins.force_release(pid, now))):
                    break
            else:
                if req.reuse is not None:
                    req.exact_tokens = req.reuse.positions[0]
                req.pin_hit = pins.take(pid, now) or req.pin_hit
                if req.metrics.num_preemptions == 0:
                    req.num_cached_tokens = len(cached) * self.kv.block_size
                    req.num_reused_tokens = len(req.reuse.positions) if req.reuse is not None else 0
                req.status = RequestStatus.RUNNING
                running.append(req)
                batch.requests.append(req)
                batch.num_new_tokens.append(n)
                budget -= n
                admitted += 1
                step_work += req.prefill_work
                continue
            self.kv.release_reuse_sources(req)
            req.reuse = None
            break
        del self.waiting[:admitted]
        return batch
