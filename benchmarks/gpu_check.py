"""GPU check of the Triton path, in one run on one GPU (under 8 minutes on an H100 by design):

1. the kernel tests (tests/test_triton_kernels.py) on CUDA in fp32/fp16/bf16 against the references;
2. greedy output of the default model through the engine, Triton backend == torch backend (float32);
3. a randomly initialised Llama-3.1-8B-shaped model in bf16 (weights need not be real for speed):
   decode step time at batch 1/32/128 with 2k-token contexts against the memory-bandwidth limit
   (bytes of weights + KV read per step / --bandwidth-tbs), and one 8k-token prefill against bf16
   peak (--peak-tflops);
4. the same batch workload (prompts of --hf-prompt-len tokens, --hf-new-tokens greedy tokens each)
   through the engine's runner and through Hugging Face `generate`, as tokens/s and their ratio.
Prints a table and writes JSON.

    benchmarks/gpu_check.sh [--json benchmarks/results/gpu_check.json] [--skip-hf] [--skip-tests]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
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


def kernel_tests() -> dict:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}  # the kernels compile for the GPU
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_triton_kernels.py"],
                          cwd=ROOT, env=env, capture_output=True, text=True, check=False)
    tail = proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else proc.stderr[-500:]
    return {"passed": proc.returncode == 0, "summary": tail, "seconds": round(time.perf_counter() - t0, 1)}


def engine_parity(max_tokens: int = 48) -> dict:
    from engine import LLM
    from engine.params import SamplingParams

    prompts = ["What is the capital of France?", "Write a haiku about the sea.", "List three prime numbers.",
               "How do I list files in bash?", "Explain recursion in one sentence.", "Why is the sky blue?"]
    params = SamplingParams(temperature=0.0, max_tokens=max_tokens)
    outs = {}
    for backend in ("torch", "triton"):
        llm = LLM(attention_backend=backend, device="cuda", dtype="float32", kv_cache_tokens=16384)
        outs[backend] = [o.token_ids for o in llm.generate(prompts, params)]
        del llm
        torch.cuda.empty_cache()
    same = sum(a == b for a, b in zip(outs["torch"], outs["triton"]))
    return {"prompts": len(prompts), "identical": same, "passed": same == len(prompts)}


def random_llama(cfg):
    from engine.model import LlamaModel, rope_inv_freq

    with torch.device("meta"):
        model = LlamaModel(cfg)
    model = model.to_empty(device="cuda").to(torch.bfloat16).eval()
    gen = torch.Generator(device="cuda").manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.fill_(1.0)
            else:
                p.normal_(0.0, 0.02, generator=gen)
    model.inv_freq = rope_inv_freq(cfg).cuda()
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


def timed(fn) -> float:
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    fn()
    torch.cuda.synchronize()
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


def hf_workload(cfg, args) -> dict:
    from transformers import LlamaConfig, LlamaForCausalLM

    hf_cfg = LlamaConfig(vocab_size=cfg.vocab_size, hidden_size=cfg.hidden_size, intermediate_size=cfg.intermediate_size,
                         num_hidden_layers=cfg.num_layers, num_attention_heads=cfg.num_heads,
                         num_key_value_heads=cfg.num_kv_heads, max_position_embeddings=cfg.max_position_embeddings,
                         rope_theta=cfg.rope_theta, rope_scaling=cfg.rope_scaling, rms_norm_eps=cfg.rms_norm_eps)
    with torch.device("cuda"):
        model = LlamaForCausalLM(hf_cfg).to(torch.bfloat16).eval()
    ids = torch.randint(cfg.vocab_size, (args.hf_batch, args.hf_prompt_len), device="cuda")
    gen = {"attention_mask": torch.ones_like(ids), "max_new_tokens": args.hf_new_tokens, "min_new_tokens": args.hf_new_tokens,
               "do_sample": False, "pad_token_id": 0}
    with torch.inference_mode():
        model.generate(ids[:1, :64], **{**gen, "attention_mask": torch.ones_like(ids[:1, :64]), "max_new_tokens": 4,
                                        "min_new_tokens": 4})  # warm-up
        seconds = timed(lambda: model.generate(ids, **gen))
    return {"seconds": seconds, "tokens_per_s": args.hf_batch * args.hf_new_tokens / seconds}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", type=Path, default=ROOT / "benchmarks" / "results" / "gpu_check.json")
    ap.add_argument("--context", type=int, default=2048, help="decode context length (tokens)")
    ap.add_argument("--prefill", type=int, default=8192, help="prefill length (tokens)")
    ap.add_argument("--steps", type=int, default=20, help="timed decode steps per batch size (median reported)")
    ap.add_argument("--bandwidth-tbs", type=float, default=3.0, help="memory bandwidth of this GPU, TB/s")
    ap.add_argument("--peak-tflops", type=float, default=790.0, help="dense bf16 peak of this GPU, TFLOP/s")
    ap.add_argument("--hf-batch", type=int, default=32)
    ap.add_argument("--hf-prompt-len", type=int, default=2048)
    ap.add_argument("--hf-new-tokens", type=int, default=64)
    ap.add_argument("--skip-tests", action="store_true", help="skip steps 1 and 2 (correctness)")
    ap.add_argument("--skip-hf", action="store_true", help="skip step 4 (Hugging Face generate)")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        print("gpu_check needs a CUDA GPU and a CUDA build of torch; torch.cuda.is_available() is False here.",
              file=sys.stderr)
        return 2
    from engine.config import ModelConfig
    from engine.runner import ModelRunner

    result: dict = {"gpu": torch.cuda.get_device_name(), "torch": torch.__version__}
    if not args.skip_tests:
        result["kernel_tests"] = kernel_tests()
        result["engine_parity"] = engine_parity()
    cfg = ModelConfig(**LLAMA_31_8B)
    model = random_llama(cfg)
    runner = ModelRunner(model, cfg, blocks_needed(args), BLOCK_SIZE, torch.device("cuda"), torch.bfloat16, "triton")
    result["speed"] = speed(runner, cfg, args)
    result["engine_workload"] = engine_workload(runner, cfg, args)
    del runner, model
    torch.cuda.empty_cache()
    if not args.skip_hf:
        result["hf_workload"] = hf_workload(cfg, args)
        result["speedup_vs_hf"] = result["engine_workload"]["tokens_per_s"] / result["hf_workload"]["tokens_per_s"]
    print_table(result)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2))
    print(f"wrote {args.json}")
    return 0


def print_table(r: dict) -> None:
    print(f"GPU: {r['gpu']}  torch {r['torch']}")
    if "kernel_tests" in r:
        k, e = r["kernel_tests"], r["engine_parity"]
        print(f"kernel tests on GPU: {'PASS' if k['passed'] else 'FAIL'} ({k['summary']})")
        print(f"engine greedy, triton == torch (fp32): {e['identical']}/{e['prompts']} identical")
    print(f"{'decode batch':>12} {'context':>8} {'step ms':>9} {'limit ms':>9} {'x limit':>8} {'tok/s':>9}")
    for row in r["speed"]["decode"]:
        print(f"{row['batch']:>12} {row['context']:>8} {row['step_ms']:>9.2f} {row['limit_ms']:>9.2f} "
              f"{row['ratio_to_limit']:>8.2f} {row['tokens_per_s']:>9.0f}")
    p = r["speed"]["prefill"]
    print(f"prefill {p['tokens']} tokens: {p['seconds'] * 1e3:.0f} ms, {p['tflops']:.0f} TFLOP/s, "
          f"{100 * p['fraction_of_peak']:.0f}% of peak")
    w = r["engine_workload"]
    print(f"batch workload, engine: {w['tokens_per_s']:.0f} tok/s ({w['seconds']:.2f} s)")
    if "hf_workload" in r:
        print(f"batch workload, HF generate: {r['hf_workload']['tokens_per_s']:.0f} tok/s; "
              f"engine / HF = {r['speedup_vs_hf']:.1f}x")


if __name__ == "__main__":
    sys.exit(main())
