"""The KV reuse benchmark (KVShare): TTFT, throughput and quality of reusing KV beyond exact prefixes.

    python -m benchmarks.reuse [--requests N] [--docs K] [--max-tokens 64] [--method M ...] [--json OUT]

Workload (real text: tool outputs and task statements of recorded mini-swe-agent sessions, in
benchmarks/data/reuse-corpus/): two tenants; each first sees every document once on its own (a seed
request: the document after a tenant header, as when a tool output first enters a conversation),
then sends requests whose prompts hold K documents in a shuffled order after a header that differs
per request, then a question, in the model's chat template. Every method replays the same requests
on a fresh engine:
  full            no caching at all: every prompt token computed
  prefix          exact prefix caching only (vLLM's automatic prefix caching)
  naive           reused KV as is: only tokens without a cached value (and the last) computed
  cacheblend-20   recompute the 20% of reused tokens whose values deviate most at layer 1
  dhd-R           DHD: deviation weighted by the attention the prompt's tail pays each token a few
                  layers deeper (it runs ahead over the reused KV), R% recomputed, decode stage
Per method: median TTFT of requests served one at a time, median TPOT, throughput of the same kind
of requests all submitted at once (generated tokens per second), and quality as agreement with
`full`: greedy token match over the new tokens, ROUGE-L of the text, and the KL divergence of the
first token's distribution (KL(full || method)). `hit_rate` is the share of prompt tokens whose KV
came from the cache (exact prefix plus reused spans) in the dhd-20 run. `predicted_ttft_s` is
f × full TTFT with f = (c + (1 − h + r·h)(L − c)) / L, the compute fraction the method promises
counted in tokens; `predicted_flops_ttft_s` counts FLOPs instead (`flop_fraction`: a recomputed
token's attention still reads every key before it), request by request.
Decode stage: the same requests into two dhd-20 engines, one with the decode stage and one without,
side by side, the roles alternating (TPOT overhead).
Probe precision: likewise into two dhd-10 engines, the probe in the dtype `auto` picks (bfloat16 on
a CPU with bfloat16 matmuls) in one and in the model's (float32) in the other (TTFT).
Scheduling: a Poisson stream of requests with mixed hit rates and lengths (1..K cached documents, as
they are or with their words shuffled) into a dhd-20 engine under `fcfs` and under `cache-aware`:
mean, p95 and max TTFT.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import time
from pathlib import Path

import torch

from benchmarks.machine import machine_info
from engine import Engine
from engine.params import ProgramHint, SamplingParams
from engine.reuse.plan import ReuseOptions

CORPUS = Path(__file__).parent / "data" / "reuse-corpus" / "documents.jsonl"
METHODS = {  # name: engine options
    "full": {"enable_prefix_caching": False},
    "prefix": {},
    "naive": {"kv_reuse": "naive", "kv_reuse_ratio": 0.0},
    "cacheblend-20": {"kv_reuse": "cacheblend", "kv_reuse_ratio": 0.2},
    "dhd-10": {"kv_reuse": "dhd", "kv_reuse_ratio": 0.1},
    "dhd-20": {"kv_reuse": "dhd", "kv_reuse_ratio": 0.2},
    "dhd-30": {"kv_reuse": "dhd", "kv_reuse_ratio": 0.3},
}
TENANTS = ("tenant-a", "tenant-b")
QUESTION = "Which file or command output above matters most for fixing the issue, and why?"


def load_documents(path: Path = CORPUS) -> list[str]:
    return [json.loads(line)["text"] for line in path.read_text().splitlines() if line.strip()]


def _seed(tenant: str, doc: str) -> tuple[str, str]:
    """A seed request: the document alone after a tenant header, as a tool output first enters a conversation."""
    return tenant, f"[{tenant}] tool output:\n{doc}"


def build_workload(docs: list[str], num_requests: int, docs_per_prompt: int, seed: int = 0) -> dict:
    """Seed prompts (each document once per tenant) and request prompts (shuffled documents)."""
    rng = random.Random(seed)
    seeds = [_seed(t, d) for t in TENANTS for d in docs]
    requests = []
    for i in range(num_requests):
        tenant = TENANTS[i % len(TENANTS)]
        chosen = rng.sample(docs, docs_per_prompt)
        header = f"[{tenant}] ticket {1000 + i}: the agent gathered these {docs_per_prompt} outputs."
        body = "\n\n".join(f"--- output {j + 1} ---\n{d}" for j, d in enumerate(chosen))
        requests.append((tenant, f"{header}\n\n{body}\n\n{QUESTION}"))
    return {"seeds": seeds, "requests": requests}


def _chat(engine: Engine, text: str) -> str:
    return engine.apply_chat_template([{"role": "user", "content": text}])


def _drain(engine: Engine) -> list:
    outs = []
    while engine.has_unfinished_requests():
        outs += [o for o in engine.step() if o.finished]
    return outs


def _seeded_engine(workload: dict, model: str | None, kv_cache_tokens: int, **options) -> Engine:
    """An engine whose cache holds the workload's seed prompts (each document once per tenant)."""
    engine = Engine(model=model, kv_cache_tokens=kv_cache_tokens, max_num_batched_tokens=4096, **options)
    sp_seed = SamplingParams(temperature=0, max_tokens=1)
    for tenant, text in workload["seeds"]:
        engine.add_request(_chat(engine, text), sp_seed, hint=ProgramHint(tenant=tenant))
    _drain(engine)
    return engine


