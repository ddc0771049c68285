"""The engine's narrow interface: an immutable snapshot each step, the turn-end retention protocol,
a config that overrides never change, and `check_integrity()` over requests and pins (tiny model)."""

from __future__ import annotations

import dataclasses

import pytest

from engine import Engine, EngineConfig, ProgramHint, SamplingParams


def test_engine_config_is_never_changed_by_overrides(tiny_model_dir):
    cfg = EngineConfig(model=str(tiny_model_dir), kv_cache_tokens=1024)
    engine = Engine(cfg, max_num_seqs=3)
    assert engine.config.max_num_seqs == 3 and cfg.max_num_seqs == 128 and engine.config is not cfg


def test_retention_callbacks_get_the_output_and_a_snapshot(tiny_model_dir):
    engine = Engine(model=str(tiny_model_dir), kv_cache_tokens=2048, scheduling_policy="program")
    seen = []

    def retention(out, snapshot):
        seen.append((out.finished, snapshot.num_running, snapshot.num_blocks))
        return 60.0

    engine.add_request(list(range(10, 60)), SamplingParams(temperature=0.0, max_tokens=2, ignore_eos=True),
                       hint=ProgramHint("p", 0), retention=retention)
    while engine.has_unfinished_requests():
        engine.step()
    assert seen == [(True, 1, engine.pool.num_blocks)]  # asked as the turn ends, still counted as running
    assert engine.snapshot.pinned_programs == {"p"} and engine.snapshot.num_pinned_blocks == 3  # 50 tokens: 3 full blocks



def test_snapshot_is_immutable_and_replaced_each_step(tiny_model_dir):
    engine = Engine(model=str(tiny_model_dir), kv_cache_tokens=1024)
    before = engine.snapshot
    assert before.num_steps == 0 and before.num_free_blocks == before.num_blocks == 64
    engine.add_request(list(range(10, 30)), SamplingParams(temperature=0.0, max_tokens=3, ignore_eos=True))
    engine.step()
    during = engine.snapshot
    assert during is not before and during.num_steps == 1 and during.num_running == 1
    assert during.num_used_blocks == 2 and during.num_prompt_tokens == 20 and during.num_generated_tokens == 1
    with pytest.raises(dataclasses.FrozenInstanceError):
        during.num_running = 0
    while engine.has_unfinished_requests():
        engine.step()
    assert engine.snapshot.num_running == 0 and engine.snapshot.num_generated_tokens == 3
    assert before.num_steps == 0 and during.num_running == 1  # old snapshots never change


def test_check_integrity_counts_what_requests_and_pins_hold(tiny_model_dir):
    engine = Engine(model=str(tiny_model_dir), kv_cache_tokens=1024, scheduling_policy="program")
    engine.add_request(list(range(10, 60)), SamplingParams(temperature=0.0, max_tokens=2, ignore_eos=True),
                       hint=ProgramHint("p", 0), retention=lambda out, snapshot: 60.0)
    engine.add_request(list(range(100, 140)), SamplingParams(temperature=0.0, max_tokens=8, ignore_eos=True))
    for _ in range(3):
        engine.step()
        engine.check_integrity()
    assert engine.pins.pins and engine.requests  # one program pinned, one request still running
    pinned = engine.pins.pins["p"].blocks[0]
    (running,) = engine.requests.values()
    running.blocks.append(pinned)  # a request holding a block it took no reference on
    with pytest.raises(AssertionError, match="held 2 times but counts 1 references"):
        engine.check_integrity()
    running.blocks.pop()
    engine.check_integrity()
