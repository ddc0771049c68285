"""The in-process engine as a backend: chat template, `AsyncEngine.complete`, engine timings in epoch seconds.

`EmbeddedBackend(preset="agentrt")` builds its engine with the preset's options (agentrt/presets.py);
a `Runtime` over it then runs the preset's retention policy. It reads the engine only through its
published `EngineSnapshot` and request outputs. `ChatTemplateToolsBackend(EmbeddedBackend(...))`
is the same engine with native tools: OpenAI `tools` through the model's own chat template, the
reply's calls read by the model's parser, as `agentrt serve` (and vLLM's server) do over HTTP.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable

from engine.async_engine import AsyncEngine
from engine.config import EngineConfig
from engine.params import ProgramHint, SamplingParams

from agentrt import toolcalls
from agentrt.backends.base import Backend
from agentrt.presets import Preset, get_preset
from agentrt.types import ChatReply, LLMTimings, ToolCall


def _epoch(monotonic_t: float | None, now_wall: float, now_mono: float) -> float | None:
    return None if monotonic_t is None else now_wall - (now_mono - monotonic_t)


class EmbeddedBackend(Backend):
    name = "embedded"

    def __init__(self, engine: AsyncEngine | None = None, model: str | None = None, *,
                 preset: str | Preset | None = None, **engine_options):
        """`preset`: a name or `Preset` whose engine options come first (`engine_options` override them)."""
        self.preset = get_preset(preset) if preset is not None else None
        if engine is None:
            options = {**(self.preset.engine_options() if self.preset else {}), **engine_options}
            engine = AsyncEngine(EngineConfig(model=model), **options)
        elif self.preset is not None or engine_options:
            raise ValueError("pass a preset or engine options only when the backend builds its own engine")
        self.aengine = engine
        self.model_name = engine.engine.model_dir.name

    async def __aenter__(self) -> "EmbeddedBackend":
        await self.aengine.__aenter__()
        return self

    async def __aexit__(self, *exc_info) -> None:
        await self.aengine.__aexit__(*exc_info)

    async def chat(self, messages: list[dict], params: SamplingParams, hint: ProgramHint,
                   tools: list[dict] | None = None, last_tool: str | None = None,
                   prefill: str | None = None, retention: Callable | None = None) -> ChatReply:
        queued = time.time()
        held = hint.program_id is not None and hint.program_id in self.aengine.engine.snapshot.pinned_programs
        prompt = self.aengine.engine.apply_chat_template(messages) + (prefill or "")
        out = await self.aengine.complete(prompt, params, hint=hint, retention=retention)
        if out.finish_reason == "error":  # the engine dropped this request (e.g. out of memory): the program fails
            raise RuntimeError(f"the model failed on this request: {out.stop_reason}")
        wall, mono = time.time(), time.monotonic()
        m = out.metrics
        timings = LLMTimings(queued, _epoch(m.first_scheduled_time, wall, mono),
                             _epoch(m.first_token_time, wall, mono), _epoch(m.finish_time, wall, mono))
        return ChatReply((prefill or "") + out.text, out.finish_reason, len(out.prompt_token_ids), out.num_cached_tokens,
                         len(out.token_ids), timings, pin_held=held, reused_tokens=out.num_reused_tokens)

    def sample(self) -> dict:
        s = self.aengine.engine.snapshot  # immutable: safe to read while the engine thread steps
        return {"blocks_total": s.num_blocks, "blocks_free": s.num_free_blocks, "blocks_used": s.num_used_blocks,
                "blocks_pinned": s.num_pinned_blocks, "running": s.num_running, "waiting": s.num_waiting}


class ChatTemplateToolsBackend(Backend):
    """The embedded engine as a native-tools backend: the request's `tools` go through the model's own
    chat template (`apply_chat_template(messages, tools=...)`; Hermes text in the system prompt where
    the template takes no tools), the reply is decoded with its special tokens (Qwen's `<tool_call>`
    is one) and its calls read by the model's parser (toolcalls.TOOL_CALL_PARSERS, chosen from the
    template and vocabulary as `agentrt serve` chooses it, or given). What vLLM's OpenAI server does
    with `tools`, in process (BFCL's function-calling mode over `EmbeddedBackend`, for one)."""

    native_tools = True

    def __init__(self, inner: EmbeddedBackend, parser: str | None = None):
        from agentrt.serve_tools import ToolSetup

        self.inner = inner
        self.name = inner.name
        self.preset = getattr(inner, "preset", None)
        self.model_name = getattr(inner, "model_name", None)
        self.tokenizer = inner.aengine.engine.tokenizer
        self.setup = ToolSetup.for_model(self.tokenizer, parser=parser)

    async def __aenter__(self) -> "ChatTemplateToolsBackend":
        await self.inner.__aenter__()
        return self

    async def __aexit__(self, *exc_info) -> None:
        await self.inner.__aexit__(*exc_info)

    def end_program(self, program_id: str) -> None:
        self.inner.end_program(program_id)

    def sample(self) -> dict | None:
        return self.inner.sample()

    def _message(self, m: dict) -> dict:
        out = {"role": m["role"], "content": m.get("content") or ""}
        if m["role"] == "tool" and self.setup.native:
            out.update({k: m[k] for k in ("tool_call_id", "name") if m.get(k) is not None})
        if m.get("tool_calls"):
            calls = toolcalls.parse_openai_tool_calls(m["tool_calls"])
            if self.setup.native:  # templates expect the arguments as objects
                out["tool_calls"] = [{"id": c.id, "type": "function",
                                      "function": {"name": c.name, "arguments": c.arguments}} for c in calls]
            else:
                out["content"] += "".join(toolcalls.call_text(self.setup.parser, c) for c in calls)
        return out

    def render(self, messages: list[dict], tools: list[dict] | None) -> str:
        """The prompt text: the conversation (and the tools) through the model's chat template."""
        msgs = [self._message(m) for m in messages]
        if tools and self.setup.native:
            return self.tokenizer.apply_chat_template(msgs, tools=tools, tokenize=False, add_generation_prompt=True)
        if tools:
            text = toolcalls.render_tools(self.setup.parser, tools)
            if msgs and msgs[0]["role"] == "system":
                msgs[0] = {**msgs[0], "content": f"{msgs[0]['content']}\n\n{text}"}
            else:
                msgs.insert(0, {"role": "system", "content": text})
        return self.inner.aengine.engine.apply_chat_template(msgs)

    def reply_text(self, out, prefill: str | None = None) -> str:
        """A finished output's text (decoded with its special tokens when tools were offered), less
        the special token that stopped it, after any prefilled start."""
        text = (prefill or "") + out.text
        if out.finish_reason == "stop" and not isinstance(out.stop_reason, str) and out.token_ids:
            last = out.token_ids[-1]  # the special token that stopped it is no part of the reply
            if self.tokenizer.decode([last], skip_special_tokens=True) == "":
                text = text.removesuffix(self.tokenizer.decode([last], skip_special_tokens=False))
        return text

    def tool_calls_in(self, out, prefill: str | None = None) -> list[ToolCall]:
        """The calls the model's parser reads in a finished output of a turn that offered tools:
        what `chat` will return as the reply's `tool_calls` (the runtime's retention callback asks
        it in the engine thread, before `chat` returns)."""
        return toolcalls.split_reply(self.setup.parser, self.reply_text(out, prefill))[1]

    async def chat(self, messages: list[dict], params: SamplingParams, hint: ProgramHint,
                   tools: list[dict] | None = None, last_tool: str | None = None,
                   prefill: str | None = None, retention: Callable | None = None) -> ChatReply:
        queued = time.time()
        engine = self.inner.aengine.engine
        held = hint.program_id is not None and hint.program_id in engine.snapshot.pinned_programs
        if tools:  # a model's call markers are often special tokens: keep them in the text
            params = dataclasses.replace(params, skip_special_tokens=False)
        out = await self.inner.aengine.complete(self.render(messages, tools) + (prefill or ""), params, hint=hint,
                                                retention=retention)
        if out.finish_reason == "error":
            raise RuntimeError(f"the model failed on this request: {out.stop_reason}")
        text = self.reply_text(out, prefill) if tools else (prefill or "") + out.text
        content, calls = toolcalls.split_reply(self.setup.parser, text) if tools else (text, [])
        wall, mono = time.time(), time.monotonic()
        m = out.metrics
        timings = LLMTimings(queued, _epoch(m.first_scheduled_time, wall, mono),
                             _epoch(m.first_token_time, wall, mono), _epoch(m.finish_time, wall, mono))
        return ChatReply(content or "", out.finish_reason, len(out.prompt_token_ids), out.num_cached_tokens,
                         len(out.token_ids), timings, reused_tokens=out.num_reused_tokens, tool_calls=calls,
                         pin_held=held)