def run_method(name: str, workload: dict, max_tokens: int, model: str | None = None,
               kv_cache_tokens: int = 65536, dtype: str = "auto") -> dict:
    engine = _seeded_engine(workload, model, kv_cache_tokens, dtype=dtype, **METHODS[name])
    first_logits: dict[str, torch.Tensor] = {}
    work: dict[str, float] = {}

    def keep_first(reqs, logits):
        for req, row in zip(reqs, logits):
            if req.request_id not in first_logits:
                first_logits[req.request_id] = row.clone()
                work[req.request_id] = flop_fraction(engine, req)

    engine.on_logits = keep_first
    sp = SamplingParams(temperature=0, max_tokens=max_tokens, ignore_eos=True)
    results = []
    before = engine.stats.num_prompt_tokens, engine.stats.num_prefix_hit_tokens, engine.stats.num_reused_tokens
    for i, (tenant, text) in enumerate(workload["requests"]):  # one at a time: TTFT without queueing
        rid = engine.add_request(_chat(engine, text), sp, request_id=f"r{i}", hint=ProgramHint(tenant=tenant))
        (out,) = _drain(engine)
        m = out.metrics
        results.append({"id": rid, "tokens": out.token_ids, "text": out.text,
                        "ttft_s": m.first_token_time - m.arrival_time, "flop_fraction": work[rid],
                        "tpot_s": (m.finish_time - m.first_token_time) / max(1, len(out.token_ids) - 1)})
    st = engine.stats
    prompt = st.num_prompt_tokens - before[0]
    hit = (st.num_prefix_hit_tokens - before[1] + st.num_reused_tokens - before[2]) / max(1, prompt)
    engine.on_logits = None
    # throughput: the same documents in new orders, all at once (the cache already holds them)
    t0 = time.perf_counter()
    for i, (tenant, text) in enumerate(workload["batch"]):
        engine.add_request(_chat(engine, text), sp, request_id=f"b{i}", hint=ProgramHint(tenant=tenant))
    outs = _drain(engine)
    wall = time.perf_counter() - t0
    engine.pool.check_integrity()
    return {"results": results, "first_logits": [first_logits[r["id"]] for r in results], "hit_rate": hit,
            "tokens_per_s": sum(len(o.token_ids) for o in outs) / wall,
            "decode_recomputed": engine.runner.num_decode_recomputed,
            "num_layers": engine.model_config.num_layers}


