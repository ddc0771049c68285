"""The `openai` backend driving this project's own server over real HTTP on loopback, incl. two servers
with program affinity, and the runtime on top of it."""

from __future__ import annotations

import contextlib

import pytest

from agentrt import OpenAIBackend, Runtime, SamplingParams
from agentrt.backends.openai_http import AffinityRouter
from agentrt.server import create_app
from agentrt.store import LLMCall, read_rows
from engine import EngineConfig
from tests.conftest import recording_engine_class, serve


RecordingEngine = recording_engine_class()


@pytest.fixture()
def servers(tiny_model_dir):
    """Two real servers on loopback, each with its own engine: [(base URL, engine), ...]."""
    with contextlib.ExitStack() as stack:
        started = []
        for _ in range(2):
            engine = RecordingEngine(EngineConfig(model=str(tiny_model_dir)), kv_cache_tokens=4096)
            started.append((stack.enter_context(serve(create_app(engine, "tiny"))) + "/v1", engine))
        yield started


def test_router_affinity_and_least_loaded():
    r = AffinityRouter(["http://a/v1", "http://b/v1/"])
    assert r.route("p1") == "http://a/v1" and r.route("p2") == "http://b/v1" and r.route("p1") == "http://a/v1"
    assert r.route("p3") == "http://a/v1"  # tie -> first listed
    r.release("p1")
    r.release("p3")
    assert r.route("p4") == "http://a/v1"  # a has 0 live programs, b has 1
    assert r.load == {"http://a/v1": 1, "http://b/v1": 1}


def test_runtime_over_http_with_two_servers_keeps_programs_on_one_server(servers, tmp_path):
    urls = [u for u, _ in servers]
    db = str(tmp_path / "http.db")

    async def agent(ctx, task):
        ctx.user(f"task {task}")
        for _ in range(3):
            await ctx.chat()
            ctx.user("go on")
        return ctx.turn

    backend = OpenAIBackend(urls)
    rt = Runtime(backend, db=db, tenant="t1", sampling=SamplingParams(temperature=0.0, max_tokens=4, ignore_eos=True))
    res = rt.run(agent, range(6))
    assert [p.status for p in res.programs] == ["finished"] * 6 and backend.model == "tiny"
    per_server = [{h.program_id for h in engine.hints} for _, engine in servers]
    assert per_server[0] and per_server[1] and not (per_server[0] & per_server[1])  # both used, no program split
    assert per_server[0] | per_server[1] == {p.program_id for p in res.programs}
    for _, engine in servers:
        turns = {}
        for h in engine.hints:
            turns.setdefault(h.program_id, []).append(h.turn)
            assert h.tenant == "t1"
        assert all(t == [0, 1, 2] for t in turns.values())
        assert [h.is_last_turn for h in engine.hints].count(True) == 0
    calls = read_rows(db, LLMCall)
    assert len(calls) == 18 and all(c["output_tokens"] == 4 and c["first_token_at"] for c in calls)
    assert backend.router.load == {u: 0 for u in urls}  # programs released when they ended


def test_prefill_continues_the_assistant_message_over_http(servers):
    url, engine = servers[0]

    async def agent(ctx, task):
        return await ctx.chat([{"role": "user", "content": "hi"}], prefill="```bash\n", max_tokens=3, ignore_eos=True)

    res = Runtime(OpenAIBackend(url)).run(agent, [None])
    reply = res.programs[0].result
    assert reply.text.startswith("```bash\n") and reply.output_tokens == 3
