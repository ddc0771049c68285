"""`Context`: what an agent program holds while it runs: its conversation, tools, identity and turn count.

    async def agent(ctx, task):
        ctx.user(task)
        for _ in range(ctx.max_turns):
            reply = await ctx.chat(tools=[bash], tool_format="bash")
            if reply.format_error:
                ctx.user(reply.format_error)          # tell the model, as mini-swe-agent does
            elif not reply.tool_calls:
                return reply.text
            for call in reply.tool_calls:
                await ctx.tool(call)                  # runs it, appends the observation

Every `chat` carries the program's `ProgramHint` (program id, turn index, is-last-turn, tenant) to the
backend; the user never passes it. The last turn is the one asked with `last_turn=True`, or the one
that reaches `max_turns`. Every LLM call and tool call is timed and written to the store, and every
tool result is passed to the runtime's tool hooks (toolpredict listens there).
"""

from __future__ import annotations

import dataclasses
import json
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from engine.params import ProgramHint, SamplingParams
from toolpredict.ttl import TTLDecision

from agentrt import toolcalls
from agentrt.backends.base import Backend
from agentrt.retention import Retention
from agentrt.store import LLMCall, Store, ToolCallRow
from agentrt.tools import Tool, ToolBox
from agentrt.types import ChatReply, ToolCall, ToolResult

if TYPE_CHECKING:
    ToolHook = Callable[["Context", ToolResult], None]


class TurnLimitReached(RuntimeError):
    """The program asked for more LLM turns than `max_turns`."""


