"""Simulator vs real engine: the same small replay on the embedded engine (real time) and on the
simulated `cpu-smollm2` (virtual time, calibrated cost model); prints both mean JCTs.

    python benchmarks/sim_agreement.py [--traces DIR] [--programs 6] [--rate 1.0] [--policy vllm ...]
                                       [--kv-blocks 128] [--json OUT]

Run it alone (under the heavy lock): the real replay takes about a minute per policy on 2 cores.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from agentrt.bench_jct import POLICIES
from agentrt.sim import agreement


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--traces", default=str(Path(__file__).parents[1] / "tests" / "data" / "agent-traces-sample"))
    ap.add_argument("--programs", type=int, default=6)
    ap.add_argument("--rate", type=float, default=1.0)
    ap.add_argument("--policy", action="append", choices=sorted(POLICIES), help="repeatable; default: vllm")
    ap.add_argument("--kv-blocks", type=int, default=128)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json")
    args = ap.parse_args()
    out = []
    for policy in args.policy or ["vllm"]:
        r = agreement(args.traces, policy, args.rate, args.programs, args.kv_blocks, args.seed)
        out.append(r)
        real, sim = r["real"], r["simulated"]
        print(f"{policy:>16}: mean JCT real {real['mean_jct_s']:.2f} s, simulated {sim['mean_jct_s']:.2f} s "
              f"({100 * r['mean_jct_rel_diff']:+.1f}%); LLM side (minus {r['mean_tool_time_s']:.2f} s of tools) "
              f"{100 * r['mean_llm_side_rel_diff']:+.1f}%; p95 real {real['p95_jct_s']:.2f} s, simulated "
              f"{sim['p95_jct_s']:.2f} s; recomputed prefill tokens real {real['recomputed_prefill_tokens']}, "
              f"simulated {sim['recomputed_prefill_tokens']}", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
