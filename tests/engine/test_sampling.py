"""Sampling options and stop conditions, on the tiny random model (and HF as the logprob reference)."""

from __future__ import annotations

import pytest
import torch

from engine import LLM, SamplingParams
from engine.sampler import _filter_top_k_top_p


@pytest.fixture(scope="module")
def llm(tiny_model_dir):
    return LLM(str(tiny_model_dir), kv_cache_tokens=4096, dtype="float32")  # compared with HF float32 below


P = [11, 42, 97, 130, 7, 250, 19]


def test_seeded_sampling_is_reproducible_and_batch_independent(llm):
    sp = SamplingParams(temperature=1.0, seed=1234, max_tokens=16, ignore_eos=True)
    (alone,) = llm.generate([P], sp)
    batch = llm.generate([P, P[:3], P, [5, 6]], [sp, SamplingParams(temperature=0.7, max_tokens=16),
                                                    sp, SamplingParams(temperature=0.0, max_tokens=4)])
    assert batch[0].token_ids == alone.token_ids == batch[2].token_ids
    other = llm.generate([P], SamplingParams(temperature=1.0, seed=4321, max_tokens=16, ignore_eos=True))[0]
    assert other.token_ids != alone.token_ids


def test_top_k_one_equals_greedy(llm):
    greedy = llm.generate([P], SamplingParams(temperature=0.0, max_tokens=12, ignore_eos=True))[0]
    topk1 = llm.generate([P], SamplingParams(temperature=0.9, top_k=1, seed=0, max_tokens=12, ignore_eos=True))[0]
    assert topk1.token_ids == greedy.token_ids


def test_top_k_and_top_p_filters():
    logits = torch.tensor([3.0, 2.0, 1.0, 0.0, -1.0])
    kept = torch.isfinite(_filter_top_k_top_p(logits, 2, 1.0))
    assert kept.tolist() == [True, True, False, False, False]
    probs = logits.softmax(-1)  # 0.636, 0.234, 0.086, ...
    kept = torch.isfinite(_filter_top_k_top_p(logits, 0, 0.8))
    assert kept.tolist() == [True, True, False, False, False]
    assert probs[0] < 0.8 < probs[0] + probs[1]
    assert torch.isfinite(_filter_top_k_top_p(logits, 0, 0.1)).sum() == 1


def test_samples_follow_the_distribution(llm):
    """With top_k=2, every sampled token is one of the two most likely tokens at its step."""
    out = llm.generate([P], SamplingParams(temperature=1.0, top_k=2, seed=7, max_tokens=10, ignore_eos=True,
                                           logprobs=2))[0]
    for lp in out.logprobs:
        assert lp.token_id in [t for t, _ in lp.top]


def test_logprobs_match_hf_log_softmax(llm, tiny_model_dir):
    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir), dtype=torch.float32)
    out = llm.generate([P], SamplingParams(temperature=0.0, max_tokens=5, ignore_eos=True, logprobs=3))[0]
    ids = torch.tensor([P + out.token_ids])
    with torch.no_grad():
        ref = torch.log_softmax(hf(ids).logits[0, len(P) - 1:-1], dim=-1)
    for i, lp in enumerate(out.logprobs):
        assert lp.token_id == out.token_ids[i]
        assert lp.logprob == pytest.approx(float(ref[i, lp.token_id]), abs=1e-4)
        vals, top_ids = torch.topk(ref[i], 3)
        assert [t for t, _ in lp.top] == top_ids.tolist()


def test_max_tokens_and_stop_token_ids(llm):
    greedy = llm.generate([P], SamplingParams(temperature=0.0, max_tokens=10, ignore_eos=True))[0]
    assert len(greedy.token_ids) == 10 and greedy.finish_reason == "length"
    stop_tok = greedy.token_ids[4]
    first = greedy.token_ids.index(stop_tok)
    out = llm.generate([P], SamplingParams(temperature=0.0, max_tokens=10, stop_token_ids=[stop_tok]))[0]
    assert out.token_ids == greedy.token_ids[: first + 1]
    assert out.finish_reason == "stop" and out.stop_reason == stop_tok


def test_stop_strings_cut_the_text(llm):
    full = llm.generate([P], SamplingParams(temperature=0.0, max_tokens=24, ignore_eos=True))[0]
    text = full.text
    assert len(text) > 6
    stop = text[3:6]
    first = text.index(stop)
    out = llm.generate([P], SamplingParams(temperature=0.0, max_tokens=24, ignore_eos=True, stop=[stop]))[0]
    assert out.finish_reason == "stop" and out.stop_reason == stop
    assert out.text == text[:first]
    kept = llm.generate([P], SamplingParams(temperature=0.0, max_tokens=24, ignore_eos=True, stop=stop,
                                            include_stop_str_in_output=True))[0]
    assert kept.text == text[: first + len(stop)]


def test_eos_stops_unless_ignored(llm):
    greedy = llm.generate([P], SamplingParams(temperature=0.0, max_tokens=10, ignore_eos=True))[0]
    fake_eos = greedy.token_ids[2]  # treat a token the model emits as EOS
    first = greedy.token_ids.index(fake_eos)
    engine = llm.engine
    saved = set(engine.eos_token_ids)
    engine.eos_token_ids.add(fake_eos)
    try:
        out = llm.generate([P], SamplingParams(temperature=0.0, max_tokens=10))[0]
        assert out.token_ids == greedy.token_ids[: first + 1]
        assert out.finish_reason == "stop" and out.stop_reason is None
        ignored = llm.generate([P], SamplingParams(temperature=0.0, max_tokens=10, ignore_eos=True))[0]
        assert ignored.token_ids == greedy.token_ids
    finally:
        engine.eos_token_ids = saved


@pytest.mark.parametrize("kwargs, message", [
    (dict(temperature=-1), "temperature"), (dict(top_p=0), "top_p"), (dict(max_tokens=0), "max_tokens"),
    (dict(top_k=-2), "top_k"), (dict(logprobs=99), "logprobs"), (dict(stop=[""]), "stop"),
])
def test_invalid_params_raise_clear_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SamplingParams(**kwargs)


def test_a_temperature_below_1e5_is_greedy_not_an_overflow():
    """logits / 1.4e-45 overflow to inf; vLLM samples greedily under 1e-5, and so does the engine."""
    import torch

    from engine.request import Request
    from engine.sampler import sample

    logits = torch.tensor([[0.1, 2.0, -1.0], [3.0, 0.0, 0.5]])
    reqs = [Request(f"r{i}", None, [1], SamplingParams(temperature=t)) for i, t in enumerate((1.4e-45, 9e-6))]
    assert sample(logits, reqs, torch.Generator().manual_seed(0)) == [1, 0]
    assert SamplingParams(temperature=9e-6).greedy and not SamplingParams(temperature=2e-5).greedy
