"""Tool calls through `agentrt serve` and the official `openai` client, for each tool-call parser: a
request with `tools` comes back as a structured `tool_calls` entry with the right function and
arguments, for `tool_choice` auto and required (and streamed). Tools go through the model's own chat
template where it takes them (the template renders `tools`, earlier `tool_calls` and tool results),
the Hermes text only where it does not.

The tiny model's replies are forced token by token (`Engine.on_logits`); its tokenizer has no special
tokens for `[TOOL_CALLS]` or `<|python_tag|>`, so they are plain text here.
"""

from __future__ import annotations

import json

import openai
import pytest

from agentrt.serve_tools import ToolSetup, template_takes_tools
from agentrt.server import create_app
from engine import AsyncEngine, EngineConfig
from tests.conftest import forced_outputs, recording_engine_class, serve

MODEL = "tiny"
HELLO = [{"role": "user", "content": "What is the weather in Paris? Use the tools."}]
TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "the weather in a city", "parameters": {
    "type": "object", "properties": {"city": {"type": "string"}, "unit": {"type": "string"}}, "required": ["city"]}}},
    {"type": "function", "function": {"name": "now", "description": "the time", "parameters": {"type": "object"}}}]
ARGS = {"city": "Paris", "unit": "C"}

# a Qwen2.5-like template that takes tools: it lists them, writes earlier calls as <tool_call> blocks
# and tool results as <tool_response>
QWEN_LIKE = """{%- if tools %}<|im_start|>system
{% if messages[0].role == 'system' %}{{ messages[0].content }}{% else %}You are helpful.{% endif %}

# Tools
<tools>
{%- for tool in tools %}
{{ tool | tojson }}
{%- endfor %}
</tools>
Call a function with <tool_call>{"name": ..., "arguments": ...}</tool_call><|im_end|>
{% endif %}
{%- for m in messages %}
{%- if m.role == 'tool' %}<|im_start|>user
<tool_response>
{{ m.content }}
</tool_response><|im_end|>
{% elif not (tools and loop.first and m.role == 'system') %}<|im_start|>{{ m.role }}
{{ m.content }}
{%- for tc in m.tool_calls or [] %}
<tool_call>
{{ {"name": tc.function.name, "arguments": tc.function.arguments} | tojson }}
</tool_call>
{%- endfor %}<|im_end|>
{% endif %}
{%- endfor %}
{%- if add_generation_prompt %}<|im_start|>assistant
{% endif %}"""

# what each parser's model writes: the call after some text (where the format allows it), and the
# rest of a call after `tool_choice: required`'s prefill
REPLIES = {
    "hermes": ('Let me check.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris", "unit": "C"}}\n'
               '</tool_call>', 'get_weather", "arguments": {"city": "Paris", "unit": "C"}}\n</tool_call>'),
    "llama3_json": ('<|python_tag|>{"name": "get_weather", "parameters": {"city": "Paris", "unit": "C"}}',
                    'get_weather", "parameters": {"city": "Paris", "unit": "C"}}'),
    "mistral": ('Let me check. [TOOL_CALLS][{"name": "get_weather", "arguments": {"city": "Paris", "unit": "C"}}]',
                'get_weather", "arguments": {"city": "Paris", "unit": "C"}}]'),
}
CONTENT = {"hermes": "Let me check.\n", "llama3_json": None, "mistral": "Let me check. "}


# (the server's set-up, its chat template, its --tool-call-parser): the model's own template taking the
# tools (its parser read from it), and the fallback Hermes text with each parser named
SETUPS = {"native-hermes": (QWEN_LIKE, None), "hermes": (None, None), "llama3_json": (None, "llama3_json"),
          "mistral": (None, "mistral")}


@pytest.fixture(scope="module", params=list(SETUPS))
def server(request, tiny_model_dir):
    template, parser = SETUPS[request.param]
    aengine = recording_engine_class()(EngineConfig(model=str(tiny_model_dir)), kv_cache_tokens=4096)
    app = create_app(aengine, MODEL, chat_template=template, tool_call_parser=parser, log_requests=False)
    with serve(app) as url:
        yield {"name": request.param, "url": url, "aengine": aengine, "tools": app.state.server.tools,
               "client": openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)}


@pytest.fixture()
def forced(server):
    with forced_outputs(server["aengine"].engine) as texts:
        yield texts


def last_prompt(server) -> str:
    return server["aengine"].tokenizer.decode(server["aengine"].prompts[-1])


def test_the_setup_reads_the_parser_and_whether_the_template_takes_tools(server):
    expected = {"native-hermes": ("hermes", True), "hermes": ("hermes", False), "llama3_json": ("llama3_json", False),
                "mistral": ("mistral", False)}[server["name"]]
    assert (server["tools"].parser, server["tools"].native) == expected


