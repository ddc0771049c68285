"""Simulator vs real engine: the same small replay on the embedded engine (real time) and on the
simulated `cpu-smollm2` (virtual time, calibrated cost model); prints both mean JCTs.

    python -m benchmarks.sim_agreement [--traces DIR] [--programs 6] [--rate 1.0] [--preset fcfs ...]
                                       [--kv-blocks 128] [--json OUT]

Run it alone: the real replay takes about a minute per preset on 2 cores, and it measures this
machine's real time against a cost model fitted on it (`python -m benchmarks.sim_calibrate`), so a
loaded or different machine moves the real side.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from agentrt.presets import PRESETS
from agentrt.sim import load_workload, simulate
from benchmarks.jct import run_preset
from benchmarks.machine import machine_info


def agreement(traces: str | Path, policy: str, rate: float, programs: int | None = None, kv_blocks: int = 256,
              seed: int = 0, max_num_seqs: int = 32) -> dict:
    """The same small replay on the real embedded engine (benchmarks.jct.run_preset, real time) and on the
    simulated `cpu-smollm2` (virtual time): both figures and the relative difference of mean JCT, also
    of its LLM side (mean JCT minus the mean program's tool time, which both share exactly)."""
    workload = load_workload(traces, "cpu-smollm2", seed)
    n = programs or len(workload.sessions)
    sessions = [workload.sessions[i % len(workload.sessions)].session for i in range(n)]
    args = argparse.Namespace(model=None, kv_blocks=kv_blocks, max_num_seqs=max_num_seqs, db=None, rate=rate,
                              seed=seed)
    real = run_preset(policy, sessions, args, workload.prior)
    sim = simulate(workload, policy, rate, n, kv_blocks, "cpu-smollm2", seed, max_num_seqs=max_num_seqs,
                   mark_programs=False)
    tool_s = sum(t.pause_s for s in sessions for t in s.turns) / n
    return {"traces": str(traces), "policy": policy, "rate": rate, "programs": n, "kv_blocks": kv_blocks,
            "workload": workload.options, "mean_tool_time_s": tool_s, "real": real, "simulated": sim,
            "mean_jct_rel_diff": sim["mean_jct_s"] / real["mean_jct_s"] - 1.0,
            "mean_llm_side_rel_diff": (sim["mean_jct_s"] - tool_s) / (real["mean_jct_s"] - tool_s) - 1.0}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--traces", default=str(Path(__file__).parents[1] / "tests" / "data" / "agent-traces-sample"))
    ap.add_argument("--programs", type=int, default=6)
    ap.add_argument("--rate", type=float, default=1.0)
    ap.add_argument("--preset", action="append", choices=list(PRESETS), help="repeatable; default: fcfs")
    ap.add_argument("--kv-blocks", type=int, default=128)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json")
    args = ap.parse_args()
    out = []
    for policy in args.preset or ["fcfs"]:
        r = agreement(args.traces, policy, args.rate, args.programs, args.kv_blocks, args.seed)
        out.append(r)
        real, sim = r["real"], r["simulated"]
        print(f"{policy:>16}: mean JCT real {real['mean_jct_s']:.2f} s, simulated {sim['mean_jct_s']:.2f} s "
              f"({100 * r['mean_jct_rel_diff']:+.1f}%); LLM side (minus {r['mean_tool_time_s']:.2f} s of tools) "
              f"{100 * r['mean_llm_side_rel_diff']:+.1f}%; p95 real {real['p95_jct_s']:.2f} s, simulated "
              f"{sim['p95_jct_s']:.2f} s; recomputed prefill tokens real {real['recomputed_prefill_tokens']}, "
              f"simulated {sim['recomputed_prefill_tokens']}", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": machine_info(), "runs": out}, indent=2))


if __name__ == "__main__":
    main()
