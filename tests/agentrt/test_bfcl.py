"""BFCL multi-turn runner: BFCL's own data, tool classes and checker (package bfcl-eval), driven by the runtime.

The oracle runs prove the plumbing end to end (ground-truth calls executed for real, scored 100% by
BFCL's checker); the stub backend stands in for the model only where its words must be known in
advance; the CLI runs use the real engine (a tiny random model with a long context, and the real
default model)."""

from __future__ import annotations

import json
import statistics
import subprocess
import sys

import pytest

from agentrt import StubBackend
from agentrt.store import LLMCall, ToolCallRow, read_rows
from agentrt.workloads.bfcl import CATEGORIES, ToolDelay, load_tasks, run_bfcl, score
from engine.tiny import make_tiny_model


def agentrt(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "agentrt", *args], check=False, capture_output=True, text=True, timeout=600)


def test_oracle_scores_every_category_fully(tmp_path):
    db = str(tmp_path / "oracle.db")
    scores = run_bfcl(StubBackend(lambda messages, hint: "All done."), list(CATEGORIES), limit=3, oracle=True, db=db)
    assert set(scores) == set(CATEGORIES)
    for s in scores.values():
        assert s["entries"] == 3 and s["accuracy"] == 1.0 and s["errors"] == {}
    tools = read_rows(db, ToolCallRow)
    truth = sum(len(step) for c in CATEGORIES for t in load_tasks(c, 3) for step in t.ground_truth)
    assert len(tools) == truth  # every ground-truth call ran once, through ctx.tool
    assert all(t["ok"] for t in tools if t["name"] in ("cd", "mkdir", "ls"))
    # each turn asked the model twice (the calls, then the answer), except turns without calls
    calls = read_rows(db, LLMCall)
    assert len(calls) == sum(s["llm_calls"] for s in scores.values()) > truth // 2


def test_held_out_functions_arrive_on_their_turn():
    task = load_tasks("miss_func", 1)[0]
    turn, docs = next(iter(task.entry["missed_function"].items()))
    held = {d["name"] for d in docs}
    assert held and not held & {d["name"] for d in task.entry["function"]}
    prompts = []

    def reply(messages, hint):
        prompts.append(messages[0]["content"])
        return "No call."

    run_bfcl(StubBackend(reply), ["miss_func"], limit=1)
    # one LLM call per turn (no calls): the held-out docs reach the system prompt from that turn on
    assert len(prompts) == len(task.entry["question"])
    for i, prompt in enumerate(prompts):
        assert all((f'"name": "{name}"' in prompt) == (i >= int(turn)) for name in held)


def test_model_calls_run_on_the_entrys_own_instances_and_are_scored(tmp_path):
    db = str(tmp_path / "model.db")

    def reply(messages, hint):  # a call on the first step of each turn, then an answer
        return "[ls(a=True)]" if messages[-1]["role"] == "user" else "Here you go."

    scores = run_bfcl(StubBackend(reply), ["base"], limit=2, db=db)["base"]
    ls = [t for t in read_rows(db, ToolCallRow) if t["name"] == "ls"]
    assert len(ls) == sum(len(t.entry["question"]) for t in load_tasks("base", 2))
    # the output is the listing of the entry's own initial file system, as BFCL's class gives it
    first = load_tasks("base", 1)[0].entry["initial_config"]["GorillaFileSystem"]["root"]
    top = next(iter(first.values()))["contents"]
    assert any(all(name in t["output"] for name in top) for t in ls)
    assert scores["accuracy"] == 0.0 and scores["entries"] == 2  # listing files solves none of them


def test_checker_verdicts_on_hand_made_results():
    task = load_tasks("base", 1)[0]
    right = [[[c] for c in turn] for turn in task.ground_truth]
    assert score(task, right)["valid"]
    wrong = [[["ls(a=True)"]] for _ in task.ground_truth]
    assert not score(task, wrong)["valid"]
    assert score(task, right[:-1])["error_type"] == "multi_turn:force_terminated"
    assert score(task, None, "failed")["error_type"] == "program:failed"


def test_tool_delay_distributions():
    assert ToolDelay.parse("none").sample() == 0.0
    assert ToolDelay.parse("fixed:0.25").sample() == 0.25
    lognormal = ToolDelay.parse("lognormal:0.5:0.8", seed=1)
    draws = [lognormal.sample() for _ in range(4000)]
    assert 0.45 < statistics.median(draws) < 0.55 and min(draws) > 0
    trace = ToolDelay.parse("trace")
    assert all(d >= 0 for d in (trace.sample() for _ in range(100)))
    for bad in ("gauss:1", "fixed:-1", "lognormal:0:1", "fixed", "trace:/no/such.jsonl"):
        with pytest.raises(ValueError, match="tool-delay"):
            ToolDelay.parse(bad)
    with pytest.raises(ValueError, match="unknown BFCL category"):
        load_tasks("parallel")


def test_cli_oracle_on_the_real_engine_with_delays(tmp_path):
    model = make_tiny_model(tmp_path / "tiny-long", max_position_embeddings=16384)
    out, db = tmp_path / "oracle.json", tmp_path / "oracle.db"
    proc = agentrt("bfcl", "--oracle", "--category", "base", "--category", "miss_param", "--limit", "2",
                   "--model", str(model), "--max-tokens", "4", "--tool-delay", "fixed:0.02", "--db", str(db),
                   "--json", str(out), "--no-progress")
    assert proc.returncode == 0, proc.stderr
    scores = json.loads(out.read_text())
    assert set(scores) == {"base", "miss_param"}
    assert all(s["accuracy"] == 1.0 and s["entries"] == 2 and s["mean_jct_s"] > 0 for s in scores.values())
    tools = read_rows(str(db), ToolCallRow)
    assert tools and all(t["duration_s"] >= 0.02 for t in tools)
    assert "accuracy 100.0%" in proc.stdout
    bad = agentrt("bfcl", "--tool-delay", "uniform:1", "--model", str(model))
    assert bad.returncode == 2 and "tool-delay" in bad.stderr


@pytest.mark.slow
def test_default_model_runs_and_is_scored(tmp_path):
    out, db = tmp_path / "model.json", tmp_path / "model.db"
    proc = agentrt("bfcl", "--category", "base", "--limit", "2", "--max-tokens", "48", "--db", str(db),
                   "--json", str(out), "--no-progress")
    assert proc.returncode == 0, proc.stderr
    s = json.loads(out.read_text())
    assert s["entries"] == 2 and 0.0 <= s["accuracy"] <= 1.0 and s["mean_jct_s"] > 0
    assert sum(s["errors"].values()) == 2 - s["correct"]
    calls = read_rows(str(db), LLMCall)
    assert len(calls) == s["llm_calls"] >= 8  # at least one LLM call per user turn (4 turns each)
    assert all(c["output_tokens"] > 0 for c in calls)
