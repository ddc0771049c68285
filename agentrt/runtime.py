"""`Runtime`: runs many agent programs at once on one backend, and records them.

    runtime = Runtime(EmbeddedBackend(), db="agentrt.db")
    result = runtime.run(agent, tasks, rate=2.0)      # Poisson arrivals, 2 programs/s; None: all at once

Each program is `await agent(ctx, task)` in its own task of an anyio task group. A program that
raises is recorded as `failed` with its traceback, one over its time limit as `timeout`, one whose
run is cancelled as `cancelled`; none of these stops the others. Job completion time (JCT) runs from
a program's arrival to its end. With an embedded backend, engine gauges are sampled into the store.
"""

from __future__ import annotations

import random
import time
import traceback
import uuid
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import anyio

from engine.params import SamplingParams

from agentrt.backends.base import Backend
from agentrt.context import Context, TurnLimitReached
from agentrt.retention import Retention
from agentrt.store import EngineSample, Program, Run, Store
from agentrt.tools import Tool

Agent = Callable[[Context, Any], Awaitable[Any]]


@dataclass(slots=True)
class ProgramResult:
    program_id: str
    index: int
    task: Any
    status: str  # finished, failed, timeout, cancelled
    result: Any = None
    error: str | None = None
    arrival_at: float = 0.0
    started_at: float = 0.0
    finished_at: float = 0.0
    turns: int = 0

    @property
    def jct_s(self) -> float:
        return self.finished_at - self.arrival_at


@dataclass(slots=True)
class RunResult:
    run_id: str
    programs: list[ProgramResult] = field(default_factory=list)
    started_at: float = 0.0
    finished_at: float = 0.0

    @property
    def makespan_s(self) -> float:
        return self.finished_at - self.started_at

    def by_status(self, status: str) -> list[ProgramResult]:
        return [p for p in self.programs if p.status == status]


def poisson_arrivals(n: int, rate: float | None, seed: int = 0) -> list[float]:
    """Offsets (s) of n arrivals: all at 0 when rate is None, else exponential gaps of mean 1/rate."""
    if rate is None:
        return [0.0] * n
    if rate <= 0:
        raise ValueError(f"rate must be positive (programs per second), got {rate}")
    rng = random.Random(seed)
    t, out = 0.0, []
    for _ in range(n):
        out.append(t)
        t += rng.expovariate(rate)
    return out


