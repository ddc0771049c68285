"""Scheduling and pin rules stated in engine/scheduler.py and engine/retention.py, each pinned by a
test that fails when the rule is broken.

Most run the real `Scheduler`, `BlockPool`, `KVCacheManager` and `PinManager` with no model: `step`
below does the engine's bookkeeping for a batch (tokens computed, full blocks committed, one token
sampled per request that reached its end), so a test can set up exact block counts. Time is never
read from the machine: arrivals are given, the scheduler's clock is a `VirtualClock`.
"""

from __future__ import annotations

import pytest

from engine.block_pool import BlockPool
from engine.kv_manager import KVCacheManager
from engine.params import ProgramHint, SamplingParams
from engine.request import Request, RequestStatus
from engine.retention import PinManager
from engine.scheduler import FCFSPolicy, ProgramPolicy, ScheduledBatch, Scheduler
from engine.sim import VirtualClock

BS = 4  # tokens per block: small, so that a handful of tokens fills the pool
SAMPLED = 1  # the token every "sampled" step appends


def make_scheduler(num_blocks: int, policy=None, budget: int = 64, reuse=None, content_scope=None) -> Scheduler:
    kv = KVCacheManager(BlockPool(num_blocks), BS, content_scope)
    return Scheduler(kv, policy or FCFSPolicy(), max_num_seqs=8, max_num_batched_tokens=budget,
                     clock=VirtualClock(), reuse=reuse)


def request(rid: str, tokens: list[int], arrival: float, program: str | None = None, max_tokens: int = 100) -> Request:
    return Request(rid, None, tokens, SamplingParams(temperature=0.0, max_tokens=max_tokens, ignore_eos=True),
                   ProgramHint(program), arrival_time=arrival)


def distinct(n: int, start: int) -> list[int]:
    return list(range(start, start + n))


def step(sched: Scheduler) -> ScheduledBatch:
    """One engine step without a model: what `Engine.step` does to the scheduler's requests."""
    batch = sched.schedule()
    for req, n in zip(batch.requests, batch.num_new_tokens):
        if req.reuse is not None and req.reuse.sources:  # the copy is done with the forward
            sched.kv.release_reuse_sources(req)
        req.num_computed_tokens += n
        sched.kv.commit(req)
    for req in list(batch.requests):
        if req.num_computed_tokens == req.num_tokens:  # its last known token ran: a token is sampled
            req.token_ids.append(SAMPLED)
            if req.num_output_tokens >= req.params.max_tokens:
                req.status = RequestStatus.FINISHED
                sched.remove(req)
    sched.kv.pool.check_integrity()
    return batch


def run_to_end(sched: Scheduler) -> None:
    while sched.has_unfinished():
        step(sched)


# ---- admission -----------------------------------------------------------------------------------

def test_no_waiting_request_is_admitted_in_a_step_that_preempted():
    """A step that preempted admits nothing, even a waiting request that the freed blocks would hold:
    the preemption says memory is short, and admitting would only preempt again."""
    sched = make_scheduler(5, ProgramPolicy())
    sched.add(request("p0", distinct(4, 100), arrival=0.0, program="P", max_tokens=1))
    run_to_end(sched)  # program P's first turn: P arrived at 0, before A and B
    sched.add(request("a", distinct(8, 200), arrival=1.0, program="A"))
    sched.add(request("b", distinct(8, 300), arrival=2.0, program="B"))
    first = step(sched)
    assert [r.request_id for r in first.requests] == ["a", "b"] and sched.kv.pool.num_free == 1
    # P's next turn sorts ahead of b (program-level FCFS) and needs one block
    w = request("p1", distinct(4, 400), arrival=3.0, program="P")
    sched.add(w)
    second = step(sched)  # a and b each need a 3rd block; one is free: b, last in order, is preempted
    assert [r.request_id for r in second.preempted] == ["b"]
    assert [r.request_id for r in second.requests] == ["a"]
    assert sched.kv.pool.num_free == 2  # b's two blocks came back: w would fit ...
    assert w.status is RequestStatus.WAITING and w in sched.waiting and w not in sched.running  # ... but waits
    b = second.preempted[0]
    assert b.num_computed_tokens == 0 and b.num_tokens == 9 and b.metrics.num_preemptions == 1  # nothing lost
    third = step(sched)  # a step without preemption admits again, in policy order
    assert "p1" in [r.request_id for r in third.requests] and not third.preempted


