"""KV pins between a program's turns and the program-level policy (Continuum), on the tiny model.

Pin expiry is judged on the engine's clock: tests that need time to pass give the engine a
`VirtualClock` and advance it, so no result depends on how fast (or how loaded) the machine is."""

from __future__ import annotations

import random

import pytest

from engine import Engine, ProgramHint, SamplingParams
from engine.sim import VirtualClock

OUT = SamplingParams(temperature=0.0, max_tokens=4, ignore_eos=True)
HOLD = 3600.0  # a TTL longer than any test runs: where a test only needs the pin to hold, it holds


def make_engine(model_dir, **kw):
    kw.setdefault("kv_cache_tokens", 4096)
    return Engine(model=str(model_dir), **kw)


def tokens(n, seed):
    rng = random.Random(seed)
    return [rng.randrange(10, 380) for _ in range(n)]


def finish(engine) -> dict:
    done = {}
    while engine.has_unfinished_requests():
        for out in engine.step():
            done[out.request_id] = out
        engine.pool.check_integrity()
    return done


def finish_one(engine, rid):
    """Runs the engine until idle; returns request `rid`'s output."""
    return finish(engine)[rid]


def turn(engine, pid, prompt, turn_no=0, ttl=None, last=False, **kw):
    return engine.add_request(prompt, OUT, hint=ProgramHint(pid, turn_no, last),
                              retention=(lambda out, snapshot: ttl) if ttl is not None else None, **kw)


def test_pin_holds_blocks_until_the_next_turn_hits_them(tiny_model_dir):
    e = make_engine(tiny_model_dir)
    p0 = tokens(70, 1)
    rid = turn(e, "A", p0, ttl=HOLD)
    out = finish(e)[rid]
    assert set(e.pins.pins) == {"A"}
    pinned = e.pins.num_pinned_blocks
    assert pinned == (70 + 4 - 1) // 16 and e.pool.num_free == e.pool.num_blocks - pinned
    # a flood of other requests cannot evict pinned blocks
    for i in range(3):
        turn(e, f"other{i}", tokens(300, 10 + i))
    finish(e)
    p1 = p0 + out.token_ids + tokens(20, 2)
    rid = turn(e, "A", p1, turn_no=1, ttl=0.0)
    out1 = finish(e)[rid]
    assert out1.num_cached_tokens == pinned * 16
    assert e.pins.stats.hits == 1 and not e.pins.pins
    assert e.stats.num_recomputed_prefill_tokens == (70 + 4) % 16  # only the partial last block
    assert e.pool.num_free == e.pool.num_blocks


def test_without_a_pin_the_context_is_recomputed_under_pressure(tiny_model_dir):
    e = make_engine(tiny_model_dir, kv_cache_tokens=512)
    p0 = tokens(70, 1)
    out = finish_one(e, turn(e, "A", p0))  # no retention: blocks go to the LRU free list
    for i in range(3):
        turn(e, f"other{i}", tokens(300, 10 + i))
    finish(e)
    out1 = finish_one(e, turn(e, "A", p0 + out.token_ids + tokens(20, 2), turn_no=1))
    assert out1.num_cached_tokens == 0
    assert e.stats.num_recomputed_prefill_tokens == len(p0) + len(out.token_ids)


