"""Load test: `agentrt serve` holding many concurrent streaming chat clients on loopback.

    python benchmarks/load_test.py [--clients 200] [--duration 120] [--max-tokens 12] [--json OUT]

Starts `agentrt serve` (the default model unless --model) as a subprocess on a free loopback port
with an API key, then runs `--clients` closed-loop clients (httpx, async): each sends a streamed
greedy chat completion (`stream=true`, `logprobs`, `ignore_eos`, usage in the stream), reads it to
`[DONE]`, and sends the next, until `--duration` seconds have passed; requests in flight then run
to their end. Self-stopping: the run is bounded by duration + grace, and the server is stopped.

Checks (any failure: exit status 1):
- no error: every response is 200, every stream ends with a finish reason and `[DONE]`;
- no token lost or duplicated: per request, the streamed token entries (one logprob entry per
  token), the usage's completion_tokens and max_tokens agree, and the streamed text equals the
  concatenation of its own tokens (special tokens, which the text skips, left out); over the run, the tokens the clients received equal the
  engine's own count of generated tokens (`vllm:generation_tokens_total` in /metrics);
- every KV block free and no request left in the engine at the end (/metrics gauges).
It also reports how many streamed texts equal the idle server's non-streamed greedy answer to the
same prompt (batching may change float rounding, so this is reported, not required).
Reports p50/p99 time to first token (TTFT: request sent to first token chunk read) and inter-token
latency (ITL: gaps between token chunks of a stream), and writes them as JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from agentrt.report import percentile
from benchmarks.prompts import CHAT_PROMPTS
from engine.loader import load_tokenizer, resolve_model

API_KEY = "load-test-key"


@dataclass(slots=True)
class Stream:
    """What one client saw of one streamed request."""

    prompt: int
    sent_at: float
    status: int = 0
    error: str | None = None
    token_times: list[float] = field(default_factory=list)
    tokens: list[str] = field(default_factory=list)
    text: str = ""
    finish_reason: str | None = None
    usage_tokens: int | None = None
    done: bool = False


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _metrics(client: httpx.Client) -> dict[str, float]:
    """/metrics as {name: value}, labels dropped (one model per server)."""
    text = client.get("/metrics").text
    return {line.split("{")[0].split()[0]: float(line.split()[-1])
            for line in text.splitlines() if line and not line.startswith("#")}


def _body(model: str, prompt: int, max_tokens: int, stream: bool) -> dict:
    body = {"model": model, "messages": [{"role": "user", "content": CHAT_PROMPTS[prompt]}], "temperature": 0,
            "max_tokens": max_tokens, "ignore_eos": True, "logprobs": True, "stream": stream}
    if stream:
        body["stream_options"] = {"include_usage": True}
    return body


async def _one_stream(client: httpx.AsyncClient, model: str, prompt: int, max_tokens: int) -> Stream:
    s = Stream(prompt, time.perf_counter())
    try:
        async with client.stream("POST", "/v1/chat/completions", json=_body(model, prompt, max_tokens, True)) as r:
            s.status = r.status_code
            if r.status_code != 200:
                s.error = f"HTTP {r.status_code}: {(await r.aread())[:300]!r}"
                return s
            async for line in r.aiter_lines():
                if not line.startswith("data: "):
                    continue
                data = line[6:]
                if data == "[DONE]":
                    s.done = True
                    break
                event = json.loads(data)
                if event.get("usage"):
                    s.usage_tokens = event["usage"]["completion_tokens"]
                for choice in event["choices"]:
                    entries = (choice.get("logprobs") or {}).get("content") or []
                    if entries:
                        s.token_times.append(time.perf_counter())
                        s.tokens += [e["token"] for e in entries]
                    s.text += choice["delta"].get("content") or ""
                    s.finish_reason = choice["finish_reason"] or s.finish_reason
    except (httpx.HTTPError, json.JSONDecodeError, KeyError) as exc:
        s.error = f"{type(exc).__name__}: {exc}"
    return s


async def _drive(url: str, model: str, clients: int, duration_s: float, grace_s: float,
                 max_tokens: int) -> list[Stream]:
    limits = httpx.Limits(max_connections=clients + 8, max_keepalive_connections=clients + 8)
    headers = {"Authorization": f"Bearer {API_KEY}"}
    done: list[Stream] = []
    deadline = time.perf_counter() + duration_s
    async with httpx.AsyncClient(base_url=url, headers=headers, limits=limits,
                                 timeout=httpx.Timeout(grace_s, connect=30)) as client:
        async def client_loop(i: int) -> None:
            k = 0
            while time.perf_counter() < deadline:
                done.append(await _one_stream(client, model, (i + k) % len(CHAT_PROMPTS), max_tokens))
                k += 1

        tasks = [asyncio.create_task(client_loop(i)) for i in range(clients)]
        _, late = await asyncio.wait(tasks, timeout=duration_s + grace_s)
        for t in late:  # bounded: whatever still runs after the grace period counts as hung
            t.cancel()
        if late:
            done.append(Stream(-1, 0.0, error=f"{len(late)} clients still waiting after the grace period"))
    return done


def _start_server(args, port: int) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "agentrt", "serve", "--port", str(port), "--api-key", API_KEY,
           "--kv-cache-tokens", str(args.kv_cache_tokens)]
    if args.model:
        cmd += ["--model", args.model]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    deadline = time.monotonic() + args.startup_timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"load_test: the server exited: {proc.stderr.read().decode()[-2000:]}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            time.sleep(0.3)
    os.killpg(proc.pid, signal.SIGKILL)
    raise SystemExit("load_test: the server did not come up in time")


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1e3, 1)


def _summarize(streams: list[Stream], references: dict[int, str], max_tokens: int, special: set[str]) -> dict:
    ok = [s for s in streams if not s.error and s.status == 200 and s.done and s.finish_reason]
    errors = [s.error or f"no finish reason or [DONE] (finish={s.finish_reason}, done={s.done})"
              for s in streams if s not in ok]
    lost = sum(max(0, max_tokens - len(s.tokens)) for s in ok)
    duplicated = sum(max(0, len(s.tokens) - max_tokens) for s in ok)
    usage_mismatch = sum(s.usage_tokens != len(s.tokens) for s in ok)
    text_mismatch = sum(s.text != "".join(t for t in s.tokens if t not in special) for s in ok)
    ttft = [s.token_times[0] - s.sent_at for s in ok if s.token_times]
    itl = [b - a for s in ok for a, b in zip(s.token_times, s.token_times[1:])]
    return {
        "requests": len(streams), "completed": len(ok), "errors": len(errors), "error_samples": errors[:5],
        "tokens_received": sum(len(s.tokens) for s in ok),
        "tokens_lost": lost, "tokens_duplicated": duplicated,
        "usage_mismatches": usage_mismatch, "text_vs_own_tokens_mismatches": text_mismatch,
        "equal_to_idle_greedy_answer": sum(s.text == references[s.prompt] for s in ok),
        "ttft_ms": {"p50": _ms(percentile(ttft, 50)), "p99": _ms(percentile(ttft, 99)), "max": _ms(max(ttft, default=None))},
        "itl_ms": {"p50": _ms(percentile(itl, 50)), "p99": _ms(percentile(itl, 99)), "max": _ms(max(itl, default=None))},
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clients", type=int, default=200)
    ap.add_argument("--duration", type=float, default=120.0, help="seconds during which clients send requests")
    ap.add_argument("--grace", type=float, default=180.0, help="seconds allowed to requests in flight at the end")
    ap.add_argument("--max-tokens", type=int, default=12)
    ap.add_argument("--model", help="model directory (default: the default model)")
    ap.add_argument("--kv-cache-tokens", type=int, default=32768)
    ap.add_argument("--startup-timeout", type=float, default=300.0)
    ap.add_argument("--json", default=str(Path(__file__).parent / "results" / "load-test-cpu.json"))
    args = ap.parse_args()

    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    proc = _start_server(args, port)
    try:
        with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {API_KEY}"}, timeout=120) as c:
            model = c.get("/v1/models").json()["data"][0]["id"]
            references = {}
            for i in range(len(CHAT_PROMPTS)):  # the idle server's non-streamed greedy answers
                r = c.post("/v1/chat/completions", json=_body(model, i, args.max_tokens, False))
                r.raise_for_status()
                references[i] = r.json()["choices"][0]["message"]["content"]
            before = _metrics(c)
            t0 = time.perf_counter()
            streams = asyncio.run(_drive(url, model, args.clients, args.duration, args.grace, args.max_tokens))
            wall = time.perf_counter() - t0
            deadline = time.monotonic() + 10
            while True:  # the engine's loop may take one more step to see the last stream closed
                after = _metrics(c)
                idle = after["vllm:num_requests_running"] == after["vllm:num_requests_waiting"] == 0
                if (idle and after["agentrt:kv_blocks_free"] == after["agentrt:kv_blocks_total"]) \
                        or time.monotonic() > deadline:
                    break
                time.sleep(0.2)
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()

    special = set(load_tokenizer(resolve_model(args.model)).all_special_tokens)
    summary = _summarize(streams, references, args.max_tokens, special)
    generated = after["vllm:generation_tokens_total"] - before["vllm:generation_tokens_total"]
    result = {
        "model": model, "clients": args.clients, "duration_s": args.duration, "wall_s": round(wall, 1),
        "max_tokens": args.max_tokens, "cpu_count": os.cpu_count(), **summary,
        "engine_generated_tokens": int(generated),
        "tokens_per_s": round(summary["tokens_received"] / wall, 1),
        "kv_blocks_free_at_end": int(after["agentrt:kv_blocks_free"]),
        "kv_blocks_total": int(after["agentrt:kv_blocks_total"]),
        "requests_left_at_end": int(after["vllm:num_requests_running"] + after["vllm:num_requests_waiting"]),
    }
    failures = [name for name, bad in [
        ("error responses", result["errors"]), ("lost tokens", result["tokens_lost"]),
        ("duplicated tokens", result["tokens_duplicated"]), ("usage mismatches", result["usage_mismatches"]),
        ("text vs tokens mismatches", result["text_vs_own_tokens_mismatches"]),
        ("engine vs received token count", generated != result["tokens_received"]),
        ("KV blocks not free", result["kv_blocks_free_at_end"] != result["kv_blocks_total"]),
        ("requests left in the engine", result["requests_left_at_end"]),
        ("no request completed", not result["completed"])] if bad]
    result["failures"] = failures
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
