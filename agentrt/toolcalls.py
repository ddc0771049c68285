"""Tool-call formats: how tools are described to a model in text, and how its calls are parsed back.

Formats (the ones agents use):
- `bash`: mini-swe-agent's protocol: exactly one fenced shell block per reply (```bash, ```sh,
  ```shell, or mini-swe-agent 2's ```mswea_bash_command), run as a shell command;
- `hermes`: Hermes/Qwen `<tool_call>{"name": ..., "arguments": {...}}</tool_call>` blocks (also what
  the server renders an OpenAI `tools` request into for models without native tool calling), or a
  reply that is only such objects, untagged (as small Qwen models write them);
- `llama3_json`: Llama 3.1/3.2's JSON calls, the reply being `{"name": ..., "parameters": {...}}`
  objects (`;` between several), after `<|python_tag|>` or not;
- `mistral`: `[TOOL_CALLS][{"name": ..., "arguments": {...}}, ...]`, or the newer
  `[TOOL_CALLS]name[ARGS]{...}`;
- `bfcl`: BFCL's Python-call syntax, a list of calls `[func(a=1, b="x"), other()]`;
- OpenAI structured `tool_calls` (from a server's response): `parse_openai_tool_calls`.
`hermes`, `llama3_json` and `mistral` are the structured formats the server turns into OpenAI
`tool_calls` (`TOOL_CALL_PARSERS`, vLLM's `--tool-call-parser` names); `detect_parser` picks one from a
model's chat template and vocabulary. Markers that a tokenizer decodes away as special tokens
(`<|python_tag|>`, `[TOOL_CALLS]`) may be missing from the text: a reply that starts as the call does
still parses.
A malformed call never raises out of here: `parse` returns the error as a message for the model,
worded like mini-swe-agent's format errors, so the agent can feed it back and go on.
"""

from __future__ import annotations

import ast
import json
import re
import string
import uuid
from collections.abc import Collection
from typing import Any

from agentrt.types import ToolCall

FORMATS = ("bash", "hermes", "llama3_json", "mistral", "bfcl")
TOOL_CALL_PARSERS = ("hermes", "llama3_json", "mistral")

HERMES_TAG, PYTHON_TAG, MISTRAL_TAG, MISTRAL_ARGS = "<tool_call>", "<|python_tag|>", "[TOOL_CALLS]", "[ARGS]"

_BASH_BLOCK = re.compile(r"```(?:bash|sh|shell|mswea_bash_command)\s*\n(.*?)```", re.DOTALL)
_HERMES = re.compile(r"<tool_call>(.*?)(?:</tool_call>|$)", re.DOTALL)


class ToolFormatError(ValueError):
    """The reply tried to call a tool but the call does not parse; the message is meant for the model."""


def _call_id() -> str:
    return "call_" + uuid.uuid4().hex[:24]


def _mistral_id() -> str:
    """Mistral's chat templates take only 9-character alphanumeric call ids."""
    alphabet = string.ascii_letters + string.digits
    return "".join(alphabet[b % len(alphabet)] for b in uuid.uuid4().bytes[:9])


def parse_bash(text: str) -> list[ToolCall]:
    """Exactly one ```bash block (mini-swe-agent); none at all means the model is not acting."""
    blocks = _BASH_BLOCK.findall(text)
    if len(blocks) != 1:
        if not blocks and "```" not in text:
            return []
        raise ToolFormatError(
            f"Please always provide EXACTLY ONE action in triple backticks (```bash ... ```), found {len(blocks)} actions. "
            "If you have completed your task, run `echo COMPLETE_TASK_AND_SUBMIT` in a bash block.")
    command = blocks[0].strip()
    if not command:
        raise ToolFormatError("The ```bash block is empty. Put exactly one shell command in it.")
    return [ToolCall("bash", {"command": command}, _call_id(), raw=blocks[0])]


