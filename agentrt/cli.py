"""`agentrt` command line: `run` agent programs, `report` a run's JCT, `serve` the OpenAI-compatible API.

    agentrt run AGENT.py [--preset P] [--programs N] [--rate R] [--backend embedded|openai --base-url URL ...] [--db URL]
    agentrt report [--db URL] [--run ID] [--json] [--html OUT] [--png DIR [--compare ID]]
    agentrt dashboard [--db URL] [--host 127.0.0.1] [--port 8050] [--tenant-keys FILE]
    agentrt bfcl [--category base|long_context|miss_func|miss_param] [--mode prompt|fc] [--limit N] [--oracle] [--tool-delay D] [--json OUT] [--result-dir DIR]
    agentrt swe --instances FILE.jsonl [--repo-root DIR] [--workers N] [--step-limit N] [--predictions OUT] [--trajectories DIR]
    agentrt serve [--preset P] [--model M] [--config FILE.yaml] [--port 8000] [vLLM-named flags: --max-model-len N ...]
    agentrt sim --traces DIR [--programs N] --rate R [--rate R2 ...] [--preset P ...] [--hardware H] [--json OUT] [--png OUT]

Presets (agentrt/presets.py) name the serving configuration: fcfs, program, continuum-fixed,
continuum, agentrt (the default), agentrt-fixed. Benchmarks are not part of the CLI: run them from a
clone with `python -m benchmarks.NAME` (docs/benchmarks.md).

AGENT.py defines `async def agent(ctx, task)` and optionally `tasks` (a list, or a function of the
number of programs returning one) and `RUNTIME`, a dict of `Runtime` options (tools, tool_format,
max_turns, sampling, time_limit_s) that command-line flags override.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
from pathlib import Path


def load_agent_module(path: str):
    file = Path(path)
    if not file.is_file():
        raise SystemExit(f"agentrt: no such agent file: {path}")
    spec = importlib.util.spec_from_file_location(file.stem, file)
    module = importlib.util.module_from_spec(spec)
    sys.modules[file.stem] = module
    spec.loader.exec_module(module)
    if not callable(getattr(module, "agent", None)):
        raise SystemExit(f"agentrt: {path} must define `async def agent(ctx, task)`")
    return module


def _tasks(module, n: int | None) -> list:
    tasks = getattr(module, "tasks", None)
    if callable(tasks):
        return list(tasks(n or 1))
    if tasks is None:
        return [None] * (n or 1)
    tasks = list(tasks)
    if n is None:
        return tasks
    return [tasks[i % len(tasks)] for i in range(n)]  # cycle through the given tasks


def make_backend(args):
    """The backend named by --backend/--base-url/--model/--api-key (and --preset, where the command has one)."""
    from agentrt.backends import EmbeddedBackend, OpenAIBackend

    if args.backend == "openai":
        if not args.base_url:
            raise SystemExit("agentrt: --backend openai needs --base-url (repeat it for several servers)")
        return OpenAIBackend(args.base_url, model=args.model, api_key=args.api_key)
    options = {"dtype": args.dtype} if getattr(args, "dtype", None) else {}
    return EmbeddedBackend(model=args.model, preset=getattr(args, "preset", None), **options)


def add_backend_arguments(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--backend", choices=["embedded", "openai"], default="embedded")
    ap.add_argument("--base-url", action="append", help="OpenAI-compatible server, e.g. http://127.0.0.1:8000/v1")
    ap.add_argument("--model", help="embedded: a model directory, a .gguf file, a name (default, "
                    "qwen2.5-coder-0.5b-instruct) or Org/Model from the local Hugging Face cache; "
                    "openai: the served model name")
    ap.add_argument("--api-key", help="API key for --backend openai")
    ap.add_argument("--dtype", choices=["auto", "float32", "bfloat16", "float16"],
                    help="embedded: weights' and KV cache's dtype (default: the engine's)")


def add_preset_argument(ap: argparse.ArgumentParser, what: str) -> None:
    from agentrt.presets import DEFAULT_PRESET, PRESETS

    ap.add_argument("--preset", choices=list(PRESETS), default=DEFAULT_PRESET,
                    help=f"serving preset ({what}); default: {DEFAULT_PRESET}")


def cmd_run(args) -> int:
    from agentrt.report import format_report, run_report
    from agentrt.runtime import Runtime

    module = load_agent_module(args.agent)
    options = dict(getattr(module, "RUNTIME", {}))
    for flag, key in (("max_turns", "max_turns"), ("time_limit", "time_limit_s"), ("tool_format", "tool_format")):
        if getattr(args, flag) is not None:
            options[key] = getattr(args, flag)
    runtime = Runtime(make_backend(args), db=args.db, progress=not args.no_progress, name=Path(args.agent).stem, **options)
    result = runtime.run(module.agent, _tasks(module, args.programs), rate=args.rate, seed=args.seed)
    rep = run_report(args.db, result.run_id)
    answers = program_answers(module, result)
    if args.json:
        print(json.dumps({**rep, "answers": answers}, indent=2, default=str))
    else:
        print(format_report(rep))
        print(format_answers(answers))
        print(f"next: agentrt dashboard --db {args.db}   (timelines, pins, predicted tool durations; "
              f"or agentrt report --db {args.db} --run {result.run_id[:12]})")
    return 0 if not result.by_status("failed") else 1


def program_answers(module, result) -> list[dict]:
    """Each program's answer (its agent's return value) and JCT; `right` is the agent file's
    `check(task, answer)` verdict where it defines one (None otherwise)."""
    check = getattr(module, "check", None)
    out = []
    for p in result.programs:
        right = None
        if callable(check) and p.status == "finished":
            try:
                right = bool(check(p.task, p.result))
            except Exception as exc:  # a grader's bug must not hide the run's report
                print(f"agentrt: check() failed on program {p.index}: {exc!r}", file=sys.stderr)
        elif callable(check):
            right = False
        out.append({"index": p.index, "status": p.status, "jct_s": p.jct_s, "answer": p.result, "right": right})
    return out


def format_answers(answers: list[dict], width: int = 100) -> str:
    graded = [a for a in answers if a["right"] is not None]
    lines = ["  #   JCT (s)  answer" + ("  [right/wrong: the agent file's check()]" if graded else "")]
    for a in answers:
        text = "(no answer)" if a["answer"] is None else " ".join(str(a["answer"]).split())
        if len(text) > width:
            text = text[: width - 3] + "..."
        mark = "" if a["right"] is None else ("right  " if a["right"] else "wrong  ")
        jct = "-" if a["jct_s"] is None else f"{a['jct_s']:.2f}"
        lines.append(f"{a['index']:>3}  {jct:>8}  {mark}{text}")
    if graded:
        lines.append(f"{sum(a['right'] for a in graded)}/{len(graded)} answers right")
    return "\n".join(lines)


def cmd_report(args) -> int:
    from agentrt.report import format_report, run_report

    if "://" not in args.db and not Path(args.db).exists():
        raise SystemExit(f"agentrt: no database at {args.db}")
    rep = run_report(args.db, args.run)
    print(json.dumps(rep, indent=2, default=str) if args.json else format_report(rep))
    if args.html:
        from agentrt.dashboard.export import write_html

        print(f"wrote {write_html(args.db, args.html)}", file=sys.stderr)
    if args.png:
        from agentrt.dashboard.export import write_png

        compare = run_report(args.db, args.compare)["run_id"] if args.compare else None
        for path in write_png(args.db, args.png, rep["run_id"], compare):
            print(f"wrote {path}", file=sys.stderr)
    return 0


def cmd_dashboard(args) -> int:
    from agentrt.dashboard import load_tenant_keys, run_dashboard

    if "://" not in args.db and not Path(args.db).exists():
        raise SystemExit(f"agentrt: no database at {args.db}")
    keys = load_tenant_keys(args.tenant_keys) if args.tenant_keys else None
    run_dashboard(args.db, host=args.host, port=args.port, tenant_keys=keys)
    return 0


def cmd_serve(args) -> int:
    from agentrt.serve_config import serve_kwargs_from_args

    kwargs = serve_kwargs_from_args(args)  # a bad flag or config file fails here, before the model loads
    from agentrt.server import run_server

    run_server(**kwargs)
    return 0


def cmd_bfcl(args) -> int:
    from agentrt.workloads.bfcl import ToolDelay, format_scores, run_bfcl

    delay = ToolDelay.parse(args.tool_delay, seed=args.seed)
    scores = run_bfcl(make_backend(args), args.category or ["base"], limit=args.limit, oracle=args.oracle,
                      delay=delay, db=args.db, rate=args.rate, seed=args.seed, max_tokens=args.max_tokens,
                      progress=not args.no_progress, mode=args.mode, result_dir=args.result_dir)
    print(format_scores(scores))
    if args.json:
        Path(args.json).write_text(json.dumps(scores if len(scores) > 1 else next(iter(scores.values())), indent=2))
    return 0


def cmd_swe(args) -> int:
    from agentrt.workloads.swe import format_summary, load_instances, run_swe

    summary = run_swe(make_backend(args), load_instances(args.instances, repo_root=args.repo_root),
                      workdir=args.workdir, step_limit=args.step_limit, prefill=args.prefill, db=args.db,
                      predictions_out=args.predictions, timings_out=args.timings, run_tests=not args.no_tests,
                      max_tokens=args.max_tokens, progress=not args.no_progress, workers=args.workers,
                      trajectories_out=args.trajectories)
    print(format_summary(summary))
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=2))
    return 0


def cmd_sim(args) -> int:
    from agentrt.sim import main as sim

    sim(args)
    return 0


def add_sim_arguments(ap: argparse.ArgumentParser) -> None:
    from agentrt.presets import PRESETS

    ap.add_argument("--traces", required=True, help="directory of recorded sessions (*.jsonl)")
    ap.add_argument("--programs", type=int, help="programs per run (default: one per session; more cycle them)")
    ap.add_argument("--rate", type=float, action="append", required=True,
                    help="Poisson arrivals, programs per second; repeat for a JCT-vs-rate curve")
    ap.add_argument("--preset", dest="policy", action="append", choices=list(PRESETS),
                    help="repeatable; default: all")
    ap.add_argument("--hardware", default="cpu-smollm2", help="cpu-smollm2 (calibrated on this machine kind) or "
                    "h100-llama8b (roofline); see engine/sim.py")
    ap.add_argument("--kv-blocks", type=int, help="KV pool size in 16-token blocks (default: the hardware's)")
    ap.add_argument("--max-num-seqs", type=int, help="default: the hardware's")
    for flag in ("scale", "max-output-tokens", "max-turns", "max-context-tokens"):
        ap.add_argument(f"--{flag}", type=float if flag == "scale" else int,
                        help="replay scaling (agentrt/replay.py); default: the hardware's workload")
    ap.add_argument("--tool-time-scale", type=float, default=1.0)
    ap.add_argument("--pauses", choices=("buckets", "measured"), default="buckets",
                    help="tool pauses: SWE-agent bucket lognormals, or measured timings (agentrt/replay.py)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", help="write the figures here")
    ap.add_argument("--png", help="draw mean JCT against rate here")


def build_parser() -> argparse.ArgumentParser:
    from agentrt.serve_config import add_serve_arguments

    ap = argparse.ArgumentParser(prog="agentrt", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run agent programs and print their JCT report")
    run.add_argument("agent", help="Python file defining `async def agent(ctx, task)`")
    run.add_argument("--programs", type=int, help="number of programs (default: one per task)")
    run.add_argument("--rate", type=float, help="Poisson arrivals, programs per second (default: all at once)")
    run.add_argument("--seed", type=int, default=0, help="seed of the arrival process")
    add_preset_argument(run, "embedded backend: engine options and KV retention policy")
    add_backend_arguments(run)
    run.add_argument("--db", default="agentrt.db", help="SQLAlchemy URL or SQLite file (default: agentrt.db)")
    run.add_argument("--max-turns", type=int)
    run.add_argument("--time-limit", type=float, help="seconds per program")
    run.add_argument("--tool-format", choices=["openai", "hermes", "bash", "bfcl"])
    run.add_argument("--json", action="store_true", help="print the report as JSON")
    run.add_argument("--no-progress", action="store_true")
    run.set_defaults(func=cmd_run)

    rep = sub.add_parser("report", help="JCT report of a run in the store")
    rep.add_argument("--db", default="agentrt.db")
    rep.add_argument("--run", help="run id or prefix (default: the latest run)")
    rep.add_argument("--json", action="store_true")
    rep.add_argument("--html", metavar="OUT", help="also write the dashboard page of all runs as one self-contained file")
    rep.add_argument("--png", metavar="DIR", help="also write JCT CDF, timeline and KV usage plots (PNG) here")
    rep.add_argument("--compare", metavar="ID", help="a second run for the --png JCT CDF")
    rep.set_defaults(func=cmd_report)

    dash = sub.add_parser("dashboard", help="web page of runs in the store (live while a run writes)")
    dash.add_argument("--db", default="agentrt.db", help="SQLAlchemy URL or SQLite file (default: agentrt.db)")
    dash.add_argument("--host", default="127.0.0.1")
    dash.add_argument("--port", type=int, default=8050)
    dash.add_argument("--tenant-keys", metavar="FILE",
                      help='JSON {"API key": "tenant"}: each key sees only its tenant\'s programs')
    dash.set_defaults(func=cmd_dashboard)

    bfcl = sub.add_parser("bfcl", help="BFCL v4 multi-turn entries against BFCL's own tools, scored by its checker")
    bfcl.add_argument("--category", action="append", choices=["base", "long_context", "miss_func", "miss_param"],
                      help="multi-turn category (repeat for several; default: base)")
    bfcl.add_argument("--limit", type=int, help="first N entries of each category (default: all 200)")
    add_backend_arguments(bfcl)
    bfcl.add_argument("--mode", choices=["prompt", "fc"], default="prompt",
                      help="prompt: BFCL's own system prompt and decoder (scores compare with BFCL's prompting "
                      "runs); fc: structured tools through the model's chat template (default: prompt)")
    bfcl.add_argument("--result-dir", help="also write BFCL's own result/ and score/ files under this directory")
    bfcl.add_argument("--oracle", action="store_true", help="run the ground-truth calls instead of the model's")
    bfcl.add_argument("--tool-delay", default="none",
                      help="injected tool latency: none, fixed:S, lognormal:MEDIAN:SIGMA or trace[:PATH.jsonl]")
    bfcl.add_argument("--rate", type=float, help="Poisson arrivals, programs per second (default: all at once)")
    bfcl.add_argument("--seed", type=int, default=0)
    bfcl.add_argument("--max-tokens", type=int, default=128, help="per LLM call")
    bfcl.add_argument("--db", default="agentrt.db", help="SQLAlchemy URL or SQLite file (default: agentrt.db)")
    bfcl.add_argument("--json", help="write {entries, accuracy, mean_jct_s, ...} (per category if several) here")
    bfcl.add_argument("--no-progress", action="store_true")
    bfcl.set_defaults(func=cmd_bfcl)

    swe = sub.add_parser("swe", help="SWE-bench-format instances (local repositories) in a mini-swe-agent-style loop")
    swe.add_argument("--instances", required=True, help="JSONL of SWE-bench records: instance_id, repo, base_commit, "
                     "problem_statement, FAIL_TO_PASS, PASS_TO_PASS, test_patch[, test_cmd, repo_path]")
    swe.add_argument("--repo-root", help="a folder of local clones: REPO_ROOT/name, owner__name or owner/name")
    swe.add_argument("--workdir", default="swe-work", help="where the sandboxed checkouts go (default: swe-work)")
    swe.add_argument("--workers", type=int, help="at most N instances at once (default: all at once)")
    swe.add_argument("--trajectories", metavar="DIR",
                     help="write mini-swe-agent's DIR/<instance_id>/<instance_id>.traj.json, rebuilt from the store")
    add_backend_arguments(swe)
    swe.add_argument("--step-limit", type=int, default=20, help="LLM turns per instance")
    swe.add_argument("--prefill", action="store_true", help="start every reply inside a ```bash block (small models)")
    swe.add_argument("--max-tokens", type=int, default=256, help="per LLM call")
    swe.add_argument("--predictions", help="write SWE-bench's predictions JSONL here")
    swe.add_argument("--timings", help="write every bash action's duration as toolpredict records (JSONL) here")
    swe.add_argument("--no-tests", action="store_true", help="do not run the tests on the patches")
    swe.add_argument("--db", default="agentrt.db", help="SQLAlchemy URL or SQLite file (default: agentrt.db)")
    swe.add_argument("--json", help="write the per-instance results here")
    swe.add_argument("--no-progress", action="store_true")
    swe.set_defaults(func=cmd_swe)

    simulate = sub.add_parser("sim", help="replay recorded sessions on the simulated engine (virtual time), JCT vs rate")
    add_sim_arguments(simulate)
    simulate.set_defaults(func=cmd_sim)

    srv = sub.add_parser("serve", help="OpenAI-compatible server over the embedded engine (vLLM-named flags)")
    add_preset_argument(srv, "engine options and the KV retention policy the server runs")
    srv.set_defaults(preset=None)  # not given: the --config file's, else the default
    add_serve_arguments(srv)
    srv.set_defaults(func=cmd_serve)
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except ValueError as exc:
        print(f"agentrt: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
