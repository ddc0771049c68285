"""GPU check of the Triton path, in one run on one GPU (under 8 minutes on an H100 by design):

1. the kernel tests (tests/kernels/test_triton_kernels.py) on CUDA in fp32/fp16/bf16 against the references,
   and the tiny-model engine tests (tests/engine/test_reuse.py, tests/engine/test_models.py) with the engine on CUDA;
2. greedy output of a SmolLM2-135M-shaped model (30 layers, 9/3 heads, random float32 weights: the
   default model's 517 MB of weights cannot travel to a device machine that reaches no hub) through the
   engine with the Triton backend and the torch backend, against Hugging Face `generate`, token for token;
3. a randomly initialised Llama-3.1-8B-shaped model in bf16 (weights need not be real for speed):
   decode step time at batch 1/32/128 with 2k-token contexts against the memory-bandwidth limit
   (bytes of weights + KV read per step / --bandwidth-tbs), and one 8k-token prefill against bf16
   peak (--peak-tflops);
4. the same batch workload (prompts of --hf-prompt-len tokens, --hf-new-tokens greedy tokens each)
   through the engine's runner and through Hugging Face `generate`, as tokens/s and their ratio.
Prints a table and writes JSON after every step (a step that fails is recorded with its error and the
others still run).

    benchmarks/gpu_check.sh [--json benchmarks/results/gpu_check.json] [--skip-hf] [--skip-tests]
    benchmarks/gpu_check.sh --smoke   # every step at toy sizes, on CPU too (Triton's interpreter)
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import traceback
from functools import partial
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
LLAMA_31_8B = {
    "model_type": "llama", "vocab_size": 128256, "hidden_size": 4096, "intermediate_size": 14336, "num_layers": 32,
    "num_heads": 32, "num_kv_heads": 8, "head_dim": 128, "rms_norm_eps": 1e-5, "rope_theta": 500000.0,
    "rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                     "original_max_position_embeddings": 8192},
    "max_position_embeddings": 131072, "tie_word_embeddings": False, "qkv_bias": False,
}
BLOCK_SIZE = 16


CUDA_TESTS = ["tests/kernels/test_triton_kernels.py", "tests/engine/test_reuse.py", "tests/engine/test_models.py"]


def cuda_tests(args) -> dict:
    """The kernel tests and the tiny-model engine tests, each file in its own pytest (the engine picks
    CUDA when there is one; the kernels compile for the GPU)."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    out = {}
    for path in args.tests if not args.smoke else args.tests[:1]:
        t0 = time.perf_counter()
        cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", path]
        if args.smoke:
            cmd += ["-x", "-k", "rope"]
        try:
            proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, check=False,
                                  timeout=args.test_timeout)
            lines = proc.stdout.strip().splitlines()
            failed = [ln for ln in lines if ln.startswith(("FAILED", "ERROR"))]
            tail = lines[-1] if lines else proc.stderr[-500:]
            out[path] = {"passed": proc.returncode == 0, "summary": tail, "failed": failed[:20],
                         "log_tail": proc.stdout[-3000:] if proc.returncode else "",
                         "seconds": round(time.perf_counter() - t0, 1)}
        except subprocess.TimeoutExpired:
            out[path] = {"passed": False, "summary": f"timed out after {args.test_timeout} s", "failed": []}
    return out


SMOLLM2_SHAPE = {"num_layers": 30, "hidden_size": 576, "num_heads": 9, "num_kv_heads": 3, "intermediate_size": 1536,
                 "tie_word_embeddings": True, "max_position_embeddings": 8192}