def _bare_json_calls(text: str) -> list[ToolCall]:
    """A reply that is nothing but call objects, `{"name": ..., "arguments": {...}}` (small Qwen models
    answer so, without the tags); anything else is no call."""
    try:
        values = _json_values(text.strip(), "")
    except ToolFormatError:
        return []
    if not values or not all(isinstance(v, dict) and isinstance(v.get("name"), str) and
                             ("arguments" in v or "parameters" in v) for v, _ in values):
        return []
    return [_from_json_call(v, raw) for v, raw in values]


def parse_hermes(text: str) -> list[ToolCall]:
    if HERMES_TAG not in text and text.lstrip().startswith("{"):
        return _bare_json_calls(text)
    calls = []
    for body in _HERMES.findall(text):
        try:
            obj = json.loads(body.strip())
        except json.JSONDecodeError as exc:
            raise ToolFormatError(f"Your <tool_call> is not valid JSON ({exc.msg} at char {exc.pos}). "
                                  'Write <tool_call>{"name": "...", "arguments": {...}}</tool_call>.') from None
        calls.append(_from_json_call(obj, body))
    return calls


def _json_values(body: str, what: str, separators: str = "") -> list[tuple[Any, str]]:
    """The JSON values one after another in `body` (`separators` allowed between them), each with its text."""
    decoder, out, i = json.JSONDecoder(), [], 0
    while True:
        while i < len(body) and (body[i].isspace() or body[i] in separators):
            i += 1
        if i >= len(body):
            return out
        try:
            value, end = decoder.raw_decode(body, i)
        except json.JSONDecodeError as exc:
            raise ToolFormatError(f"Your tool call is not valid JSON ({exc.msg} at char {exc.pos}). {what}") from None
        out.append((value, body[i:end]))
        i = end


_LLAMA3_HINT = 'Answer with {"name": "...", "parameters": {...}} and nothing else.'


def parse_llama3_json(text: str) -> list[ToolCall]:
    """The whole reply is the calls (vLLM's llama3_json): a reply that starts otherwise calls nothing."""
    body = text.strip()
    if body.startswith(PYTHON_TAG):
        body = body[len(PYTHON_TAG):]
    elif not body.startswith("{"):
        return []
    return [_from_json_call(obj, raw) for obj, raw in _json_values(body, _LLAMA3_HINT, ";")]


_MISTRAL_HINT = 'Write [TOOL_CALLS][{"name": "...", "arguments": {...}}].'
_MISTRAL_V11 = re.compile(r"\s*([A-Za-z_][\w.\-]*)\s*(?:\[ARGS\])?\s*(\{.*)", re.DOTALL)


def parse_mistral(text: str) -> list[ToolCall]:
    at = text.find(MISTRAL_TAG)
    if at < 0:
        if not text.lstrip().startswith("[{"):  # the tag decoded away: a reply that is a list of calls
            return []
        segments = [text]
    else:
        segments = [seg for seg in text[at:].split(MISTRAL_TAG) if seg.strip()]
    calls = []
    for seg in segments:
        if seg.lstrip().startswith("["):
            for value, raw in _json_values(seg, _MISTRAL_HINT):
                for obj in value if isinstance(value, list) else [value]:
                    calls.append(_from_json_call(obj, raw, _mistral_id))
            continue
        m = _MISTRAL_V11.match(seg)  # name[ARGS]{...}
        if m is None:
            raise ToolFormatError(f"Your [TOOL_CALLS] holds no call. {_MISTRAL_HINT}")
        (args, raw), *rest = _json_values(m.group(2), _MISTRAL_HINT)
        if rest:
            raise ToolFormatError(f"One [TOOL_CALLS] per call: {m.group(1)} has text after its arguments.")
        calls.append(_from_json_call({"name": m.group(1), "arguments": args}, seg, _mistral_id))
    return calls


def _from_json_call(obj: Any, raw: str, new_id=_call_id) -> ToolCall:
    if not isinstance(obj, dict) or not isinstance(obj.get("name"), str):
        raise ToolFormatError('A tool call needs a string "name" and an "arguments" object.')
    args = obj.get("arguments", obj.get("parameters", {}))
    if isinstance(args, str):
        try:
            args = json.loads(args) if args.strip() else {}
        except json.JSONDecodeError:
            raise ToolFormatError(f'The "arguments" of {obj["name"]} are not a JSON object.') from None
    if not isinstance(args, dict):
        raise ToolFormatError(f'The "arguments" of {obj["name"]} must be a JSON object.')
    return ToolCall(obj["name"], args, str(obj.get("id") or new_id()), raw=raw)


