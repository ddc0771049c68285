"""SWE runner: a real local git repository with a failing test, real checkouts, real bash actions, real
pytest; a scripted backend stands in for the model where the fix must be known in advance, and the
default model runs the same loop end to end."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from agentrt import StubBackend
from agentrt.store import LLMCall, ToolCallRow, read_rows
from agentrt.workloads.swe import InstanceError, load_instances, run_swe
from toolpredict.features import extract_features, read_records

BUGGY = "def add(a, b):\n    return a - b\n"
TEST = "from calc import add\n\n\ndef test_add():\n    assert add(2, 3) == 5\n"


def git(*args: str, cwd: Path) -> str:
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True).stdout


@pytest.fixture
def instances(tmp_path) -> Path:
    """A one-commit repository whose test fails, and its instance file."""
    repo = tmp_path / "calc-repo"
    repo.mkdir()
    (repo / "calc.py").write_text(BUGGY)
    (repo / "test_calc.py").write_text(TEST)
    (repo / ".gitignore").write_text("__pycache__/\n.pytest_cache/\n")
    git("init", "-q", cwd=repo)
    git("add", "-A", cwd=repo)
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "calc", cwd=repo)
    path = tmp_path / "instances.jsonl"
    path.write_text(json.dumps({
        "instance_id": "calc__calc-1", "repo": "calc/calc", "repo_path": str(repo),
        "base_commit": git("rev-parse", "HEAD", cwd=repo).strip(),
        "problem_statement": "add(2, 3) returns -1 instead of 5.", "test_cmd": "python -m pytest -q test_calc.py",
    }) + "\n")
    return path


FIX = [
    "THOUGHT: read the code.\n```bash\ncat calc.py\n```",
    "Two at once:\n```bash\nls\n```\n```bash\npwd\n```",
    "THOUGHT: fix the sign.\n```bash\nsed -i 's/a - b/a + b/' calc.py\n```",
    "```bash\npython -m pytest -q test_calc.py\n```",
    "Done.\n```bash\nsubmit\n```",
]


def scripted(replies):
    return StubBackend(lambda messages, hint: replies[min(hint.turn, len(replies) - 1)])


def test_scripted_agent_resolves_the_fixture(tmp_path, instances):
    preds, timings, db = tmp_path / "preds.jsonl", tmp_path / "timings.jsonl", str(tmp_path / "swe.db")
    out = run_swe(scripted(FIX), load_instances(instances), workdir=tmp_path / "work", db=db,
                  predictions_out=preds, timings_out=timings)
    r = out["results"][0]
    assert out["resolved"] == 1 and r["resolved"] is True and r["exit_status"] == "submitted"
    assert r["actions"] == 3 and r["llm_calls"] == 5 and "1 passed" in r["test_output"]
    assert "-    return a - b\n+    return a + b" in r["patch"] and "pycache" not in r["patch"]
    pred = [json.loads(line) for line in preds.read_text().splitlines()]
    assert pred == [{"instance_id": "calc__calc-1", "model_name_or_path": "stub", "model_patch": r["patch"]}]
    # the repository itself is untouched: the agent worked in its own clone
    assert (Path(load_instances(instances)[0].repo_path) / "calc.py").read_text() == BUGGY
    # the format error went back to the model; every bash action is timed in the store
    prompts = [c["prompt"] for c in read_rows(db, LLMCall)]
    assert any("EXACTLY ONE action" in (p or "") for p in prompts)
    rows = read_rows(db, ToolCallRow)
    assert [t["arguments"]["command"] for t in rows] == ["cat calc.py", "sed -i 's/a - b/a + b/' calc.py",
                                                         "python -m pytest -q test_calc.py"]
    assert all(t["name"] == "bash" and t["duration_s"] > 0 for t in rows)
    # the same actions as toolpredict records, with the features its predictors read
    records = read_records(timings)
    assert [rec.args["command"] for rec in records] == [t["arguments"]["command"] for t in rows]
    assert [rec.seq for rec in records] == [0, 1, 2]
    assert extract_features(records[2].tool, records[2].args).bucket == "bash::python::pytest_path"


def test_unsolved_and_step_limited_runs_still_give_predictions(tmp_path, instances):
    quitter = run_swe(scripted(["```bash\nsubmit\n```"]), load_instances(instances), workdir=tmp_path / "a")
    r = quitter["results"][0]
    assert r["exit_status"] == "submitted" and r["patch"] == "" and r["resolved"] is False and r["actions"] == 0
    looper = run_swe(scripted(["```bash\necho new > notes.txt && ls\n```"]), load_instances(instances),
                     workdir=tmp_path / "b", step_limit=3, run_tests=False)
    r = looper["results"][0]
    assert r["exit_status"] == "step_limit" and r["actions"] == 3 and r["resolved"] is None
    assert "+++ b/notes.txt" in r["patch"]  # new files are part of the patch


def test_bad_instances_say_what_is_wrong(tmp_path, instances):
    rec = json.loads(instances.read_text())
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({**rec, "test_cmd": ""}) + "\n")
    with pytest.raises(InstanceError, match="lacks test_cmd"):
        load_instances(bad)
    bad.write_text(json.dumps({**rec, "repo_path": str(tmp_path)}) + "\n")
    with pytest.raises(InstanceError, match="not a local git repository"):
        load_instances(bad)
    bad.write_text("{not json\n")
    with pytest.raises(InstanceError, match="not JSON lines"):
        load_instances(bad)


@pytest.mark.slow
def test_default_model_runs_the_loop_end_to_end(tmp_path, instances):
    preds, db = tmp_path / "preds.jsonl", tmp_path / "swe.db"
    proc = subprocess.run([sys.executable, "-m", "agentrt", "swe", "--instances", str(instances), "--workdir",
                           str(tmp_path / "work"), "--step-limit", "3", "--prefill", "--max-tokens", "48",
                           "--predictions", str(preds), "--db", str(db), "--no-progress"],
                          check=False, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    pred = json.loads(preds.read_text())
    assert pred["instance_id"] == "calc__calc-1" and pred["model_name_or_path"] == "SmolLM2-135M-Instruct"
    calls = read_rows(str(db), LLMCall)
    assert 1 <= len(calls) <= 3 and all(c["output_tokens"] > 0 for c in calls)
    # with replies started inside a bash block, the model's turns are actions, each one timed
    rows = read_rows(str(db), ToolCallRow)
    assert rows and all(t["name"] == "bash" and t["arguments"]["command"] and t["duration_s"] > 0 for t in rows)
    assert "1 instances" in proc.stdout
