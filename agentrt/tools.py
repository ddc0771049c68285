"""Tools an agent can call: Python callables, a sandboxed shell, HTTP endpoints; all timed, none raising.

A tool turns a `ToolCall` into a `ToolResult`. Whatever happens (a non-zero exit, a timeout, an
exception, an unknown tool, bad arguments) comes back as a result the model can read, never as an
exception in the agent. Every run records wall-clock start and end, so the runtime can store it and
report it to the tool-duration hook (toolpredict).
"""

from __future__ import annotations

import inspect
import json
import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import get_type_hints

import anyio
import httpx

from agentrt.types import ToolCall, ToolResult

_JSON_TYPES = {str: "string", int: "integer", float: "number", bool: "boolean", list: "array", dict: "object"}


class Tool:
    """Base: a name, an OpenAI-style JSON schema of the arguments, and `_run` that returns (output, ok, exit_code)."""

    name: str = "tool"
    description: str = ""
    parameters: dict = {"type": "object", "properties": {}}

    def spec(self) -> dict:
        """The OpenAI `tools` entry for this tool."""
        return {"type": "function", "function": {"name": self.name, "description": self.description,
                                                 "parameters": self.parameters}}

    async def _run(self, arguments: dict) -> tuple[str, bool, int | None]:
        raise NotImplementedError

    async def run(self, call: ToolCall) -> ToolResult:
        started = time.time()
        try:
            output, ok, code = await self._run(call.arguments)
            error = None
        except (TypeError, ValueError, KeyError) as exc:
            output, ok, code, error = f"Error: bad arguments for {self.name}: {exc}", False, None, "bad_arguments"
        except Exception as exc:  # a tool's own bug is the model's observation, not the agent's crash
            output, ok, code, error = f"Error: {self.name} failed: {type(exc).__name__}: {exc}", False, None, "exception"
        return ToolResult(call, output, ok, code, error, started, time.time())


class FunctionTool(Tool):
    """Wraps a sync or async Python callable; the schema comes from its signature and docstring."""

    def __init__(self, fn: Callable, name: str | None = None, description: str | None = None):
        self.fn = fn
        self.name = name or fn.__name__
        self.description = description or inspect.getdoc(fn) or ""
        hints = get_type_hints(fn)
        props, required = {}, []
        for pname, param in inspect.signature(fn).parameters.items():
            props[pname] = {"type": _JSON_TYPES.get(hints.get(pname), "string")}
            if param.default is inspect.Parameter.empty:
                required.append(pname)
        self.parameters = {"type": "object", "properties": props, "required": required}

    async def _run(self, arguments: dict) -> tuple[str, bool, int | None]:
        if inspect.iscoroutinefunction(self.fn):
            value = await self.fn(**arguments)
        else:
            value = await anyio.to_thread.run_sync(lambda: self.fn(**arguments))
        return (value if isinstance(value, str) else json.dumps(value, default=str)), True, None


def tool(fn: Callable | None = None, *, name: str | None = None, description: str | None = None):
    """Decorator: `@tool` or `@tool(name=...)` turns a function into a `FunctionTool`."""
    if fn is None:
        return lambda f: FunctionTool(f, name, description)
    return FunctionTool(fn, name, description)


