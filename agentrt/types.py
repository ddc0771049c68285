"""Plain records shared across the runtime: a parsed tool call, a tool's result, an LLM reply with its timings."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(slots=True)
class ToolCall:
    """One call the model asked for. `arguments` is a dict (a bash block becomes {"command": ...})."""

    name: str
    arguments: dict[str, Any]
    id: str = ""
    raw: str = ""  # the text it was parsed from


@dataclass(slots=True)
class ToolResult:
    """What running a tool gave: its output as text, whether it succeeded, and its wall-clock timing."""

    call: ToolCall
    output: str
    ok: bool = True
    exit_code: int | None = None
    error: str | None = None  # timeout, exception, unknown tool...
    started_at: float = 0.0  # epoch seconds
    finished_at: float = 0.0

    @property
    def duration_s(self) -> float:
        return self.finished_at - self.started_at


@dataclass(slots=True)
class LLMTimings:
    """Epoch seconds of one LLM call's life, as far as the backend can see it."""

    queued_at: float
    started_at: float | None = None  # first scheduled by the engine (embedded) / request sent (openai)
    first_token_at: float | None = None
    finished_at: float | None = None


@dataclass(slots=True)
class ChatReply:
    text: str
    finish_reason: str | None
    prompt_tokens: int = 0
    cached_tokens: int = 0
    output_tokens: int = 0
    timings: LLMTimings | None = None
    reused_tokens: int | None = None  # KVShare: prompt tokens whose KV came from other positions (None: unknown)
    tool_calls: list[ToolCall] = field(default_factory=list)
    pin_held: bool | None = None  # the program's KV pin was still held when the call was sent (None: unknown)
    format_error: str | None = None  # set when the reply tried to call a tool but the call did not parse

    def as_message(self) -> dict:
        return {"role": "assistant", "content": self.text}