def test_expired_pin_is_released_only_when_no_request_of_its_program_waits(tiny_model_dir):
    clock = VirtualClock()
    e = make_engine(tiny_model_dir, max_num_seqs=1, clock=clock)
    out = finish_one(e, turn(e, "A", tokens(40, 1), ttl=0.05))
    clock.advance(0.1)
    # B takes the only sequence slot; A's next turn waits behind it while A's pin is expired
    turn(e, "B", tokens(20, 3))
    turn(e, "A", tokens(40, 1) + out.token_ids + [5], turn_no=1)
    e.step()
    e.step()
    assert [r.hint.program_id for r in e.scheduler.waiting] == ["A"]
    assert "A" in e.pins.pins and e.pins.stats.expiries == 0
    done = finish(e)
    assert e.pins.stats.hits == 1 and e.pins.stats.expiries == 0
    assert max(o.num_cached_tokens for o in done.values()) == 32
    # with nothing waiting, an expired pin goes at the next step
    turn(e, "C", tokens(40, 4), ttl=0.05)
    finish(e)
    turn(e, "D", tokens(10, 5))
    e.step()
    assert "C" in e.pins.pins and e.pins.stats.expiries == 0  # not expired yet: the clock stood still
    finish(e)
    clock.advance(0.1)
    turn(e, "D", tokens(10, 6))
    finish(e)
    assert not e.pins.pins and e.pins.stats.expiries == 1


def test_last_turn_is_never_pinned_and_ends_the_program(tiny_model_dir):
    e = make_engine(tiny_model_dir)
    out = finish_one(e, turn(e, "A", tokens(40, 1), ttl=HOLD))
    assert "A" in e.pins.pins and "A" in e.scheduler.program_arrival
    finish_one(e, turn(e, "A", tokens(40, 1) + out.token_ids, turn_no=1, ttl=HOLD, last=True))
    assert not e.pins.pins and "A" not in e.scheduler.program_arrival and "A" not in e.programs.context_tokens
    assert e.pool.num_free == e.pool.num_blocks


def test_memory_pressure_releases_the_latest_arriving_programs_pin_first(tiny_model_dir):
    e = make_engine(tiny_model_dir, kv_cache_tokens=20 * 16)
    finish_one(e, turn(e, "early", tokens(100, 1), ttl=HOLD))
    finish_one(e, turn(e, "late", tokens(100, 2), ttl=HOLD))
    assert set(e.pins.pins) == {"early", "late"}
    # 12 free blocks: a 150-token prompt needs 10 (+1 to grow): one pin must go, the late one
    rid = turn(e, "new", tokens(150, 3))
    finish(e)
    assert set(e.pins.pins) == {"early"} and e.pins.stats.forced_releases == 1
    assert rid not in e.requests


def test_protected_pins_make_a_later_program_wait_instead_of_evicting(tiny_model_dir):
    clock = VirtualClock()
    e = make_engine(tiny_model_dir, kv_cache_tokens=20 * 16, scheduling_policy="program", protect_earlier_pins=True,
                    clock=clock)
    finish_one(e, turn(e, "early", tokens(100, 1), ttl=0.4))
    clock.advance(0.01)  # programs are ordered by arrival: "late" comes after "early"
    finish_one(e, turn(e, "late", tokens(100, 2), ttl=HOLD))
    # an earlier program's request may still release a later program's pin
    rid = turn(e, "early", tokens(150, 4), turn_no=1)
    assert finish(e)[rid].finish_reason == "length"
    assert "late" not in e.pins.pins and e.pins.stats.forced_releases == 1
    finish_one(e, turn(e, "early", tokens(100, 1), turn_no=2, ttl=0.4))
    clock.advance(0.01)
    rid = turn(e, "new", tokens(250, 3))  # arrived after "early": must not evict its pin
    expiry = e.pins.pins["early"].expires_at
    for _ in range(3):  # however many steps run, it waits while the pin holds
        assert e.step() == [] and "early" in e.pins.pins
        assert e.requests[rid].metrics.first_scheduled_time is None
    clock.advance_to(expiry)
    out = finish(e)[rid]
    assert out.finish_reason == "length"
    assert out.metrics.first_scheduled_time == expiry  # it waited for the pin to expire, and no longer
    assert e.pins.stats.expiries == 1 and e.pins.stats.forced_releases == 1