def _side_by_side(workload: dict, max_tokens: int, engines: list[Engine], switch) -> list[tuple]:
    """Each request into both of two engines seeded alike, a feature on in one and off in the other
    (`switch(engine, on)` sets it); returns (output on, output off) per request. Which engine has it
    on and which goes first both alternate (request i: on in engine i % 2, engine (i // 2) % 2
    first): on this machine the first of a pair runs slower, and one of two identical engines ran
    4.7% slower than the other throughout (an A/A run of the decode stage, off in both), so neither
    may stay with one side."""
    sp = SamplingParams(temperature=0, max_tokens=max_tokens, ignore_eos=True)
    pairs = []
    for i, (tenant, text) in enumerate(workload["requests"]):
        on, first = i % 2, (i // 2) % 2
        outs = {}
        for k in (first, 1 - first):
            engine = engines[k]
            switch(engine, k == on)
            engine.add_request(_chat(engine, text), sp, request_id=f"s{i}", hint=ProgramHint(tenant=tenant))
            (outs[k == on],) = _drain(engine)
        pairs.append((outs[True], outs[False]))
    return pairs


def _paired_change(pairs: list[tuple], metric) -> tuple[float, float, float]:
    """The mean of `metric` without the feature, with it (that plus the mean paired difference), and
    their relative difference."""
    off = statistics.mean(metric(b) for _, b in pairs)
    diff = statistics.mean(metric(a) - metric(b) for a, b in pairs)
    return off, off + diff, diff / off


def _tpot(out) -> float:
    m = out.metrics
    return (m.finish_time - m.first_token_time) / max(1, len(out.token_ids) - 1)


def _ttft(out) -> float:
    return out.metrics.first_token_time - out.metrics.arrival_time


def run_decode_stage(workload: dict, max_tokens: int, model: str | None = None, kv_cache_tokens: int = 65536,
                     dtype: str = "auto") -> dict:
    """TPOT of dhd-20 with its decode stage (the default drift) and without (drift 0), side by side
    (`_side_by_side`). The overhead is the mean paired difference over the mean TPOT without."""
    drift = ReuseOptions().drift
    engines = [_seeded_engine(workload, model, kv_cache_tokens, dtype=dtype, kv_reuse="dhd", kv_reuse_ratio=0.2)
               for _ in range(2)]

    def switch(engine: Engine, on: bool) -> None:
        engine.runner.reuser.options.drift = drift if on else 0.0

    pairs = _side_by_side(workload, max_tokens, engines, switch)
    off, on, overhead = _paired_change(pairs, _tpot)
    return {"drift": drift, "requests": len(pairs), "tpot_on_s": on, "tpot_off_s": off, "overhead": overhead,
            "decode_recomputed_tokens": sum(e.runner.num_decode_recomputed for e in engines)}


def run_probe_precision(workload: dict, model: str | None = None, kv_cache_tokens: int = 65536,
                        dtype: str = "auto") -> dict | None:
    """TTFT of dhd-10 with its probe (the tail's run-ahead) in the dtype `auto` picks and in the
    model's own, side by side (`_side_by_side`); None where `auto` picks the model's."""
    engines = [_seeded_engine(workload, model, kv_cache_tokens, dtype=dtype, kv_reuse="dhd", kv_reuse_ratio=0.1)
               for _ in range(2)]
    low = engines[0].runner.reuser.probe_dtype
    if low == engines[0].dtype:
        return None

    def switch(engine: Engine, on: bool) -> None:
        engine.runner.reuser.probe_dtype = low if on else engine.dtype

    pairs = _side_by_side(workload, 1, engines, switch)
    model_s, low_s, change = _paired_change(pairs, _ttft)
    return {"dtype": str(low).removeprefix("torch."), "requests": len(pairs), "ttft_s": low_s,
            "ttft_model_dtype_s": model_s, "change": change}


def flop_fraction(engine: Engine, req) -> float:
    """Prefill FLOPs of `req` as the engine computed it over those of a full prefill of its prompt:
    per layer, 2 x (layer weights) per computed token plus 4 x heads x head_dim per (query, visible
    key) pair; a reuse prefill computes every uncached token in layers < c, its recompute set
    (plan.attended_keys keys in all) in layers >= c, and (dhd) its tail in the probe layers.
    Unlike the token-count fraction f, it counts that a recomputed token still attends to every key
    before it."""
    cfg, model = engine.model_config, engine.model
    per_token = 2 * sum(p.numel() for p in model.layers[0].parameters())
    per_key = 4 * cfg.num_heads * cfg.head_dim
    n, p, layers = req.num_prompt_tokens, req.num_cached_tokens, cfg.num_layers

    def dense(first: int) -> float:  # one layer, queries first..n-1, causal
        return (n - first) * per_token + per_key * (n * (n + 1) - first * (first + 1)) / 2

    plan = req.reuse
    if plan is None or not plan.num_recomputed:
        return dense(p) / dense(0)
    c = engine.runner.reuser.options.computed_layers(layers)
    sparse = plan.num_recomputed * per_token + per_key * plan.attended_keys
    probe = plan.probe_tokens * per_token + per_key * plan.probe_keys  # dhd's tail running ahead
    return (c * dense(p) + (layers - c) * sparse + probe) / (layers * dense(0))


def run_scheduling(policy: str, docs: list[str], num_requests: int, docs_per_prompt: int, rate: float,
                   model: str | None = None, seed: int = 0, kv_cache_tokens: int = 65536, dtype: str = "auto") -> dict:
    """A stream of requests with mixed hit rates: each holds 1..docs_per_prompt of the documents the
    cache holds, either as they are (warm: cheap with DHD) or with their words shuffled (cold: as
    long, nothing reusable), arriving as a Poisson process at `rate` per second (the same schedule
    for every policy) into a dhd-20 engine under `policy`. TTFT counts from the scheduled arrival."""
    rng = random.Random(seed)
    seen = docs[: len(docs) // 2]
    engine = _seeded_engine({"seeds": [_seed(TENANTS[0], d) for d in seen]}, model, kv_cache_tokens, dtype=dtype,
                            kv_reuse="dhd", kv_reuse_ratio=0.2, scheduling_policy=policy)
    stream, at = [], 0.0
    for i in range(num_requests):
        kind = rng.choice(("warm", "cold"))
        chosen = rng.sample(seen, rng.randint(1, docs_per_prompt))
        if kind == "cold":  # the same words in a new order: as long, but no span of it is cached
            chosen = [" ".join(rng.sample(d.split(), len(d.split()))) for d in chosen]
        body = "\n\n".join(f"--- output {j + 1} ---\n{d}" for j, d in enumerate(chosen))
        text = f"[{TENANTS[0]}] ticket {2000 + i}: the agent gathered these outputs.\n\n{body}\n\n{QUESTION}"
        at += rng.expovariate(rate)
        stream.append((at, f"s{i}", kind, _chat(engine, text)))
    sp = SamplingParams(temperature=0, max_tokens=8, ignore_eos=True)
    kinds, ttft, t0, pending = {}, {}, time.monotonic(), list(stream)
    while pending or engine.has_unfinished_requests():
        while pending and t0 + pending[0][0] <= time.monotonic():
            offset, rid, kind, prompt = pending.pop(0)
            req = engine.make_request(prompt, sp, request_id=rid, hint=ProgramHint(tenant=TENANTS[0]))
            req.metrics.arrival_time = t0 + offset
            engine.submit(req)
            kinds[rid] = kind
        if not engine.has_unfinished_requests():
            time.sleep(max(0.0, t0 + pending[0][0] - time.monotonic()))
            continue
        for o in engine.step():
            if o.finished:
                ttft[o.request_id] = o.metrics.first_token_time - o.metrics.arrival_time
    values = sorted(ttft.values())
    return {"requests": len(values), "rate_per_s": rate, "mean_ttft_s": statistics.mean(values),
            "p95_ttft_s": values[min(len(values) - 1, int(0.95 * len(values)))], "max_ttft_s": values[-1],
            **{f"mean_ttft_{kind}_s": statistics.mean(xs) if (xs := [v for k, v in ttft.items() if kinds[k] == kind])
               else float("nan") for kind in ("warm", "cold")}}


def rouge_l(a: str, b: str) -> float:
    """ROUGE-L F1 over whitespace tokens."""
    x, y = a.split(), b.split()
    if not x or not y:
        return float(x == y)
    prev = [0] * (len(y) + 1)
    for xi in x:
        cur = [0]
        for j, yj in enumerate(y):
            cur.append(prev[j] + 1 if xi == yj else max(prev[j + 1], cur[j]))
        prev = cur
    lcs = prev[-1]
    if lcs == 0:
        return 0.0
    p, r = lcs / len(x), lcs / len(y)
    return 2 * p * r / (p + r)


def kl(ref: torch.Tensor, other: torch.Tensor) -> float:
    lp, lq = torch.log_softmax(ref.double(), -1), torch.log_softmax(other.double(), -1)
    return float((lp.exp() * (lp - lq)).sum())


def compare(ref: dict, run: dict) -> dict:
    match = [sum(a == b for a, b in zip(x["tokens"], y["tokens"])) / len(x["tokens"])
             for x, y in zip(ref["results"], run["results"])]
    # also the share before the first divergence (greedy continuations drift apart after it)
    prefix_match = []
    for x, y in zip(ref["results"], run["results"]):
        k = next((i for i, (a, b) in enumerate(zip(x["tokens"], y["tokens"])) if a != b), len(x["tokens"]))
        prefix_match.append(k / len(x["tokens"]))
    return {"token_match": statistics.mean(match), "agreeing_prefix": statistics.mean(prefix_match),
            "rouge_l": statistics.mean(rouge_l(x["text"], y["text"]) for x, y in zip(ref["results"], run["results"])),
            "kl": statistics.mean(kl(a, b) for a, b in zip(ref["first_logits"], run["first_logits"]))}


def predicted_fraction(method: str, hit: float, layers: int) -> float | None:
    """f = (c + (1 − h + r·h)(L − c)) / L: the uncached share at full cost, the reused share at the
    work selective recompute spends on a reused token."""
    opts = METHODS[method]
    if "kv_reuse" not in opts:
        return None
    return (1 - hit) + hit * ReuseOptions(opts["kv_reuse"], opts["kv_reuse_ratio"]).reused_token_work(layers)


SECTIONS = ("methods", "decode-stage", "probe-precision", "scheduling")


def _sections(args) -> set[str]:
    """The parts of the bench to run: those named by --only-X, else all but those named by --no-X."""
    only = {s for s in SECTIONS if getattr(args, "only_" + s.replace("-", "_"), False)}
    return only or {s for s in SECTIONS if not getattr(args, "no_" + s.replace("-", "_"), False)}


def main(args) -> dict:
    docs = load_documents(Path(args.corpus))
    work = build_workload(docs, args.requests, args.docs, seed=args.seed)
    work["batch"] = build_workload(docs, args.requests, args.docs, seed=args.seed + 1)["requests"]
    runs, report = {}, {"machine": machine_info(), "methods": {}}
    sections = _sections(args)
    for name in (args.method or list(METHODS)) if "methods" in sections else []:
        t0 = time.perf_counter()
        runs[name] = run_method(name, work, args.max_tokens, args.model, args.kv_cache_tokens, args.dtype)
        print(f"  {name}: done in {time.perf_counter() - t0:.0f} s", flush=True)
    ref = runs.get("full")
    hit = runs.get("dhd-20", next(iter(runs.values())))["hit_rate"] if runs else None
    for name, run in runs.items():
        row = {"ttft_s": statistics.median(r["ttft_s"] for r in run["results"]),
               "tpot_s": statistics.median(r["tpot_s"] for r in run["results"]),
               "tokens_per_s": run["tokens_per_s"], "hit_rate": run["hit_rate"]}
        if ref is not None:
            row.update(compare(ref, run))
            f = predicted_fraction(name, run["hit_rate"], run["num_layers"])
            full_ttft = statistics.median(r["ttft_s"] for r in ref["results"])
            row["speedup_vs_full"] = full_ttft / row["ttft_s"]
            if f is not None:
                row["predicted_ttft_s"] = f * full_ttft
            # the FLOP-count prediction, request by request against full recompute's TTFT of the same prompt
            pred = [r["flop_fraction"] * x["ttft_s"] for r, x in zip(run["results"], ref["results"])]
            row["flop_fraction"] = statistics.median(r["flop_fraction"] for r in run["results"])
            row["predicted_flops_ttft_s"] = statistics.median(pred)
            row["ttft_over_flops_prediction"] = statistics.median(
                r["ttft_s"] / q for r, q in zip(run["results"], pred))
        row["decode_recomputed_tokens"] = run["decode_recomputed"]
        report["methods"][name] = row
    report["hit_rate"] = hit
    if "decode-stage" in sections:
        report["decode_stage"] = run_decode_stage(work, args.max_tokens, args.model, args.kv_cache_tokens, args.dtype)
    if "probe-precision" in sections:
        report["probe_precision"] = run_probe_precision(work, args.model, args.kv_cache_tokens, args.dtype)
    if "scheduling" in sections:
        streams = {p: [] for p in ("fcfs", "cache-aware")}
        for i in range(args.sched_repeat):  # a new stream (mix and arrival times) each time, both policies
            for p in streams:
                streams[p].append(run_scheduling(p, docs, args.sched_requests, args.docs, args.sched_rate,
                                                 args.model, args.seed + i, args.kv_cache_tokens, args.dtype))
        report["scheduling"] = {p: {**{k: statistics.mean(r[k] for r in rs) for k in rs[0]}, "streams": rs}
                                for p, rs in streams.items()}
    report["workload"] = {"requests": args.requests, "docs_per_prompt": args.docs, "max_tokens": args.max_tokens}
    print(format_table(report))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(report, indent=2))
    return report


def format_table(report: dict) -> str:
    lines = [f"hit rate (dhd-20 run): {report['hit_rate']:.3f}",
             (f"{'method':<14}{'TTFT s':>8}{'pred s':>8}{'flops s':>8}{'x full':>8}{'TPOT ms':>9}{'tok/s':>8}"
              f"{'match':>7}{'rougeL':>8}{'KL':>8}")] if report["methods"] else []
    nan = float("nan")
    for name, m in report["methods"].items():
        pred = m.get("predicted_ttft_s")
        lines.append(f"{name:<14}{m['ttft_s']:>8.3f}{pred if pred is not None else nan:>8.3f}"
                     f"{m.get('predicted_flops_ttft_s', nan):>8.3f}"
                     f"{m.get('speedup_vs_full', nan):>8.2f}{m['tpot_s'] * 1e3:>9.1f}"
                     f"{m['tokens_per_s']:>8.1f}{m.get('token_match', nan):>7.2f}"
                     f"{m.get('rouge_l', nan):>8.2f}{m.get('kl', nan):>8.3f}")
    if "decode_stage" in report:
        d = report["decode_stage"]
        lines.append(f"decode stage (dhd-20, drift {d['drift']}): TPOT {d['tpot_on_s'] * 1e3:.1f} ms vs "
                     f"{d['tpot_off_s'] * 1e3:.1f} ms without, {d['overhead']:+.1%} "
                     f"({d['decode_recomputed_tokens']} tokens recomputed over {d['requests']} requests)")
    if "probe_precision" in report:
        p = report["probe_precision"]
        lines.append("dhd-10 probe: runs in the model's dtype here (no faster one)" if p is None else
                     f"dhd-10 probe in {p['dtype']}: TTFT {p['ttft_s'] * 1e3:.0f} ms vs "
                     f"{p['ttft_model_dtype_s'] * 1e3:.0f} ms in the model's dtype, {p['change']:+.1%} "
                     f"(side by side over {p['requests']} requests)")
    for policy, m in report.get("scheduling", {}).items():
        lines.append(f"{len(m['streams'])} streams of {m['requests']:.0f} warm and cold requests at "
                     f"{m['rate_per_s']}/s, {policy:<12} mean TTFT "
                     f"{m['mean_ttft_s']:.2f} s (warm {m['mean_ttft_warm_s']:.2f}, cold {m['mean_ttft_cold_s']:.2f}), "
                     f"p95 {m['p95_ttft_s']:.2f} s, max {m['max_ttft_s']:.2f} s; per stream mean "
                     + ", ".join(f"{r['mean_ttft_s']:.2f}" for r in m["streams"]))
    return "\n".join(lines)


def add_arguments(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--requests", type=int, default=8, help="measured requests per method")
    ap.add_argument("--docs", type=int, default=3, help="documents per prompt")
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--method", action="append", choices=list(METHODS), help="repeat; default: all")
    ap.add_argument("--corpus", default=str(CORPUS))
    ap.add_argument("--model", help="model directory (default: SmolLM2-135M-Instruct)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--dtype", default="auto", help="the engines' dtype (auto: bfloat16 on CPUs with bf16 matmul "
                    "hardware, else float32); float32 to compare with the DHD paper's figures")
    ap.add_argument("--kv-cache-tokens", type=int, default=65536,
                    help="KV pool per method; the seeds of both tenants take ~35k tokens (32768 evicts some)")
    ap.add_argument("--no-scheduling", action="store_true", help="skip the fcfs vs cache-aware stream")
    ap.add_argument("--sched-requests", type=int, default=24, help="requests in the scheduling stream")
    ap.add_argument("--sched-rate", type=float, default=0.8, help="arrivals per second in the scheduling stream")
    ap.add_argument("--sched-repeat", type=int, default=3, help="streams (seeds) per policy; figures are their means")
    ap.add_argument("--only-scheduling", action="store_true",
                    help="skip the methods, run the fcfs vs cache-aware streams")
    ap.add_argument("--no-decode-stage", action="store_true", help="skip the decode stage's TPOT comparison")
    ap.add_argument("--only-decode-stage", action="store_true",
                    help="run only the decode stage's TPOT comparison (dhd-20 with and without it)")
    ap.add_argument("--no-probe-precision", action="store_true",
                    help="skip the TTFT comparison of dhd-10's probe in low precision and in the model's")
    ap.add_argument("--only-probe-precision", action="store_true",
                    help="run only the TTFT comparison of dhd-10's probe in low precision and in the model's")
    ap.add_argument("--json", help="write the figures here")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m benchmarks.reuse", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    main(parser.parse_args())
