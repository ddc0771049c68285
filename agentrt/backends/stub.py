"""A backend that answers instantly with canned text: it measures the runtime's own overhead."""

from __future__ import annotations

import time
from collections.abc import Callable

from engine.params import ProgramHint, SamplingParams

from agentrt.backends.base import Backend
from agentrt.types import ChatReply, LLMTimings


class StubBackend(Backend):
    """`reply(messages, hint) -> str` decides the text; the default says "done" with no tool call."""

    name = "stub"

    def __init__(self, reply: Callable[[list[dict], ProgramHint], str] | None = None):
        self.reply = reply or (lambda messages, hint: "done")

    async def chat(self, messages: list[dict], params: SamplingParams, hint: ProgramHint,
                   tools: list[dict] | None = None, last_tool: str | None = None,
                   prefill: str | None = None, retention: Callable | None = None) -> ChatReply:
        now = time.time()
        text = (prefill or "") + self.reply(messages, hint)
        return ChatReply(text, "stop", sum(len(str(m.get("content", ""))) for m in messages) // 4, 0,
                         len(text) // 4, LLMTimings(now, now, now, now))
