"""Faults: a request that fails inside the model, tools that hang, crash or flood, programs that raise.

The model failure is injected: the real runner of a real (tiny) engine is wrapped so that any
forward containing a marked request raises `torch.OutOfMemoryError`, as a GPU out of memory would.
Everything else is real: engine, server on loopback, shell processes, SQLite files."""

from __future__ import annotations

import json
import threading
import time

import anyio
import httpx
import torch

from agentrt import EmbeddedBackend, Runtime, ShellTool, StubBackend, tool
from agentrt.server import create_app
from agentrt.store import LLMCall, Program, ToolCallRow, read_rows
from engine import AsyncEngine, Engine, SamplingParams
from tests.conftest import serve

PARAMS = SamplingParams(temperature=0.0, max_tokens=10, ignore_eos=True)
PROMPTS = [[5, 6, 7, 8], list(range(20, 90)), [42] * 33, [9, 10]]


def inject_oom(engine: Engine, poisoned: set[str]) -> list[int]:
    """Makes every forward that includes a request in `poisoned` (by id or program id) raise OOM;
    returns the list of batch sizes that failed."""
    real_execute = engine.runner.execute
    failures: list[int] = []

    def execute(reqs, num_new):
        if any(r.request_id in poisoned or r.hint.program_id in poisoned for r in reqs):
            failures.append(len(reqs))
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (injected)")
        return real_execute(reqs, num_new)

    engine.runner.execute = execute
    return failures


def test_engine_fails_only_the_request_that_fails_alone_and_frees_its_blocks(tiny_model_dir):
    clean = Engine(model=str(tiny_model_dir), kv_cache_tokens=2048)
    expected = {}
    for i, p in enumerate(PROMPTS):
        clean.add_request(p, PARAMS, request_id=f"r{i}")
    while clean.has_unfinished_requests():
        expected.update({o.request_id: o.token_ids for o in clean.step()})

    engine = Engine(model=str(tiny_model_dir), kv_cache_tokens=2048)
    failures = inject_oom(engine, {"r2"})
    for i, p in enumerate(PROMPTS):
        engine.add_request(p, PARAMS, request_id=f"r{i}")
    done = {}
    while engine.has_unfinished_requests():
        for out in engine.step():
            assert out.request_id not in done, "a request finished twice"
            done[out.request_id] = out
        engine.pool.check_integrity()
    assert failures and failures[0] == len(PROMPTS) and 1 in failures  # the batch, then r2 alone
    bad = done.pop("r2")
    assert bad.finished and bad.finish_reason == "error" and "OutOfMemoryError" in bad.stop_reason
    assert {rid: o.token_ids for rid, o in done.items()} == {k: v for k, v in expected.items() if k != "r2"}
    assert all(o.finish_reason == "length" for o in done.values())
    assert engine.pool.num_free == engine.pool.num_blocks and not engine.requests
    # the engine keeps serving, the failed id included
    engine.add_request(PROMPTS[0], PARAMS, request_id="again")
    while engine.has_unfinished_requests():
        last = engine.step()
    assert last[0].token_ids == expected["r0"]


def test_server_answers_a_model_failure_as_an_error_and_serves_the_rest(tiny_model_dir):
    aengine = AsyncEngine(Engine(model=str(tiny_model_dir), kv_cache_tokens=2048))
    inject_oom(aengine.engine, {"poison"})
    body = {"model": "tiny", "prompt": "the fox", "max_tokens": 8, "ignore_eos": True, "temperature": 0}
    with serve(create_app(aengine, "tiny")) as url:
        async def main():
            async with httpx.AsyncClient(base_url=url, timeout=60) as c:
                async def stream(hint):
                    async with c.stream("POST", "/v1/completions",
                                        json={**body, "stream": True, "program_id": hint}) as r:
                        return r.status_code, [line[6:] async for line in r.aiter_lines() if line.startswith("data: ")]
                results = {}

                async def one(name, coro):
                    results[name] = await coro
                async with anyio.create_task_group() as tg:
                    for i in range(3):
                        tg.start_soon(one, f"ok{i}", c.post("/v1/completions", json=body))
                    tg.start_soon(one, "plain", c.post("/v1/completions", json={**body, "program_id": "poison"}))
                    tg.start_soon(one, "stream", stream("poison"))
                    tg.start_soon(one, "ok-stream", stream("fine"))
                return results

        res = anyio.run(main)
        for i in range(3):
            assert res[f"ok{i}"].status_code == 200 and res[f"ok{i}"].json()["usage"]["completion_tokens"] == 8
        plain = res["plain"]
        assert plain.status_code == 500 and "OutOfMemoryError" in plain.json()["error"]["message"]
        status, events = res["stream"]
        assert status == 200 and events[-1] == "[DONE]"
        assert json.loads(events[-2])["choices"][0]["finish_reason"] == "error"
        status, events = res["ok-stream"]
        assert status == 200 and json.loads(events[-2])["choices"][0]["finish_reason"] == "length"
        engine = aengine.engine
        deadline = time.monotonic() + 120  # drains in milliseconds; the bound only stops a hang
        while engine.has_unfinished_requests() and time.monotonic() < deadline:
            time.sleep(0.02)
        assert not engine.has_unfinished_requests()
        engine.pool.check_integrity()
        assert engine.pool.num_free == engine.pool.num_blocks
        assert httpx.post(f"{url}/v1/completions", json=body, timeout=60).status_code == 200


