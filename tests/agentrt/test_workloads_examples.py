"""The main job's pieces without a model: explore_repo's grader against its sandboxes' real facts, and
`agentrt run` printing each program's answer (graded by the agent file's `check`) beside its JCT."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

EXAMPLE = Path(__file__).parents[2] / "examples" / "explore_repo.py"


def load_example():
    spec = importlib.util.spec_from_file_location("explore_repo_under_test", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_explore_repo_grades_answers_by_the_sandboxes_facts():
    ex = load_example()
    tasks = ex.tasks(6)
    engine = Path(tasks[0]["workdir"]) / "engine"
    n_top = len(list(engine.glob("*.py")))
    largest = max((p for p in engine.iterdir() if p.is_file()), key=lambda p: p.stat().st_size).name
    right = ["The class BlockPool is defined in engine/block_pool.py.", f"There are {n_top} Python files.",
             "Yes, the test passes (1 passed).", "It returns h.digest(), a 16-byte blake2b digest.",
             f"The largest file is {largest}.", "SamplingParams is in engine/params.py; fields: temperature, top_p."]
    wrong = ["It is in engine/scheduler.py.", f"There are {n_top + 7} Python files.", "The test fails.",
             "It returns None.", "The largest file is __init__.py.", "It has a field called model."]
    assert [ex.check(t, a) for t, a in zip(tasks, right)] == [True] * 6
    assert [ex.check(t, a) for t, a in zip(tasks, wrong)] == [False] * 6
    assert not any(ex.check(t, None) for t in tasks)  # the turn limit (no answer) is wrong


def test_run_prints_answers_beside_jct_and_where_to_look_next(tmp_path, tiny_model_dir):
    agent = tmp_path / "graded.py"
    agent.write_text(
        "from agentrt import SamplingParams\n"
        "RUNTIME = dict(sampling=SamplingParams(temperature=0.0, max_tokens=2))\n"
        "tasks = ['first', 'second']\n"
        "async def agent(ctx, task):\n"
        "    await ctx.chat([{'role': 'user', 'content': task}])\n"
        "    return 'answer to ' + task\n"
        "def check(task, answer):\n"
        "    return task == 'first'\n")
    db = tmp_path / "run.db"
    args = [sys.executable, "-m", "agentrt", "run", str(agent), "--model", str(tiny_model_dir), "--db", str(db),
            "--no-progress"]
    proc = subprocess.run(args, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert any("right" in line and "answer to first" in line for line in lines)
    assert any("wrong" in line and "answer to second" in line for line in lines)
    assert "1/2 answers right" in proc.stdout and f"agentrt dashboard --db {db}" in proc.stdout
    rep = json.loads(subprocess.run([*args, "--json"], capture_output=True, text=True, timeout=300).stdout)
    assert [(a["answer"], a["right"]) for a in rep["answers"]] == [("answer to first", True), ("answer to second", False)]
    assert all(a["jct_s"] > 0 for a in rep["answers"])
