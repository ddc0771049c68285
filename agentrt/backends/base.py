"""The backend interface: turn a conversation plus sampling options and a program hint into a reply."""

from __future__ import annotations

from collections.abc import Callable

from engine.params import ProgramHint, SamplingParams

from agentrt.types import ChatReply, ToolCall


class BackendError(RuntimeError):
    """The backend could not answer (server error, bad request); the message says why."""


class Backend:
    """`chat` must be safe to call from many programs at once. `native_tools` backends accept OpenAI
    `tools` specs and return structured tool calls; the others get tools rendered into the prompt.
    `prefill` starts the assistant's reply with given text (the reply's text includes it).
    `retention(final_output) -> seconds` is how long to keep the program's KV after this turn; only
    a backend that owns the engine can honour it (the others ignore it). A native-tools backend that
    honours it also reads the calls out of the engine's output (`tool_calls_in`), so that the
    runtime's callback can predict the coming tool's duration before `chat` returns."""

    name = "base"
    native_tools = False

    async def __aenter__(self) -> "Backend":
        return self

    async def __aexit__(self, *exc_info) -> None:
        return None

    async def chat(self, messages: list[dict], params: SamplingParams, hint: ProgramHint,
                   tools: list[dict] | None = None, last_tool: str | None = None,
                   prefill: str | None = None, retention: Callable | None = None) -> ChatReply:
        raise NotImplementedError

    def tool_calls_in(self, final_output, prefill: str | None = None) -> list[ToolCall] | None:
        """The tool calls this backend will return for a finished engine output of a turn that was
        given `tools` (called in the engine thread); None: this backend does not parse the engine's
        text itself."""
        return None

    def end_program(self, program_id: str) -> None:
        """Called once a program is over (its KV and server affinity may go)."""

    def sample(self) -> dict | None:
        """Engine gauges for the store's periodic samples, where the backend can see them."""
        return None
