"""`python -m benchmarks.http_replay` end to end on the tiny model: it starts `agentrt serve` processes
one at a time, waits for their health, replays the sample sessions over loopback HTTP, reads their
/metrics, stops them, interleaves the rounds and writes the JSON; plus its parts (targets, the KV
budget, the recomputed-prefill count). No timing is asserted."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from engine.loader import load_tokenizer

from agentrt.replay import load_sessions
from benchmarks import http_replay

TRACES = Path(__file__).parents[1] / "data" / "agent-traces-sample"


def test_replay_against_two_served_presets_end_to_end(tiny_model_dir, tmp_path):
    out_file = tmp_path / "http.json"
    out = http_replay.main(["--traces", str(TRACES), "--model", str(tiny_model_dir), "--target", "agentrt",
                            "--target", "fcfs", "--programs", "3", "--rate", "100", "--max-turns", "3",
                            "--max-output-tokens", "4", "--tool-time-scale", "0.001", "--kv-share", "1",
                            "--repeat", "2", "--log-dir", str(tmp_path / "logs"), "--json", str(out_file)])
    assert json.loads(out_file.read_text()) == out
    assert list(out["targets"]) == ["agentrt", "fcfs"]
    assert out["kv_tokens"] % 32 == 0 and out["kv_tokens"] > out["largest_context_tokens"]
    assert "--kv-cache-tokens" in out["servers"]["fcfs"]["command"] and "--preset fcfs" in out["servers"]["fcfs"]["command"]
    for name, fig in out["targets"].items():
        runs = fig["runs"]
        assert [r["round"] for r in runs] == [1, 2]
        for r in runs:
            assert r["programs"] == r["finished"] == 3 and r["failed"] == []
            assert r["llm_calls"] == out["turns"]
            # the replies' usage and the server's counters agree (the warm-up request is outside the run)
            assert r["server_prompt_tokens"] == r["prompt_tokens"]
            assert r["server_prefix_hit_tokens"] == r["cached_tokens"]
            assert 0 <= r["recomputed_prefill_tokens"] <= r["computed_prefill_tokens"] <= r["prompt_tokens"]
        assert fig["mean_jct_s"] > 0 and "round" not in fig
    assert out["targets"]["fcfs"]["pins"] == 0  # fcfs frees KV at a request's end
    assert out["targets"]["fcfs"]["mean_jct_vs_fcfs"] == 1.0
    # the rounds interleave and the order rotates: one log per target and round
    assert sorted(p.name for p in (tmp_path / "logs").iterdir()) == [
        "agentrt-1.log", "agentrt-2.log", "fcfs-1.log", "fcfs-2.log"]


def test_a_server_that_dies_is_reported_with_its_log(tiny_model_dir, tmp_path):
    command = f"{sys.executable} -c 'import sys; print(\"no such server {{port}}\"); sys.exit(3)'"
    with pytest.raises(RuntimeError, match="exited with 3 before it was healthy(.|\n)*no such server"):
        http_replay.main(["--traces", str(TRACES), "--model", str(tiny_model_dir), "--server", f"broken={command}",
                          "--programs", "1", "--max-turns", "2", "--kv-share", "1", "--log-dir", str(tmp_path)])


def test_targets_are_checked_before_anything_starts(tiny_model_dir, tmp_path):
    base = ["--traces", str(TRACES), "--model", str(tiny_model_dir), "--kv-share", "1"]
    for bad in (["--server", "x=python -m something"],  # no {port}
                ["--target", "fcfs", "--server", "fcfs=serve --port {port}"],  # a name twice
                ["--target", "vllm", "--vllm-venv", str(tmp_path)]):  # no vLLM there
        with pytest.raises(SystemExit):
            http_replay.main(base + bad)


def test_kv_budget_is_a_share_of_contexts_in_whole_vllm_blocks(tiny_model_dir):
    tok = load_tokenizer(tiny_model_dir)
    sessions = load_sessions(TRACES, tok, scale=0.06, max_turns=12, max_context_tokens=1500)
    whole, contexts, largest = http_replay.context_budget(sessions, tok, 30, 1.0)
    fifth, _, _ = http_replay.context_budget(sessions, tok, 30, 0.2)
    assert whole % 32 == 0 and fifth % 32 == 0
    assert whole >= contexts > largest and fifth > largest
    assert abs(fifth - contexts / 5) <= 32 + 16
    tiny, _, _ = http_replay.context_budget(sessions, tok, 30, 0.001)
    assert largest < tiny <= largest + 16 + 32  # never below the largest context


def test_recomputed_prefill_counts_earlier_context_computed_again(tmp_path):
    from agentrt.store import LLMCall, Program, Run, open_db
    from sqlalchemy.orm import Session

    db = str(tmp_path / "calls.db")
    eng = open_db(db)
    with Session(eng) as s:
        s.add(Run(id="r", name="t", started_at=0.0))
        s.add(Program(id="p", run_id="r", index=0, status="finished", arrival_at=0.0))
        # turn 1 reuses 40 of turn 0's 50 + 8 tokens; turn 2 all 80 + 8 of turn 1's
        for turn, prompt, cached, out in ((0, 50, 0, 8), (1, 80, 40, 8), (2, 100, 88, 8)):
            s.add(LLMCall(id=f"c{turn}", program_id="p", turn=turn, is_last_turn=turn == 2, queued_at=0.0,
                          prompt_tokens=prompt, cached_tokens=cached, output_tokens=out))
        s.commit()
    eng.dispose()
    fig = http_replay.prefill_figures(db)
    assert fig == {"prompt_tokens": 230, "cached_tokens": 128, "computed_prefill_tokens": 102,
                   "recomputed_prefill_tokens": 58 - 40, "llm_calls": 3}
