"""OpenAI request fields over real HTTP: `cache_salt` isolates tenants' prefix caches, each
`tool_choice` mode (with `parallel_tool_calls`), `stream_options.include_usage` with cached tokens,
a 400 naming every field the server does not implement, and the harmless fields it ignores.

Replies are forced token by token (the tiny model's own words are noise) through `Engine.on_logits`.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import httpx
import pytest

from agentrt.server import create_app
from engine import EngineConfig
from tests.conftest import forced_outputs, recording_engine_class, serve

MODEL = "tiny"
HELLO = [{"role": "user", "content": "The quick brown fox jumps over the lazy dog. Agents call tools."}]
TOOLS = [{"type": "function", "function": {"name": name, "description": f"the {name} tool", "parameters": {
    "type": "object", "properties": {arg: {"type": "string"}}, "required": [arg]}}}
    for name, arg in (("bash", "cmd"), ("read", "path"))]
CALL_TEXT = 'Let me look.\n<tool_call>\n{"name": "bash", "arguments": {"cmd": "ls -la"}}\n</tool_call>'


@pytest.fixture(scope="module")
def server(tiny_model_dir):
    aengine = recording_engine_class()(EngineConfig(model=str(tiny_model_dir)), kv_cache_tokens=4096)
    with serve(create_app(aengine, MODEL)) as url:
        yield url, aengine


@pytest.fixture()
def http(server) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server[0], timeout=60) as c:
        yield c


@pytest.fixture()
def forced(server):
    """`forced[program_id] = text`: that program's greedy requests generate exactly `text`, then EOS."""
    engine = server[1].engine
    with forced_outputs(engine) as texts:
        yield texts


def post_chat(http: httpx.Client, **body) -> httpx.Response:
    return http.post("/v1/chat/completions", json={"model": MODEL, "messages": HELLO, "temperature": 0,
                                                   "max_tokens": 64, **body})