def test_a_waiting_request_that_does_not_fit_blocks_those_behind_it():
    """No skipping ahead: a smaller request that would fit waits behind the one that does not, so
    the one at the head is not starved by a stream of small ones."""
    sched = make_scheduler(4)
    sched.add(request("r", distinct(7, 100), arrival=0.0, max_tokens=2))
    step(sched)
    assert sched.kv.pool.num_free == 2  # r holds 2 blocks (7 prompt tokens + 1 sampled)
    big, small = request("big", distinct(12, 200), arrival=1.0), request("small", distinct(4, 300), arrival=2.0)
    sched.add(big)
    sched.add(small)
    blocked = step(sched)  # 2 free blocks: big needs 3 and stops admission; small needs 1
    assert [r.request_id for r in blocked.requests] == ["r"]
    assert sched.waiting == [big, small] and small.status is RequestStatus.WAITING
    # r finished in that step: both fit now, in arrival order
    after = step(sched)
    assert [r.request_id for r in after.requests] == ["big", "small"]


def test_reuse_is_planned_only_for_a_prefill_that_runs_whole_in_one_step():
    """The reuse prefill is one selective pass over the whole prompt: a request whose prompt holds
    KV cached at other positions gets its reuse plan only when all of its prefill fits the step's
    token budget. Otherwise it is chunked like any prompt and reuses nothing (a plan over a partial
    prefill would copy KV that the next chunk's forward never sees)."""
    from engine.reuse.plan import ReuseOptions

    shared = distinct(16, 500)  # four blocks that a new prompt repeats at another offset

    def admit_with_budget(budget: int) -> tuple[Request, int, list[int]]:
        sched = make_scheduler(32, budget=budget, reuse=ReuseOptions("naive", min_span=8), content_scope="tenant")
        sched.add(request("source", shared + [7], arrival=0.0, max_tokens=1))
        run_to_end(sched)  # its four full blocks are cached and content-indexed
        sources = [b for b in sched.kv.pool.blocks if b.content_key is not None]
        assert len(sources) == 4 and all(b.ref_count == 0 for b in sources)
        r = request("r", [1, 2, 3] + shared + [8, 9], arrival=1.0)  # 21 tokens, shared at offset 3
        sched.add(r)
        batch = sched.schedule()
        assert batch.requests == [r]
        return r, batch.num_new_tokens[0], [b.ref_count for b in sources]

    whole, n, refs = admit_with_budget(budget=32)
    assert n == 21 and whole.reuse is not None and whole.reuse.positions == list(range(3, 19))
    assert whole.num_reused_tokens == 16 and whole.exact_tokens == 3
    assert refs == [1, 1, 1, 1]  # the plan holds its sources until the copy
    chunked, n, refs = admit_with_budget(budget=16)
    assert n == 16 and chunked.num_reused_tokens == 0 and chunked.reuse is None  # no plan for a partial prefill
    assert chunked.exact_tokens == 1 << 62 and refs == [0, 0, 0, 0]  # nothing was taken from the sources


# ---- preemption ----------------------------------------------------------------------------------

