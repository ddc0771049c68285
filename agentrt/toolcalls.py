"""Tool-call formats: how tools are described to a model in text, and how its calls are parsed back.

Formats (the ones agents use):
- `bash`: mini-swe-agent's protocol: exactly one fenced shell block per reply (```bash, ```sh,
  ```shell, or mini-swe-agent 2's ```mswea_bash_command), run as a shell command;
- `hermes`: Hermes/Qwen `<tool_call>{"name": ..., "arguments": {...}}</tool_call>` blocks (also what
  the server renders an OpenAI `tools` request into for models without native tool calling);
- `bfcl`: BFCL's Python-call syntax, a list of calls `[func(a=1, b="x"), other()]`;
- OpenAI structured `tool_calls` (from a server's response): `parse_openai_tool_calls`.
A malformed call never raises out of here: `parse` returns the error as a message for the model,
worded like mini-swe-agent's format errors, so the agent can feed it back and go on.
"""

from __future__ import annotations

import ast
import json
import re
import uuid
from typing import Any

from agentrt.types import ToolCall

FORMATS = ("bash", "hermes", "bfcl")

_BASH_BLOCK = re.compile(r"```(?:bash|sh|shell|mswea_bash_command)\s*\n(.*?)```", re.DOTALL)
_HERMES = re.compile(r"<tool_call>(.*?)(?:</tool_call>|$)", re.DOTALL)


class ToolFormatError(ValueError):
    """The reply tried to call a tool but the call does not parse; the message is meant for the model."""


def _call_id() -> str:
    return "call_" + uuid.uuid4().hex[:24]


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


def parse_hermes(text: str) -> list[ToolCall]:
    calls = []
    for body in _HERMES.findall(text):
        try:
            obj = json.loads(body.strip())
        except json.JSONDecodeError as exc:
            raise ToolFormatError(f"Your <tool_call> is not valid JSON ({exc.msg} at char {exc.pos}). "
                                  'Write <tool_call>{"name": "...", "arguments": {...}}</tool_call>.') from None
        calls.append(_from_json_call(obj, body))
    return calls


def _from_json_call(obj: Any, raw: str) -> ToolCall:
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
    return ToolCall(obj["name"], args, str(obj.get("id") or _call_id()), raw=raw)


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


_PARSERS = {"bash": parse_bash, "hermes": parse_hermes, "bfcl": parse_bfcl}


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
    if fmt == "bfcl":
        listing = "\n".join(json.dumps(s) for s in specs)
        return ("You are given functions. To call them, answer with ONLY a Python list of calls, "
                "like [func_name1(param=value), func_name2(param=value)], and nothing else. "
                f"If no call is needed, answer in plain text.\nFunctions:\n{listing}")
    raise ValueError(f"unknown tool-call format {fmt!r}; choose from {FORMATS}")