class ShellTool(Tool):
    """Runs `bash -c COMMAND` (or an argument list) in a working directory, in its own process group.

    Sandboxing here means: a fixed working directory, a minimal environment, a wall-clock timeout
    that kills the whole process group, and an output cap (the rest is drained and dropped).
    A non-zero exit is a normal result (`ok` False, `exit_code` set)."""

    name = "bash"
    description = "Run a shell command in the task's working directory and return its output."
    parameters = {"type": "object", "properties": {"command": {"type": "string"}}, "required": ["command"]}

    def __init__(self, workdir: str | Path = ".", timeout_s: float = 30.0, max_output_bytes: int = 10_000,
                 env: dict[str, str] | None = None, name: str = "bash"):
        self.workdir = Path(workdir)
        self.timeout_s = timeout_s
        self.max_output_bytes = max_output_bytes
        self.name = name
        self.env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(self.workdir), "LANG": "C.UTF-8",
                    "PAGER": "cat", "GIT_PAGER": "cat", "TERM": "dumb", **(env or {})}

    async def _run(self, arguments: dict) -> tuple[str, bool, int | None]:
        if "argv" in arguments:
            argv = [str(a) for a in arguments["argv"]]
        else:
            command = arguments["command"]
            if not isinstance(command, str):
                raise TypeError("command must be a string")
            argv = ["bash", "-c", command]
        return await self.exec(argv)

    async def exec(self, argv: list[str]) -> tuple[str, bool, int | None]:
        proc = await anyio.open_process(argv, cwd=self.workdir, env=self.env, stdin=None,
                                        stderr=subprocess.STDOUT, start_new_session=True)
        chunks, size, truncated = [], 0, False
        timed_out = False
        try:
            with anyio.fail_after(self.timeout_s):
                async for chunk in proc.stdout:
                    if size < self.max_output_bytes:
                        chunks.append(chunk[: self.max_output_bytes - size])
                        truncated |= len(chunk) > self.max_output_bytes - size
                        size += len(chunks[-1])
                    else:
                        truncated = True
                code = await proc.wait()
        except TimeoutError:
            timed_out = True
            _kill_group(proc.pid)
            with anyio.CancelScope(shield=True):
                await proc.wait()
            code = None
        finally:
            if proc.returncode is None:  # cancelled from outside: leave no process behind
                _kill_group(proc.pid)
                with anyio.CancelScope(shield=True):
                    await proc.wait()
            await proc.aclose()
        out = b"".join(chunks).decode("utf-8", errors="replace")
        if truncated:
            out += f"\n[output truncated to {self.max_output_bytes} bytes]"
        if timed_out:
            return out + f"\n[command timed out after {self.timeout_s:g} s and was killed]", False, None
        return out, code == 0, code


def _kill_group(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


class HttpTool(Tool):
    """Calls an HTTP endpoint with the arguments as query (GET) or JSON body (other methods)."""

    def __init__(self, name: str, url: str, method: str = "GET", description: str = "",
                 parameters: dict | None = None, timeout_s: float = 30.0, headers: dict | None = None,
                 max_output_bytes: int = 10_000):
        self.name, self.url, self.method = name, url, method.upper()
        self.description = description or f"{self.method} {url}"
        self.parameters = parameters or {"type": "object", "properties": {}}
        self.timeout_s, self.headers, self.max_output_bytes = timeout_s, headers or {}, max_output_bytes

    async def _run(self, arguments: dict) -> tuple[str, bool, int | None]:
        kwargs = {"params": arguments} if self.method == "GET" else {"json": arguments}
        try:
            async with httpx.AsyncClient(timeout=self.timeout_s) as client:
                resp = await client.request(self.method, self.url, headers=self.headers, **kwargs)
        except httpx.HTTPError as exc:
            return f"Error: HTTP request failed: {type(exc).__name__}: {exc}", False, None
        body = resp.text[: self.max_output_bytes]
        return body, resp.is_success, resp.status_code


class ToolBox:
    """The tools of one program by name; runs a call, turning an unknown name into a result too."""

    def __init__(self, tools: list[Tool | Callable] = ()):
        self.tools: dict[str, Tool] = {}
        for t in tools:
            self.add(t)

    def add(self, t: Tool | Callable) -> Tool:
        t = t if isinstance(t, Tool) else FunctionTool(t)
        self.tools[t.name] = t
        return t

    def specs(self) -> list[dict]:
        return [t.spec() for t in self.tools.values()]

    async def run(self, call: ToolCall) -> ToolResult:
        t = self.tools.get(call.name)
        if t is None:
            now = time.time()
            known = ", ".join(sorted(self.tools)) or "none"
            return ToolResult(call, f"Error: unknown tool {call.name!r}; available tools: {known}.", False, None,
                              "unknown_tool", now, now)
        return await t.run(call)