class Context:
    def __init__(self, program_id: str, task: Any, backend: Backend, *, store: Store | None = None,
                 tools: list[Tool | Callable] = (), tool_format: str = "openai", max_turns: int = 20,
                 tenant: str | None = None, sampling: SamplingParams | None = None,
                 tool_hooks: list["ToolHook"] = (), max_output_chars: int = 10_000,
                 retention: Retention | None = None):
        self.program_id = program_id
        self.task = task
        self.backend = backend
        self.store = store
        self.toolbox = ToolBox(tools)
        self.tool_format = tool_format
        self.max_turns = max_turns
        self.tenant = tenant
        self.sampling = sampling or SamplingParams(temperature=0.0, max_tokens=256)
        self.tool_hooks = list(tool_hooks)
        self.max_output_chars = max_output_chars
        self.messages: list[dict] = []
        self.turn = 0  # LLM calls made so far
        self.last_tool: str | None = None
        self.retention = retention
        self._decision: tuple[ToolCall, TTLDecision] | None = None  # the TTL given for the coming tool call
        # the reply's tool calls as the retention callback parsed them: (text, calls, format error)
        self._parsed: tuple[str, list[ToolCall], str | None] | None = None

    # ---- conversation helpers ----------------------------------------------------------------

    def system(self, content: str) -> None:
        self.messages.append({"role": "system", "content": content})

    def user(self, content: str) -> None:
        self.messages.append({"role": "user", "content": content})

    # ---- the LLM -----------------------------------------------------------------------------

    def _format(self, tool_format: str) -> str:
        # a backend without native tool calling gets OpenAI tools as Hermes text
        if tool_format == "openai" and not self.backend.native_tools:
            return "hermes"
        return tool_format

    def _with_tool_prompt(self, messages: list[dict], fmt: str, specs: list[dict]) -> list[dict]:
        prompt = toolcalls.render_tools(fmt, specs)
        if messages and messages[0]["role"] == "system":
            return [{"role": "system", "content": f"{messages[0]['content']}\n\n{prompt}"}, *messages[1:]]
        return [{"role": "system", "content": prompt}, *messages]

    async def chat(self, messages: list[dict] | None = None, *, tools: list[Tool | Callable] | None = None,
                   tool_format: str | None = None, last_turn: bool = False, prefill: str | None = None,
                   next_tool_call: ToolCall | None = None, **sampling: Any) -> ChatReply:
        """One LLM turn over `messages` (default: the conversation so far; if given, they replace it).
        The reply is appended to the conversation; tool calls in it are parsed into `reply.tool_calls`
        (or `reply.format_error`, a message to send back). `prefill` makes the reply start with that
        text (e.g. "```bash\n" to get a command out of a small model); sampling options
        (max_tokens=..., stop=...) override the program's defaults for this turn. With a runtime
        retention policy, a non-final turn's KV is kept for the TTL predicted for the tool call that
        follows: `next_tool_call` when the agent knows it, else the first call in the reply (parsed
        from its text, or the first structured call a native-tools backend reads from the output)."""
        if self.turn >= self.max_turns:
            raise TurnLimitReached(f"program {self.program_id} reached its limit of {self.max_turns} turns")
        if messages is not None:
            self.messages = list(messages)
        for t in tools or ():
            if not (isinstance(t, Tool) and self.toolbox.tools.get(t.name) is t):
                self.toolbox.add(t)
        fmt = self._format(tool_format or self.tool_format)
        specs = self.toolbox.specs() if (tools or self.toolbox.tools) else []
        send = list(self.messages)  # a copy: the reply appended below is not part of what was sent
        native = fmt == "openai"
        if specs and not native:
            send = self._with_tool_prompt(self.messages, fmt, specs)
        params = dataclasses.replace(self.sampling, **sampling) if sampling else self.sampling
        is_last = last_turn or self.turn == self.max_turns - 1
        hint = ProgramHint(self.program_id, self.turn, is_last, self.tenant)
        retention = (self._retention_callback(fmt, prefill, next_tool_call, native and bool(specs))
                     if self.retention and not is_last else None)
        error = None
        try:
            reply = await self.backend.chat(send, params, hint, specs if native and specs else None, self.last_tool,
                                            prefill, retention)
        except Exception as exc:
            error = f"{type(exc).__name__}: {exc}"
            raise
        finally:
            if error is not None:
                self._record_llm(hint, None, send, error)
        if specs and not native:  # parsed once: the retention callback may have done it already
            parsed, self._parsed = self._parsed, None
            reply.tool_calls, reply.format_error = (parsed[1:] if parsed and parsed[0] == reply.text
                                                    else toolcalls.parse(fmt, reply.text))
        self.turn += 1
        message = reply.as_message()
        if native and reply.tool_calls:  # an OpenAI server expects the calls that tool messages answer
            message["tool_calls"] = [{"id": c.id, "type": "function", "function": {
                "name": c.name, "arguments": json.dumps(c.arguments)}} for c in reply.tool_calls]
        self.messages.append(message)
        self._record_llm(hint, reply, send, None)
        return reply

    def _retention_callback(self, fmt: str, prefill: str | None, call: ToolCall | None,
                            native_tools: bool = False) -> Callable:
        """The TTL callback of one turn: the tool call that follows is the agent's `call`, else the
        first one in the reply: parsed from the text in a text format, or, where the backend reads
        structured calls out of the engine's output itself (native tools), the first it reads."""
        def ttl_s(out, snapshot) -> float:  # runs in the engine thread when the turn ends
            nonlocal call
            if call is None and native_tools:
                calls = self.backend.tool_calls_in(out, prefill) or []
                call = calls[0] if calls else None
            elif call is None and fmt in toolcalls.FORMATS:
                text = (prefill or "") + out.text
                calls, error = toolcalls.parse(fmt, text)
                self._parsed = (text, calls, error)
                call = calls[0] if calls else None
            if call is None:
                return 0.0
            decision = self.retention.ttl_for(self.program_id, call, len(out.prompt_token_ids) + len(out.token_ids),
                                              snapshot)
            self._decision = (call, decision)
            return decision.ttl_s
        return ttl_s

    def _record_llm(self, hint: ProgramHint, reply: ChatReply | None, sent: list[dict], error: str | None) -> None:
        if self.store is None:
            return
        t = reply.timings if reply else None
        self.store.insert(LLMCall, {
            "id": uuid.uuid4().hex, "program_id": self.program_id, "turn": hint.turn, "is_last_turn": hint.is_last_turn,
            "queued_at": t.queued_at if t else 0.0, "started_at": t.started_at if t else None,
            "first_token_at": t.first_token_at if t else None, "finished_at": t.finished_at if t else None,
            "prompt_tokens": reply.prompt_tokens if reply else 0, "cached_tokens": reply.cached_tokens if reply else 0,
            "output_tokens": reply.output_tokens if reply else 0,
            "finish_reason": reply.finish_reason if reply else "error",
            "prompt": str(sent[-1].get("content", ""))[: self.max_output_chars] if sent else None,
            "output": reply.text[: self.max_output_chars] if reply else None, "error": error,
            "pin_held": reply.pin_held if reply else None,
            "reused_tokens": reply.reused_tokens if reply else None,
        })

    # ---- tools -------------------------------------------------------------------------------

    async def tool(self, call: ToolCall | str, /, **arguments: Any) -> ToolResult:
        """Runs a tool call (parsed from a reply, or by name with keyword arguments), times it, records
        it, and appends its result to the conversation as the model's next observation."""
        if isinstance(call, str):
            call = ToolCall(call, arguments, "call_" + uuid.uuid4().hex[:24])
        result = await self.toolbox.run(call)
        self.last_tool = call.name
        decision = self._decision[1] if self._decision and self._decision[0].name == call.name else None
        self._decision = None
        self.messages.append(self.observation(result))
        if self.store is not None:
            self.store.insert(ToolCallRow, {
                # the LLM turn whose reply asked for it (-1: called before any LLM turn)
                "id": uuid.uuid4().hex, "program_id": self.program_id, "turn": self.turn - 1, "name": call.name,
                "arguments": json.loads(json.dumps(call.arguments, default=str)), "started_at": result.started_at,
                "finished_at": result.finished_at, "duration_s": result.duration_s, "ok": result.ok,
                "exit_code": result.exit_code, "error": result.error,
                "output": result.output[: self.max_output_chars],
                "predicted_duration_s": decision.predicted_median_s if decision else None,
                "ttl_s": decision.ttl_s if decision else None,
            })
        for hook in self.tool_hooks:
            hook(self, result)
        return result

    def observation(self, result: ToolResult) -> dict:
        """The message a tool result becomes: mini-swe-agent's returncode/output for the bash format,
        a `tool` message otherwise."""
        output = result.output
        if len(output) > self.max_output_chars:
            output = output[: self.max_output_chars] + f"\n[{len(result.output) - self.max_output_chars} more characters cut]"
        if self._format(self.tool_format) == "bash":
            code = result.exit_code if result.exit_code is not None else -1
            return {"role": "user", "content": f"<returncode>{code}</returncode>\n<output>\n{output}</output>"}
        return {"role": "tool", "content": output, "tool_call_id": result.call.id, "name": result.call.name}
