"""The OpenAI-compatible server over real HTTP: uvicorn in a thread, httpx and the official openai client.

Most tests share one server on the tiny random model (its text is garbage, so they check shapes,
token counts and greedy agreement, not words); one slow test runs the real default model.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import httpx
import openai
import pytest

from agentrt.server import create_app, run_server
from engine import AsyncEngine, ConfigError, EngineConfig, ProgramHint
from tests.conftest import forced_outputs, recording_engine_class, serve

API_KEY = "test-key"
MODEL = "tiny"
HELLO = [{"role": "user", "content": "The quick brown fox jumps over the lazy dog. Agents call tools."}]
TOOLS = [{"type": "function", "function": {
    "name": "bash", "description": "Run a shell command",
    "parameters": {"type": "object", "properties": {"cmd": {"type": "string"}}, "required": ["cmd"]}}}]


RecordingEngine = recording_engine_class()


def wait_idle(engine, timeout: float = 120.0) -> None:
    """Polls until no request is left in the engine and every KV block is free (an idle machine
    drains in milliseconds; the bound only keeps a broken drain from hanging the run)."""
    deadline = time.monotonic() + timeout
    while engine.has_unfinished_requests() or engine.pool.num_free != engine.pool.num_blocks:
        assert time.monotonic() < deadline, f"engine not idle: {engine.requests}, {engine.pool.num_free} free"
        time.sleep(0.02)


@pytest.fixture(scope="module")
def tiny_server(tiny_model_dir):
    aengine = RecordingEngine(EngineConfig(model=str(tiny_model_dir)), kv_cache_tokens=4096)
    with serve(create_app(aengine, MODEL, api_key=API_KEY)) as url:
        yield url, aengine


@pytest.fixture()
def http(tiny_server) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=tiny_server[0], headers={"Authorization": f"Bearer {API_KEY}"}, timeout=30) as c:
        yield c


@pytest.fixture()
def client(tiny_server) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{tiny_server[0]}/v1", api_key=API_KEY, max_retries=0)


def sse_events(response: httpx.Response) -> list[str]:
    return [line.removeprefix("data: ") for line in response.iter_lines() if line.startswith("data: ")]


@pytest.fixture()
def forced(tiny_server):
    """`forced[program_id] = text` makes the server's greedy requests of that program generate
    exactly `text` then EOS (through `Engine.on_logits`), so replies hold what a test needs."""
    engine = tiny_server[1].engine
    with forced_outputs(engine) as texts:
        yield texts


def metric_values(url: str) -> dict[str, float]:
    """Prometheus samples by name, labels dropped (the server's metrics carry only `model_name`,
    plus a reason on a few, which are summed)."""
    r = httpx.get(f"{url}/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    values: dict[str, float] = {}
    for line in r.text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.split("{")[0].split()[0], float(line.rsplit(" ", 1)[1])
            values[name] = values.get(name, 0.0) + value
    return values


def assert_served(http: httpx.Client) -> None:
    r = http.post("/v1/completions", json={"model": MODEL, "prompt": "hello", "max_tokens": 2})
    assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] >= 1


# ---- the happy paths -----------------------------------------------------------------------------

def test_openai_client_chat_non_streaming_and_streaming_agree(client, tiny_server):
    greedy = dict(model=MODEL, messages=HELLO, temperature=0, max_tokens=8, extra_body={"ignore_eos": True})
    resp = client.chat.completions.create(**greedy)
    choice = resp.choices[0]
    assert resp.object == "chat.completion" and resp.model == MODEL and resp.id.startswith("chatcmpl-")
    assert choice.message.role == "assistant" and isinstance(choice.message.content, str)
    assert choice.finish_reason == "length" and choice.logprobs is None
    assert resp.usage.completion_tokens == 8 and resp.usage.prompt_tokens > 16
    assert resp.usage.total_tokens == resp.usage.prompt_tokens + 8

    chunks = list(client.chat.completions.create(**greedy, stream=True, stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == choice.message.content
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    usage = chunks[-1].usage
    assert not chunks[-1].choices and usage.completion_tokens == 8
    # the same prompt again: its full blocks come from the prefix cache
    assert usage.prompt_tokens_details.cached_tokens >= 16
    wait_idle(tiny_server[1].engine)


def test_openai_client_completions_and_logprobs(client):
    kw = dict(model=MODEL, prompt="Agents call tools", temperature=0, max_tokens=6, extra_body={"ignore_eos": True})
    resp = client.completions.create(**kw, logprobs=2)
    choice = resp.choices[0]
    assert resp.object == "text_completion" and choice.finish_reason == "length"
    assert resp.usage.completion_tokens == 6
    assert len(choice.logprobs.tokens) == len(choice.logprobs.token_logprobs) == 6
    assert all(1 <= len(top) <= 2 and lp <= 0  # <= 2: distinct ids may decode to the same text
               for top, lp in zip(choice.logprobs.top_logprobs, choice.logprobs.token_logprobs))
    streamed = list(client.completions.create(**kw, stream=True))
    assert "".join(c.choices[0].text for c in streamed) == choice.text
    assert streamed[-1].choices[0].finish_reason == "length"

    chat_kw = dict(model=MODEL, messages=HELLO, max_tokens=5, temperature=0, logprobs=True, top_logprobs=3,
                   extra_body={"ignore_eos": True})
    entries = client.chat.completions.create(**chat_kw).choices[0].logprobs.content
    assert len(entries) == 5 and all(len(e.top_logprobs) == 3 and e.logprob <= 0 for e in entries)
    assert all(e.top_logprobs[0].logprob == pytest.approx(e.logprob) for e in entries)  # greedy took the best
    streamed_entries = [e for c in client.chat.completions.create(**chat_kw, stream=True)
                        if c.choices and c.choices[0].logprobs for e in c.choices[0].logprobs.content]
    assert [(e.token, e.logprob) for e in streamed_entries] == [(e.token, e.logprob) for e in entries]


def test_sampling_options_are_applied(http, tiny_server):
    greedy = {"model": MODEL, "prompt": "hello", "max_tokens": 8, "temperature": 0, "ignore_eos": True}
    text = http.post("/v1/completions", json=greedy).json()["choices"][0]["text"]
    stop = text[3:5]
    assert len(stop) == 2
    cut = http.post("/v1/completions", json={**greedy, "stop": [stop]}).json()["choices"][0]
    assert cut["finish_reason"] == "stop" and cut["text"] == text[:text.find(stop)]
    vocab = tiny_server[1].engine.model_config.vocab_size
    first = http.post("/v1/completions", json={**greedy, "stop_token_ids": list(range(vocab))}).json()
    assert first["choices"][0]["finish_reason"] == "stop" and first["usage"]["completion_tokens"] == 1
    seeded = {**greedy, "temperature": 1.0, "top_k": 50, "top_p": 0.9, "seed": 7}
    a, b = (http.post("/v1/completions", json=seeded).json()["choices"][0]["text"] for _ in range(2))
    assert a == b  # same seed, same text


def test_models_health_and_metrics(client, tiny_server):
    assert [m.id for m in client.models.list()] == [MODEL]
    url, aengine = tiny_server
    assert httpx.get(f"{url}/health").json() == {"status": "ok"}  # open without a key
    wait_idle(aengine.engine)
    before = metric_values(url)
    # the same 40-token prompt twice: the second finds its first two 16-token blocks cached
    prompt = list(range(200, 240))
    usages = [client.completions.create(model=MODEL, prompt=prompt, max_tokens=3, temperature=0,
                                        extra_body={"ignore_eos": True}).usage for _ in range(2)]
    assert [u.prompt_tokens_details.cached_tokens for u in usages] == [0, 32]
    wait_idle(aengine.engine)
    after = metric_values(url)
    moved = {k: after[k] - before[k] for k in after}
    assert moved["agentrt:requests_total"] == 2
    assert moved["vllm:request_success_total"] == 2
    assert moved["vllm:prompt_tokens_total"] == moved["vllm:prefix_cache_queries_total"] == 2 * 40
    assert moved["vllm:generation_tokens_total"] == 2 * 3
    assert moved["vllm:prefix_cache_hits_total"] == 32
    text = httpx.get(f"{url}/metrics").text
    for counter in ("agentrt:requests_total", "vllm:prompt_tokens_total", "vllm:generation_tokens_total",
                    "vllm:prefix_cache_hits_total"):
        assert f"# TYPE {counter} counter" in text
    assert f'vllm:prompt_tokens_total{{model_name="{MODEL}"}}' in text
    assert after["agentrt:kv_blocks_free"] == after["agentrt:kv_blocks_total"] == aengine.engine.pool.num_blocks
    assert after["vllm:num_requests_running"] == after["vllm:num_requests_waiting"] == 0
    assert after["vllm:kv_cache_usage_perc"] == 0


# ---- errors --------------------------------------------------------------------------------------

CHAT, COMPLETIONS = "/v1/chat/completions", "/v1/completions"
BAD_INPUTS = {
    "malformed json": (CHAT, '{"model": "tiny", "messages": [', 400, None),
    "missing messages": (CHAT, {"model": MODEL}, 400, None),
    "messages not a list": (CHAT, {"model": MODEL, "messages": "hi"}, 400, None),
    "max_tokens not an int": (CHAT, {"model": MODEL, "messages": HELLO, "max_tokens": "many"}, 400, None),
    "image part": (CHAT, {"model": MODEL, "messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "http://x/y.png"}}]}]}, 400, None),
    "unknown model": (CHAT, {"model": "gpt-9", "messages": HELLO}, 404, "model_not_found"),
    "chat too long": (CHAT, {"model": MODEL, "messages": [{"role": "user", "content": "the dog " * 3000}]},
                      400, "context_length_exceeded"),
    "prompt too long": (COMPLETIONS, {"model": MODEL, "prompt": [5] * 3000}, 400, "context_length_exceeded"),
    "zero max_tokens": (COMPLETIONS, {"model": MODEL, "prompt": "hi", "max_tokens": 0}, 400, None),
    "negative max_tokens": (CHAT, {"model": MODEL, "messages": HELLO, "max_tokens": -5}, 400, None),
    "negative max_tokens streamed": (CHAT, {"model": MODEL, "messages": HELLO, "max_completion_tokens": -1,
                                            "stream": True}, 400, None),
    "negative temperature": (CHAT, {"model": MODEL, "messages": HELLO, "temperature": -1}, 400, None),
    "top_p zero": (COMPLETIONS, {"model": MODEL, "prompt": "hi", "top_p": 0}, 400, None),
    "too many top_logprobs": (CHAT, {"model": MODEL, "messages": HELLO, "logprobs": True, "top_logprobs": 50},
                              400, None),
    "n=2": (CHAT, {"model": MODEL, "messages": HELLO, "n": 2}, 400, None),
    "token id out of vocab": (COMPLETIONS, {"model": MODEL, "prompt": [10**6]}, 400, None),
    # JSON can escape a lone surrogate; as a tenant it once reached the prefix hash and killed the engine loop
    "lone surrogate in prompt": (COMPLETIONS, '{"model": "tiny", "prompt": "a\\ud800"}', 400, None),
    "lone surrogate in tenant": (CHAT, '{"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "tenant": "\\udfff"}',
                                 400, None),
}


@pytest.mark.parametrize("case", BAD_INPUTS)
def test_bad_input_gets_an_openai_error_and_the_server_keeps_serving(http, tiny_server, case):
    path, body, status, code = BAD_INPUTS[case]
    if isinstance(body, str):
        r = http.post(path, content=body, headers={"Content-Type": "application/json"})
    else:
        r = http.post(path, json=body)
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/json"
    error = r.json()["error"]
    assert error["type"] == "invalid_request_error" and error["message"] and error["code"] == code
    assert "param" in error
    wait_idle(tiny_server[1].engine)
    assert_served(http)


def test_openai_client_sees_typed_errors(client):
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="nope", messages=HELLO)
    with pytest.raises(openai.BadRequestError) as info:
        client.completions.create(model=MODEL, prompt=[5] * 3000)
    assert info.value.code == "context_length_exceeded"


def test_api_key_is_required_on_v1_routes(tiny_server):
    url = tiny_server[0]
    for headers in ({}, {"Authorization": "Bearer wrong"}):
        r = httpx.post(f"{url}/v1/chat/completions", headers=headers, json={"model": MODEL, "messages": HELLO})
        assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
        assert httpx.get(f"{url}/v1/models", headers=headers).status_code == 401
    assert httpx.get(f"{url}/v1/models", headers={"Authorization": f"Bearer {API_KEY}"}).status_code == 200
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=f"{url}/v1", api_key="wrong", max_retries=0).models.list()


# ---- program hints and tools ---------------------------------------------------------------------

def test_program_hints_reach_the_engine_under_both_naming_schemes(client, tiny_server):
    aengine = tiny_server[1]
    client.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=2, extra_body={
        "program_id": "prog-1", "turn": 3, "is_last_turn": True, "tenant": "acme"})
    assert aengine.hints[-1] == ProgramHint(program_id="prog-1", turn=3, is_last_turn=True, tenant="acme")
    client.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=2, extra_body={
        "job_id": 42, "is_last_step": True, "this_func_call": "bash"})
    assert aengine.hints[-1] == ProgramHint(program_id="42", is_last_turn=True)
    client.completions.create(model=MODEL, prompt="hi", max_tokens=2, extra_body={"job_id": "j7", "turn": 1})
    assert aengine.hints[-1] == ProgramHint(program_id="j7", turn=1)


def test_program_hints_from_headers_for_clients_that_cannot_add_body_fields(client, tiny_server, http):
    aengine = tiny_server[1]
    headers = {"X-Agentrt-Program-Id": "bfcl-3", "X-Agentrt-Turn": "2", "X-Agentrt-Last-Turn": "true",
               "X-Agentrt-Tenant": "acme"}
    client.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=2, extra_headers=headers)
    assert aengine.hints[-1] == ProgramHint(program_id="bfcl-3", turn=2, is_last_turn=True, tenant="acme")
    # a body field wins over its header
    client.completions.create(model=MODEL, prompt="hi", max_tokens=2, extra_headers=headers,
                              extra_body={"program_id": "body-1", "turn": 5})
    assert aengine.hints[-1] == ProgramHint(program_id="body-1", turn=5, is_last_turn=True, tenant="acme")
    # ... also when the body's value is the default: an explicit first turn, not the last one
    client.completions.create(model=MODEL, prompt="hi", max_tokens=2, extra_headers=headers,
                              extra_body={"turn": 0, "is_last_turn": False})
    assert aengine.hints[-1] == ProgramHint(program_id="bfcl-3", turn=0, is_last_turn=False, tenant="acme")
    client.completions.create(model=MODEL, prompt="hi", max_tokens=2, extra_headers=headers,
                              extra_body={"is_last_step": False})  # vllm-continuum's name for it
    assert aengine.hints[-1] == ProgramHint(program_id="bfcl-3", turn=2, is_last_turn=False, tenant="acme")
    before = len(aengine.hints)
    for name, value in (("X-Agentrt-Turn", "two"), ("X-Agentrt-Last-Turn", "maybe")):
        r = http.post("/v1/completions", json={"model": MODEL, "prompt": "hi", "max_tokens": 2}, headers={name: value})
        assert r.status_code == 400 and name in r.json()["error"]["message"]
    assert len(aengine.hints) == before  # refused before reaching the engine


CALL_TEXT = 'Let me look.\n<tool_call>\n{"name": "bash", "arguments": {"cmd": "ls -la"}}\n</tool_call>'


def test_a_reply_that_calls_a_tool_comes_back_as_structured_tool_calls(client, forced):
    forced["caller"] = CALL_TEXT
    kw = dict(model=MODEL, messages=HELLO, tools=TOOLS, temperature=0, max_tokens=64,
              extra_body={"program_id": "caller"})
    choice = client.chat.completions.create(**kw).choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content == "Let me look.\n"
    (call,) = choice.message.tool_calls
    assert call.type == "function" and call.id.startswith("call_") and call.function.name == "bash"
    assert json.loads(call.function.arguments) == {"cmd": "ls -la"}
    # streamed: the text before the call as content (no piece of the tag ever shows), then the call
    chunks = list(client.chat.completions.create(**kw, stream=True))
    content = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert content == "Let me look.\n"
    deltas = [tc for c in chunks if c.choices and c.choices[0].delta.tool_calls for tc in c.choices[0].delta.tool_calls]
    assert [(d.index, d.function.name, json.loads(d.function.arguments)) for d in deltas] == [
        (0, "bash", {"cmd": "ls -la"})]
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "tool_calls"
    # a reply without a call, with tools offered, is plain content
    forced["caller"] = "No tool is needed."
    plain = client.chat.completions.create(**kw).choices[0]
    assert plain.finish_reason == "stop" and plain.message.content == "No tool is needed."
    assert not plain.message.tool_calls


def test_chat_with_tools_and_tool_messages(client, http, forced):
    plain = client.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=4)
    resp = client.chat.completions.create(model=MODEL, messages=HELLO, tools=TOOLS, max_tokens=16)
    assert resp.usage.prompt_tokens > plain.usage.prompt_tokens + 20  # the tool listing is in the prompt
    history = HELLO + [
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "bash", "arguments": '{"cmd": "ls"}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "README.md"}]
    follow = client.chat.completions.create(model=MODEL, messages=history, tools=TOOLS, max_tokens=4)
    assert follow.usage.prompt_tokens > resp.usage.prompt_tokens
    # the follow-up turn calls the tool again, streamed over plain HTTP
    forced["follow"] = CALL_TEXT
    with http.stream("POST", "/v1/chat/completions", json={"model": MODEL, "messages": history, "tools": TOOLS,
                                                          "max_tokens": 64, "temperature": 0, "stream": True,
                                                          "program_id": "follow"}) as r:
        events = sse_events(r)
    assert r.status_code == 200 and events[-1] == "[DONE]"
    last = json.loads(events[-2])["choices"][0]
    assert last["finish_reason"] == "tool_calls"
    assert [c["function"] for c in last["delta"]["tool_calls"]] == [{"name": "bash", "arguments": '{"cmd": "ls -la"}'}]


# ---- disconnects and start-up --------------------------------------------------------------------

def test_client_disconnect_mid_stream_aborts_and_frees_kv(http, tiny_server):
    engine = tiny_server[1].engine
    before = engine.stats.num_generated_tokens
    body = {"model": MODEL, "prompt": [5, 6, 7], "max_tokens": 2000, "ignore_eos": True, "stream": True}
    with httpx.Client(base_url=tiny_server[0], headers={"Authorization": f"Bearer {API_KEY}"}) as c:
        with c.stream("POST", "/v1/completions", json=body) as r:
            events = (line for line in r.iter_lines() if line.startswith("data: "))
            got = [json.loads(next(events).removeprefix("data: ")) for _ in range(3)]
            assert r.status_code == 200 and all(e["choices"][0]["finish_reason"] is None for e in got)
    wait_idle(engine)
    assert engine.stats.num_generated_tokens - before < 2000  # aborted, not run to the end
    engine.pool.check_integrity()
    assert_served(http)


def test_run_server_rejects_unknown_engine_options(tiny_model_dir):
    with pytest.raises(ConfigError, match="no_such_option"):
        run_server(model=str(tiny_model_dir), no_such_option=1)


# ---- the real model ------------------------------------------------------------------------------

@pytest.mark.slow
def test_default_model_chat_streamed_equals_non_streamed(default_model_dir):
    aengine = AsyncEngine(EngineConfig(model=str(default_model_dir)), kv_cache_tokens=4096)
    with serve(create_app(aengine, "smollm", api_key=None)) as url:
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)
        kw = dict(model="smollm", messages=[{"role": "user", "content": "What is the capital of France?"}],
                  temperature=0, max_tokens=24)
        resp = client.chat.completions.create(**kw)
        text = resp.choices[0].message.content
        assert "Paris" in text and resp.choices[0].finish_reason in ("stop", "length")
        streamed = "".join(c.choices[0].delta.content or "" for c in client.chat.completions.create(**kw, stream=True))
        assert streamed == text
        wait_idle(aengine.engine)