def test_a_programs_own_pin_yields_when_nothing_else_can(tiny_model_dir):
    """Found by the random-workload test: the only pin belongs to the waiting request's own program,
    whose new prompt does not reuse it, and the pool cannot hold both."""
    e = make_engine(tiny_model_dir, kv_cache_tokens=6 * 16)
    finish_one(e, turn(e, "A", tokens(48, 1), ttl=HOLD))
    assert e.pins.num_pinned_blocks == 3
    out = finish_one(e, turn(e, "A", tokens(49, 2), turn_no=1))  # needs 4 of 6 blocks
    assert len(out.token_ids) == 4 and e.pins.stats.forced_releases == 1 and not e.pins.pins


def test_program_policy_orders_by_program_arrival_and_pinned_first(tiny_model_dir):
    def admitted_order(policy):
        e = make_engine(tiny_model_dir, max_num_seqs=1, scheduling_policy=policy)
        finish_one(e, turn(e, "old", tokens(30, 1)))  # program "old" arrives first (turn 0 done, no pin)
        finish_one(e, turn(e, "pinned", tokens(30, 2), ttl=HOLD))
        blocker = turn(e, "blocker", tokens(10, 3))
        e.step()  # the blocker holds the only slot
        ids = {turn(e, "young", tokens(30, 4)): "young",  # new program, its request arrives first
               turn(e, "old", tokens(30, 1) + [7], turn_no=1): "old",
               turn(e, "pinned", tokens(30, 2) + [7], turn_no=1): "pinned"}
        order = []
        while e.has_unfinished_requests():
            e.step()
            for r in e.scheduler.running:
                if r.request_id in ids and ids[r.request_id] not in order:
                    order.append(ids[r.request_id])
        del blocker
        return order

    assert admitted_order("fcfs") == ["young", "old", "pinned"]
    assert admitted_order("program") == ["pinned", "old", "young"]


def test_running_requests_take_pinned_blocks_before_anyone_is_preempted(tiny_model_dir):
    e = make_engine(tiny_model_dir, kv_cache_tokens=10 * 16)
    finish_one(e, turn(e, "A", tokens(60, 1), ttl=HOLD))
    assert e.pins.num_pinned_blocks == 3
    long = SamplingParams(temperature=0.0, max_tokens=80, ignore_eos=True)
    e.add_request(tokens(40, 2), long, hint=ProgramHint("B"))  # grows to 8 blocks; 7 are free
    finish(e)
    assert e.scheduler.num_preemptions == 0 and e.pins.stats.forced_releases == 1 and not e.pins.pins


def test_reload_model_is_profiled_and_grows_with_context(tiny_model_dir, monkeypatch):
    """The profile times prefills on the engine's clock. Here each forward advances a virtual clock
    by 1 ms + 10 us a token, so the fit is known exactly whatever the machine's speed."""
    from engine.reload import ReloadModel
    from engine.runner import ModelRunner

    clock = VirtualClock()
    real_execute = ModelRunner.execute

    def timed_execute(self, reqs, num_new):
        clock.advance(1e-3 + 1e-5 * sum(num_new))
        return real_execute(self, reqs, num_new)

    monkeypatch.setattr(ModelRunner, "execute", timed_execute)
    e = make_engine(tiny_model_dir, profile_reload=True, clock=clock)
    monkeypatch.undo()
    m = e.reload_model
    assert m is not None and m(1000) == pytest.approx(1e-3 + 1e-5 * 1000, rel=1e-6)
    assert m(2000) > m(100) > 0 and e.reload_time_s(500) == m(500)
    assert e.stats.num_steps == 0 and e.pool.num_free == e.pool.num_blocks
    fit = ReloadModel.fit([100, 200, 400, 800], [0.1 + 1e-3 * n + 1e-6 * n * n for n in (100, 200, 400, 800)])
    assert fit(1000) == pytest.approx(0.1 + 1.0 + 1.0, rel=1e-6)
    lazy = make_engine(tiny_model_dir)
    assert lazy.reload_time_s(100) == 0.0  # no data yet
    lazy.add_request(tokens(50, 1), OUT)
    finish(lazy)
    assert lazy.reload_time_s(100) > 0
