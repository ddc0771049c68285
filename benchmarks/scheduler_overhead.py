"""Scheduler overhead per step with many running requests (no model: the real scheduler, block pool,
prefix index and pins, with tokens appended as a model would).

    python benchmarks/scheduler_overhead.py [--requests 256] [--steps 200] [--policy fcfs|program] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import time
from pathlib import Path

from engine.block_pool import BlockPool
from engine.kv_manager import KVCacheManager
from engine.params import ProgramHint, SamplingParams
from engine.request import Request
from engine.retention import PinManager
from engine.scheduler import Scheduler, make_policy


def measure(requests: int, steps: int, policy: str, pinned_programs: int) -> dict:
    rng = random.Random(0)
    pool = BlockPool(requests * 64)
    kv = KVCacheManager(pool, 16)
    pins = PinManager(pool)
    sched = Scheduler(kv, make_policy(policy), max_num_seqs=requests, max_num_batched_tokens=8192, pins=pins)
    params = SamplingParams(temperature=0.0, max_tokens=10**6)
    for i in range(requests):
        prompt = [rng.randrange(50_000) for _ in range(rng.randrange(100, 600))]
        sched.add(Request(f"r{i}", None, prompt, params, ProgramHint(f"p{i % (requests // 2)}", 0)))
    for j in range(pinned_programs):  # other programs' KV held by pins while their tools run
        blocks = pool.allocate(4)
        pins.pin(f"idle{j}", blocks, 3600.0, time.monotonic(), float(j))
        pool.release(blocks)
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        batch = sched.schedule()
        times.append(time.perf_counter() - t0)
        for req, n in zip(batch.requests, batch.num_new_tokens):
            req.num_computed_tokens += n
            kv.commit(req)
            if req.num_computed_tokens == req.num_tokens:
                req.token_ids.append(rng.randrange(50_000))
    decode = times[5:]  # after the prompts are in
    return {"requests": requests, "policy": policy, "pinned_programs": pinned_programs,
            "running": len(sched.running), "mean_ms": 1e3 * statistics.mean(decode),
            "median_ms": 1e3 * statistics.median(decode), "p99_ms": 1e3 * sorted(decode)[int(0.99 * len(decode))]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=256)
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--json")
    args = ap.parse_args()
    results = [measure(args.requests, args.steps, policy, 64) for policy in ("fcfs", "program")]
    for r in results:
        print(f"{r['policy']:>8}: {r['running']} running, {r['pinned_programs']} pinned programs: schedule() "
              f"mean {r['mean_ms']:.3f} ms, median {r['median_ms']:.3f} ms, p99 {r['p99_ms']:.3f} ms per step")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
