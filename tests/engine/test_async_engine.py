"""The anyio engine: concurrent streams, deltas that add up, cancellation that frees KV."""

from __future__ import annotations

import anyio
import pytest

from engine import AsyncEngine, Engine, LLM, SamplingParams

PROMPTS = [[5, 6, 7, 8], [100, 200, 300], list(range(20, 90)), [42] * 33, [9]]
PARAMS = SamplingParams(temperature=0.0, max_tokens=12, ignore_eos=True)


@pytest.fixture()
def engine(tiny_model_dir):
    return Engine(model=str(tiny_model_dir), kv_cache_tokens=2048)


def test_concurrent_streams_match_offline_generate(engine, tiny_model_dir):
    expected = [o for o in LLM(str(tiny_model_dir), kv_cache_tokens=2048).generate(PROMPTS, PARAMS)]
    results = {}

    async def consume(i, eng):
        deltas, tokens, last = [], [], None
        async for out in eng.generate(PROMPTS[i], PARAMS):
            deltas.append(out.delta_text)
            tokens += out.delta_token_ids
            last = out
        results[i] = ("".join(deltas), tokens, last)

    async def main():
        async with AsyncEngine(engine) as eng:
            async with anyio.create_task_group() as tg:
                for i in range(len(PROMPTS)):
                    tg.start_soon(consume, i, eng)

    anyio.run(main)
    for i, exp in enumerate(expected):
        text, tokens, last = results[i]
        assert last.finished and last.token_ids == tokens == exp.token_ids
        assert text == last.text == exp.text
    assert engine.pool.num_free == engine.pool.num_blocks


def test_breaking_out_of_a_stream_aborts_and_frees_blocks(engine):
    async def main():
        async with AsyncEngine(engine) as eng:
            got = 0
            async for _ in eng.generate(PROMPTS[2], SamplingParams(temperature=0, max_tokens=500, ignore_eos=True)):
                got += 1
                if got == 3:
                    break
            done = await eng.complete(PROMPTS[0], PARAMS)  # the loop keeps serving others
            assert len(done.token_ids) == 12
            with anyio.fail_after(10):
                while engine.has_unfinished_requests():
                    await anyio.sleep(0.01)

    anyio.run(main)
    engine.pool.check_integrity()
    assert engine.pool.num_free == engine.pool.num_blocks


def test_cancelled_caller_aborts_its_request(engine):
    async def main():
        async with AsyncEngine(engine) as eng:
            with anyio.move_on_after(0.2):
                await eng.complete(PROMPTS[1], SamplingParams(temperature=0, max_tokens=100000 // 100, ignore_eos=True))
            with anyio.fail_after(10):
                while engine.has_unfinished_requests():
                    await anyio.sleep(0.01)

    anyio.run(main)
    assert engine.pool.num_free == engine.pool.num_blocks


def test_generate_outside_the_context_is_an_error(engine):
    async def main():
        eng = AsyncEngine(engine)
        with pytest.raises(RuntimeError, match="async with"):
            async for _ in eng.generate([1, 2], PARAMS):
                pass

    anyio.run(main)
