"""anyio-friendly engine: many concurrent callers stream tokens while one loop steps the engine.

    async with AsyncEngine(EngineConfig()) as engine:
        async for out in engine.generate("Hello", SamplingParams(max_tokens=8)):
            print(out.delta_text, end="")

The step loop runs `Engine.step` in a worker thread (torch releases the GIL), so the event loop
stays responsive. Adds and aborts are queued and applied between steps on the event loop, so the
engine is only ever touched by one thread at a time. A caller that stops iterating (break,
cancellation, error) aborts its request, which frees its KV blocks.
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator, Callable

import anyio
from anyio.streams.memory import MemoryObjectSendStream

from engine.config import EngineConfig
from engine.engine import Engine
from engine.params import ProgramHint, SamplingParams
from engine.request import Request, RequestOutput


class AsyncEngine:
    def __init__(self, config: EngineConfig | Engine | None = None, **overrides):
        self.engine = config if isinstance(config, Engine) else Engine(config, **overrides)
        self._streams: dict[str, MemoryObjectSendStream] = {}
        self._pending_adds: list[Request] = []
        self._pending_aborts: list[str] = []
        self._wakeup = anyio.Event()
        self._task_group = None
        self._error: BaseException | None = None

    @property
    def tokenizer(self):
        return self.engine.tokenizer

    async def __aenter__(self) -> "AsyncEngine":
        self._task_group = anyio.create_task_group()
        await self._task_group.__aenter__()
        self._task_group.start_soon(self._loop)
        return self

    async def __aexit__(self, *exc_info):
        self._task_group.cancel_scope.cancel()
        return await self._task_group.__aexit__(*exc_info)

    async def _loop(self) -> None:
        engine = self.engine
        while True:
            for req in self._pending_adds:
                engine.submit(req)
            self._pending_adds.clear()
            for rid in self._pending_aborts:
                engine.abort_request(rid)
            self._pending_aborts.clear()
            if not engine.has_unfinished_requests():
                self._wakeup = anyio.Event()
                await self._wakeup.wait()
                continue
            try:
                outputs = await anyio.to_thread.run_sync(engine.step)
            except Exception as exc:  # a failing step must not leave callers waiting forever
                self._error = exc
                for send in self._streams.values():
                    send.close()
                self._streams.clear()
                raise
            if not outputs and engine.last_step.num_requests == 0:
                await anyio.sleep(0.002)  # nothing could run (waiting on a pin's expiry): don't spin
            for out in outputs:
                send = self._streams.get(out.request_id)
                if send is None:
                    continue
                try:
                    send.send_nowait(out)
                except (anyio.BrokenResourceError, anyio.ClosedResourceError):
                    self._abort(out.request_id)
                if out.finished:
                    send.close()
                    self._streams.pop(out.request_id, None)

    def _abort(self, request_id: str) -> None:
        send = self._streams.pop(request_id, None)
        if send is not None:
            send.close()
            self._pending_aborts.append(request_id)
            self._wakeup.set()

    async def generate(self, prompt: str | list[int], params: SamplingParams | None = None, *,
                       hint: ProgramHint | None = None, request_id: str | None = None, stream: bool = True,
                       retention: Callable[[RequestOutput], float] | None = None) -> AsyncIterator[RequestOutput]:
        """Yields a snapshot per new token (cumulative `text`, plus `delta_text`); the last has `finished`.
        With `stream=False` only the final snapshot comes (no per-token detokenization)."""
        if self._task_group is None:
            raise RuntimeError("use `async with AsyncEngine(...) as engine:` before generate()")
        if self._error is not None:
            raise RuntimeError(f"the engine loop failed: {self._error!r}") from self._error
        req = self.engine.make_request(prompt, params, request_id=request_id, hint=hint, stream=stream,
                                       retention=retention)
        rid = req.request_id
        if rid in self._streams:
            raise ValueError(f"request id {rid!r} is already in use")
        self._pending_adds.append(req)
        send, recv = anyio.create_memory_object_stream[RequestOutput](math.inf)
        self._streams[rid] = send
        self._wakeup.set()
        finished = False
        try:
            async with recv:
                async for out in recv:
                    finished = out.finished
                    yield out
            if not finished and self._error is not None:
                raise RuntimeError(f"the engine loop failed: {self._error!r}") from self._error
        finally:
            if not finished:
                self._abort(rid)

    async def complete(self, prompt: str | list[int], params: SamplingParams | None = None, *,
                       hint: ProgramHint | None = None,
                       retention: Callable[[RequestOutput], float] | None = None) -> RequestOutput:
        """Runs one request to completion and returns its final output."""
        last = None
        async for last in self.generate(prompt, params, hint=hint, stream=False, retention=retention):
            pass
        return last
