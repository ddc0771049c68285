"""Tool-call parsing for the formats agents use; malformed calls become messages, never exceptions."""

from __future__ import annotations

import json

import pytest

from agentrt import toolcalls


@pytest.mark.parametrize("fence", ["bash", "sh", "mswea_bash_command"])  # the last: mini-swe-agent 2's
def test_bash_block_single_action(fence):
    calls, err = toolcalls.parse("bash", f"I will list files.\n```{fence}\nls -la src/\n```")
    assert err is None and len(calls) == 1
    assert calls[0].name == "bash" and calls[0].arguments == {"command": "ls -la src/"}


@pytest.mark.parametrize("text, found", [
    ("```bash\nls\n```\nand\n```bash\npwd\n```", 2),
    ("```python\nprint(1)\n```", 0),
])
def test_bash_block_wrong_count_is_a_format_error(text, found):
    calls, err = toolcalls.parse("bash", text)
    assert calls == [] and "EXACTLY ONE action" in err and f"found {found}" in err


def test_bash_plain_answer_is_no_call():
    assert toolcalls.parse("bash", "The answer is 42.") == ([], None)


def test_hermes_calls_and_errors():
    text = ('Let me check.<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'
            '<tool_call>{"name": "now", "arguments": "{}"}</tool_call>')
    calls, err = toolcalls.parse("hermes", text)
    assert err is None
    assert [(c.name, c.arguments) for c in calls] == [("get_weather", {"city": "Paris"}), ("now", {})]
    calls, err = toolcalls.parse("hermes", '<tool_call>{"name": "x", "arguments": {bad}</tool_call>')
    assert calls == [] and "not valid JSON" in err
    calls, err = toolcalls.parse("hermes", '<tool_call>{"arguments": {}}</tool_call>')
    assert calls == [] and '"name"' in err
    assert toolcalls.parse("hermes", "no calls here") == ([], None)


def test_bfcl_python_call_syntax():
    calls, err = toolcalls.parse("bfcl", '[cd(folder="docs"), mv(source="a.txt", destination="b.txt"), ls()]')
    assert err is None
    assert [(c.name, c.arguments) for c in calls] == [
        ("cd", {"folder": "docs"}), ("mv", {"source": "a.txt", "destination": "b.txt"}), ("ls", {})]
    calls, _ = toolcalls.parse("bfcl", "```python\n[math.sqrt(x=[1, 2.5, {'a': None}])]\n```")
    assert calls[0].name == "math.sqrt" and calls[0].arguments == {"x": [1, 2.5, {"a": None}]}


@pytest.mark.parametrize("text, message", [
    ("[cd(folder='docs'", "not valid Python"),
    ("[cd('docs')]", "by keyword"),
    ("[cd(folder=os.getcwd())]", "literal values"),
    ("[42]", "function call"),
])
def test_bfcl_errors_never_evaluate_code(text, message):
    calls, err = toolcalls.parse("bfcl", text)
    assert calls == [] and message in err


def test_openai_structured_tool_calls():
    raw = [{"id": "call_1", "type": "function", "function": {"name": "add", "arguments": json.dumps({"a": 1})}}]
    (call,) = toolcalls.parse_openai_tool_calls(raw)
    assert (call.id, call.name, call.arguments) == ("call_1", "add", {"a": 1})
    with pytest.raises(toolcalls.ToolFormatError):
        toolcalls.parse_openai_tool_calls([{"function": {"name": "add", "arguments": "[1, 2]"}}])


def test_render_describes_the_tools():
    spec = [{"type": "function", "function": {"name": "get_weather", "description": "d", "parameters": {}}}]
    assert "get_weather" in toolcalls.render_tools("hermes", spec) and "<tool_call>" in toolcalls.render_tools("hermes", spec)
    assert "get_weather" in toolcalls.render_tools("bfcl", spec)
    assert "```bash" in toolcalls.render_tools("bash", spec)
    with pytest.raises(ValueError, match="unknown tool-call format"):
        toolcalls.parse("xml", "")
