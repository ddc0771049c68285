"""The in-process engine as a backend: chat template, `AsyncEngine.complete`, engine timings in epoch seconds."""

from __future__ import annotations

from collections.abc import Callable

import time

from engine import AsyncEngine, EngineConfig
from engine.params import ProgramHint, SamplingParams

from agentrt.backends.base import Backend
from agentrt.types import ChatReply, LLMTimings


def _epoch(monotonic_t: float | None, now_wall: float, now_mono: float) -> float | None:
    return None if monotonic_t is None else now_wall - (now_mono - monotonic_t)


class EmbeddedBackend(Backend):
    name = "embedded"

    def __init__(self, engine: AsyncEngine | None = None, model: str | None = None, **engine_options):
        self.aengine = engine or AsyncEngine(EngineConfig(model=model), **engine_options)
        self.model_name = self.aengine.engine.model_dir.name

    async def __aenter__(self) -> "EmbeddedBackend":
        await self.aengine.__aenter__()
        return self

    async def __aexit__(self, *exc_info) -> None:
        await self.aengine.__aexit__(*exc_info)

    async def chat(self, messages: list[dict], params: SamplingParams, hint: ProgramHint,
                   tools: list[dict] | None = None, last_tool: str | None = None,
                   prefill: str | None = None, retention: Callable | None = None) -> ChatReply:
        queued = time.time()
        held = hint.program_id is not None and hint.program_id in self.aengine.engine.pins.pins
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
        e = self.aengine.engine
        pins = list(e.pins.pins.values())  # one C-level copy: the engine thread mutates the dict
        return {"blocks_total": e.pool.num_blocks, "blocks_free": e.pool.num_free,
                "blocks_used": e.pool.num_blocks - e.pool.num_free,
                "blocks_pinned": len({b.block_id for p in pins for b in p.blocks}),
                "running": len(e.scheduler.running), "waiting": len(e.scheduler.waiting)}
