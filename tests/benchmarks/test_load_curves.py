"""The load-curve sweep: its grid, its KV shares and its ratios, on the sample sessions in the simulator."""

from __future__ import annotations

import json
from pathlib import Path

from agentrt.sim import load_workload

from benchmarks.load_curves import context_blocks, main

TRACES = Path(__file__).parents[1] / "data" / "agent-traces-sample"


def test_context_blocks_counts_each_programs_final_context():
    wl = load_workload(TRACES)
    finals = [len(st.first) + sum(map(len, st.deltas)) + sum(t.output_tokens for t in st.session.turns)
              for st in wl.sessions]
    assert context_blocks(wl, len(finals)) == sum(-(-n // 16) for n in finals)
    assert context_blocks(wl, 2 * len(finals)) == 2 * context_blocks(wl, len(finals))  # programs cycle sessions


def test_sweep_grid_ratios_and_json(tmp_path):
    out = tmp_path / "curves.json"
    result = main(["--traces", str(TRACES), "--programs", "6", "--rate", "0.5", "--rate", "4", "--kv-share", "1",
                   "--kv-share", "0.1", "--preset", "program", "--seeds", "0", "1", "--json", str(out)])
    assert json.loads(out.read_text())["points"] == result["points"]
    assert len(result["runs"]) == 2 * 2 * 2 * 2  # seeds x shares x rates x presets (fcfs is always added)
    assert {(p["kv_share"], p["rate"]) for p in result["points"]} == {(1.0, 0.5), (1.0, 4.0), (0.1, 0.5), (0.1, 4.0)}
    for p in result["points"]:
        assert p["presets"]["fcfs"]["ratio_vs_fcfs"] == 1.0
        runs = [r for r in result["runs"] if r["kv_share"] == p["kv_share"] and r["rate"] == p["rate"]
                and r["preset"] == "program"]
        mean = sorted(r["mean_jct_s"] for r in runs)
        assert p["presets"]["program"]["mean_jct_s"] == (mean[0] + mean[1]) / 2  # the median of two seeds
    small = {r["kv_blocks"] for r in result["runs"] if r["kv_share"] == 0.1}
    full = {r["kv_blocks"] for r in result["runs"] if r["kv_share"] == 1.0}
    assert max(small) < min(full)
    # a pool with a tenth of the contexts cannot be faster for request FCFS than one that holds them all
    busy = {p["kv_share"]: p["presets"]["fcfs"]["mean_jct_s"] for p in result["points"] if p["rate"] == 4.0}
    assert busy[0.1] >= busy[1.0]
