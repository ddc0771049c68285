"""A fleet: two `agentrt serve` workers behind the real `vllm-router` (PyPI, Rust; `make install` puts it in
.venv-router), consistent hashing on `X-Session-ID`, all over real HTTP on loopback.

The clients are the official `openai` client sending only their messages and an `X-Session-ID`
header. Each worker is the app `agentrt serve --preset agentrt` runs (its scheduling and retention
policy, the default model, a small KV pool), in this process so that its replies can be forced to a
bash action (the 135M model's own words rarely hold one). Two differences from the command, both for
the test's sake: the engine's clock is a `VirtualClock` (a pin never runs out while a test waits, so
nothing depends on the machine's speed) and the start-up reload profile is skipped (about a minute on
two cores; the cost model reads the engine's measured forward time instead).

What each program's requests did is read from the workers' own /metrics, one request at a time:
exactly one worker's `agentrt:requests_total` moves, always the same one for a program; its first turn
made a pin there (`agentrt:kv_pins_total`) and its second turn hit it (`agentrt:kv_pin_hits_total`).
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from agentrt.presets import get_preset
from agentrt.server import create_app
from engine import AsyncEngine, EngineConfig
from engine.engine import Engine
from engine.sim import VirtualClock
from tests.conftest import forced_outputs, free_port, serve

MODEL = "SmolLM2-135M-Instruct"
ROUTER = Path(os.environ.get("AGENTRT_VLLM_ROUTER", Path(__file__).parents[2] / ".venv-router" / "bin" / "vllm-router"))
BASH_REPLY = "I will list the files.\n```bash\nls -la\n```"
MIN_PROGRAMS, MAX_PROGRAMS = 6, 20  # programs run until both workers have served some (hashing is by port)


def _router_or_skip() -> Path:
    """The router's launcher; skipped only where its binary cannot run on this platform."""
    if not ROUTER.exists():
        pytest.fail(f"vllm-router is not installed at {ROUTER}: run `make install` (or set AGENTRT_VLLM_ROUTER)")
    try:
        probe = subprocess.run([str(ROUTER), "--help"], capture_output=True, text=True, timeout=60)
    except OSError as exc:  # e.g. an exec format error: a wheel for another platform
        pytest.skip(f"the vllm-router binary cannot run on this platform: {exc}")
    if probe.returncode != 0 or "consistent_hash" not in probe.stdout:
        pytest.skip(f"the vllm-router binary cannot run on this platform: {probe.stderr.strip()[-500:]}")
    return ROUTER


@contextlib.contextmanager
def _router(worker_urls: list[str], log: Path) -> Iterator[str]:
    port = free_port()
    with log.open("w") as out:
        proc = subprocess.Popen(
            [str(_router_or_skip()), "--worker-urls", *worker_urls, "--policy", "consistent_hash",
             "--host", "127.0.0.1", "--port", str(port), "--prometheus-host", "127.0.0.1",
             "--prometheus-port", str(free_port()), "--worker-startup-check-interval", "1"],
            stdout=out, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 60
            while True:
                assert proc.poll() is None, f"vllm-router exited: {log.read_text()[-2000:]}"
                try:
                    if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                assert time.monotonic() < deadline, f"vllm-router did not come up: {log.read_text()[-2000:]}"
                time.sleep(0.1)
            yield f"http://127.0.0.1:{port}"
        finally:
            proc.terminate()
            proc.wait(timeout=30)


def _worker(model_dir: Path, clock: VirtualClock) -> tuple[AsyncEngine, object]:
    preset = get_preset("agentrt")
    engine = Engine(EngineConfig(model=str(model_dir)), clock=clock, kv_cache_tokens=2048,
                    **{**preset.engine_options(), "profile_reload": False})
    aengine = AsyncEngine(engine)
    return aengine, create_app(aengine, MODEL, retention=preset.retention(), log_requests=False)


def _counters(url: str) -> dict[str, float]:
    names = ("agentrt:requests_total", "agentrt:kv_pins_total", "agentrt:kv_pin_hits_total")
    out = dict.fromkeys(names, 0.0)
    for line in httpx.get(f"{url}/metrics", timeout=10).text.splitlines():
        name = line.split("{")[0].split(" ")[0]
        if name in out:
            out[name] += float(line.rsplit(" ", 1)[1])
    return out


@pytest.mark.slow
def test_two_workers_behind_vllm_router_keep_each_program_on_one_worker_and_its_pins_hit(
        default_model_dir, tmp_path):
    from openai import OpenAI

    _router_or_skip()
    with contextlib.ExitStack() as stack:
        clock = VirtualClock(1000.0)  # both engines': pins run out only when the test moves it
        workers = [_worker(default_model_dir, clock) for _ in range(2)]
        urls = [stack.enter_context(serve(app)) for _, app in workers]
        texts = stack.enter_context(forced_outputs(workers[0][0].engine))
        workers[1][0].engine.on_logits = workers[0][0].engine.on_logits  # the same forced replies
        router = stack.enter_context(_router(urls, tmp_path / "router.log"))

        served_by: dict[str, set[int]] = {}
        for p in range(MAX_PROGRAMS):
            sid = f"fleet-task-{p}"
            texts[sid] = BASH_REPLY
            client = OpenAI(base_url=f"{router}/v1", api_key="unused", default_headers={"X-Session-ID": sid},
                            max_retries=0)
            messages = [{"role": "user", "content": f"Task {p}: list the repository's files and count them."}]
            for turn in range(2):
                before = [_counters(u) for u in urls]
                reply = client.chat.completions.create(model=MODEL, messages=messages, temperature=0, max_tokens=32)
                after = [_counters(u) for u in urls]
                assert reply.choices[0].message.content == BASH_REPLY
                moved = [i for i in range(2)
                         if after[i]["agentrt:requests_total"] - before[i]["agentrt:requests_total"] == 1]
                assert len(moved) == 1 and all(
                    after[i]["agentrt:requests_total"] == before[i]["agentrt:requests_total"]
                    for i in range(2) if i not in moved), (sid, turn, before, after)
                w = moved[0]
                served_by.setdefault(sid, set()).add(w)
                # the worker that served it pinned its KV after each turn; the second turn hit the first's pin
                assert after[w]["agentrt:kv_pins_total"] - before[w]["agentrt:kv_pins_total"] == 1, (sid, turn)
                hits = after[w]["agentrt:kv_pin_hits_total"] - before[w]["agentrt:kv_pin_hits_total"]
                assert hits == (1 if turn else 0), (sid, turn)
                messages += [{"role": "assistant", "content": reply.choices[0].message.content},
                             {"role": "user", "content": "README.md setup.py src tests"}]
            clock.advance(3600.0)  # the program has gone: its last pin runs out, the small pool stays free
            if p + 1 >= MIN_PROGRAMS and {w for ws in served_by.values() for w in ws} == {0, 1}:
                break

    assert all(len(ws) == 1 for ws in served_by.values()), served_by  # no program ever changed worker
    assert {w for ws in served_by.values() for w in ws} == {0, 1}, served_by  # and both workers served
