"""Tool-call parsing for the formats agents use; malformed calls become messages, never exceptions. The
structured formats a server turns into OpenAI `tool_calls` (hermes, llama3_json, mistral): each
parser on valid, malformed and several calls; the reply's content beside the calls; what streams
before a call is certain; the prefill of `tool_choice`; which format a model's template points to."""

from __future__ import annotations

import json

import pytest

from agentrt import toolcalls
from agentrt.types import ToolCall


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


def test_hermes_reply_that_is_only_untagged_call_objects():
    calls, err = toolcalls.parse("hermes", '{"name": "get_weather", "arguments": {"city": "Paris"}}\n')
    assert err is None and [(c.name, c.arguments) for c in calls] == [("get_weather", {"city": "Paris"})]
    assert toolcalls.split_reply("hermes", '{"name": "now", "arguments": {}}')[0] is None
    for text in ('{"name": "Ada", "age": 36}', '{"name": "x", "arguments": {}} and more', '{"name": '):
        assert toolcalls.parse("hermes", text) == ([], None)  # JSON that is not only calls is an answer


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
    assert '"parameters"' in toolcalls.render_tools("llama3_json", spec)
    assert "[TOOL_CALLS]" in toolcalls.render_tools("mistral", spec)
    assert "```bash" in toolcalls.render_tools("bash", spec)
    with pytest.raises(ValueError, match="unknown tool-call format"):
        toolcalls.parse("xml", "")


# ---- llama3_json ---------------------------------------------------------------------------------

def test_llama3_json_one_or_several_calls_with_or_without_the_python_tag():
    one = '{"name": "get_weather", "parameters": {"city": "Paris"}}'
    for text in (one, f"<|python_tag|>{one}", f"  {one}\n"):
        calls, err = toolcalls.parse("llama3_json", text)
        assert err is None and [(c.name, c.arguments) for c in calls] == [("get_weather", {"city": "Paris"})]
    calls, err = toolcalls.parse("llama3_json", f'<|python_tag|>{one}; {{"name": "now", "arguments": {{}}}}')
    assert err is None and [(c.name, c.arguments) for c in calls] == [("get_weather", {"city": "Paris"}), ("now", {})]
    assert calls[0].id != calls[1].id


def test_llama3_json_text_is_no_call_and_broken_json_is_a_message():
    assert toolcalls.parse("llama3_json", 'It is sunny. {"name": "x", "parameters": {}}') == ([], None)
    calls, err = toolcalls.parse("llama3_json", '{"name": "get_weather", "parameters": {"city": ')
    assert calls == [] and "not valid JSON" in err and '"parameters"' in err
    calls, err = toolcalls.parse("llama3_json", '{"city": "Paris"}')
    assert calls == [] and '"name"' in err


# ---- mistral -------------------------------------------------------------------------------------

def test_mistral_call_lists_and_the_newer_args_form():
    calls, err = toolcalls.parse("mistral", 'Checking. [TOOL_CALLS][{"name": "get_weather", "arguments": '
                                            '{"city": "Paris"}}, {"name": "now", "arguments": {}}]')
    assert err is None and [(c.name, c.arguments) for c in calls] == [("get_weather", {"city": "Paris"}), ("now", {})]
    assert all(len(c.id) == 9 and c.id.isalnum() for c in calls)  # what Mistral's templates accept back
    calls, err = toolcalls.parse("mistral", '[TOOL_CALLS]get_weather[ARGS]{"city": "Paris"}[TOOL_CALLS]now[ARGS]{}')
    assert err is None and [(c.name, c.arguments) for c in calls] == [("get_weather", {"city": "Paris"}), ("now", {})]
    # [TOOL_CALLS] is a special token a tokenizer may decode away: a reply that is the list still parses
    calls, _ = toolcalls.parse("mistral", '[{"name": "now", "arguments": {}}]')
    assert [c.name for c in calls] == ["now"]


@pytest.mark.parametrize("text, message", [
    ('[TOOL_CALLS][{"name": "get_weather", "arguments": {"city": "Par', "not valid JSON"),
    ('[TOOL_CALLS][{"arguments": {}}]', '"name"'),
    ("[TOOL_CALLS]   ", None),
    ("[TOOL_CALLS]!!", "holds no call"),
])
def test_mistral_malformed_calls_are_messages(text, message):
    calls, err = toolcalls.parse("mistral", text)
    assert calls == [] and (err is None if message is None else message in err)


def test_mistral_plain_text_is_no_call():
    assert toolcalls.parse("mistral", "The weather is [mostly] fine.") == ([], None)


