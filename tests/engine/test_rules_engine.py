"""Engine-loop and streaming rules, each pinned by a test that fails when the rule is broken: a
failing step loop never leaves a caller waiting (engine/async_engine.py), and streamed text is held
back while a stop string could still cut it (engine/outputs.py).

The model's output is forced through `Engine.on_logits` (called after each forward, before
sampling): a greedy request then generates exactly the tokens of a chosen text, so the text that
stop strings see is known. Nothing here reads the machine's time except a hang guard."""

from __future__ import annotations

import anyio
import pytest
import torch

from engine import AsyncEngine, Engine, SamplingParams


def force_text(engine: Engine, texts: dict[str, str]) -> None:
    """Makes greedy request `rid` generate the tokens of `texts[rid]`, then EOS."""
    tok = engine.tokenizer
    targets = {rid: tok.encode(text, add_special_tokens=False) for rid, text in texts.items()}
    eos = tok.eos_token_id

    def on_logits(reqs, logits):
        with torch.inference_mode():  # the logits are inference tensors
            for row, req in enumerate(reqs):
                ids = targets.get(req.request_id)
                if ids is not None:
                    k = req.num_output_tokens
                    logits[row].fill_(float("-inf"))
                    logits[row, ids[k] if k < len(ids) else eos] = 0.0

    engine.on_logits = on_logits


# ---- streaming and stop strings ------------------------------------------------------------------

@pytest.mark.parametrize("include_stop", [False, True])
def test_streamed_text_is_held_back_while_a_stop_string_could_still_cut_it(tiny_model_dir, include_stop):
    """"<EN" first looks like the start of the stop string "<END>" and is not one; the real "<END>"
    comes later, a character a token. No streamed snapshot may show text that the stop string later
    cuts away: every cumulative text streamed is a prefix of the final text, and the deltas add up to it."""
    e = Engine(model=str(tiny_model_dir), kv_cache_tokens=1024)
    text = "abc <EN then <END> tail"
    assert len(e.tokenizer.encode("<END>", add_special_tokens=False)) > 1  # the stop string arrives in pieces
    force_text(e, {"s": text})
    params = SamplingParams(temperature=0.0, max_tokens=64, stop=["<END>"], include_stop_str_in_output=include_stop)
    e.add_request([5, 6, 7, 8], params, request_id="s", stream=True)
    outs = []
    while e.has_unfinished_requests():
        outs.extend(e.step())
    final = outs[-1]
    want = "abc <EN then <END>" if include_stop else "abc <EN then "
    assert final.finished and final.finish_reason == "stop" and final.stop_reason == "<END>"
    assert final.text == want
    assert len(outs) > 10 and all(not o.finished for o in outs[:-1])  # one snapshot per token
    for o in outs:
        assert want.startswith(o.text), f"streamed {o.text!r}, which the stop string cuts back"
    assert "".join(o.delta_text for o in outs) == want
    # what a stop string could not cut any more was streamed before the end (not all held to the end)
    assert any(o.text.startswith("abc <EN") for o in outs[:-1])


# ---- the engine loop -----------------------------------------------------------------------------

def test_a_failing_step_loop_ends_every_waiting_caller_with_the_error(tiny_model_dir):
    """A step that raises (a bug, not a request's own failure) stops the engine loop; callers
    streaming at that moment get RuntimeError("the engine loop failed: ...") chained to the cause
    instead of waiting forever, the engine's context re-raises the cause, and a later `generate`
    fails at once. The engine runs in its own task, as under a server's lifespan, so nothing but the
    loop's own cleanup can wake the callers."""
    e = Engine(model=str(tiny_model_dir), kv_cache_tokens=1024)
    aengine = AsyncEngine(e)
    real_step, steps = e.step, []

    def failing_step():
        steps.append(1)
        if len(steps) == 3:
            raise ValueError("boom in step")
        return real_step()

    e.step = failing_step
    params = SamplingParams(temperature=0.0, max_tokens=50, ignore_eos=True)
    errors, loop_error, streamed = {}, [], {}

    async def main():
        started, stop = anyio.Event(), anyio.Event()

        async def lifespan():
            try:
                async with aengine:
                    started.set()
                    await stop.wait()
            except* ValueError as group:
                loop_error.extend(group.exceptions)

        async def caller(i):
            streamed[i] = 0
            try:
                async for _ in aengine.generate([5, 6, 7, 8 + i], params):
                    streamed[i] += 1
            except RuntimeError as exc:
                errors[i] = exc

        with anyio.fail_after(60):  # a hang guard only: with the rule kept this ends in milliseconds
            async with anyio.create_task_group() as tg:
                tg.start_soon(lifespan)
                await started.wait()
                async with anyio.create_task_group() as callers:
                    for i in range(2):
                        callers.start_soon(caller, i)
                stop.set()

    anyio.run(main)
    assert len(steps) == 3 and streamed == {0: 2, 1: 2}  # two tokens each, then the step failed
    assert sorted(errors) == [0, 1]
    for exc in errors.values():
        assert "the engine loop failed" in str(exc) and "boom in step" in str(exc)
        assert isinstance(exc.__cause__, ValueError)
    assert [str(x) for x in loop_error] == ["boom in step"]

    async def later():
        async for _ in aengine.generate([1, 2, 3], params):
            pass

    with pytest.raises(RuntimeError, match=r"the engine loop failed: ValueError\('boom in step'\)"):
        anyio.run(later)
