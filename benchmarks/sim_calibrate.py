"""Calibrates the simulator's `cpu-smollm2` cost model on this machine: a replay on the real embedded
engine, each step's shape and time recorded, a linear model fitted (engine/sim.py `LinearCostModel`)
and written where `engine.sim.hardware("cpu-smollm2")` reads it.

    python -m benchmarks.sim_calibrate [--traces DIR] [--programs N] [--rate 1.0] [--kv-blocks 256] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

from agentrt.backends.embedded import EmbeddedBackend
from agentrt.replay import replay_agent
from agentrt.runtime import Runtime
from agentrt.sim import load_workload
from engine.params import SamplingParams
from engine.sim import CPU_CALIBRATION, LinearCostModel, StepRecorder, StepShape


def profile_runtime(traces: str | Path, programs: int | None = None, rate: float = 1.0, kv_blocks: int = 256,
                    seed: int = 0, command: str = "") -> LinearCostModel:
    """The `cpu-smollm2` cost model fitted to the real embedded engine's steps as the runtime drives
    them: a replay of `traces` (fcfs preset) with each step's shape and its time from its start to
    the next step's start while requests remain (the runtime's own work between steps, tokenizing
    and thread hops, included; so is whatever else the machine runs at the time)."""
    workload = load_workload(traces, "cpu-smollm2", seed)
    n = programs or len(workload.sessions)
    backend = EmbeddedBackend(kv_cache_tokens=kv_blocks * 16, scheduling_policy="fcfs", max_num_seqs=32)
    engine = backend.aengine.engine
    recorder = engine.runner = StepRecorder(engine.runner)
    marks: list[tuple[StepShape | None, float, float, bool]] = []
    step = engine.step

    def timed_step():
        recorder.shape = None
        t0 = time.perf_counter()
        outputs = step()
        marks.append((recorder.shape, t0, time.perf_counter(), engine.has_unfinished_requests()))
        return outputs

    engine.step = timed_step  # the AsyncEngine loop looks it up at every step
    Runtime(backend, tool_format="bash", max_turns=10_000,
            sampling=SamplingParams(temperature=0.0, max_tokens=32, ignore_eos=True)).run(
        replay_agent, [workload.sessions[i % len(workload.sessions)].session for i in range(n)], rate=rate, seed=seed)
    shapes, seconds = [], []
    for (shape, t0, t1, busy), after in zip(marks, marks[1:] + [None]):
        if shape is not None:
            shapes.append(shape)
            seconds.append(after[1] - t0 if busy and after is not None else t1 - t0)
    source = {"command": command, "traces": str(traces), "programs": n, "rate": rate, "kv_blocks": kv_blocks,
              "workload": workload.options, "machine": f"{platform.machine()}, {os.cpu_count()} CPUs"}
    dtype = str(engine.dtype).removeprefix("torch.")
    return LinearCostModel.fit(f"{engine.model_dir.name} (CPU)", engine.model_config, dtype, shapes, seconds, source)


def main(argv: list[str]) -> int:
    """`python -m benchmarks.sim_calibrate [--traces DIR] [--programs N] [--out FILE]`: re-measure this machine."""
    ap = argparse.ArgumentParser(prog="python -m benchmarks.sim_calibrate", description=profile_runtime.__doc__)
    ap.add_argument("--traces", default=str(Path(__file__).parents[1] / "tests" / "data" / "agent-traces-sample"))
    ap.add_argument("--programs", type=int)
    ap.add_argument("--rate", type=float, default=1.0)
    ap.add_argument("--kv-blocks", type=int, default=256)
    ap.add_argument("--out", default=str(CPU_CALIBRATION))
    args = ap.parse_args(argv)
    command = "python -m benchmarks.sim_calibrate " + " ".join(argv)
    model = profile_runtime(args.traces, args.programs, args.rate, args.kv_blocks, command=command.strip())
    Path(args.out).write_text(json.dumps(model.to_json(), indent=2) + "\n")
    print(json.dumps({k: v for k, v in model.describe().items() if k != "source"} | {"fit": model.source["fit"]}))
    return 0



if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