# ---- a reply split into content and calls, streamed, prefilled --------------------------------------

@pytest.mark.parametrize("fmt, text, content", [
    ("hermes", 'Let me look.\n<tool_call>\n{"name": "ls", "arguments": {"path": "."}}\n</tool_call>', "Let me look.\n"),
    ("hermes", '<tool_call>{"name": "ls", "arguments": {"path": "."}}</tool_call>', None),
    ("llama3_json", '<|python_tag|>{"name": "ls", "parameters": {"path": "."}}', None),
    ("mistral", 'Let me look. [TOOL_CALLS][{"name": "ls", "arguments": {"path": "."}}]', "Let me look. "),
])
def test_split_reply_gives_the_content_before_the_calls(fmt, text, content):
    got, calls = toolcalls.split_reply(fmt, text)
    assert got == content and [(c.name, c.arguments) for c in calls] == [("ls", {"path": "."})]


@pytest.mark.parametrize("fmt", toolcalls.TOOL_CALL_PARSERS)
def test_split_reply_without_a_parsable_call_is_all_content(fmt):
    assert toolcalls.split_reply(fmt, "just text") == ("just text", [])
    broken = {"hermes": "<tool_call>{not json</tool_call>", "llama3_json": '{"name": ', "mistral": "[TOOL_CALLS][{"}[fmt]
    assert toolcalls.split_reply(fmt, broken) == (broken, [])


def test_streaming_holds_back_what_may_still_become_a_call():
    assert toolcalls.streamable_content("hermes", "Sure. <tool_") == "Sure. "
    assert toolcalls.streamable_content("hermes", "Sure. <tool_call>{") == "Sure. "
    assert toolcalls.streamable_content("hermes", "a < b") == "a < b"
    assert toolcalls.streamable_content("hermes", '{"name": "ls"') == ""  # may be an untagged call
    assert toolcalls.streamable_content("mistral", "Sure. [TOOL_") == "Sure. "
    assert toolcalls.streamable_content("mistral", "[") == ""  # may be a call list whose tag was decoded away
    assert toolcalls.streamable_content("mistral", "[1, 2] are numbers") == "[1, 2] are numbers"
    for start in ("", " ", "{", '{"name": "ls"', "<|python", "<|python_tag|>{"):
        assert toolcalls.streamable_content("llama3_json", start) == ""
    assert toolcalls.streamable_content("llama3_json", "It is sunny.") == "It is sunny."


@pytest.mark.parametrize("fmt", toolcalls.TOOL_CALL_PARSERS)
def test_a_prefilled_call_start_parses_with_the_rest_of_the_reply(fmt):
    rest = {"hermes": 'ls", "arguments": {"path": "."}}\n</tool_call>', "llama3_json": 'ls", "parameters": '
            '{"path": "."}}', "mistral": 'ls", "arguments": {"path": "."}}]'}[fmt]
    (call,), err = toolcalls.parse(fmt, toolcalls.call_prefill(fmt) + rest)
    assert err is None and (call.name, call.arguments) == ("ls", {"path": "."})
    (call,), err = toolcalls.parse(fmt, toolcalls.call_prefill(fmt, "ls") + '{"path": "."}}' + (
        "\n</tool_call>" if fmt == "hermes" else "]" if fmt == "mistral" else ""))
    assert err is None and (call.name, call.arguments) == ("ls", {"path": "."})


@pytest.mark.parametrize("fmt", toolcalls.TOOL_CALL_PARSERS)
def test_an_earlier_call_written_back_parses_as_itself(fmt):
    call = ToolCall("ls", {"path": "."}, "abcDEF123")
    (back,), err = toolcalls.parse(fmt, toolcalls.call_text(fmt, call))
    assert err is None and (back.name, back.arguments) == ("ls", {"path": "."})


def test_the_parser_follows_the_models_template_then_its_vocabulary():
    assert toolcalls.detect_parser("{% for t in tools %}{{ t | tojson }}{% endfor %}<tool_call>") == "hermes"
    assert toolcalls.detect_parser('{{ "[TOOL_CALLS]" }}{{ tools | tojson }}') == "mistral"
    assert toolcalls.detect_parser('{{ "<|start_header_id|>ipython<|end_header_id|>" }}{{ tools }}') == "llama3_json"
    assert toolcalls.detect_parser(None, {"[TOOL_CALLS]": 5}) == "mistral"
    assert toolcalls.detect_parser("{{ messages }}", {"<|python_tag|>": 7}) == "llama3_json"
    assert toolcalls.detect_parser(None) == "hermes"
