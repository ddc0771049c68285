"""The simulator: the real scheduler, block pool and pins on a simulated runner in virtual time
(engine/sim.py), driven by recorded sessions (agentrt/sim.py). Its agreement with the real engine is
a real-time comparison with a fitted cost model: a benchmark (benchmarks/sim_agreement.py), not a test."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from agentrt.cli import main as cli_main
from agentrt.sim import load_workload, simulate
from engine.params import ProgramHint, SamplingParams
from engine.sim import (
    HARDWARE,
    SIM_TOKEN_ID,
    SimulatedEngine,
    StepShape,
    VirtualClock,
    hardware,
)

SAMPLE = Path(__file__).parents[1] / "data" / "agent-traces-sample"


@pytest.fixture(scope="module")
def workload():
    return load_workload(SAMPLE, "cpu-smollm2")


def _decode(batch: int, context: int) -> StepShape:
    return StepShape(num_seqs=batch, num_tokens=batch, num_logits=batch, decode_seqs=batch,
                     decode_context_tokens=batch * context)


def _prefill(tokens: int, start: int = 0) -> StepShape:
    return StepShape(num_seqs=1, num_tokens=tokens, num_logits=1, prefill_tokens=tokens,
                     prefill_attn_pairs=tokens * start + tokens * (tokens + 1) // 2, prefill_context_tokens=start)


@pytest.mark.parametrize("name", HARDWARE)
def test_cost_models_grow_with_work(name):
    cost = hardware(name).cost_model
    for make, sizes in ((lambda n: _prefill(n), (16, 128, 1024, 4096)),
                        (lambda n: _prefill(64, n), (0, 512, 4096, 32768)),
                        (lambda n: _decode(n, 1000), (1, 8, 64, 256)),
                        (lambda n: _decode(16, n), (100, 1000, 10_000, 100_000))):
        times = [cost.step_s(make(n)) for n in sizes]
        assert all(t > 0 and math.isfinite(t) for t in times)
        assert times == sorted(times) and times[-1] > times[0], (name, times)


def test_cpu_calibration_says_how_it_was_made():
    source = hardware("cpu-smollm2").cost_model.describe()["source"]
    assert source["command"].startswith("python -m agentrt.sim calibrate")
    assert len(source["samples"]["seconds"]) == len(source["samples"]["rows"]) > 50


def test_simulated_engine_steps_in_virtual_time():
    hw = hardware("h100-llama8b")
    clock = VirtualClock(100.0)
    engine = SimulatedEngine(hw.cost_model, clock=clock, kv_cache_tokens=64 * 16, max_num_batched_tokens=256)
    lengths = {}
    for i, (n, out) in enumerate([(300, 5), (40, 12), (700, 1)]):
        rid = engine.add_request([7 + i] * n, SamplingParams(max_tokens=out), hint=ProgramHint(f"p{i}"))
        lengths[rid] = out
    done, spent = {}, 0.0
    while engine.has_unfinished_requests():
        for out in engine.step():
            if out.finished:
                done[out.request_id] = out
        spent += engine.runner.last_forward_s
    assert {rid: len(o.token_ids) for rid, o in done.items()} == lengths  # max_tokens ends them, no EOS
    assert all(set(o.token_ids) == {SIM_TOKEN_ID} and o.finish_reason == "length" for o in done.values())
    assert clock.now == pytest.approx(100.0 + spent) and spent == pytest.approx(engine.stats.forward_s)
    assert engine.stats.num_steps > 3  # the 700-token prompt was chunked under the 256-token budget
    engine.pool.check_integrity()
    assert engine.pool.num_free == engine.pool.num_blocks
    with pytest.raises(ValueError, match="token ids"):
        engine.add_request("text")


def test_workload_prompts_extend_and_share_the_system_prompt(workload):
    assert len(workload.sessions) == 3
    for st in workload.sessions:
        assert len(st.deltas) == len(st.session.turns) - 1 and all(st.deltas)
        assert 0 < st.shared < len(st.first)
    firsts = [st.first for st in workload.sessions]
    shared = workload.sessions[0].shared
    assert all(f[:shared] == firsts[0][:shared] for f in firsts)  # the bash tool's system prompt


def test_simulate_is_deterministic_and_policies_run_the_real_scheduler(workload):
    runs = {p: simulate(workload, p, rate=2.0, programs=60, kv_blocks=96, seed=3)
            for p in ("fcfs", "program", "continuum-fixed", "agentrt")}
    again = simulate(workload, "agentrt", rate=2.0, programs=60, kv_blocks=96, seed=3)
    other_seed = simulate(workload, "agentrt", rate=2.0, programs=60, kv_blocks=96, seed=4)
    def strip(r: dict) -> dict:
        return {k: v for k, v in r.items() if k != "wall_s"}

    assert strip(again) == strip(runs["agentrt"])
    assert other_seed["mean_jct_s"] != runs["agentrt"]["mean_jct_s"]
    for name, r in runs.items():
        assert r["finished"] == r["programs"] == 60, name
        assert r["free_blocks_at_end"] == r["kv_blocks"] == 96  # every request and pin gave its blocks back
        assert r["mean_jct_s"] > r["tool_time_s"] / 60  # a program waits for its tools and its turns
    assert runs["fcfs"]["pins"] == runs["program"]["pins"] == 0
    for name in ("continuum-fixed", "agentrt"):  # pins held and found by the next turn
        assert runs[name]["pins"] > 0 and runs[name]["pin_hits"] > 0
    # under memory pressure, KV freed at every turn's end is recomputed; pins keep some of it
    assert runs["fcfs"]["recomputed_prefill_tokens"] > 0 and runs["fcfs"]["preemptions"] > 0
    assert runs["agentrt"]["recomputed_prefill_tokens"] < runs["fcfs"]["recomputed_prefill_tokens"]


def test_thousands_of_programs(workload):
    r = simulate(workload, "continuum-fixed", rate=4.0, programs=1500, kv_blocks=256, seed=0)
    assert r["finished"] == 1500 and r["free_blocks_at_end"] == 256
    assert r["pin_hits"] > 0 and r["steps"] > 10_000


def test_cli_writes_json_and_png(tmp_path, capsys):
    out, png = tmp_path / "sim.json", tmp_path / "sim.png"
    assert cli_main(["sim", "--traces", str(SAMPLE), "--programs", "12", "--rate", "0.5", "--rate", "4",
                     "--preset", "fcfs", "--preset", "agentrt", "--hardware", "h100-llama8b",
                     "--json", str(out), "--png", str(png)]) == 0
    data = json.loads(out.read_text())
    assert set(data["results"]) == {"fcfs", "agentrt"} and set(data["results"]["fcfs"]) == {"0.5", "4.0"}
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "mean JCT" in capsys.readouterr().out
    assert cli_main(["sim", "--traces", str(tmp_path), "--rate", "1"]) == 2  # no traces there: a clear error
    assert "no *.jsonl trace files" in capsys.readouterr().err
