"""Retention rules, each pinned by a test that fails when the rule is broken: the queueing-delay
estimate T that the engine publishes (engine/programs.py), and the pressure-aware scaling of the
cost model's benefit (agentrt/retention.py).

Time is the engine's injected `VirtualClock`: a queueing delay is exactly what the test advanced."""

from __future__ import annotations

import dataclasses

import pytest

from agentrt.retention import Retention
from agentrt.types import ToolCall
from engine import Engine, ProgramHint, SamplingParams
from engine.reload import ReloadModel
from engine.sim import VirtualClock
from toolpredict import CostModelTTL, PerToolMeanPredictor
from toolpredict.ttl import TTLAdvisor

ONE = SamplingParams(temperature=0.0, max_tokens=1, ignore_eos=True)


@pytest.fixture()
def clocked(tiny_model_dir):
    clock = VirtualClock(100.0)
    return Engine(model=str(tiny_model_dir), kv_cache_tokens=2048, clock=clock), clock


def run_turn(engine, clock, prompt, hint=None, wait_s=0.0, retention=None):
    """Adds a request now, lets it queue for `wait_s` of virtual time, then runs it to the end."""
    engine.add_request(prompt, ONE, hint=hint, retention=retention)
    clock.advance(wait_s)
    while engine.has_unfinished_requests():
        engine.step()
    return engine.snapshot.queue_delay_s


# ---- T: the queueing delay of turns whose KV was not held ----------------------------------------

def test_queue_delay_is_a_moving_average_of_program_turns_that_found_no_pin(clocked):
    e, clock = clocked
    assert e.snapshot.queue_delay_s is None  # nothing measured yet
    assert run_turn(e, clock, list(range(10, 50)), ProgramHint("A"), wait_s=2.0,
                    retention=lambda out, snap: 60.0) == pytest.approx(2.0)  # the first sample is T
    assert "A" in e.snapshot.pinned_programs
    # a request of no program is not a turn: T does not move, however long it queued
    assert run_turn(e, clock, list(range(60, 70)), None, wait_s=5.0) == pytest.approx(2.0)
    # a turn without a pin: T = 0.9 T + 0.1 delay
    assert run_turn(e, clock, list(range(80, 100)), ProgramHint("B"), wait_s=1.0) == pytest.approx(1.9)
    # a turn that found its program's KV pinned is not what T measures: it does not move
    hits = e.snapshot.num_pin_hits
    assert run_turn(e, clock, list(range(10, 50)) + [7, 8], ProgramHint("A", 1), wait_s=3.0) == pytest.approx(1.9)
    assert e.snapshot.num_pin_hits == hits + 1
    assert run_turn(e, clock, list(range(120, 140)), ProgramHint("C"), wait_s=0.0) == pytest.approx(0.9 * 1.9)


def test_retention_reads_t_from_the_snapshot_and_falls_back_to_its_default(clocked):
    e, clock = clocked
    retention = Retention("cost-model", default_queue_delay_s=0.7)
    assert retention.context(100, e.snapshot).queue_delay_s == 0.7  # no T measured yet
    run_turn(e, clock, list(range(10, 50)), ProgramHint("A"), wait_s=4.0)
    assert retention.context(100, e.snapshot).queue_delay_s == pytest.approx(4.0)


# ---- pressure-aware cost -------------------------------------------------------------------------

def snapshot_at(engine, used_share: float, queue_delay_s: float = 0.2, reload_s: float = 0.2):
    """The engine's real snapshot with the pool `used_share` full, T and a flat reload time set."""
    n = engine.snapshot.num_blocks
    return dataclasses.replace(engine.snapshot, num_free_blocks=round(n * (1 - used_share)),
                               queue_delay_s=queue_delay_s, reload=ReloadModel(reload_s, 0.0, 0.0))


@pytest.mark.parametrize("used, scale", [(1.0, 1.0), (0.5, 2.0), (0.25, 4.0), (0.05, 10.0), (0.0, 10.0)])
def test_pressure_aware_benefit_is_divided_by_how_full_the_pool_is(clocked, used, scale):
    """B/λ with λ = max(KV usage, min_pressure): T and reload(r) are scaled alike, η is not."""
    e, _ = clocked
    snap = snapshot_at(e, used, queue_delay_s=0.3, reload_s=0.1)
    aware = Retention("cost-model", pressure_aware=True, min_pressure=0.1).context(500, snap)
    flat = Retention("cost-model").context(500, snap)
    assert (flat.queue_delay_s, flat.reload_s) == pytest.approx((0.3, 0.1))  # off: never scaled
    assert aware.queue_delay_s == pytest.approx(0.3 * scale) and aware.reload_s == pytest.approx(0.1 * scale)
    assert aware.eta == flat.eta


def test_pressure_aware_pins_longer_when_the_pool_has_room(clocked):
    """A 0.5 s tool, B = 0.2 + 0.2 = 0.4 s: not worth a pin on a full pool (0.4 - 0.5 < 0); on a
    quarter-full pool a pinned second costs a quarter, B/λ = 1.6 s, and the pin covers the tool."""
    e, _ = clocked
    call = ToolCall("bash", {"command": "ls"}, "c1")

    def ttl(used, pressure_aware=True):
        advisor = TTLAdvisor(CostModelTTL(), PerToolMeanPredictor(prior_s=0.5))  # predicts 0.5 s exactly
        retention = Retention(advisor, pressure_aware=pressure_aware)
        return retention.ttl_for("P", call, 500, snapshot_at(e, used)).ttl_s

    assert ttl(1.0) == 0.0 and ttl(0.25, pressure_aware=False) == 0.0
    assert ttl(0.25) == pytest.approx(0.5)
