"""JCT against load: mean JCT of each preset against arrival rate and against KV budget, simulated.

    python -m benchmarks.load_curves --traces DIR [--programs 24] [--rate R ...] [--kv-share S ...]
                                     [--preset P ...] [--seeds 0 1 2] [--pauses buckets|measured]
                                     [--json OUT] [--png OUT]

The sweep runs `agentrt.sim.simulate` (the real scheduler, block pool and pins in virtual time, the
CPU cost model calibrated on this machine kind) for every preset at every (KV share, rate) point and
seed. A KV share is the pool's size as a share of the programs' contexts: `--kv-share 0.2` gives a
pool of blocks for a fifth of the sum of all programs' final contexts (programs cycle the sessions),
never less than the largest single context (the engine refuses a request its pool cannot hold).
Figures per point are medians over the seeds (each seed draws its own arrivals and tool pauses);
`ratio_vs_fcfs` is request FCFS's median mean JCT over the preset's, `p95_ratio_vs_fcfs` the same for
p95. The PNG has two panels: mean JCT against rate at the smallest KV share, and against KV share at
the highest rate.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from agentrt.presets import PRESETS
from agentrt.sim import Workload, load_workload, simulate

from benchmarks.machine import machine_info

FIGURES = ("mean_jct_s", "p50_jct_s", "p95_jct_s", "makespan_s", "pins", "pin_hits", "recomputed_prefill_tokens")


def context_blocks(workload: Workload, programs: int, first: int = 0, block_size: int = 16) -> int:
    """Blocks that `programs` programs cycling the workload's sessions (from session `first`) need for
    their final contexts."""
    def final(st) -> int:
        return len(st.first) + sum(len(d) for d in st.deltas) + sum(t.output_tokens for t in st.session.turns)
    sessions = workload.sessions
    return sum(-(-final(sessions[(first + i) % len(sessions)]) // block_size) for i in range(programs))


def sweep(traces: str | Path, presets: list[str], rates: list[float], kv_shares: list[float], seeds: list[int],
          programs: int, pauses: str = "buckets") -> dict:
    runs = []
    for seed in seeds:
        workload = load_workload(traces, seed=seed, pauses=pauses)
        total, largest = context_blocks(workload, programs), max(context_blocks(workload, 1, i) for i in
                                                                range(len(workload.sessions)))
        for share in kv_shares:
            kv = max(largest + 1, int(share * total))  # never below one program's whole context
            for rate in rates:
                for preset in presets:
                    r = simulate(workload, preset, rate, programs, kv, seed=seed)
                    runs.append({"seed": seed, "kv_share": share, "kv_blocks": kv, "rate": rate, "preset": preset,
                                 **{k: r[k] for k in FIGURES}})
                    print(f"seed {seed} kv-share {share} ({kv} blocks) rate {rate}/s {preset:>15}: mean JCT "
                          f"{r['mean_jct_s']:.1f} s  p95 {r['p95_jct_s']:.1f}  pins {r['pins']}, hits {r['pin_hits']}",
                          flush=True)
    points = []
    for share in kv_shares:
        for rate in rates:
            at = {p: [r for r in runs if r["kv_share"] == share and r["rate"] == rate and r["preset"] == p]
                  for p in presets}
            med = {p: {k: statistics.median(r[k] for r in rs) for k in FIGURES} for p, rs in at.items()}
            for p in presets:
                if "fcfs" in med:
                    med[p]["ratio_vs_fcfs"] = med["fcfs"]["mean_jct_s"] / med[p]["mean_jct_s"]
                    med[p]["p95_ratio_vs_fcfs"] = med["fcfs"]["p95_jct_s"] / med[p]["p95_jct_s"]
            points.append({"kv_share": share, "rate": rate, "presets": med})
    return {"traces": str(traces), "programs": programs, "pauses": pauses, "seeds": seeds, "points": points,
            "runs": runs, "machine": machine_info(), "hardware": "cpu-smollm2 (simulated)"}


def table(result: dict) -> str:
    presets = list(result["points"][0]["presets"])
    lines = ["kv-share  rate  " + "  ".join(f"{p:>22}" for p in presets)]
    for pt in result["points"]:
        cells = [f"{m['mean_jct_s']:7.1f} s ({m.get('ratio_vs_fcfs', 1.0):4.2f}x)" for m in pt["presets"].values()]
        lines.append(f"{pt['kv_share']:8}  {pt['rate']:4}  " + "  ".join(f"{c:>22}" for c in cells))
    return "\n".join(lines)


def plot(result: dict, png: str | Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points, presets = result["points"], list(result["points"][0]["presets"])
    small, busy = min(p["kv_share"] for p in points), max(p["rate"] for p in points)
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    for preset in presets:
        by_rate = sorted((p["rate"], p["presets"][preset]["mean_jct_s"]) for p in points if p["kv_share"] == small)
        by_kv = sorted((p["kv_share"], p["presets"][preset]["mean_jct_s"]) for p in points if p["rate"] == busy)
        a.plot(*zip(*by_rate), marker="o", label=preset)
        b.plot(*zip(*by_kv), marker="o", label=preset)
    a.set(xlabel="program arrival rate (programs/s)", ylabel="mean JCT (s)", title=f"KV pool = {small} of contexts")
    b.set(xlabel="KV pool as a share of the programs' contexts", ylabel="mean JCT (s)", title=f"rate {busy}/s")
    for ax in (a, b):
        ax.grid(alpha=0.3)
    a.legend(fontsize=8)
    fig.suptitle(f"{result['programs']} programs from {Path(result['traces']).name}, pauses {result['pauses']}, "
                 f"simulated 2-core CPU + SmolLM2-135M, median of {len(result['seeds'])} seeds", fontsize=9)
    fig.tight_layout()
    Path(png).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--traces", required=True)
    ap.add_argument("--programs", type=int, default=24)
    ap.add_argument("--rate", type=float, action="append")
    ap.add_argument("--kv-share", type=float, action="append")
    ap.add_argument("--preset", action="append", choices=list(PRESETS))
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--pauses", choices=("buckets", "measured"), default="buckets")
    ap.add_argument("--json")
    ap.add_argument("--png")
    args = ap.parse_args(argv)
    presets = args.preset or ["fcfs", "program", "continuum-fixed", "agentrt", "agentrt-fixed"]
    if "fcfs" not in presets:
        presets.insert(0, "fcfs")
    result = sweep(args.traces, presets, args.rate or [0.25, 0.5, 1.0, 2.0, 4.0], args.kv_share or [1.0, 0.5, 0.2, 0.1],
                   args.seeds, args.programs, args.pauses)
    print(table(result))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=1))
    if args.png:
        plot(result, args.png)
    return result


if __name__ == "__main__":
    main()