def test_a_program_whose_llm_call_fails_in_the_model_is_recorded_failed(tmp_path, tiny_model_dir):
    db = str(tmp_path / "oom.db")
    backend = EmbeddedBackend(model=str(tiny_model_dir), kv_cache_tokens=2048)
    poisoned: set[str] = set()
    inject_oom(backend.aengine.engine, poisoned)

    async def agent(ctx, task):
        if task == "poison":
            poisoned.add(ctx.program_id)
        for _ in range(2):
            await ctx.chat([{"role": "user", "content": f"tell me about {task}"}])
        return "done"

    rt = Runtime(backend, db=db, sampling=SamplingParams(temperature=0.0, max_tokens=6, ignore_eos=True))
    res = rt.run(agent, ["a", "poison", "b", "c"])
    assert [p.status for p in res.programs] == ["finished", "failed", "finished", "finished"]
    assert "OutOfMemoryError" in res.programs[1].error and res.programs[1].error.startswith("Traceback")
    rows = {r["id"]: r for r in read_rows(db, Program, run_id=res.run_id)}
    assert rows[res.programs[1].program_id]["status"] == "failed"
    failed_calls = [c for c in read_rows(db, LLMCall) if c["error"]]
    assert len(failed_calls) == 1 and failed_calls[0]["program_id"] == res.programs[1].program_id
    assert len(read_rows(db, LLMCall)) == 2 * 3 + 1  # every other turn ran
    engine = backend.aengine.engine
    engine.pool.check_integrity()
    assert engine.pool.num_free == engine.pool.num_blocks


# ---- tools ---------------------------------------------------------------------------------------

def test_a_program_survives_tools_that_hang_crash_and_flood(tmp_path):
    """Each bad tool comes back as a bounded result; the program goes on to its next turn. The
    hanging tools never end by themselves, so a result at all shows the timeout cut them; the tools
    that must finish get a timeout no loaded machine reaches."""
    db = str(tmp_path / "faults.db")
    release_thread = threading.Event()
    thread_done = threading.Event()

    @tool(timeout_s=0.3)
    async def hang() -> str:
        await anyio.sleep_forever()

    @tool(timeout_s=0.3)
    def hang_in_thread() -> str:
        release_thread.wait(120)  # a sync tool cannot be killed: its thread is abandoned, the call returns
        thread_done.set()
        return "too late"

    @tool
    def crash() -> str:
        raise RuntimeError("segfault in a C extension")

    @tool
    def flood() -> str:
        return "é" * 1_000_000  # 2 MB of UTF-8; the cap must not cut a character in half

    sh = ShellTool(tmp_path, timeout_s=60, max_output_bytes=10_000)
    sh_hang = ShellTool(tmp_path, timeout_s=0.5, name="bash_hang")
    calls = [("hang", {}), ("hang_in_thread", {}), ("crash", {}), ("flood", {}),
             ("bash_hang", {"command": "sleep 3600; echo never"}), ("bash", {"command": "echo before; kill -SEGV $$"}),
             ("bash", {"command": "head -c 1000000 /dev/zero | tr '\\0' y"})]
    seen = {}

    async def agent(ctx, task):
        for name, args in calls:
            r = await ctx.tool(name, **args)
            seen[f"{name} {args}"] = (r, thread_done.is_set())
        return (await ctx.chat([{"role": "user", "content": "go on"}])).text

    try:
        res = Runtime(StubBackend(lambda m, h: "done"), db=db,
                      tools=[hang, hang_in_thread, crash, flood, sh, sh_hang]).run(agent, [None])
    finally:
        release_thread.set()  # let the abandoned thread end
    assert res.programs[0].status == "finished" and res.programs[0].result == "done"
    results = list(seen.values())
    assert [r.ok for r, _ in results] == [False, False, False, True, False, False, True]
    for r, _ in results[:2] + results[4:5]:
        assert "timed out" in r.output and "never" not in r.output
    assert results[1][1] is False  # the sync tool's call returned while its thread still ran
    assert results[2][0].error == "exception" and "segfault in a C extension" in results[2][0].output
    for r, _ in (results[3], results[6]):
        assert len(r.output.encode()) <= 10_100 and r.output.endswith("[output truncated to 10000 bytes]")
    assert results[3][0].output.startswith("é" * 100)
    segv = results[5][0]
    assert segv.exit_code == -11 and "before" in segv.output and "SIGSEGV" in segv.output
    rows = read_rows(db, ToolCallRow)
    assert len(rows) == len(calls) and all(len(r["output"]) <= 10_100 for r in rows)
