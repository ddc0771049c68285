"""Load time and tokens/s of a named model: `python -m benchmarks.model_load --json OUT`.

(1) first load: a fresh cache holding only the model's wheels (copied from $AGENTRT_CACHE/downloads,
    so no network time is counted): join, verify, dequantize, build the engine;
(2) cached load: the engine built again from the cached directory;
then for each dtype (float32, bfloat16): (3) single stream, one chat prompt -> `--single-tokens`
tokens; (4) batch, `--batch` distinct ~200-token chat prompts -> `--batch-tokens` tokens each
(greedy, ignore_eos; tok/s counts output tokens over the whole run, prefill included).
Run it alone (under the heavy lock on a shared machine): the figures are wall-clock.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

from benchmarks.engine_speed import batch_prompts, run_engine_batch
from benchmarks.machine import machine_info


def _timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="qwen2.5-coder-0.5b-instruct", help="a named model (engine/models.py)")
    ap.add_argument("--json", help="write the figures to this file")
    ap.add_argument("--dtypes", default="float32,bfloat16")
    ap.add_argument("--single-tokens", type=int, default=64)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--batch-tokens", type=int, default=32)
    ap.add_argument("--skip-first-load", action="store_true")
    args = ap.parse_args(argv)

    import torch

    from engine import loader, models
    from engine.engine import Engine

    spec = models.find_named(args.model)
    if spec is None:
        raise SystemExit(f"{args.model!r} is not a named model")
    results: dict = {"machine": machine_info(), "model": spec.name, "torch_threads": torch.get_num_threads()}

    def engine(dtype: str) -> Engine:
        return Engine(model=args.model, dtype=dtype, kv_cache_tokens=16384, max_num_seqs=64)

    if not args.skip_first_load:
        downloads = loader.cache_dir() / "downloads"
        with tempfile.TemporaryDirectory(dir=loader.cache_dir()) as fresh:
            (Path(fresh) / "downloads").mkdir()
            for req, _ in spec.wheels:
                shutil.copy(loader.find_wheel(downloads, req), Path(fresh) / "downloads")
            old = os.environ.get("AGENTRT_CACHE")
            os.environ["AGENTRT_CACHE"] = fresh
            try:
                _, first = _timed(lambda: engine("float32"))
            finally:
                os.environ["AGENTRT_CACHE"] = old if old is not None else ""
                if old is None:
                    del os.environ["AGENTRT_CACHE"]
        results["first_load_s"] = first
        print(f"first load (join, verify, dequantize, build): {first:.1f} s", flush=True)
    loader.resolve_model(args.model)  # the real cache is ready before the cached load is timed
    for dtype in args.dtypes.split(","):
        eng, cached = _timed(lambda: engine(dtype))
        tok = eng.tokenizer
        prompts = batch_prompts(tok, args.batch)
        run_engine_batch(eng, prompts[:2], 4)  # warm-up
        single = run_engine_batch(eng, prompts[:1], args.single_tokens)
        batch = run_engine_batch(eng, prompts, args.batch_tokens)
        results[dtype] = {
            "cached_load_s": cached, "single_tok_s": single["tok_s"], "batch_tok_s": batch["tok_s"],
            "batch": len(prompts), "batch_prompt_tokens": sum(len(p) for p in prompts),
            "single_tokens": args.single_tokens, "batch_tokens": args.batch_tokens,
        }
        print(f"{dtype}: cached load {cached:.1f} s, single stream {single['tok_s']:.1f} tok/s, "
              f"batch {len(prompts)}x{args.batch_tokens} {batch['tok_s']:.1f} tok/s", flush=True)
        del eng
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
        print(f"wrote {args.json}")
    return results


if __name__ == "__main__":
    main()