def sse(http: httpx.Client, path: str, body: dict) -> list[dict]:
    with http.stream("POST", path, json=body) as r:
        assert r.status_code == 200
        events = [line.removeprefix("data: ") for line in r.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    return [json.loads(e) for e in events[:-1]]


def prompt_text(server) -> str:
    return server[1].tokenizer.decode(server[1].prompts[-1])


# ---- cache_salt ----------------------------------------------------------------------------------

def test_cache_salt_keeps_tenants_prefix_caches_apart(http):
    prompt = list(range(300, 340))  # 40 tokens: two full 16-token blocks

    def cached(**extra) -> int:
        r = http.post("/v1/completions", json={"model": MODEL, "prompt": prompt, "max_tokens": 1, **extra})
        assert r.status_code == 200, r.text
        return r.json()["usage"]["prompt_tokens_details"]["cached_tokens"]

    assert cached(cache_salt="tenant-a") == 0
    assert cached(cache_salt="tenant-a") == 32  # the same tenant hits its own blocks
    assert cached(cache_salt="tenant-b") == 0  # another tenant's identical prompt does not
    assert cached() == 0  # nor does an unsalted one
    assert cached() == 32
    # with agentrt's tenant too, the salt is both: a tenant's salts are apart from one another
    assert cached(tenant="acme", cache_salt="tenant-a") == 0
    assert cached(tenant="acme") == 0
    assert cached(tenant="acme", cache_salt="tenant-a") == 32
    r = http.post("/v1/completions", json={"model": MODEL, "prompt": prompt, "cache_salt": ""})
    assert r.status_code == 400 and r.json()["error"]["param"] == "cache_salt"


# ---- tool_choice ---------------------------------------------------------------------------------

def test_tool_choice_auto_offers_the_tools_and_parses_the_call(server, http, forced):
    forced["auto"] = CALL_TEXT
    choice = post_chat(http, tools=TOOLS, tool_choice="auto", program_id="auto").json()["choices"][0]
    assert '"name": "read"' in prompt_text(server)  # the tools are in the prompt
    assert choice["finish_reason"] == "tool_calls" and choice["message"]["content"] == "Let me look.\n"
    assert [c["function"] for c in choice["message"]["tool_calls"]] == [{"name": "bash",
                                                                         "arguments": '{"cmd": "ls -la"}'}]


def test_tool_choice_none_neither_renders_tools_nor_parses_calls(server, http, forced):
    plain = post_chat(http, max_tokens=1).json()["usage"]["prompt_tokens"]
    forced["none"] = CALL_TEXT
    resp = post_chat(http, tools=TOOLS, tool_choice="none", program_id="none").json()
    assert resp["usage"]["prompt_tokens"] == plain and "<tools>" not in prompt_text(server)
    choice = resp["choices"][0]
    assert choice["finish_reason"] == "stop" and choice["message"]["content"] == CALL_TEXT
    assert "tool_calls" not in choice["message"]
    events = sse(http, "/v1/chat/completions", {"model": MODEL, "messages": HELLO, "temperature": 0, "max_tokens": 64,
                                                "tools": TOOLS, "tool_choice": "none", "program_id": "none",
                                                "stream": True})
    assert "".join(e["choices"][0]["delta"].get("content") or "" for e in events) == CALL_TEXT
    assert not any(e["choices"][0]["delta"].get("tool_calls") for e in events)


def test_tool_choice_required_prefills_a_call(server, http, forced):
    forced["required"] = 'bash", "arguments": {"cmd": "make test"}}\n</tool_call>'
    body = {"tools": TOOLS, "tool_choice": "required", "program_id": "required"}
    choice = post_chat(http, **body).json()["choices"][0]
    assert prompt_text(server).endswith('<|im_start|>assistant\n<tool_call>\n{"name": "')
    assert choice["finish_reason"] == "tool_calls" and choice["message"]["content"] is None
    (call,) = choice["message"]["tool_calls"]
    assert call["function"] == {"name": "bash", "arguments": '{"cmd": "make test"}'}
    events = sse(http, "/v1/chat/completions", {"model": MODEL, "messages": HELLO, "temperature": 0,
                                                "max_tokens": 64, "stream": True, **body})
    assert "".join(e["choices"][0]["delta"].get("content") or "" for e in events) == ""  # no piece of the tag
    assert events[-1]["choices"][0]["finish_reason"] == "tool_calls"
    assert events[-1]["choices"][0]["delta"]["tool_calls"][0]["function"]["name"] == "bash"


def test_tool_choice_naming_a_function_prefills_its_call(server, http, forced):
    forced["named"] = '{"path": "src/a.py"}}\n</tool_call>'
    choice = post_chat(http, tools=TOOLS, tool_choice={"type": "function", "function": {"name": "read"}},
                       program_id="named").json()["choices"][0]
    assert prompt_text(server).endswith('<tool_call>\n{"name": "read", "arguments": ')
    assert choice["finish_reason"] == "tool_calls"
    assert [c["function"] for c in choice["message"]["tool_calls"]] == [{"name": "read",
                                                                         "arguments": '{"path": "src/a.py"}'}]


def test_parallel_tool_calls_false_keeps_the_first_call(http, forced):
    forced["serial"] = CALL_TEXT + '\n<tool_call>\n{"name": "read", "arguments": {"path": "a"}}\n</tool_call>'
    both = post_chat(http, tools=TOOLS, program_id="serial", max_tokens=160).json()["choices"][0]["message"]["tool_calls"]
    one = post_chat(http, tools=TOOLS, program_id="serial", max_tokens=160, parallel_tool_calls=False).json()
    assert [c["function"]["name"] for c in both] == ["bash", "read"]
    assert [c["function"]["name"] for c in one["choices"][0]["message"]["tool_calls"]] == ["bash"]


@pytest.mark.parametrize("body", [
    {"tool_choice": "required"},  # no tools
    {"tool_choice": {"type": "function", "function": {"name": "bash"}}},  # no tools
    {"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "write"}}},  # not among them
    {"tools": TOOLS, "tool_choice": "sometimes"},
    {"tools": TOOLS, "tool_choice": "required", "continue_final_message": True, "add_generation_prompt": False,
     "messages": [*HELLO, {"role": "assistant", "content": "Sure"}]},
])
def test_a_tool_choice_that_cannot_be_honoured_is_a_400(http, server, body):
    before = len(server[1].prompts)
    r = post_chat(http, **body)
    assert r.status_code == 400 and r.json()["error"]["param"] == "tool_choice", r.text
    assert len(server[1].prompts) == before


# ---- usage ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/completions"])
def test_stream_options_include_usage_reports_cached_tokens(http, path):
    body = {"model": MODEL, "max_tokens": 3, "temperature": 0, "ignore_eos": True, "stream": True,
            **({"messages": [{"role": "user", "content": "usage " * 40}]} if "chat" in path
               else {"prompt": list(range(100, 150))})}
    assert all("usage" not in e for e in sse(http, path, body))  # not asked: no usage
    sse(http, path, {**body, "stream_options": {"include_usage": True}})
    events = sse(http, path, {**body, "stream_options": {"include_usage": True}})
    usage = events[-1]["usage"]
    assert events[-1]["choices"] == [] and usage["completion_tokens"] == 3
    assert usage["total_tokens"] == usage["prompt_tokens"] + 3
    # the full blocks before the last prompt token (which is always computed)
    assert usage["prompt_tokens_details"]["cached_tokens"] == (usage["prompt_tokens"] - 1) // 16 * 16 >= 32


# ---- fields the server does not implement, and harmless ones -------------------------------------

UNSUPPORTED = [
    ("response_format", {"type": "json_object"}),
    ("response_format", {"type": "json_schema", "json_schema": {"name": "x", "schema": {}}}),
    ("frequency_penalty", 0.5), ("presence_penalty", -1.0), ("repetition_penalty", 1.2),
    ("logit_bias", {"50": 10}), ("priority", 1), ("min_p", 0.1), ("min_tokens", 4),
    ("guided_json", {"type": "object"}), ("guided_regex", "a+"), ("guided_choice", ["a", "b"]),
    ("structured_outputs", {"json": {}}), ("prediction", {"type": "content", "content": "x"}),
    ("audio", {"voice": "alloy"}), ("modalities", ["text", "audio"]), ("functions", [{"name": "f"}]),
    ("function_call", "auto"), ("reasoning_effort", "high"), ("web_search_options", {}),
    ("logits_processors", ["x"]), ("use_beam_search", True), ("prompt_logprobs", 1), ("chat_template", "{{ x }}"),
]


@pytest.mark.parametrize(("name", "value"), UNSUPPORTED, ids=[f"{n}={v}" for n, v in UNSUPPORTED])
def test_an_unimplemented_field_is_a_400_naming_it(http, server, name, value):
    before = len(server[1].prompts)
    for stream in (False, True):
        r = post_chat(http, **{name: value}, stream=stream)
        assert r.status_code == 400, r.text
        error = r.json()["error"]
        assert error["param"] == name and repr(name) in error["message"] and error["code"] == "unsupported_parameter"
    assert len(server[1].prompts) == before  # refused before the engine


@pytest.mark.parametrize(("name", "value"), [("echo", True), ("suffix", "end"), ("best_of", 3),
                                             ("presence_penalty", 0.3)])
def test_an_unimplemented_completions_field_is_a_400_naming_it(http, name, value):
    r = http.post("/v1/completions", json={"model": MODEL, "prompt": "hi", name: value})
    assert r.status_code == 400 and r.json()["error"]["param"] == name


def test_continuous_usage_stats_is_refused(http):
    r = post_chat(http, stream=True, stream_options={"include_usage": True, "continuous_usage_stats": True})
    assert r.status_code == 400 and r.json()["error"]["param"] == "stream_options.continuous_usage_stats"


def test_harmless_and_neutral_fields_are_accepted(http):
    harmless = {"user": "u-1", "metadata": {"run": "x"}, "store": False, "service_tier": "auto",
                "safety_identifier": "s", "prompt_cache_retention": "in_memory",
                # neutral values of fields that are otherwise refused
                "frequency_penalty": 0, "presence_penalty": 0.0, "repetition_penalty": 1.0, "logit_bias": {},
                "response_format": {"type": "text"}, "priority": 0, "min_p": 0, "modalities": ["text"],
                "tool_choice": "auto", "parallel_tool_calls": True, "some_client_extra": [1, 2]}
    r = post_chat(http, max_tokens=2, **harmless)
    assert r.status_code == 200, r.text
    r = http.post("/v1/completions", json={"model": MODEL, "prompt": "hi", "max_tokens": 2, "echo": False,
                                           "suffix": None, "best_of": 1, "user": "u-1"})
    assert r.status_code == 200, r.text


def test_a_temperature_too_small_to_divide_by_samples_greedily(http):
    """logits / 1.4e-45 overflow to inf (and once killed the engine loop); as vLLM, under 1e-5 is greedy."""
    body = {"model": MODEL, "prompt": "Agents call tools", "max_tokens": 6, "ignore_eos": True}
    greedy = http.post("/v1/completions", json={**body, "temperature": 0}).json()["choices"][0]["text"]
    for tiny in (1.401298464324817e-45, 1e-9):
        r = http.post("/v1/completions", json={**body, "temperature": tiny})
        assert r.status_code == 200 and r.json()["choices"][0]["text"] == greedy
    assert http.post("/v1/completions", json={**body, "temperature": 0}).status_code == 200  # still serving