def engine_parity(args, device: str, max_tokens: int = 32) -> dict:
    """Greedy tokens of the engine (Triton backend, torch backend; float32) against HF `generate` on the
    same device, for prompts from 1 to 900 tokens, two of them sharing a 200-token prefix."""
    import tempfile

    from engine import LLM
    from engine.params import SamplingParams
    from engine.tiny import make_tiny_model

    shape = SMOLLM2_SHAPE if not args.smoke else {"num_layers": 2}
    model_dir = make_tiny_model(Path(tempfile.mkdtemp()) / "smollm2-shaped", **shape)
    gen = torch.Generator().manual_seed(1)
    lengths = [1, 7, 16, 33, 250, 900] if not args.smoke else [1, 7, 40]
    prompts = [torch.randint(3, 384, (n,), generator=gen).tolist() for n in lengths]
    prompts.append(prompts[-2][:200] + torch.randint(3, 384, (60,), generator=gen).tolist())
    params = SamplingParams(temperature=0.0, max_tokens=max_tokens, ignore_eos=True, logprobs=2)
    outs, gaps = {}, {}
    for backend in ("torch", "triton"):
        llm = LLM(str(model_dir), attention_backend=backend, device=device, dtype="float32", kv_cache_tokens=16384)
        res = llm.generate(prompts, params)
        outs[backend] = [o.token_ids for o in res]
        # per step, the logprob gap between the engine's two most likely tokens (near 0: a near-tie)
        gaps[backend] = [[t.top[0][1] - t.top[1][1] for t in o.logprobs] for o in res]
        del llm
    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32).to(device).eval()
    # ignore_eos on HF's side: no EOS id at all (min_new_tokens would instead mask EOS out of the logits,
    # a different greedy choice wherever EOS is the argmax)
    hf.generation_config.eos_token_id = None
    ref, ref_gaps = [], []
    with torch.inference_mode():
        for ids in prompts:
            x = torch.tensor([ids], device=device)
            y = hf.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=max_tokens, do_sample=False,
                            pad_token_id=0, output_scores=True, return_dict_in_generate=True)
            ref.append(y.sequences[0, len(ids):].tolist())
            top2 = [torch.log_softmax(sc[0].float(), -1).topk(2).values.tolist() for sc in y.scores]
            ref_gaps.append([a - b for a, b in top2])
    del hf
    res = {"prompts": len(prompts), "prompt_lengths": [len(p) for p in prompts], "tokens_each": max_tokens}
    # Where a sequence departs from HF's: the step, and both sides' top-1/top-2 logprob gap there.
    res["divergences"] = []
    for i, (ours, theirs) in enumerate(zip(outs["triton"], ref)):
        at = next((j for j, (a, b) in enumerate(zip(ours, theirs)) if a != b), None)
        if at is not None:
            res["divergences"].append({"prompt": i, "step": at, "hf_gap": ref_gaps[i][at],
                                       "triton_gap": gaps["triton"][i][at], "torch_gap": gaps["torch"][i][at]})
    for backend in ("torch", "triton"):
        res[f"{backend}_identical_to_hf"] = sum(a == b for a, b in zip(outs[backend], ref))
    res["triton_identical_to_torch"] = sum(a == b for a, b in zip(outs["triton"], outs["torch"]))
    res["passed"] = res["triton_identical_to_hf"] == len(prompts) == res["torch_identical_to_hf"]
    return res


def ceilings(device: str) -> dict:
    """The two ceilings measured here (METHOD: datasheet rates are leads): a 4 GiB device-to-device copy
    (bytes read + written) and an 8192^3 bf16 matrix product on random data; medians of 10."""
    n = (1 << 31) if device == "cuda" else (1 << 20)
    src, dst = torch.randn(n, device=device, dtype=torch.bfloat16), torch.empty(n, device=device, dtype=torch.bfloat16)
    m = 8192 if device == "cuda" else 256
    a, b = (torch.randn(m, m, device=device, dtype=torch.bfloat16) for _ in range(2))
    for _ in range(3):
        dst.copy_(src)
        a @ b
    copy_s = sorted(timed(lambda: dst.copy_(src)) for _ in range(10))[5]
    mm_s = sorted(timed(lambda: a @ b) for _ in range(10))[5]
    return {"copy_tbs": 2 * n * 2 / copy_s / 1e12, "bf16_matmul_tflops": 2 * m ** 3 / mm_s / 1e12}


