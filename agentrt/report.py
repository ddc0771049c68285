"""Program-level job-completion-time report of a run, read back from the store.

JCT of a program = its end - its arrival. Per run: programs by status, mean / p50 / p95 / p99 JCT of
the programs that finished, makespan (first arrival to last end), throughput (finished programs per
second of makespan), turns, and where the time went (LLM calls vs tools, summed over programs).
Programs still `running` in the database are listed as unfinished: a run killed midway says so.
"""

from __future__ import annotations

import statistics

from sqlalchemy import select

from agentrt.store import LLMCall, Program, Run, ToolCallRow, open_db, read_rows


def percentile(values: list[float], q: float) -> float | None:
    """Linear-interpolated percentile (q in [0, 100]); None for no values."""
    if not values:
        return None
    xs = sorted(values)
    k = (len(xs) - 1) * q / 100
    lo = int(k)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


def run_figures(result, wall_s: float, snapshot=None) -> dict:
    """A run's program-level figures (a `RunResult`): mean / p50 / p95 JCT, makespan, programs per
    minute; with the engine's final `EngineSnapshot`, also its pins, hits, recomputed prefill tokens
    and preemptions. The JCT benchmark and the simulator report these keys."""
    jcts = [p.jct_s for p in result.programs if p.status == "finished"]
    out = {
        "programs": len(result.programs), "finished": len(jcts),
        "failed": [p.error for p in result.programs if p.status != "finished"][:3],
        "mean_jct_s": statistics.mean(jcts) if jcts else None,
        "p50_jct_s": percentile(jcts, 50), "p95_jct_s": percentile(jcts, 95),
        "makespan_s": result.makespan_s,
        "programs_per_min": 60 * len(jcts) / result.makespan_s if result.makespan_s else None,
        "wall_s": wall_s,
    }
    if snapshot is not None:
        s = snapshot
        out.update({
            "pins": s.num_pins, "pin_hits": s.num_pin_hits, "pin_hit_rate": s.num_pin_hits / s.num_pins if s.num_pins else None,
            "pin_expiries": s.num_pin_expiries, "pin_forced_releases": s.num_pin_forced_releases,
            "pinned_block_seconds": s.pinned_block_seconds,
            "recomputed_prefill_tokens": s.num_recomputed_prefill_tokens,
            "prefix_hit_tokens": s.num_prefix_hit_tokens, "prompt_tokens": s.num_prompt_tokens,
            "preemptions": s.num_preemptions,
        })
    return out


def run_report(db: str, run_id: str | None = None) -> dict:
    eng = open_db(db)
    try:
        run = find_run(eng, run_id, db)
        return summarize(run, *run_rows(eng, run["id"]))
    finally:
        eng.dispose()


def find_run(eng, run_id: str | None, db: str = "") -> dict:
    """The run whose id is or starts with `run_id` (it must match exactly one), or the latest run."""
    runs = sorted(read_rows(eng, Run), key=lambda r: r["started_at"])
    if not runs:
        raise ValueError(f"no runs in {db}")
    if run_id is None:
        return runs[-1]
    matches = [r for r in runs if r["id"] == run_id] or [r for r in runs if r["id"].startswith(run_id)]
    if len(matches) != 1:
        raise ValueError(f"run id {run_id!r} matches {len(matches)} runs in {db}")
    return matches[0]


def run_rows(eng, run_id: str, tenant: str | None = None) -> tuple[list[dict], list[dict], list[dict]]:
    """A run's programs (by index), LLM calls and tool calls; with `tenant`, only that tenant's."""
    of_run = select(Program.id).where(Program.run_id == run_id)  # a subquery: no parameter limit
    if tenant is not None:
        of_run = of_run.where(Program.tenant == tenant)
    programs = sorted(read_rows(eng, Program, id=of_run), key=lambda p: p["index"])
    return programs, read_rows(eng, LLMCall, program_id=of_run), read_rows(eng, ToolCallRow, program_id=of_run)


def summarize(run: dict, programs: list[dict], llm: list[dict], tools: list[dict]) -> dict:
    """The report of one run from its rows (as `run_rows` gives them)."""
    done = [p for p in programs if p["status"] == "finished"]
    jcts = [p["jct_s"] for p in done if p["jct_s"] is not None]
    ends = [p["finished_at"] for p in programs if p["finished_at"]]
    makespan = (max(ends) - min(p["arrival_at"] for p in programs)) if ends else None
    by_status: dict[str, int] = {}
    for p in programs:
        by_status[p["status"]] = by_status.get(p["status"], 0) + 1
    llm_s = sum(c["finished_at"] - c["queued_at"] for c in llm if c["finished_at"])
    ttft = [c["first_token_at"] - c["queued_at"] for c in llm if c["first_token_at"]]
    return {
        "run_id": run["id"], "name": run["name"], "backend": run["backend"], "config": run["config"],
        "programs": len(programs), "by_status": by_status,
        "unfinished": [p["id"] for p in programs if p["status"] == "running"],
        "jct_mean_s": statistics.mean(jcts) if jcts else None,
        "jct_p50_s": percentile(jcts, 50), "jct_p95_s": percentile(jcts, 95), "jct_p99_s": percentile(jcts, 99),
        "makespan_s": makespan,
        "throughput_programs_per_s": (len(done) / makespan) if makespan else None,
        "llm_calls": len(llm), "tool_calls": len(tools),
        "llm_time_s": llm_s, "tool_time_s": sum(c["duration_s"] for c in tools),
        "ttft_p50_s": percentile(ttft, 50),
        "prompt_tokens": sum(c["prompt_tokens"] for c in llm), "cached_tokens": sum(c["cached_tokens"] for c in llm),
        "reused_tokens": sum(c.get("reused_tokens") or 0 for c in llm),
        "reuse_recorded": any(c.get("reused_tokens") is not None for c in llm),
        "output_tokens": sum(c["output_tokens"] for c in llm),
        "per_program": [{"index": p["index"], "id": p["id"], "status": p["status"], "turns": p["turns"],
                         "jct_s": p["jct_s"]} for p in programs],
    }


def format_report(rep: dict) -> str:
    def s(v):
        return "-" if v is None else f"{v:.2f}"

    lines = [
        f"run {rep['run_id'][:12]} ({rep['backend']}): {rep['programs']} programs, "
        + ", ".join(f"{n} {k}" for k, n in sorted(rep["by_status"].items())),
        f"JCT  mean {s(rep['jct_mean_s'])} s  p50 {s(rep['jct_p50_s'])}  p95 {s(rep['jct_p95_s'])}  "
        f"p99 {s(rep['jct_p99_s'])}   makespan {s(rep['makespan_s'])} s   "
        f"throughput {s(rep['throughput_programs_per_s'])} programs/s",
        f"{rep['llm_calls']} LLM calls ({s(rep['llm_time_s'])} s, TTFT p50 {s(rep['ttft_p50_s'])} s; "
        f"{rep['prompt_tokens']} prompt tokens, {rep['cached_tokens']} from cache, {rep['output_tokens']} generated), "
        f"{rep['tool_calls']} tool calls ({s(rep['tool_time_s'])} s)",
    ]
    if rep["unfinished"]:
        lines.append(f"did not finish (run interrupted): {len(rep['unfinished'])} programs: "
                     + ", ".join(i[:12] for i in rep["unfinished"][:10]))
    lines.append("  #  status     turns   JCT (s)")
    for p in rep["per_program"]:
        lines.append(f"{p['index']:>3}  {p['status']:<10} {p['turns'] or 0:>5}   {s(p['jct_s']):>7}")
    return "\n".join(lines)