class Runtime:
    def __init__(self, backend: Backend, *, db: str | None = None, store: Store | None = None,
                 tools: list[Tool | Callable] = (), tool_format: str = "openai", max_turns: int = 20,
                 time_limit_s: float | None = None, sampling: SamplingParams | None = None,
                 tenant: str | None = None, tool_hooks: list[Callable] = (), sample_interval_s: float = 0.5,
                 progress: bool = False, name: str | None = None, retention: Retention | None = None):
        self.backend = backend
        self.store = store or (Store(db) if db else None)
        self._owns_store = store is None and db is not None
        self.tools = list(tools)
        self.tool_format, self.max_turns, self.time_limit_s = tool_format, max_turns, time_limit_s
        self.sampling, self.tenant, self.tool_hooks = sampling, tenant, list(tool_hooks)
        if retention is None and getattr(backend, "preset", None) is not None:
            retention = backend.preset.retention()  # the backend's preset names the retention policy
        self.retention = retention
        if retention is not None:  # finished tool calls teach the duration predictor online
            self.tool_hooks.append(lambda ctx, result: retention.observe(ctx.program_id, result))
        self.sample_interval_s, self.progress, self.name = sample_interval_s, progress, name
        self._cancel: anyio.CancelScope | None = None

    def run(self, agent: Agent, tasks: Iterable[Any], *, rate: float | None = None, seed: int = 0) -> RunResult:
        """Blocking entry point (starts its own event loop and enters the backend)."""
        async def main():
            async with self.backend:
                return await self.run_async(agent, tasks, rate=rate, seed=seed)
        try:
            return anyio.run(main)
        finally:
            if self._owns_store:
                self.store.close()

    def cancel(self) -> None:
        """Cancels the run in progress: programs still running are recorded as `cancelled`."""
        if self._cancel is not None:
            self._cancel.cancel()

    async def run_async(self, agent: Agent, tasks: Iterable[Any], *, rate: float | None = None,
                        seed: int = 0) -> RunResult:
        """Runs one program per task on an already entered backend."""
        tasks = list(tasks)
        run = RunResult(uuid.uuid4().hex, started_at=time.time())
        if self.store:
            self.store.insert(Run, {"id": run.run_id, "name": self.name, "backend": self.backend.name,
                                    "started_at": run.started_at, "finished_at": None,
                                    "config": {"programs": len(tasks), "rate": rate, "max_turns": self.max_turns,
                                               "time_limit_s": self.time_limit_s, "tool_format": self.tool_format,
                                               "retention": self.retention.policy_name if self.retention else None,
                                               "preset": getattr(getattr(self.backend, "preset", None), "name", None),
                                               "tenant": self.tenant}})
        offsets = poisson_arrivals(len(tasks), rate, seed)
        bar = _progress(len(tasks)) if self.progress else None
        results: list[ProgramResult | None] = [None] * len(tasks)
        with anyio.CancelScope() as scope:
            self._cancel = scope
            async with anyio.create_task_group() as tg:
                sampler = None
                if self.store and self.backend.sample() is not None:
                    sampler = anyio.CancelScope()
                    tg.start_soon(self._sample_engine, run.run_id, sampler)
                async with anyio.create_task_group() as programs:
                    for i, task in enumerate(tasks):
                        programs.start_soon(self._program, agent, i, task, run, run.started_at + offsets[i],
                                            results, bar)
                if sampler:
                    sampler.cancel()
        self._cancel = None
        run.finished_at = time.time()
        # programs cancelled before they even arrived
        for i, r in enumerate(results):
            if r is None:
                r = results[i] = ProgramResult(uuid.uuid4().hex, i, tasks[i], "cancelled", error="run cancelled",
                                               arrival_at=run.started_at + offsets[i], finished_at=run.finished_at)
                if self.store:
                    self.store.insert(Program, {
                        "id": r.program_id, "run_id": run.run_id, "index": i, "task": _text(r.task),
                        "status": r.status, "arrival_at": r.arrival_at, "started_at": None,
                        "finished_at": r.finished_at, "jct_s": None, "turns": 0, "result": None, "error": r.error,
                        "tenant": self.tenant})
        run.programs = results
        if bar is not None:
            bar.close()
        if self.store:
            self.store.update(Run, run.run_id, {"finished_at": run.finished_at})
            self.store.flush()
        return run

    async def _program(self, agent: Agent, index: int, task: Any, run: RunResult, arrival_at: float,
                       results: list, bar) -> None:
        await anyio.sleep(max(0.0, arrival_at - time.time()))
        pid = uuid.uuid4().hex
        ctx = Context(pid, task, self.backend, store=self.store, tools=self.tools, tool_format=self.tool_format,
                      max_turns=self.max_turns, tenant=self.tenant, sampling=self.sampling, tool_hooks=self.tool_hooks,
                      retention=self.retention)
        res = ProgramResult(pid, index, task, "running", arrival_at=arrival_at, started_at=time.time())
        results[index] = res
        if self.store:
            self.store.insert(Program, {"id": pid, "run_id": run.run_id, "index": index, "task": _text(task),
                                        "status": "running", "arrival_at": arrival_at, "started_at": res.started_at,
                                        "finished_at": None, "jct_s": None, "turns": 0, "result": None, "error": None,
                                        "tenant": self.tenant})
        try:
            with anyio.fail_after(self.time_limit_s):
                res.result = await agent(ctx, task)
            res.status = "finished"
        except TimeoutError:
            res.status, res.error = "timeout", f"time limit of {self.time_limit_s} s reached"
        except TurnLimitReached as exc:
            res.status, res.error = "finished", str(exc)  # a turn limit ends a program normally
        except anyio.get_cancelled_exc_class():
            res.status, res.error = "cancelled", "run cancelled"
            raise
        except Exception:
            res.status, res.error = "failed", traceback.format_exc()
        finally:
            res.finished_at = time.time()
            res.turns = ctx.turn
            self.backend.end_program(pid)
            if self.retention is not None:
                self.retention.program_finished(pid, ctx.turn)
            if self.store:
                self.store.update(Program, pid, {
                    "status": res.status, "finished_at": res.finished_at, "jct_s": res.jct_s, "turns": res.turns,
                    "result": _text(res.result), "error": res.error})
            if bar is not None:
                bar.update(1)

    async def _sample_engine(self, run_id: str, scope: anyio.CancelScope) -> None:
        with scope:
            while True:
                gauges = self.backend.sample()
                self.store.insert(EngineSample, {"run_id": run_id, "t": time.time(), **gauges})
                await anyio.sleep(self.sample_interval_s)


def _text(value: Any) -> str | None:
    if value is None:
        return None
    return value if isinstance(value, str) else repr(value)


def _progress(total: int):
    from tqdm import tqdm

    return tqdm(total=total, unit="program", desc="programs", smoothing=0.1)