@pytest.mark.parametrize("policy, victim", [("program", "young"), ("fcfs", "old")])
def test_the_program_policy_preempts_the_latest_arriving_program_not_the_latest_request(policy, victim):
    """When running requests run out of blocks, the lowest-priority one is preempted. Under the
    program policy priority is the program's first arrival: the request of the program that arrived
    last goes, even though it arrived before the older program's new turn (FCFS preempts that one)."""
    sched = make_scheduler(4, ProgramPolicy() if policy == "program" else FCFSPolicy())
    sched.add(request("old-0", distinct(4, 100), arrival=0.0, program="old", max_tokens=1))
    run_to_end(sched)  # program "old" arrives at 0 (its first turn is done)
    sched.add(request("young", distinct(8, 200), arrival=1.0, program="young"))
    sched.add(request("old", distinct(8, 300), arrival=2.0, program="old"))  # old's second turn
    assert len(step(sched).requests) == 2 and sched.kv.pool.num_free == 0
    batch = step(sched)  # both need a third block, none is free
    assert [r.request_id for r in batch.preempted] == [victim]
    assert [r.request_id for r in sched.running] == [({"young", "old"} - {victim}).pop()]


# ---- pins ----------------------------------------------------------------------------------------

def test_a_newer_pin_replaces_the_programs_older_one():
    """A program holds at most one pin: pinning it again releases the older pin's references first
    (blocks only the old pin held go back to the free list) and restarts its TTL."""
    pool = BlockPool(8)
    pins = PinManager(pool)
    old = pool.allocate(3)
    pool.release(old[::-1])  # cached, unreferenced: what a finished turn leaves
    pins.pin("A", old, ttl_s=10.0, now=0.0, program_arrival=0.0)
    assert [b.ref_count for b in old] == [1, 1, 1] and pool.num_free == 5
    extra = pool.allocate(1)
    pool.release(extra)
    new = old[:2] + extra  # the next turn's context: the first two blocks again, one more
    pins.pin("A", new, ttl_s=10.0, now=4.0, program_arrival=0.0)
    assert list(pins.pins) == ["A"] and pins.pins["A"].blocks == new and pins.pins["A"].expires_at == 14.0
    assert [b.ref_count for b in new] == [1, 1, 1] and old[2].ref_count == 0  # no reference of the old pin left
    assert pool.num_free == 5 and pins.num_pinned_blocks == 3
    assert pins.stats.pins == 2 and pins.stats.pinned_block_seconds == 3 * 4.0  # the old pin's 3 blocks for 4 s
    pins.end_program("A", now=5.0)
    assert pool.num_free == 8 and not pins.pins
    pool.check_integrity()


def test_two_turns_of_one_program_ending_leave_one_pin_and_no_leaked_block(tiny_model_dir):
    """Through the engine: two requests of one program run at once (parallel calls) and each ends a
    turn with a TTL; the second pin replaces the first, and at the last turn every block is free."""
    from engine import Engine

    clock = VirtualClock()
    e = Engine(model=str(tiny_model_dir), kv_cache_tokens=2048, clock=clock)
    keep = lambda out, snapshot: 60.0  # noqa: E731
    short = SamplingParams(temperature=0.0, max_tokens=2, ignore_eos=True)
    long = SamplingParams(temperature=0.0, max_tokens=6, ignore_eos=True)
    e.add_request(distinct(40, 10), short, hint=ProgramHint("A"), retention=keep)
    e.add_request(distinct(70, 100), long, hint=ProgramHint("A"), retention=keep)
    pinned = []
    while e.has_unfinished_requests():
        e.step()
        if "A" in e.pins.pins and (not pinned or pinned[-1] != e.pins.pins["A"].blocks):
            pinned.append(e.pins.pins["A"].blocks)
    assert len(pinned) == 2 and e.pins.stats.pins == 2 and list(e.pins.pins) == ["A"]
    assert len(pinned[0]) == (40 + 2 - 1) // 16 and len(pinned[1]) == (70 + 6 - 1) // 16  # the later turn's
    assert e.pool.num_free == e.pool.num_blocks - len(pinned[1])
    e.add_request(distinct(10, 300), short, hint=ProgramHint("A", 1, is_last_turn=True))
    while e.has_unfinished_requests():
        e.step()
    assert not e.pins.pins and e.pool.num_free == e.pool.num_blocks
    e.pool.check_integrity()
