"""`agentrt` command line: `run` agent programs, `report` a run's JCT, `serve` the OpenAI-compatible API.

    agentrt run AGENT.py [--programs N] [--rate R] [--backend embedded|openai --base-url URL ...] [--db URL]
    agentrt report [--db URL] [--run ID] [--json]
    agentrt serve [--model DIR] [--host 127.0.0.1] [--port 8000] [--api-key KEY]
    agentrt bench jct --traces DIR [--programs N] [--rate R] [--policy P ...] [--kv-blocks K] [--json OUT]

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


def cmd_run(args) -> int:
    from agentrt.backends import EmbeddedBackend, OpenAIBackend
    from agentrt.report import format_report, run_report
    from agentrt.runtime import Runtime

    module = load_agent_module(args.agent)
    options = dict(getattr(module, "RUNTIME", {}))
    for flag, key in (("max_turns", "max_turns"), ("time_limit", "time_limit_s"), ("tool_format", "tool_format")):
        if getattr(args, flag) is not None:
            options[key] = getattr(args, flag)
    if args.backend == "openai":
        if not args.base_url:
            raise SystemExit("agentrt: --backend openai needs --base-url (repeat it for several servers)")
        backend = OpenAIBackend(args.base_url, model=args.model, api_key=args.api_key)
    else:
        backend = EmbeddedBackend(model=args.model)
    runtime = Runtime(backend, db=args.db, progress=not args.no_progress, name=Path(args.agent).stem, **options)
    result = runtime.run(module.agent, _tasks(module, args.programs), rate=args.rate, seed=args.seed)
    rep = run_report(args.db, result.run_id)
    print(json.dumps(rep, indent=2, default=str) if args.json else format_report(rep))
    return 0 if not result.by_status("failed") else 1


def cmd_report(args) -> int:
    from agentrt.report import format_report, run_report

    if "://" not in args.db and not Path(args.db).exists():
        raise SystemExit(f"agentrt: no database at {args.db}")
    rep = run_report(args.db, args.run)
    print(json.dumps(rep, indent=2, default=str) if args.json else format_report(rep))
    return 0


def cmd_serve(args) -> int:
    from agentrt.server import run_server

    options = {}
    if args.kv_cache_tokens:
        options["kv_cache_tokens"] = args.kv_cache_tokens
    run_server(model=args.model, host=args.host, port=args.port, api_key=args.api_key,
               served_model_name=args.served_model_name, **options)
    return 0


def cmd_bench_jct(args) -> int:
    from agentrt.bench_jct import main as bench_jct

    bench_jct(args)
    return 0


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="agentrt", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run agent programs and print their JCT report")
    run.add_argument("agent", help="Python file defining `async def agent(ctx, task)`")
    run.add_argument("--programs", type=int, help="number of programs (default: one per task)")
    run.add_argument("--rate", type=float, help="Poisson arrivals, programs per second (default: all at once)")
    run.add_argument("--seed", type=int, default=0, help="seed of the arrival process")
    run.add_argument("--backend", choices=["embedded", "openai"], default="embedded")
    run.add_argument("--base-url", action="append", help="OpenAI-compatible server, e.g. http://127.0.0.1:8000/v1")
    run.add_argument("--model", help="model directory (embedded) or served model name (openai)")
    run.add_argument("--api-key", help="API key for --backend openai")
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
    rep.set_defaults(func=cmd_report)

    bench = sub.add_parser("bench", help="benchmarks").add_subparsers(dest="bench", required=True)
    jct = bench.add_parser("jct", help="replay recorded agent sessions under each serving policy")
    from agentrt.bench_jct import add_arguments

    add_arguments(jct)
    jct.set_defaults(func=cmd_bench_jct)

    srv = sub.add_parser("serve", help="OpenAI-compatible server over the embedded engine")
    srv.add_argument("--model", help="model directory or .gguf (default: SmolLM2-135M-Instruct)")
    srv.add_argument("--host", default="127.0.0.1")
    srv.add_argument("--port", type=int, default=8000)
    srv.add_argument("--api-key")
    srv.add_argument("--served-model-name")
    srv.add_argument("--kv-cache-tokens", type=int)
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
