"""agentrt: run AI agents written as plain async Python, fast, with every turn recorded.

    from agentrt import Runtime, EmbeddedBackend, ShellTool

    async def agent(ctx, task):
        ctx.user(task)
        reply = await ctx.chat(tools=[ShellTool(".")], tool_format="bash")
        ...

`Runtime` runs many programs at once; `Context` (the `ctx`) carries each program's conversation,
tools and identity; backends: `EmbeddedBackend` (in-process engine), `OpenAIBackend` (HTTP).
"""

from engine.params import ProgramHint, SamplingParams

from agentrt.backends import Backend, BackendError, OpenAIBackend, StubBackend
from agentrt.context import Context, TurnLimitReached
from agentrt.presets import PRESETS, Preset, get_preset
from agentrt.runtime import ProgramResult, RunResult, Runtime, poisson_arrivals
from agentrt.store import Store
from agentrt.tools import FunctionTool, HttpTool, ShellTool, Tool, ToolBox, tool
from agentrt.types import ChatReply, ToolCall, ToolResult

# `EmbeddedBackend` loads the engine (and torch) on first use: `import agentrt` stays light
__all__ = [
    "Runtime", "RunResult", "ProgramResult", "Context", "TurnLimitReached", "poisson_arrivals",
    "Backend", "BackendError", "EmbeddedBackend", "OpenAIBackend", "StubBackend", "Store",
    "Tool", "FunctionTool", "ShellTool", "HttpTool", "ToolBox", "tool",
    "ChatReply", "ToolCall", "ToolResult", "ProgramHint", "SamplingParams", "Preset", "PRESETS", "get_preset",
]


def __getattr__(name: str):
    if name == "EmbeddedBackend":
        from agentrt.backends.embedded import EmbeddedBackend

        return EmbeddedBackend
    raise AttributeError(f"module 'agentrt' has no attribute {name!r}")