def parse_bfcl(text: str) -> list[ToolCall]:
    """`[f(a=1), g(b="x")]` (or a single call); only literal arguments are accepted, nothing is evaluated."""
    src = text.strip()
    src = re.sub(r"^```(?:python)?\s*|\s*```$", "", src).strip()
    if not src:
        return []
    try:
        tree = ast.parse(src, mode="eval").body
    except SyntaxError as exc:
        raise ToolFormatError(f"Your function calls are not valid Python syntax ({exc.msg}). "
                              "Answer with a list like [func_name(param=value), ...].") from None
    nodes = tree.elts if isinstance(tree, (ast.List, ast.Tuple)) else [tree]
    calls = []
    for node in nodes:
        if not isinstance(node, ast.Call):
            raise ToolFormatError("Each item must be a function call like func_name(param=value).")
        name = ast.unparse(node.func)
        if node.args:
            raise ToolFormatError(f"Pass arguments to {name} by keyword (param=value), not by position.")
        try:
            args = {kw.arg: ast.literal_eval(kw.value) for kw in node.keywords if kw.arg}
        except ValueError:
            raise ToolFormatError(f"The arguments of {name} must be literal values (strings, numbers, lists...).") from None
        calls.append(ToolCall(name, args, _call_id(), raw=ast.unparse(node)))
    return calls


def parse_openai_tool_calls(tool_calls: list[dict]) -> list[ToolCall]:
    """Structured `tool_calls` of an OpenAI chat response (arguments arrive as a JSON string)."""
    out = []
    for tc in tool_calls or []:
        fn = tc.get("function") or {}
        out.append(_from_json_call({"name": fn.get("name"), "arguments": fn.get("arguments") or "{}",
                                    "id": tc.get("id")}, json.dumps(tc)))
    return out


_PARSERS = {"bash": parse_bash, "hermes": parse_hermes, "llama3_json": parse_llama3_json, "mistral": parse_mistral,
            "bfcl": parse_bfcl}


def parse(fmt: str, text: str) -> tuple[list[ToolCall], str | None]:
    """Tool calls in a model reply: (calls, None), or ([], error message for the model)."""
    try:
        parser = _PARSERS[fmt]
    except KeyError:
        raise ValueError(f"unknown tool-call format {fmt!r}; choose from {FORMATS}") from None
    try:
        return parser(text), None
    except ToolFormatError as exc:
        return [], str(exc)


def render_tools(fmt: str, tools: list[dict]) -> str:
    """System-prompt text that teaches the model a format. `tools`: OpenAI function specs
    ({"type": "function", "function": {"name", "description", "parameters"}})."""
    if fmt == "bash":
        return ("You can run shell commands. Reply with a short thought and EXACTLY ONE command in a "
                "```bash fenced block; you will see its output. When you are done, reply with your final "
                "answer and no code block.")
    specs = [t.get("function", t) for t in tools]
    if fmt == "hermes":
        listing = "\n".join(json.dumps(s) for s in specs)
        return ("You may call one or more functions to assist with the user query. The functions are:\n"
                f"<tools>\n{listing}\n</tools>\n"
                "For each call, return a JSON object with the function name and arguments within "
                '<tool_call></tool_call> tags:\n<tool_call>\n{"name": <function-name>, "arguments": <args-json-object>}\n</tool_call>')
    if fmt == "llama3_json":
        listing = "\n".join(json.dumps({"type": "function", "function": s}) for s in specs)
        return ("Given the following functions, please respond with a JSON for a function call with its proper "
                "arguments that best answers the given prompt.\n"
                'Respond in the format {"name": function name, "parameters": dictionary of argument name and its '
                f"value}}. Do not use variables.\n\n{listing}")
    if fmt == "mistral":
        return (f"[AVAILABLE_TOOLS]{json.dumps([{'type': 'function', 'function': s} for s in specs])}"
                "[/AVAILABLE_TOOLS]\nTo call functions, answer with [TOOL_CALLS] followed by a JSON list of "
                '{"name": ..., "arguments": {...}} objects.')
    if fmt == "bfcl":
        listing = "\n".join(json.dumps(s) for s in specs)
        return ("You are given functions. To call them, answer with ONLY a Python list of calls, "
                "like [func_name1(param=value), func_name2(param=value)], and nothing else. "
                f"If no call is needed, answer in plain text.\nFunctions:\n{listing}")
    raise ValueError(f"unknown tool-call format {fmt!r}; choose from {FORMATS}")


