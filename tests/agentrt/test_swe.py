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
from agentrt.workloads.swe import (
    InstanceError,
    default_test_cmd,
    grade,
    load_instances,
    rebuild_messages,
    run_swe,
    parse_test_statuses,
)
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
    with pytest.raises(InstanceError, match="lacks test_cmd and has no FAIL_TO_PASS"):
        load_instances(bad)
    bad.write_text(json.dumps({**rec, "FAIL_TO_PASS": "not a list"}) + "\n")
    with pytest.raises(InstanceError, match="FAIL_TO_PASS"):
        load_instances(bad)
    bad.write_text(json.dumps({**rec, "repo_path": str(tmp_path)}) + "\n")
    with pytest.raises(InstanceError, match="not a local git repository"):
        load_instances(bad)
    bad.write_text("{not json\n")
    with pytest.raises(InstanceError, match="not JSON lines"):
        load_instances(bad)


# ---- a real SWE-bench record: no test_cmd, FAIL_TO_PASS/PASS_TO_PASS as the dataset encodes them -----

SWE_TESTS = "from calc import add\n\n\ndef test_zero():\n    assert add(0, 0) == 0\n"
TEST_PATCH = """diff --git a/tests/test_calc.py b/tests/test_calc.py
--- a/tests/test_calc.py
+++ b/tests/test_calc.py
@@ -4,3 +4,7 @@ from calc import add
 
 def test_zero():
     assert add(0, 0) == 0
+
+
+def test_add():
+    assert add(2, 3) == 5
"""
GOLD = """diff --git a/calc.py b/calc.py
--- a/calc.py
+++ b/calc.py
@@ -1,2 +1,2 @@
 def add(a, b):
-    return a - b
+    return a + b
"""


@pytest.fixture
def swebench(tmp_path) -> tuple[Path, Path]:
    """(a JSONL of two SWE-bench records of one local repository, the folder of clones it is in)."""
    root = tmp_path / "repos"
    repo = root / "calc"
    (repo / "tests").mkdir(parents=True)
    (repo / "calc.py").write_text(BUGGY)
    (repo / "tests" / "test_calc.py").write_text(SWE_TESTS)
    (repo / "tests" / "__init__.py").write_text("")
    (repo / "conftest.py").write_text("")  # the root on sys.path, as the projects' own setups have it
    (repo / ".gitignore").write_text("__pycache__/\n.pytest_cache/\n")
    git("init", "-q", cwd=repo)
    git("add", "-A", cwd=repo)
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "calc", cwd=repo)
    base = git("rev-parse", "HEAD", cwd=repo).strip()
    record = {  # the fields (and encodings) of princeton-nlp/SWE-bench's rows
        "repo": "calc/calc", "instance_id": "calc__calc-2", "base_commit": base, "patch": GOLD,
        "test_patch": TEST_PATCH, "problem_statement": "add(2, 3) returns -1 instead of 5.", "hints_text": "",
        "created_at": "2024-01-01T00:00:00Z", "version": "1.0", "environment_setup_commit": base,
        "FAIL_TO_PASS": json.dumps(["tests/test_calc.py::test_add"]),
        "PASS_TO_PASS": json.dumps(["tests/test_calc.py::test_zero"]),
    }
    path = tmp_path / "swebench.jsonl"
    path.write_text("".join(json.dumps({**record, "instance_id": f"calc__calc-{i}"}) + "\n" for i in (2, 3)))
    return path, root


def test_a_swebench_record_needs_no_test_cmd(swebench):
    path, root = swebench
    inst = load_instances(path, repo_root=root)[0]
    assert inst.repo_path == (root / "calc").resolve() and inst.repo == "calc/calc"
    assert inst.fail_to_pass == ["tests/test_calc.py::test_add"] and inst.pass_to_pass == ["tests/test_calc.py::test_zero"]
    # SWE-bench's test directives: the files test_patch touches, with the repository's runner
    assert inst.test_cmd.startswith("python -m pytest -rA") and inst.test_cmd.endswith("tests/test_calc.py")
    assert default_test_cmd("django/django", "+++ b/tests/forms_tests/tests/test_a.py\n", []).endswith(
        "runtests.py --verbosity 2 --settings=test_sqlite --parallel 1 forms_tests.tests.test_a")
    assert "bin/test -C" in default_test_cmd("sympy/sympy", "+++ b/sympy/core/tests/test_x.py\n", [])
    with pytest.raises(InstanceError, match="repo-root"):
        load_instances(path, repo_root=root / "nowhere")


