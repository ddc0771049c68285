"""Scheduling rules of the continuous-batching scheduler, on a tiny random model (fast, real engine)."""

from __future__ import annotations

import random

import hypothesis.strategies as st
from hypothesis import HealthCheck, given, settings

from engine import Engine, ProgramHint, SamplingParams

GREEDY8 = SamplingParams(temperature=0.0, max_tokens=8, ignore_eos=True)


def make_engine(model_dir, **kw):
    kw.setdefault("kv_cache_tokens", 4096)
    return Engine(model=str(model_dir), **kw)


def prompt(n: int, seed: int) -> list[int]:
    rng = random.Random(seed)
    return [rng.randrange(10, 380) for _ in range(n)]


def run_all(engine) -> dict[str, list[int]]:
    done = {}
    while engine.has_unfinished_requests():
        for out in engine.step():
            assert out.finished and out.request_id not in done
            done[out.request_id] = out.token_ids
        engine.pool.check_integrity()
    return done


def test_token_budget_and_chunked_prefill(tiny_model_dir):
    engine = make_engine(tiny_model_dir, max_num_batched_tokens=48)
    rid = engine.add_request(prompt(100, 0), GREEDY8)
    engine.step()
    assert engine.last_step.num_tokens == 48 and engine.requests[rid].num_computed_tokens == 48
    engine.add_request(prompt(30, 1), GREEDY8)
    engine.step()  # 52 prompt tokens left for the first: it takes the whole budget, the second waits
    assert engine.last_step.num_tokens == 48 and engine.last_step.num_requests == 1
    engine.step()  # the first finishes its prompt (4 tokens, samples); the second fits whole (30)
    assert engine.last_step.num_tokens == 34 and engine.last_step.num_requests == 2
    while engine.has_unfinished_requests():
        engine.step()
        assert engine.last_step.num_tokens <= 48


def test_max_num_seqs_limits_the_running_batch(tiny_model_dir):
    engine = make_engine(tiny_model_dir, max_num_seqs=3)
    for i in range(7):
        engine.add_request(prompt(10, i), GREEDY8)
    while engine.has_unfinished_requests():
        engine.step()
        assert len(engine.scheduler.running) <= 3 and engine.last_step.num_requests <= 3


def test_fcfs_admits_in_arrival_order(tiny_model_dir):
    engine = make_engine(tiny_model_dir, max_num_seqs=2)
    ids = [engine.add_request(prompt(12, i), GREEDY8) for i in range(6)]
    order = []
    while engine.has_unfinished_requests():
        engine.step()
        for r in engine.scheduler.running:
            if r.request_id not in order:
                order.append(r.request_id)
    assert order == ids


def test_preemption_takes_the_latest_arrival_and_loses_nothing(tiny_model_dir):
    # 6 blocks of 16: three requests of 20 prompt + 24 output tokens cannot all keep their KV
    engine = make_engine(tiny_model_dir, kv_cache_tokens=6 * 16, max_num_seqs=8)
    params = SamplingParams(temperature=0.0, max_tokens=24, ignore_eos=True)
    ids = [engine.add_request(prompt(20, i), params) for i in range(3)]
    victims = []
    done = {}
    while engine.has_unfinished_requests():
        before = {r.request_id: r.metrics.num_preemptions for r in engine.requests.values()}
        for out in engine.step():
            done[out.request_id] = out
        victims += [rid for rid, r in engine.requests.items() if r.metrics.num_preemptions > before.get(rid, 0)]
    assert victims and victims[0] == ids[-1]
    assert sorted(done) == sorted(ids) and all(len(o.token_ids) == 24 for o in done.values())
    # same tokens as a roomy engine: recomputation after preemption is exact
    roomy = make_engine(tiny_model_dir)
    ref = {i: roomy.add_request(prompt(20, n), params) for n, i in enumerate(ids)}
    ref_done = run_all(roomy)
    assert all(done[i].token_ids == ref_done[ref[i]] for i in ids)
    assert engine.pool.num_free == engine.pool.num_blocks


