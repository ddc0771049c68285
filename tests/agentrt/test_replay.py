"""Trace replay and KV retention through the runtime: loading recorded sessions, seeded tool pauses, and
pins from predicted tool durations on the engine's clock. (That agentrt recomputes less than request
FCFS under memory pressure is asserted in virtual time by the simulator's tests: in real time the
counts moved with the machine's load.)"""

from __future__ import annotations

import random
import time
from pathlib import Path

import pytest

from agentrt import EmbeddedBackend, Runtime, SamplingParams, ToolCall
from agentrt.replay import _BUCKETS, _measured_by_bucket, bucket_pause_s, load_sessions, measured_pause_s
from agentrt.retention import Retention
from agentrt.store import ToolCallRow, read_rows
from engine import AsyncEngine, Engine
from engine.loader import load_tokenizer
from engine.sim import VirtualClock

TRACES = Path(__file__).parents[1] / "data" / "agent-traces-sample"


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir):
    return load_tokenizer(tiny_model_dir)


def test_sessions_load_sorted_scaled_and_seeded(tokenizer):
    sessions = load_sessions(TRACES, tokenizer, scale=0.05, max_output_tokens=16, max_context_tokens=100_000)
    assert [len(s.turns) for s in sorted(sessions, key=lambda s: len(s.turns))] == [6, 8, 9]
    for s in sessions:
        assert s.source == "agent-traces-sample" and s.turns[-1].pause_s == 0.0
        assert all(t.pause_s >= 0 and 1 <= t.output_tokens <= 16 for t in s.turns)
        assert all(t.command for t in s.turns[:-1])  # mini-swe-agent acts with a bash block every turn
    again = load_sessions(TRACES, tokenizer, scale=0.05, max_output_tokens=16, max_context_tokens=100_000)
    assert [t.pause_s for s in again for t in s.turns] == [t.pause_s for s in sessions for t in s.turns]
    capped = load_sessions(TRACES, tokenizer, scale=0.05, max_turns=3, max_context_tokens=100_000)
    assert all(len(s.turns) == 3 for s in capped)
    small = load_sessions(TRACES, tokenizer, scale=0.05, max_context_tokens=400)
    assert all(len(s.turns) < 6 for s in small)


def test_bucket_pauses_follow_the_swe_table():
    rng = random.Random(0)
    cat = sorted(bucket_pause_s("cat README.md", rng) for _ in range(400))
    pytest_runs = sorted(bucket_pause_s("python -m pytest tests/test_x.py", rng) for _ in range(400))
    assert 0.1 < cat[200] < 0.4  # bash::light::cat median 0.18 s
    assert pytest_runs[200] > 3 * cat[200]


def test_measured_pauses_are_real_timings_at_the_swe_level(tokenizer):
    """`pauses="measured"`: each draw is one of the project's own timings of the command's bucket,
    scaled by the SWE-agent bucket median over the timings' own median; seeded; unknown modes refused."""
    measured = _measured_by_bucket()
    samples = measured["bash::python::pytest_path"]
    scale = _BUCKETS["median_s"]["bash::python::pytest_path"] / samples[len(samples) // 2]
    draws = [measured_pause_s("pytest tests/test_x.py -q", random.Random(i), measured) for i in range(200)]
    assert all(any(abs(d - s * scale) < 1e-9 for s in samples) for d in draws)
    assert len(set(draws)) > 20  # drawn across the bucket, not a constant
    a = load_sessions(TRACES, tokenizer, scale=0.05, max_context_tokens=100_000, pauses="measured")
    b = load_sessions(TRACES, tokenizer, scale=0.05, max_context_tokens=100_000, pauses="measured")
    assert [t.pause_s for s in a for t in s.turns] == [t.pause_s for s in b for t in s.turns]
    with pytest.raises(ValueError, match="measured"):
        load_sessions(TRACES, tokenizer, pauses="lognormal")


def test_retention_pins_with_predicted_ttls_and_records_them(tmp_path, tiny_model_dir):
    """Every turn but the last pins its KV for the fixed policy's 2 s, and every next turn hits the
    pin. The engine's clock stands still here, so a pin cannot expire however slowly a loaded machine
    runs the turns and tools in between (expiry itself is tested on a virtual clock, test_retention.py)."""
    db = str(tmp_path / "ret.db")
    frozen = VirtualClock(time.monotonic())
    engine = Engine(model=str(tiny_model_dir), kv_cache_tokens=4096, scheduling_policy="program", clock=frozen)
    backend = EmbeddedBackend(AsyncEngine(engine))
    retention = Retention("fixed")  # per-tool mean: 2 s pins while bash calls are short

    async def agent(ctx, task):
        ctx.user("start")
        for i in range(3):
            call = ToolCall("bash", {"command": "true"}, f"c{i}")
            await ctx.chat(max_tokens=4, ignore_eos=True, next_tool_call=call, last_turn=(i == 2))
            if i < 2:
                await ctx.tool(call)

    from agentrt import ShellTool

    rt = Runtime(backend, db=db, retention=retention, tools=[ShellTool(tmp_path)], tool_format="bash",
                 sampling=SamplingParams(temperature=0.0, max_tokens=4))
    res = rt.run(agent, range(3))
    assert [p.status for p in res.programs] == ["finished"] * 3
    stats = engine.pins.stats
    assert stats.pins == 6 and stats.hits == 6 and not engine.pins.pins  # every next turn found its pin
    assert stats.expiries == 0 and stats.forced_releases == 0 and stats.last_turn_releases == 0
    rows = read_rows(db, ToolCallRow)
    assert len(rows) == 6 and all(r["ttl_s"] == 2.0 and r["predicted_duration_s"] is not None for r in rows[1:])
    assert retention.turn_counts == [3, 3, 3] and not retention.histories
    assert engine.pool.num_free == engine.pool.num_blocks
