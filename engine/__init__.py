"""agentrt's embedded inference engine: paged KV cache, continuous batching, prefix caching.

Public API: `LLM` and `SamplingParams` for offline batches, `Engine` for `add_request`/`step`,
`AsyncEngine` for streaming under anyio, `ProgramHint` for a request's agent-program identity,
`EngineSnapshot` for what the engine publishes each step. Names load on first use, so importing a
torch-free part (`engine.params`, the scheduling core) does not import torch.
"""

from importlib import import_module

_EXPORTS = {
    "LLM": "engine.llm", "SamplingParams": "engine.params", "ProgramHint": "engine.params",
    "Engine": "engine.engine", "PromptTooLongError": "engine.engine", "EngineConfig": "engine.config",
    "ConfigError": "engine.config", "AsyncEngine": "engine.async_engine", "RequestOutput": "engine.request",
    "ModelLoadError": "engine.loader", "EngineSnapshot": "engine.snapshot",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'engine' has no attribute {name!r}")
    return getattr(import_module(_EXPORTS[name]), name)