def test_prefix_cache_never_serves_the_last_prompt_token(tiny_model_dir):
    engine = make_engine(tiny_model_dir)
    p = prompt(64, 3)  # exactly 4 blocks
    engine.add_request(p, GREEDY8)
    run_all(engine)
    rid = engine.add_request(p, GREEDY8)
    engine.step()
    assert engine.last_step.num_tokens == 16  # 3 blocks reused, the last block recomputed
    run_all(engine)
    assert engine.stats.num_prefix_hit_tokens == 48
    del rid


def test_tenant_salt_isolates_prefix_cache(tiny_model_dir):
    engine = make_engine(tiny_model_dir)
    p = prompt(50, 4)
    engine.add_request(p, GREEDY8, hint=ProgramHint(tenant="a"))
    run_all(engine)
    engine.add_request(p, GREEDY8, hint=ProgramHint(tenant="b"))
    run_all(engine)
    assert engine.stats.num_prefix_hit_tokens == 0
    engine.add_request(p, GREEDY8, hint=ProgramHint(tenant="a"))
    run_all(engine)
    assert engine.stats.num_prefix_hit_tokens == 48


def test_abort_frees_blocks_of_running_and_waiting_requests(tiny_model_dir):
    engine = make_engine(tiny_model_dir, max_num_seqs=1)
    a = engine.add_request(prompt(40, 5), GREEDY8)
    b = engine.add_request(prompt(40, 6), GREEDY8)
    engine.step()
    assert engine.abort_request(a).finish_reason == "abort"
    assert engine.abort_request(b).finish_reason == "abort"
    assert engine.abort_request("nope") is None
    assert not engine.has_unfinished_requests()
    engine.pool.check_integrity()
    assert engine.pool.num_free == engine.pool.num_blocks


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    lengths=st.lists(st.integers(1, 70), min_size=1, max_size=8),
    out_tokens=st.integers(1, 12),
    kv_blocks=st.integers(6, 24),
    budget=st.sampled_from([16, 32, 128]),
    shared=st.booleans(),
    abort_at=st.one_of(st.none(), st.integers(0, 6)),
    pin_ttl=st.sampled_from([None, 30.0]),
    policy=st.sampled_from(["fcfs", "program"]),
)
def test_random_workloads_finish_every_request_exactly_once(tiny_model_dir, lengths, out_tokens, kv_blocks,
                                                             budget, shared, abort_at, pin_ttl, policy):
    """Random prompts, budgets, pool sizes, aborts, and programs pinning their KV between turns."""
    engine = make_engine(tiny_model_dir, kv_cache_tokens=kv_blocks * 16, max_num_batched_tokens=budget,
                         scheduling_policy=policy)
    params = SamplingParams(temperature=0.0, max_tokens=out_tokens, ignore_eos=True)
    base = prompt(70, 99)
    ids = []
    for i, n in enumerate(lengths):
        p = base[:n] if shared else prompt(n, i)
        if n + out_tokens <= engine.max_model_len:
            hint = ProgramHint(f"prog{i % 3}", turn=i // 3)
            ids.append(engine.add_request(p, params, hint=hint,
                                          retention=(lambda out, snapshot: pin_ttl) if pin_ttl else None))
    done, aborted, step = {}, set(), 0
    while engine.has_unfinished_requests():
        if step == abort_at and ids:
            out = engine.abort_request(ids[0])
            if out is not None:
                aborted.add(ids[0])
        for out in engine.step():
            assert out.request_id not in done
            done[out.request_id] = out
        engine.pool.check_integrity()
        step += 1
    assert set(done) | aborted == set(ids) and not (set(done) & aborted)
    assert all(len(o.token_ids) == out_tokens and o.finish_reason == "length" for o in done.values())
    assert engine.pool.num_free + engine.pins.num_pinned_blocks == engine.pool.num_blocks
    for pid in list(engine.pins.pins):
        engine.pins.end_program(pid, 0.0)
    engine.pool.check_integrity()
    assert engine.pool.num_free == engine.pool.num_blocks
