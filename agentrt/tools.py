"""Tools an agent can call: Python callables, a sandboxed shell, HTTP endpoints; all timed, none raising.

A tool turns a `ToolCall` into a `ToolResult`. Whatever happens (a non-zero exit, a crash, a timeout,
an exception, an unknown tool, bad arguments) comes back as a result the model can read, never as an
exception in the agent. Every tool has a time limit and an output cap (`max_output_bytes`, with a
note saying what was cut). Every run records wall-clock start and end, so the runtime can store it
and report it to the tool-duration hook (toolpredict).
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


def _truncation_note(limit: int) -> str:
    return f"\n[output truncated to {limit} bytes]"


def cap_output(text: str, limit: int) -> str:
    """`text` cut to at most `limit` UTF-8 bytes (never inside a character), with a note if cut."""
    data = text.encode()
    if len(data) <= limit:
        return text
    return data[:limit].decode("utf-8", errors="ignore") + _truncation_note(limit)


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
    """Wraps a sync or async Python callable; the schema comes from its signature and docstring.

    Past `timeout_s` an async function is cancelled; a sync one runs in a worker thread, which Python
    cannot kill: the call returns a timeout result and the thread is left to finish on its own."""

    def __init__(self, fn: Callable, name: str | None = None, description: str | None = None,
                 timeout_s: float | None = 30.0, max_output_bytes: int = 10_000):
        self.fn = fn
        self.timeout_s, self.max_output_bytes = timeout_s, max_output_bytes
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
        with anyio.move_on_after(self.timeout_s) as scope:
            if inspect.iscoroutinefunction(self.fn):
                value = await self.fn(**arguments)
            else:
                value = await anyio.to_thread.run_sync(lambda: self.fn(**arguments), abandon_on_cancel=True)
        if scope.cancelled_caught:
            return f"Error: {self.name} timed out after {self.timeout_s:g} s", False, None
        text = value if isinstance(value, str) else json.dumps(value, default=str)
        return cap_output(text, self.max_output_bytes), True, None


def tool(fn: Callable | None = None, *, name: str | None = None, description: str | None = None,
         timeout_s: float | None = 30.0):
    """Decorator: `@tool` or `@tool(name=..., timeout_s=...)` turns a function into a `FunctionTool`."""
    if fn is None:
        return lambda f: FunctionTool(f, name, description, timeout_s)
    return FunctionTool(fn, name, description, timeout_s)


class ShellTool(Tool):
    """Runs commands in a sandbox directory, each in its own process group.

    Two kinds, and model text is only ever parsed by a shell in the first:
    - a shell (default, `name="bash"`): the model's `command` is a bash script (`bash -c`);
      an `argv` list runs one program without a shell;
    - a program (`program=["grep", "-rn", "--"]`): the model's `args` (a list of strings; a lone
      string is one argument) are appended as argv elements, never split, expanded or interpreted
      by a shell; `command` is refused. End `program` with `--` if its arguments must not be options.
    Sandboxing here means: each call starts in the sandbox `workdir`, or in a directory inside it
    given as `cwd` (after resolving `..` and symlinks; anything outside is refused); a `cd` does not
    carry over to the next call; the environment is minimal (no variable of the agent's process
    but PATH); a wall-clock timeout kills the whole process group; output is capped (the rest is
    drained and dropped). It is not a jail: a shell command can still `cd /` or open absolute paths
    that the user running agentrt may read. Run untrusted models in a container or as an
    unprivileged user. A non-zero exit or a crash is a normal result (`ok` False, `exit_code` set;
    a negative exit code is the signal that killed it)."""

    description = "Run a shell command in the task's working directory and return its output."

    def __init__(self, workdir: str | Path = ".", timeout_s: float = 30.0, max_output_bytes: int = 10_000,
                 env: dict[str, str] | None = None, name: str | None = None, program: list[str] | None = None,
                 description: str | None = None):
        self.workdir = Path(workdir).resolve()
        self.timeout_s = timeout_s
        self.max_output_bytes = max_output_bytes
        self.program = list(program) if program else None
        self.name = name or (Path(self.program[0]).name if self.program else "bash")
        cwd = {"cwd": {"type": "string", "description": "directory to run in, relative to the working directory"}}
        if self.program:
            self.description = description or f"Run `{' '.join(self.program)} ARGS...` in the working directory."
            self.parameters = {"type": "object", "required": ["args"], "properties": {
                "args": {"type": "array", "items": {"type": "string"}}, **cwd}}
        else:
            self.description = description or self.description
            self.parameters = {"type": "object", "required": ["command"], "properties": {
                "command": {"type": "string"}, **cwd}}
        self.env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(self.workdir), "LANG": "C.UTF-8",
                    "PAGER": "cat", "GIT_PAGER": "cat", "TERM": "dumb", **(env or {})}

    async def _run(self, arguments: dict) -> tuple[str, bool, int | None]:
        cwd = self.resolve_cwd(arguments.get("cwd"))
        if self.program:
            if "command" in arguments:
                raise ValueError(f"{self.name} runs {self.program[0]} with `args`, not a shell `command`")
            args = arguments["args"]
            argv = self.program + _strings([args] if isinstance(args, str) else args, "args")
        elif "argv" in arguments:
            argv = _strings(arguments["argv"], "argv")
            if not argv:
                raise ValueError("argv is empty")
        else:
            command = arguments["command"]
            if not isinstance(command, str):
                raise TypeError("command must be a string")
            argv = ["bash", "-c", command]
        return await self.exec(argv, cwd)

    def resolve_cwd(self, cwd: object) -> Path:
        """The sandbox, or the directory `cwd` names inside it; ValueError for anything outside."""
        if cwd is None or cwd == "":
            return self.workdir
        if not isinstance(cwd, str):
            raise TypeError("cwd must be a string")
        path = (self.workdir / cwd).resolve()  # an absolute cwd replaces workdir here, then must pass the check
        if not path.is_relative_to(self.workdir):
            raise ValueError(f"cwd {cwd!r} is outside the working directory")
        if not path.is_dir():
            raise ValueError(f"cwd {cwd!r} is not a directory")
        return path

    async def exec(self, argv: list[str], cwd: Path | None = None) -> tuple[str, bool, int | None]:
        proc = await anyio.open_process(argv, cwd=cwd or self.workdir, env=self.env, stdin=None,
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
            out += _truncation_note(self.max_output_bytes)
        if timed_out:
            return out + f"\n[command timed out after {self.timeout_s:g} s and was killed]", False, None
        if code < 0:
            out += f"\n[killed by signal {signal.Signals(-code).name}]"
        return out, code == 0, code


def _strings(values: object, what: str) -> list[str]:
    if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
        raise TypeError(f"{what} must be a list of strings")
    return values


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
        return cap_output(resp.text, self.max_output_bytes), resp.is_success, resp.status_code


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
