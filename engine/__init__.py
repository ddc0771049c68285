"""agentrt's embedded inference engine: paged KV cache, continuous batching, prefix caching.

Public API: `LLM` and `SamplingParams` for offline batches, `Engine` for `add_request`/`step`,
`AsyncEngine` for streaming under anyio, `ProgramHint` for a request's agent-program identity.
"""

from engine.async_engine import AsyncEngine
from engine.config import ConfigError, EngineConfig
from engine.engine import Engine, PromptTooLongError
from engine.llm import LLM
from engine.loader import ModelLoadError
from engine.params import ProgramHint, SamplingParams
from engine.request import RequestOutput

__all__ = [
    "LLM", "SamplingParams", "ProgramHint", "Engine", "EngineConfig", "AsyncEngine", "RequestOutput",
    "ConfigError", "ModelLoadError", "PromptTooLongError",
]
