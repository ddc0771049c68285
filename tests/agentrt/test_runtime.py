"""The runtime: many programs at once, error isolation, limits, arrivals, and the store of every turn.

Fast tests use the stub backend (instant replies); the end-to-end ones use the real default model
with a real shell tool in a real temp directory and a real SQLite file."""

from __future__ import annotations

import anyio
import pytest

from agentrt import EmbeddedBackend, Runtime, SamplingParams, ShellTool, StubBackend, poisson_arrivals
from agentrt.report import run_report
from agentrt.store import EngineSample, LLMCall, Program, ToolCallRow, read_rows


def scripted(replies_by_turn):
    """Stub replies by turn index: a bash command for early turns, then an answer."""
    def reply(messages, hint):
        return replies_by_turn[min(hint.turn, len(replies_by_turn) - 1)]
    return StubBackend(reply)


async def shell_agent(ctx, task):
    sh = ShellTool(task)
    ctx.user("look around")
    while True:
        reply = await ctx.chat(tools=[sh], tool_format="bash")
        if reply.format_error:
            ctx.user(reply.format_error)
        elif not reply.tool_calls:
            return reply.text
        else:
            await ctx.tool(reply.tool_calls[0])


def test_program_turns_and_tool_calls_land_in_the_store(tmp_path):
    (tmp_path / "data.txt").write_text("alpha\nbeta\n")
    db = str(tmp_path / "run.db")
    backend = scripted(["```bash\nwc -l data.txt\n```", "two blocks:\n```bash\nls\n```\n```bash\npwd\n```",
                        "```bash\ncat data.txt\n```", "It has 2 lines."])
    result = Runtime(backend, db=db, max_turns=10).run(shell_agent, [str(tmp_path)] * 3)
    assert [p.status for p in result.programs] == ["finished"] * 3
    assert all(p.result == "It has 2 lines." and p.turns == 4 for p in result.programs)
    programs = read_rows(db, Program, run_id=result.run_id)
    assert len(programs) == 3 and all(p["status"] == "finished" and p["jct_s"] > 0 for p in programs)
    calls = read_rows(db, LLMCall)
    assert len(calls) == 12 and sorted({c["turn"] for c in calls}) == [0, 1, 2, 3]
    tools = read_rows(db, ToolCallRow)
    assert len(tools) == 6  # the format error turn ran nothing
    wc = [t for t in tools if t["arguments"] == {"command": "wc -l data.txt"}]
    assert len(wc) == 3 and all(t["ok"] and "2 data.txt" in t["output"] and t["duration_s"] > 0 for t in wc)
    # the format error went back to the model as a user message
    assert any("EXACTLY ONE action" in (c["prompt"] or "") for c in calls)


def test_tool_hooks_see_every_timed_result(tmp_path):
    seen = []
    backend = scripted(["```bash\necho one\n```", "```bash\nexit 4\n```", "done"])
    Runtime(backend, tool_hooks=[lambda ctx, result: seen.append((ctx.program_id, result))]).run(
        shell_agent, [str(tmp_path)] * 2)
    assert len(seen) == 4 and len({pid for pid, _ in seen}) == 2
    assert sorted(r.exit_code for _, r in seen) == [0, 0, 4, 4]
    assert all(r.finished_at >= r.started_at > 0 for _, r in seen)


def test_hints_carry_program_identity_and_last_turn():
    seen = []

    def reply(messages, hint):
        seen.append(hint)
        return "ok"

    async def agent(ctx, task):
        await ctx.chat([{"role": "user", "content": "a"}])
        await ctx.chat(last_turn=True)

    async def capped(ctx, task):
        for _ in range(3):
            await ctx.chat([{"role": "user", "content": "b"}])

    rt = Runtime(StubBackend(reply), max_turns=3, tenant="acme")
    res = rt.run(agent, [None])
    pid = res.programs[0].program_id
    assert [(h.program_id, h.turn, h.is_last_turn, h.tenant) for h in seen] == [
        (pid, 0, False, "acme"), (pid, 1, True, "acme")]
    seen.clear()
    rt.run(capped, [None])
    assert [h.is_last_turn for h in seen] == [False, False, True]  # max_turns marks the last one


def test_failures_timeouts_and_turn_limits_are_isolated(tmp_path):
    """The time limit is real time, so it is set far above what the stub-backed programs need
    (milliseconds) and only the program that never ends reaches it."""
    db = str(tmp_path / "iso.db")
    others_done = anyio.Event()
    ended = []

    async def agent(ctx, task):
        try:
            if task == "raise":
                raise ValueError("bad task")
            if task == "hang":
                await anyio.sleep_forever()
            if task == "chatty":
                while True:
                    await ctx.chat([{"role": "user", "content": "again"}])
            return await ctx.chat([{"role": "user", "content": "hi"}])
        finally:
            ended.append(task)
            if len(ended) == 4:
                others_done.set()

    res = Runtime(StubBackend(), db=db, time_limit_s=5.0, max_turns=4).run(
        agent, ["raise", "hang", "chatty", "ok", "ok"])
    status = [p.status for p in res.programs]
    assert status == ["failed", "timeout", "finished", "finished", "finished"]
    assert others_done.is_set() and ended[-1] == "hang"  # the others ended first, untouched by it
    assert res.programs[1].error == "time limit of 5.0 s reached"
    assert "ValueError: bad task" in res.programs[0].error and "Traceback" in res.programs[0].error
    assert res.programs[2].turns == 4 and "limit of 4 turns" in res.programs[2].error
    rows = {p["index"]: p for p in read_rows(db, Program)}
    assert rows[0]["status"] == "failed" and rows[1]["status"] == "timeout"
    # the stored error is the whole traceback, down to the agent's line that raised
    assert rows[0]["error"].startswith("Traceback") and 'raise ValueError("bad task")' in rows[0]["error"]


