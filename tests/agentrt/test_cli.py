"""The `agentrt` command line on real processes: run, report, and a run killed midway."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

from agentrt.store import Program, read_rows
from tests.conftest import free_port, serve_process

AGENTS = Path(__file__).parents[1] / "agents"


def agentrt(*args, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "agentrt", *args], capture_output=True, text=True, timeout=300, **kw)


def test_run_then_report(tmp_path, tiny_model_dir):
    db = tmp_path / "cli.db"
    agent = tmp_path / "quick.py"
    agent.write_text(
        "from agentrt import SamplingParams\n"
        "RUNTIME = dict(sampling=SamplingParams(temperature=0.0, max_tokens=3))\n"
        "tasks = ['a', 'b']\n"
        "async def agent(ctx, task):\n"
        "    return (await ctx.chat([{'role': 'user', 'content': task}])).text\n")
    proc = agentrt("run", str(agent), "--programs", "5", "--rate", "50", "--model", str(tiny_model_dir),
                   "--db", str(db), "--json", "--no-progress")
    assert proc.returncode == 0, proc.stderr
    rep = json.loads(proc.stdout)
    assert rep["programs"] == 5 and rep["by_status"] == {"finished": 5} and rep["llm_calls"] == 5
    assert rep["jct_mean_s"] > 0 and rep["jct_p99_s"] >= rep["jct_p50_s"] and rep["makespan_s"] > 0
    text = agentrt("report", "--db", str(db))
    assert text.returncode == 0 and "5 finished" in text.stdout and "p95" in text.stdout


def test_bad_invocations_say_what_is_wrong(tmp_path):
    assert "no such agent file" in agentrt("run", str(tmp_path / "missing.py")).stderr
    assert "no database" in agentrt("report", "--db", str(tmp_path / "none.db")).stderr
    proc = agentrt("run", str(AGENTS / "sleepy.py"), "--backend", "openai")
    assert proc.returncode != 0 and "--base-url" in proc.stderr


def test_killed_run_leaves_a_readable_database(tmp_path, tiny_model_dir):
    db = tmp_path / "killed.db"
    proc = subprocess.Popen([sys.executable, "-m", "agentrt", "run", str(AGENTS / "sleepy.py"), "--programs", "4",
                             "--model", str(tiny_model_dir), "--db", str(db), "--no-progress"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    try:
        deadline = time.time() + 120
        while time.time() < deadline:  # wait until the fast programs finished and the slow ones are sleeping
            if db.exists():
                rows = read_rows(str(db), Program)
                if sum(r["status"] == "finished" for r in rows) == 2 and len(rows) == 4:
                    break
            time.sleep(0.3)
        else:
            raise AssertionError(f"run did not get going: {proc.stderr.read().decode()[-2000:] if proc.poll() else ''}")
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    with contextlib.closing(sqlite3.connect(db)) as conn:  # SIGKILL mid-write left no torn page
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    rep = agentrt("report", "--db", str(db), "--json")
    assert rep.returncode == 0, rep.stderr
    data = json.loads(rep.stdout)
    assert data["by_status"] == {"finished": 2, "running": 2} and len(data["unfinished"]) == 2
    sleeping = {r["id"] for r in read_rows(str(db), Program) if r["task"] == "20"}
    assert set(data["unfinished"]) == sleeping  # exactly the programs that were mid-tool
    text = agentrt("report", "--db", str(db)).stdout
    assert "did not finish" in text and all(pid[:12] in text for pid in sleeping)


def test_serve_answers_over_http_and_stops_on_sigint(tiny_model_dir):
    import httpx

    port = free_port()
    with serve_process("--model", str(tiny_model_dir), "--served-model-name", "tiny", "--kv-cache-tokens", "2048",
                       port=port):
        body = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3, "temperature": 0}
        resp = httpx.post(f"http://127.0.0.1:{port}/v1/chat/completions", json=body, timeout=30)
        assert resp.status_code == 200 and resp.json()["usage"]["completion_tokens"] <= 3