def test_log_parsing_and_grading_follow_swebench(swebench):
    inst = load_instances(swebench[0], repo_root=swebench[1])[0]
    log = ("PASSED tests/test_calc.py::test_zero\nFAILED tests/test_calc.py::test_add - assert -1 == 5\n"
           "test_x (app.tests.XTests) ... ok\n")
    assert parse_test_statuses(log) == {"tests/test_calc.py::test_zero": "PASSED", "tests/test_calc.py::test_add": "FAILED",
                                  "test_x (app.tests.XTests)": "PASSED"}
    verdict = grade(inst, log, 1)
    assert verdict["resolved"] is False and verdict["FAIL_TO_PASS"]["failure"] == ["tests/test_calc.py::test_add"]
    assert verdict["PASS_TO_PASS"]["success"] == ["tests/test_calc.py::test_zero"]
    assert grade(inst, log.replace("FAILED", "PASSED"), 1)["resolved"]  # the listed tests decide, not the exit code


SWE_FIX = [
    "THOUGHT: read the code.\n```bash\ncat calc.py\n```",
    "THOUGHT: fix the sign.\n```bash\nsed -i 's/a - b/a + b/' calc.py\n```",
    "Done.\n```bash\nsubmit\n```",
]


def test_swebench_records_through_workers_with_trajectories(tmp_path, swebench):
    path, root = swebench
    seen: dict[str, list[dict]] = {}

    def reply(messages, hint):
        seen[hint.program_id] = [dict(m) for m in messages]  # what the model saw last
        return SWE_FIX[min(hint.turn, len(SWE_FIX) - 1)]

    db, trajs = str(tmp_path / "swe.db"), tmp_path / "trajs"
    out = run_swe(StubBackend(reply), load_instances(path, repo_root=root), workdir=tmp_path / "work", db=db,
                  workers=1, trajectories_out=trajs)
    assert out["workers"] == 1 and out["resolved"] == 2
    for r in out["results"]:
        tests = r["tests"]
        assert tests["FAIL_TO_PASS"] == {"success": ["tests/test_calc.py::test_add"], "failure": []}
        assert tests["PASS_TO_PASS"] == {"success": ["tests/test_calc.py::test_zero"], "failure": []}
    # one worker: the two programs' bash actions never overlap, and the second waited for the first
    spans = {}
    for t in read_rows(db, ToolCallRow):
        lo, hi = spans.get(t["program_id"], (t["started_at"], t["finished_at"]))
        spans[t["program_id"]] = (min(lo, t["started_at"]), max(hi, t["finished_at"]))
    (a0, a1), (b0, b1) = sorted(spans.values())
    assert a1 <= b0
    assert max(r["worker_wait_s"] for r in out["results"]) > 0
    # mini-swe-agent's trajectory, rebuilt from the store: exactly the conversation the model saw
    for r in out["results"]:
        traj = json.loads((trajs / r["instance_id"] / f"{r['instance_id']}.traj.json").read_text())
        assert traj["trajectory_format"] == "mini-swe-agent-1" and traj["instance_id"] == r["instance_id"]
        assert traj["info"]["exit_status"] == "Submitted" and traj["info"]["submission"] == r["patch"]
        assert traj["info"]["model_stats"]["api_calls"] == r["llm_calls"] == 3
        last_prompt = seen[r["program_id"]]
        assert traj["messages"] == [*last_prompt, {"role": "assistant", "content": SWE_FIX[-1]}]
        assert rebuild_messages(db, r["program_id"]) == traj["messages"]


def test_cli_runs_a_swebench_record_on_the_tiny_model(tmp_path, swebench, tiny_model_dir):
    path, root = swebench
    preds, trajs, out = tmp_path / "preds.jsonl", tmp_path / "trajs", tmp_path / "swe.json"
    proc = subprocess.run([sys.executable, "-m", "agentrt", "swe", "--instances", str(path), "--repo-root", str(root),
                           "--model", str(tiny_model_dir), "--workdir", str(tmp_path / "work"), "--workers", "1",
                           "--step-limit", "2", "--prefill", "--max-tokens", "8", "--predictions", str(preds),
                           "--trajectories", str(trajs), "--db", str(tmp_path / "swe.db"), "--json", str(out),
                           "--no-progress"], check=False, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(out.read_text())
    assert summary["instances"] == 2 and summary["workers"] == 1
    for r in summary["results"]:  # a random model fixes nothing: the FAIL_TO_PASS test still fails
        assert r["resolved"] is False and r["tests"]["FAIL_TO_PASS"]["failure"] == ["tests/test_calc.py::test_add"]
        traj = json.loads((trajs / r["instance_id"] / f"{r['instance_id']}.traj.json").read_text())
        assert traj["messages"][1]["content"].startswith("Please solve this issue")
        assert len([m for m in traj["messages"] if m["role"] == "assistant"]) == r["llm_calls"] >= 1
    assert len(preds.read_text().splitlines()) == 2 and "2 instances" in proc.stdout


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