def random_llama(cfg, device: str):
    from engine.model import LlamaModel, rope_inv_freq

    with torch.device("meta"):
        model = LlamaModel(cfg)
    model = model.to_empty(device=device).to(torch.bfloat16).eval()
    gen = torch.Generator(device=device).manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.fill_(1.0)
            else:
                p.normal_(0.0, 0.02, generator=gen)
    model.inv_freq = rope_inv_freq(cfg).to(device)
    return model


def make_requests(n: int, prompt_len: int, extra: int, vocab: int) -> list:
    from engine.block_pool import Block
    from engine.params import SamplingParams
    from engine.request import Request

    reqs, next_block = [], 0
    for i in range(n):
        ids = torch.randint(vocab, (prompt_len,)).tolist()
        req = Request(f"r{i}", None, ids, SamplingParams(temperature=0.0))
        blocks = -(-(prompt_len + extra) // BLOCK_SIZE)
        req.blocks = [Block(b) for b in range(next_block, next_block + blocks)]
        next_block += blocks
        reqs.append(req)
    return reqs


def blocks_needed(args) -> int:
    """KV blocks for the largest of the runs (make_requests gives every request blocks of its own)."""
    per = lambda tokens: -(-tokens // BLOCK_SIZE)
    return max(128 * per(args.context + 1), args.hf_batch * per(args.hf_prompt_len + args.hf_new_tokens),
               per(args.prefill))


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def timed(fn) -> float:
    sync()
    t0 = time.perf_counter()
    fn()
    sync()
    return time.perf_counter() - t0


def speed(runner, cfg, args) -> dict:
    weight_bytes = sum(p.numel() * p.element_size() for n, p in runner.model.named_parameters() if n != "embed")
    kv_per_token = runner.kv_bytes_per_token(cfg, torch.bfloat16)
    rows = []
    for batch in (1, 32, 128):
        reqs = make_requests(batch, args.context, 1, cfg.vocab_size)
        for r in reqs:  # decode at position `context`, its KV assumed there (speed only: contents do not matter)
            r.token_ids.append(0)
            r.num_computed_tokens = args.context
        step = partial(runner.execute, reqs, [1] * batch)
        for _ in range(3):  # compile, capture the CUDA graph of this batch size
            step()
        times = sorted(timed(step) for _ in range(args.steps))
        step_s = times[len(times) // 2]
        limit_s = (weight_bytes + batch * (args.context + 1) * kv_per_token) / (args.bandwidth_tbs * 1e12)
        rows.append({"batch": batch, "context": args.context, "step_ms": step_s * 1e3, "limit_ms": limit_s * 1e3,
                     "ratio_to_limit": step_s / limit_s, "tokens_per_s": batch / step_s})
    (req,) = make_requests(1, args.prefill, 0, cfg.vocab_size)
    runner.execute([req], [args.prefill])  # compile
    prefill_s = min(timed(lambda: runner.execute([req], [args.prefill])) for _ in range(3))
    t = args.prefill
    layer_params = sum(p.numel() for n, p in runner.model.named_parameters() if n not in ("embed", "lm_head"))
    flops = 2 * layer_params * t + 2 * cfg.vocab_size * cfg.hidden_size  # logits of the last token only
    flops += 4 * cfg.num_layers * cfg.num_heads * cfg.head_dim * t * (t + 1) / 2  # causal QK^T and PV
    prefill = {"tokens": t, "seconds": prefill_s, "tflops": flops / prefill_s / 1e12,
               "fraction_of_peak": flops / prefill_s / (args.peak_tflops * 1e12)}
    return {"decode": rows, "prefill": prefill, "weight_bytes": weight_bytes, "kv_bytes_per_token": kv_per_token}


def decode_profile(runner, cfg, args) -> dict:
    """One batch-1 decode step with and without its CUDA graph, and the kernels of the graph-less step
    (count, and the ten largest by device time) from torch.profiler: where the step's time goes."""
    (req,) = make_requests(1, args.context, 1, cfg.vocab_size)
    req.token_ids.append(0)
    req.num_computed_tokens = args.context
    step = partial(runner.execute, [req], [1])
    graphs, out = runner.graphs, {}
    for name, g in (("graph", graphs), ("eager", None)):
        runner.graphs = g
        for _ in range(3):
            step()
        out[f"{name}_ms"] = 1e3 * sorted(timed(step) for _ in range(args.steps))[args.steps // 2]
    from torch.profiler import ProfilerActivity, profile

    acts = [ProfilerActivity.CUDA] if torch.cuda.is_available() else [ProfilerActivity.CPU]
    with profile(activities=acts) as prof:
        step()
        sync()
    runner.graphs = graphs
    events = [e for e in prof.key_averages() if getattr(e, "device_time_total", 0) > 0]
    events.sort(key=lambda e: -e.device_time_total)
    out["kernels"] = sum(e.count for e in events)
    out["device_ms"] = sum(e.device_time_total for e in events) / 1e3
    out["top"] = [{"name": e.key[:80], "count": e.count, "ms": e.device_time_total / 1e3} for e in events[:10]]
    return out


def engine_workload(runner, cfg, args) -> dict:
    """The batch workload through the runner as the engine schedules it: chunked prefill (8k tokens a
    step), then greedy decode steps of the whole batch."""
    reqs = make_requests(args.hf_batch, args.hf_prompt_len, args.hf_new_tokens, cfg.vocab_size)

    def run():
        per_step = max(1, 8192 // args.hf_prompt_len)
        for i in range(0, len(reqs), per_step):
            chunk = reqs[i:i + per_step]
            logits, _ = runner.execute(chunk, [args.hf_prompt_len] * len(chunk))
            for r, tok in zip(chunk, logits.argmax(-1).tolist()):
                r.num_computed_tokens = r.num_tokens
                r.token_ids.append(tok)
        for _ in range(args.hf_new_tokens - 1):
            logits, _ = runner.execute(reqs, [1] * len(reqs))
            for r, tok in zip(reqs, logits.argmax(-1).tolist()):
                r.num_computed_tokens = r.num_tokens
                r.token_ids.append(tok)

    seconds = timed(run)
    return {"seconds": seconds, "tokens_per_s": args.hf_batch * args.hf_new_tokens / seconds}


def hf_workload(cfg, args, device: str) -> dict:
    from transformers import LlamaConfig, LlamaForCausalLM

    hf_cfg = LlamaConfig(vocab_size=cfg.vocab_size, hidden_size=cfg.hidden_size, intermediate_size=cfg.intermediate_size,
                         num_hidden_layers=cfg.num_layers, num_attention_heads=cfg.num_heads,
                         num_key_value_heads=cfg.num_kv_heads, max_position_embeddings=cfg.max_position_embeddings,
                         rope_parameters={"rope_theta": cfg.rope_theta, **(cfg.rope_scaling or {"rope_type": "default"})},
                         rms_norm_eps=cfg.rms_norm_eps, tie_word_embeddings=cfg.tie_word_embeddings)
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    try:
        with torch.device(device):
            model = LlamaForCausalLM(hf_cfg).eval()
    finally:
        torch.set_default_dtype(default)
    ids = torch.randint(cfg.vocab_size, (args.hf_batch, args.hf_prompt_len), device=device)
    gen = {"attention_mask": torch.ones_like(ids), "max_new_tokens": args.hf_new_tokens, "min_new_tokens": args.hf_new_tokens,
               "do_sample": False, "pad_token_id": 0}
    with torch.inference_mode():
        model.generate(ids[:1, :64], **{**gen, "attention_mask": torch.ones_like(ids[:1, :64]), "max_new_tokens": 4,
                                        "min_new_tokens": 4})  # warm-up
        seconds = timed(lambda: model.generate(ids, **gen))
    return {"seconds": seconds, "tokens_per_s": args.hf_batch * args.hf_new_tokens / seconds}


TOY_LLAMA = {**LLAMA_31_8B, "vocab_size": 512, "hidden_size": 128, "intermediate_size": 256, "num_layers": 2,
             "num_heads": 4, "num_kv_heads": 2, "head_dim": 32, "max_position_embeddings": 4096}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", type=Path, default=ROOT / "benchmarks" / "results" / "gpu_check.json")
    ap.add_argument("--context", type=int, default=2048, help="decode context length (tokens)")
    ap.add_argument("--prefill", type=int, default=8192, help="prefill length (tokens)")
    ap.add_argument("--steps", type=int, default=20, help="timed decode steps per batch size (median reported)")
    ap.add_argument("--bandwidth-tbs", type=float, default=None,
                    help="memory bandwidth of this GPU, TB/s (default: the copy bandwidth measured first)")
    ap.add_argument("--peak-tflops", type=float, default=None,
                    help="dense bf16 peak of this GPU, TFLOP/s (default: the 8192^3 bf16 product measured first)")
    ap.add_argument("--hf-batch", type=int, default=32)
    ap.add_argument("--hf-prompt-len", type=int, default=2048)
    ap.add_argument("--hf-new-tokens", type=int, default=64)
    ap.add_argument("--test-timeout", type=int, default=240, help="seconds for each test file")
    ap.add_argument("--skip-tests", action="store_true", help="skip steps 1 and 2 (correctness)")
    ap.add_argument("--skip-hf", action="store_true", help="skip step 4 (Hugging Face generate)")
    ap.add_argument("--tests", nargs="*", default=CUDA_TESTS, help="test files run on the device in step 1")
    ap.add_argument("--smoke", action="store_true",
                    help="toy sizes, any device (checks this script, measures nothing): CPU runs the kernels in "
                         "Triton's interpreter")
    args = ap.parse_args()
    cuda = torch.cuda.is_available()
    if not cuda and not args.smoke:
        print("gpu_check needs a CUDA GPU and a CUDA build of torch; torch.cuda.is_available() is False here "
              "(--smoke runs it at toy sizes on CPU).", file=sys.stderr)
        return 2
    if not cuda:
        os.environ["TRITON_INTERPRET"] = "1"  # before engine/ imports the kernels
    if args.smoke:
        args.context, args.prefill, args.steps, args.hf_batch, args.hf_prompt_len, args.hf_new_tokens = 40, 64, 2, 2, 24, 3
    device = "cuda" if cuda else "cpu"
    from engine.config import ModelConfig
    from engine.runner import ModelRunner

    result: dict = {"gpu": torch.cuda.get_device_name() if cuda else "cpu (smoke)", "torch": torch.__version__,
                    "errors": {}}

    def step(name, fn):
        print(f"== {name}", flush=True)
        t0 = time.perf_counter()
        try:
            result[name] = fn()
        except Exception:  # noqa: BLE001 - recorded, and the other steps still run
            result["errors"][name] = traceback.format_exc()[-3000:]
            print(result["errors"][name], file=sys.stderr, flush=True)
        print(f"   {name}: {time.perf_counter() - t0:.1f} s", flush=True)
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2))

    step("ceilings", lambda: ceilings(device))
    args.bandwidth_tbs = args.bandwidth_tbs or result.get("ceilings", {}).get("copy_tbs", 3.0)
    args.peak_tflops = args.peak_tflops or result.get("ceilings", {}).get("bf16_matmul_tflops", 790.0)
    result["limits_used"] = {"bandwidth_tbs": args.bandwidth_tbs, "peak_tflops": args.peak_tflops}
    if not args.skip_tests:
        step("cuda_tests", lambda: cuda_tests(args))
        step("engine_parity", lambda: engine_parity(args, device))
    cfg = ModelConfig(**(LLAMA_31_8B if not args.smoke else TOY_LLAMA))
    holder = {}

    def build():
        holder["runner"] = ModelRunner(random_llama(cfg, device), cfg, blocks_needed(args), BLOCK_SIZE,
                                       torch.device(device), torch.bfloat16, "triton")
        return {"weight_bytes": sum(p.numel() * p.element_size() for p in holder["runner"].model.parameters())}

    step("model", build)
    if "runner" in holder:
        step("speed", lambda: speed(holder["runner"], cfg, args))
        step("decode_profile", lambda: decode_profile(holder["runner"], cfg, args))
        step("engine_workload", lambda: engine_workload(holder["runner"], cfg, args))
    holder.clear()
    if cuda:
        torch.cuda.empty_cache()
    if not args.skip_hf:
        step("hf_workload", lambda: hf_workload(cfg, args, device))
        if "hf_workload" in result and "engine_workload" in result:
            result["speedup_vs_hf"] = result["engine_workload"]["tokens_per_s"] / result["hf_workload"]["tokens_per_s"]
    args.json.write_text(json.dumps(result, indent=2))
    print_table(result)
    print(f"wrote {args.json}")
    return 0 if not result["errors"] else 1


def print_table(r: dict) -> None:
    print(f"GPU: {r['gpu']}  torch {r['torch']}")
    if "ceilings" in r:
        print(f"measured ceilings: copy {r['ceilings']['copy_tbs']:.2f} TB/s, bf16 matmul "
              f"{r['ceilings']['bf16_matmul_tflops']:.0f} TFLOP/s (limits used: {r['limits_used']})")
    for path, t in r.get("cuda_tests", {}).items():
        print(f"{path} on the device: {'PASS' if t['passed'] else 'FAIL'} ({t['summary']})")
    if "engine_parity" in r:
        e = r["engine_parity"]
        print(f"greedy, {e['prompts']} prompts x {e['tokens_each']} tokens (fp32): triton == HF {e['triton_identical_to_hf']}, "
              f"torch == HF {e['torch_identical_to_hf']}, triton == torch {e['triton_identical_to_torch']}")
        for d in e.get("divergences", []):
            print(f"  prompt {d['prompt']} departs at step {d['step']}: top-2 logprob gap HF {d['hf_gap']:.2e}, "
                  f"triton {d['triton_gap']:.2e}, torch {d['torch_gap']:.2e}")
    if "speed" in r:
        print(f"{'decode batch':>12} {'context':>8} {'step ms':>9} {'limit ms':>9} {'x limit':>8} {'tok/s':>9}")
        for row in r["speed"]["decode"]:
            print(f"{row['batch']:>12} {row['context']:>8} {row['step_ms']:>9.2f} {row['limit_ms']:>9.2f} "
                  f"{row['ratio_to_limit']:>8.2f} {row['tokens_per_s']:>9.0f}")
        p = r["speed"]["prefill"]
        print(f"prefill {p['tokens']} tokens: {p['seconds'] * 1e3:.0f} ms, {p['tflops']:.0f} TFLOP/s, "
              f"{100 * p['fraction_of_peak']:.0f}% of peak")
    if "decode_profile" in r:
        d = r["decode_profile"]
        print(f"batch-1 decode: {d['graph_ms']:.2f} ms with its CUDA graph, {d['eager_ms']:.2f} ms eager; eager step "
              f"= {d['kernels']} kernels, {d['device_ms']:.2f} ms device time; top: "
              + ", ".join(f"{t['name'][:40]} x{t['count']} {t['ms']:.2f} ms" for t in d["top"][:5]))
    if "engine_workload" in r:
        w = r["engine_workload"]
        print(f"batch workload, engine: {w['tokens_per_s']:.0f} tok/s ({w['seconds']:.2f} s)")
    if "hf_workload" in r:
        print(f"batch workload, HF generate: {r['hf_workload']['tokens_per_s']:.0f} tok/s ({r['hf_workload']['seconds']:.2f} s)"
              + (f"; engine / HF = {r['speedup_vs_hf']:.1f}x" if "speedup_vs_hf" in r else ""))
    for name in r["errors"]:
        print(f"step {name} FAILED (traceback in the JSON)")


if __name__ == "__main__":
    sys.exit(main())