def test_tool_choice_auto_returns_a_structured_call(server, forced):
    parser = server["tools"].parser
    forced["auto"] = REPLIES[parser][0]
    resp = server["client"].chat.completions.create(model=MODEL, messages=HELLO, tools=TOOLS, tool_choice="auto",
                                                     temperature=0, max_tokens=96, extra_body={"program_id": "auto"})
    choice = resp.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content == CONTENT[parser]
    (call,) = choice.message.tool_calls
    assert call.type == "function" and call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == ARGS
    prompt = last_prompt(server)
    assert '"name": "get_weather"' in prompt  # the tools reached the model
    if server["tools"].native:  # through the model's own template, not the fallback text
        assert "# Tools\n<tools>" in prompt and "You may call one or more functions" not in prompt
    else:
        assert prompt.count('"name": "get_weather"') == 1


def test_tool_choice_required_prefills_a_call_in_the_parsers_format(server, forced):
    parser = server["tools"].parser
    forced["required"] = REPLIES[parser][1]
    resp = server["client"].chat.completions.create(model=MODEL, messages=HELLO, tools=TOOLS, tool_choice="required",
                                                    temperature=0, max_tokens=96, extra_body={"program_id": "required"})
    choice = resp.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    (call,) = choice.message.tool_calls
    assert call.function.name == "get_weather" and json.loads(call.function.arguments) == ARGS
    assert last_prompt(server).endswith({"hermes": '<tool_call>\n{"name": "', "llama3_json": '{"name": "',
                                         "mistral": '[TOOL_CALLS][{"name": "'}[parser])


def test_a_streamed_reply_sends_no_call_text_as_content_and_the_call_at_the_end(server, forced):
    parser = server["tools"].parser
    forced["streamed"] = REPLIES[parser][0]
    chunks = list(server["client"].chat.completions.create(
        model=MODEL, messages=HELLO, tools=TOOLS, temperature=0, max_tokens=96, stream=True,
        extra_body={"program_id": "streamed"}))
    content = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert content == (CONTENT[parser] or "")
    (call,) = chunks[-1].choices[0].delta.tool_calls
    assert chunks[-1].choices[0].finish_reason == "tool_calls"
    assert call.function.name == "get_weather" and json.loads(call.function.arguments) == ARGS


def test_a_follow_up_turn_gives_the_template_the_earlier_call_and_its_result(server, forced):
    parser = server["tools"].parser
    forced["follow"] = "It is 18 C in Paris."
    history = [*HELLO, {"role": "assistant", "content": "", "tool_calls": [
        {"id": "abcDEF123", "type": "function", "function": {"name": "get_weather", "arguments": json.dumps(ARGS)}}]},
        {"role": "tool", "tool_call_id": "abcDEF123", "content": "18 C, sunny"}]
    resp = server["client"].chat.completions.create(model=MODEL, messages=history, tools=TOOLS, temperature=0,
                                                    max_tokens=32, extra_body={"program_id": "follow"})
    assert resp.choices[0].message.content == "It is 18 C in Paris." and not resp.choices[0].message.tool_calls
    prompt = last_prompt(server)
    assert "18 C, sunny" in prompt
    if server["tools"].native:  # the template wrote the call itself, with its arguments as an object
        assert '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris", "unit": "C"}}\n</tool_call>' in prompt
        assert "<tool_response>\n18 C, sunny\n</tool_response>" in prompt
    else:  # written back in the parser's own format
        marker = {"hermes": "<tool_call>", "llama3_json": '"parameters": {"city": "Paris"', "mistral": "[TOOL_CALLS]"}
        assert marker[parser] in prompt


def test_template_takes_tools_and_a_bad_parser_is_refused(tiny_model_dir):
    assert template_takes_tools(QWEN_LIKE) and not template_takes_tools("{{ messages }}")
    assert not template_takes_tools(None) and not template_takes_tools("{% broken")
    with pytest.raises(ValueError, match="llama3_json"):
        ToolSetup.for_model(object(), None, "pythonic")


@pytest.mark.slow
def test_qwen_coder_returns_a_structured_call_for_auto_and_required():
    """The real qwen2.5-coder-0.5b-instruct (by name), greedy: its own chat template takes the tools, and
    its answer to a weather question comes back as a `get_weather` call with the city, either way."""
    aengine = AsyncEngine(EngineConfig(model="qwen2.5-coder-0.5b-instruct"), kv_cache_tokens=2048)
    app = create_app(aengine, "qwen", log_requests=False)
    assert app.state.server.tools == ToolSetup("hermes", native=True)
    tools = [{"type": "function", "function": {"name": "get_weather", "description": "Get the current weather in a city",
                                               "parameters": {"type": "object", "properties": {"city": {
                                                   "type": "string", "description": "the city"}}, "required": ["city"]}}}]
    with serve(app) as url:
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)
        for choice in ("auto", "required"):
            resp = client.chat.completions.create(
                model="qwen", messages=[{"role": "user", "content": "What is the weather like in Paris right now?"}],
                tools=tools, tool_choice=choice, temperature=0, max_tokens=40)
            (call,) = resp.choices[0].message.tool_calls
            assert resp.choices[0].finish_reason == "tool_calls", choice
            assert call.function.name == "get_weather" and json.loads(call.function.arguments) == {"city": "Paris"}