def test_cancelling_a_run_records_every_program():
    async def agent(ctx, task):
        await anyio.sleep(30)

    rt = Runtime(StubBackend())

    async def main():
        async with anyio.create_task_group() as tg:
            async def cancel_soon():
                await anyio.sleep(0.3)
                rt.cancel()
            tg.start_soon(cancel_soon)
            return await rt.run_async(agent, range(5), rate=5.0)

    res = anyio.run(main)
    assert len(res.programs) == 5 and {p.status for p in res.programs} == {"cancelled"}


def test_poisson_arrivals():
    assert poisson_arrivals(3, None) == [0.0, 0.0, 0.0]
    offs = poisson_arrivals(4000, 20.0, seed=1)
    gaps = [b - a for a, b in zip(offs, offs[1:])]
    assert offs == sorted(offs) and offs[0] == 0.0
    assert sum(gaps) / len(gaps) == pytest.approx(1 / 20.0, rel=0.05)
    assert poisson_arrivals(5, 2.0, seed=7) == poisson_arrivals(5, 2.0, seed=7)
    with pytest.raises(ValueError):
        poisson_arrivals(2, 0.0)


def test_arrivals_are_staggered_and_jct_starts_at_arrival():
    async def agent(ctx, task):
        return await ctx.chat([{"role": "user", "content": "x"}])

    res = Runtime(StubBackend()).run(agent, range(20), rate=50.0, seed=3)
    offsets = poisson_arrivals(20, 50.0, seed=3)
    arrivals = [p.arrival_at for p in res.programs]
    assert arrivals == pytest.approx([res.started_at + o for o in offsets], abs=1e-5)  # staggered as drawn
    assert arrivals == sorted(arrivals) and arrivals[-1] - arrivals[0] > 0.1
    for p in res.programs:
        assert p.started_at >= p.arrival_at - 0.05  # no program starts before it arrives
        assert p.finished_at >= p.started_at
        # JCT runs from the program's own arrival, not from the start of the run
        assert p.jct_s == pytest.approx(p.finished_at - p.arrival_at, abs=1e-5)  # epoch floats: ~1e-7 s apart
        assert p.jct_s == pytest.approx(p.finished_at - res.started_at - offsets[p.index], abs=1e-5)


@pytest.mark.slow
def test_real_model_agent_with_shell_runs_turns_end_to_end(tmp_path, default_model_dir):
    """The default model, a real shell in a real directory, several turns, everything in SQLite."""
    (tmp_path / "README.md").write_text("# demo\nThis folder holds a demo.\n")
    (tmp_path / "main.py").write_text("print('hello')\n")
    db = str(tmp_path / "e2e.db")

    async def agent(ctx, task):
        sh = ShellTool(task, timeout_s=10)
        ctx.system("Answer with exactly one shell command in a ```bash block.")
        ctx.user("List the files in the current directory.")
        for _ in range(ctx.max_turns):
            reply = await ctx.chat(tools=[sh], tool_format="bash")
            if reply.format_error:
                ctx.user(reply.format_error)
            elif reply.tool_calls:
                await ctx.tool(reply.tool_calls[0])
            else:
                ctx.user("Now run one more command in a ```bash block.")

    backend = EmbeddedBackend(model=str(default_model_dir), kv_cache_tokens=16384)
    rt = Runtime(backend, db=db, max_turns=3, sampling=SamplingParams(temperature=0.0, max_tokens=48))
    res = rt.run(agent, [str(tmp_path)] * 2)
    assert all(p.status == "finished" and p.turns == 3 for p in res.programs)
    calls = read_rows(db, LLMCall)
    assert len(calls) == 6
    assert all(c["output_tokens"] > 0 and c["finished_at"] >= c["first_token_at"] >= c["queued_at"] for c in calls)
    # later turns reuse the program's earlier context from the prefix cache
    assert any(c["cached_tokens"] > 0 for c in calls if c["turn"] > 0)
    tools = read_rows(db, ToolCallRow)
    assert tools, "the model ran no command in 6 turns"
    assert all(t["finished_at"] >= t["started_at"] for t in tools)
    assert read_rows(db, EngineSample, run_id=res.run_id)
    rep = run_report(db, res.run_id)
    assert rep["programs"] == 2 and rep["by_status"] == {"finished": 2} and rep["jct_p50_s"] > 0
    assert backend.aengine.engine.pool.num_free == backend.aengine.engine.pool.num_blocks


@pytest.mark.slow
def test_32_concurrent_programs_with_staggered_arrivals_lose_no_turn(tmp_path, default_model_dir):
    db = str(tmp_path / "many.db")

    async def agent(ctx, task):
        ctx.user(f"Say a number bigger than {task}.")
        for _ in range(3):
            reply = await ctx.chat()
            ctx.user("And one more?")
        return reply.text

    backend = EmbeddedBackend(model=str(default_model_dir), kv_cache_tokens=16384)
    rt = Runtime(backend, db=db, sampling=SamplingParams(temperature=0.0, max_tokens=8))
    res = rt.run(agent, range(32), rate=40.0, seed=5)
    assert [p.status for p in res.programs] == ["finished"] * 32
    calls = read_rows(db, LLMCall)
    per_program = {}
    for c in calls:
        per_program.setdefault(c["program_id"], []).append(c["turn"])
    assert len(per_program) == 32 and all(sorted(t) == [0, 1, 2] for t in per_program.values())
    assert backend.aengine.engine.pool.num_free == backend.aengine.engine.pool.num_blocks
