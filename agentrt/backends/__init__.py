"""LLM backends the runtime talks to. One interface (`Backend.chat`), three implementations:
`embedded` (this process's engine; `ChatTemplateToolsBackend` over it for native tools through the
model's chat template), `openai` (any OpenAI-compatible server over HTTP, with program
affinity across several servers) and `stub` (instant canned replies, to measure the runtime itself)."""

from agentrt.backends.base import Backend, BackendError
from agentrt.backends.openai_http import OpenAIBackend
from agentrt.backends.stub import StubBackend

__all__ = ["Backend", "BackendError", "ChatTemplateToolsBackend", "EmbeddedBackend", "OpenAIBackend", "StubBackend"]


def __getattr__(name: str):
    if name in ("EmbeddedBackend", "ChatTemplateToolsBackend"):  # loads the engine, and torch, only when asked for
        from agentrt.backends import embedded

        return getattr(embedded, name)
    raise AttributeError(f"module 'agentrt.backends' has no attribute {name!r}")
