"""The in-process engine as a backend: chat template, `AsyncEngine.complete`, engine timings in epoch seconds.

`EmbeddedBackend(preset="agentrt")` builds its engine with the preset's options (agentrt/presets.py);
a `Runtime` over it then runs the preset's retention policy. It reads the engine only through its
published `EngineSnapshot` and request outputs.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from engine.async_engine import AsyncEngine
from engine.config import EngineConfig
from engine.params import ProgramHint, SamplingParams

from agentrt.backends.base import Backend
from agentrt.presets import Preset, get_preset
from agentrt.types import ChatReply, LLMTimings


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