# ---- the structured formats a server turns into OpenAI tool_calls --------------------------------

def split_reply(fmt: str, text: str) -> tuple[str | None, list[ToolCall]]:
    """(content, calls) of a reply in a structured format: without a parsable call the whole text is
    the content; with calls, the content is what precedes them (None if only blank)."""
    calls, _error = parse(fmt, text)
    if not calls:
        return text, []
    if fmt == "llama3_json":
        content = ""
    else:
        tag = HERMES_TAG if fmt == "hermes" else MISTRAL_TAG
        at = text.find(tag)
        content = text[:at] if at >= 0 else ""
    return (content if content.strip() else None), calls


def streamable_content(fmt: str, text: str) -> str:
    """While a reply streams: the part of `text` that cannot turn out to be part of a call (text before
    a call's marker, less a tail that may be its beginning; nothing while the reply may start with one)."""
    lead = {"hermes": ("{",), "llama3_json": ("{", PYTHON_TAG), "mistral": ("[{",)}.get(fmt, ())
    head = text.lstrip()
    if any(head.startswith(m) or m.startswith(head) for m in lead):
        return ""
    tag = MISTRAL_TAG if fmt == "mistral" else HERMES_TAG if fmt == "hermes" else None
    if tag is None:
        return text
    at = text.find(tag)
    if at >= 0:
        return text[:at]
    for k in range(len(tag) - 1, 0, -1):
        if text.endswith(tag[:k]):
            return text[:-k]
    return text


def call_prefill(fmt: str, name: str | None = None) -> str:
    """The start of a reply that is a call (of `name`, or of any function): what `tool_choice`
    `required` or a named function prefills."""
    if fmt == "hermes":
        return f'{HERMES_TAG}\n{{"name": {json.dumps(name)}, "arguments": ' if name else f'{HERMES_TAG}\n{{"name": "'
    if fmt == "llama3_json":
        return f'{{"name": {json.dumps(name)}, "parameters": ' if name else '{"name": "'
    if fmt == "mistral":
        return f'{MISTRAL_TAG}[{{"name": {json.dumps(name)}, "arguments": ' if name else f'{MISTRAL_TAG}[{{"name": "'
    raise ValueError(f"unknown tool-call parser {fmt!r}; choose from {TOOL_CALL_PARSERS}")


def call_text(fmt: str, call: ToolCall) -> str:
    """An earlier call written back in the format (for a chat template that cannot render `tool_calls`)."""
    if fmt == "llama3_json":
        return json.dumps({"name": call.name, "parameters": call.arguments})
    if fmt == "mistral":
        return f"{MISTRAL_TAG}{json.dumps([{'name': call.name, 'arguments': call.arguments, 'id': call.id}])}"
    return f"\n{HERMES_TAG}\n{json.dumps({'name': call.name, 'arguments': call.arguments})}\n</tool_call>"


def detect_parser(chat_template: str | None, vocabulary: Collection[str] = ()) -> str:
    """The structured format a model writes its calls in: from what its chat template teaches, else
    from the markers its vocabulary has; Hermes when neither says (what the server's fallback text teaches)."""
    template = chat_template or ""
    if HERMES_TAG in template:
        return "hermes"
    if MISTRAL_TAG in template:
        return "mistral"
    if PYTHON_TAG in template or "ipython" in template:
        return "llama3_json"
    if MISTRAL_TAG in vocabulary:
        return "mistral"
    if PYTHON_TAG in vocabulary:
        return "llama3_json"
    return "hermes"
