"""Tools in the server's chat requests: how a request's `tools` reach the model and how its reply's calls
come back as OpenAI `tool_calls`.

    setup = ToolSetup.for_model(tokenizer, chat_template=None, parser=None)   # once, at start-up
    parse, prefill = tool_mode(request, setup.parser)
    messages, tools = setup.render(request, parse)           # for tokenizer.apply_chat_template(..., tools=)

Invariants:
- The model's own chat template renders the tools (`apply_chat_template(messages, tools=...)`) when it
  takes them (it reads a `tools` variable); otherwise the tools are described in Hermes text in the
  system prompt, and earlier calls written back in the parser's format.
- The parser (`--tool-call-parser`, vLLM's names: hermes, llama3_json, mistral) is the one given, else
  the one the model's template and vocabulary point to, else Hermes (what the fallback text teaches).
- The text `tool_choice` prefills is the start of a call in the parser's format, so it is parsed with
  the rest of the reply.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import jinja2
import jinja2.meta

from agentrt import toolcalls
from agentrt.serve_schema import APIError, ChatCompletionRequest, ChatMessage


def template_takes_tools(template: str | None) -> bool:
    """Whether a Jinja chat template reads a `tools` variable (Qwen's, Llama 3.1+'s, Mistral's do)."""
    if not template:
        return False
    try:
        return "tools" in jinja2.meta.find_undeclared_variables(jinja2.Environment().parse(template))
    except jinja2.TemplateSyntaxError:
        return False


def _template_text(tokenizer: Any, override: str | None) -> str | None:
    if override is not None:
        return override
    template = getattr(tokenizer, "chat_template", None)
    if isinstance(template, dict):  # several named templates: the tool-use one, else the default
        template = template.get("tool_use") or template.get("default")
    return template


@dataclass(slots=True, frozen=True)
class ToolSetup:
    parser: str  # the structured format replies are parsed in (toolcalls.TOOL_CALL_PARSERS)
    native: bool  # the chat template renders `tools` and assistant `tool_calls` itself

    @classmethod
    def for_model(cls, tokenizer: Any, chat_template: str | None = None, parser: str | None = None) -> "ToolSetup":
        if parser is not None and parser not in toolcalls.TOOL_CALL_PARSERS:
            raise ValueError(f"unknown tool-call parser {parser!r}; choose from {', '.join(toolcalls.TOOL_CALL_PARSERS)}")
        template = _template_text(tokenizer, chat_template)
        native = template_takes_tools(template)
        if parser is None:
            vocab = tokenizer.get_vocab() if hasattr(tokenizer, "get_vocab") else {}
            parser = toolcalls.detect_parser(template, vocab) if native else "hermes"
        return cls(parser, native)

    def render(self, req: ChatCompletionRequest, with_tools: bool) -> tuple[list[dict[str, Any]], list[dict] | None]:
        """The request's messages for the chat template, and the tools to pass it (None: none, or
        already described in the system prompt)."""
        messages = [self._message(m) for m in req.messages]
        if not with_tools:
            return messages, None
        specs = [t.model_dump(exclude_none=True) for t in req.tools]
        if self.native:
            return messages, specs
        text = toolcalls.render_tools(self.parser, specs)
        if messages and messages[0]["role"] == "system":
            messages[0] = {**messages[0], "content": f"{messages[0]['content']}\n\n{text}"}
        else:
            messages.insert(0, {"role": "system", "content": text})
        return messages, None

    def _message(self, msg: ChatMessage) -> dict[str, Any]:
        """An OpenAI message as a chat-template message. An assistant's earlier tool calls go to a
        template that renders them as `tool_calls` (arguments as objects, as templates expect), else
        into the text in the parser's format, the form the model was taught to write them in."""
        text = "".join(p.text for p in msg.content) if isinstance(msg.content, list) else msg.content or ""
        out: dict[str, Any] = {"role": "system" if msg.role == "developer" else msg.role, "content": text}
        if msg.role == "tool" and self.native:
            out.update({k: v for k, v in (("tool_call_id", msg.tool_call_id), ("name", msg.name)) if v is not None})
        if msg.tool_calls:
            try:
                calls = toolcalls.parse_openai_tool_calls(msg.tool_calls)
            except ValueError as exc:
                raise APIError(400, f"invalid tool_calls in an assistant message: {exc}", param="messages") from None
            if self.native:
                out["tool_calls"] = [{"id": c.id, "type": "function",
                                      "function": {"name": c.name, "arguments": c.arguments}} for c in calls]
            else:
                out["content"] = text + "".join(toolcalls.call_text(self.parser, c) for c in calls)
        return out


def tool_mode(req: ChatCompletionRequest, parser: str) -> tuple[bool, str]:
    """(whether tools are rendered and the reply's calls parsed, the text prefilled into the reply):
    `auto` (the default) offers the tools; `none` neither shows them nor reads calls; `required` starts
    the reply as a call; a named function starts it as that function's call."""
    choice = req.tool_choice
    if not req.tools:
        if choice in (None, "auto", "none"):
            return False, ""
        raise APIError(400, "tool_choice 'required' or a named function needs `tools`", param="tool_choice")
    if choice == "none":
        return False, ""
    if choice in (None, "auto"):
        return True, ""
    if req.continue_final_message:
        raise APIError(400, "tool_choice 'required' or a named function cannot continue a final message "
                            "(both decide how the reply starts)", param="tool_choice")
    if choice == "required":
        return True, toolcalls.call_prefill(parser)
    name = choice.function.name
    if name not in {t.function.name for t in req.tools}:
        raise APIError(400, f"tool_choice names the function {name!r}, which is not among the tools",
                       param="tool_choice")
    return True, toolcalls.call_prefill(parser, name)


def reply_tool_calls(parser: str, text: str, parallel: bool | None) -> tuple[str | None, list[dict[str, Any]]]:
    """(content, OpenAI tool_calls) of a finished reply (with any prefilled start of a call)."""
    content, calls = toolcalls.split_reply(parser, text)
    if parallel is False:
        calls = calls[:1]
    return content, [{"id": c.id, "type": "function", "function": {"name": c.name, "arguments": json.dumps(c.arguments)}}
                     for c in calls]
