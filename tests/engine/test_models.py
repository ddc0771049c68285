"""Model code against Hugging Face on tiny random models of each supported variant, and loader errors."""

from __future__ import annotations

import json

import pytest
import torch

from engine import LLM, ModelLoadError, PromptTooLongError, SamplingParams
from engine.config import ConfigError
from engine.tiny import make_tiny_model
from tests.conftest import hf_greedy

VARIANTS = {
    "llama": dict(arch="llama"),
    "llama-tied": dict(arch="llama", tie_word_embeddings=True),
    "llama3-rope-scaling": dict(arch="llama", rope_scaling={
        "rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
        "original_max_position_embeddings": 64}),
    "qwen2-bias": dict(arch="qwen2"),
    # Qwen3: per-head q/k norms, no q/k/v biases, head_dim apart from hidden / heads (as in Qwen3-0.6B)
    "qwen3-qk-norm": dict(arch="qwen3", head_dim=32),
    # Llama-3.2 (1B/3B): tied embeddings, llama3 rope scaling with factor 32, GQA
    "llama3.2": dict(arch="llama", tie_word_embeddings=True, rope_scaling={
        "rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
        "original_max_position_embeddings": 64}),
    "mistral-mha": dict(arch="mistral", num_kv_heads=4),
}


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_variant_matches_hf_greedy(tmp_path_factory, variant):
    from transformers import AutoModelForCausalLM

    path = make_tiny_model(tmp_path_factory.mktemp(variant) / "m", **VARIANTS[variant])
    hf = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32).eval()
    llm = LLM(str(path), kv_cache_tokens=2048, block_size=8, dtype="float32")  # bf16 by default on CUDA
    if "rope_scaling" in VARIANTS[variant]:  # both sides really scale
        assert llm.engine.model_config.rope_scaling["rope_type"] == "llama3"
        assert hf.config.rope_parameters["rope_type"] == "llama3"
    if VARIANTS[variant]["arch"] == "qwen3":  # the norms are there, are not all ones, and there is no bias
        layer = llm.engine.model.layers[0]
        assert layer.qkv_bias is None and layer.head_dim == 32
        assert not torch.equal(layer.q_norm, torch.ones_like(layer.q_norm))
    prompts = [[(i * 37 + 11) % 380 + 3 for i in range(n)] for n in (5, 40, 130)]  # 130 > rope's original 64
    outs = llm.generate(prompts, SamplingParams(temperature=0.0, max_tokens=20))
    for p, o in zip(prompts, outs):
        assert o.token_ids == hf_greedy(hf, p, 20)


def test_prefill_logits_match_hf_closely(tiny_model_dir):
    """Beyond argmax: the engine's next-token distribution equals HF's to float32 rounding."""
    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir), dtype=torch.float32).eval()
    llm = LLM(str(tiny_model_dir), kv_cache_tokens=2048, dtype="float32")
    p = [5, 9, 200, 31, 77, 12, 300, 8, 45]
    out = llm.generate([p], SamplingParams(temperature=0.0, max_tokens=1, logprobs=5))[0]
    with torch.no_grad():
        ref = torch.log_softmax(hf(torch.tensor([p])).logits[0, -1], -1)
    for tok, lp in out.logprobs[0].top:
        assert lp == pytest.approx(float(ref[tok]), abs=1e-5)


def test_missing_model_path_names_the_path_and_fix(tmp_path):
    missing = tmp_path / "nope"
    with pytest.raises(ModelLoadError, match="nope.*Hugging Face model directory"):
        LLM(str(missing))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelLoadError, match="config.json"):
        LLM(str(tmp_path / "empty"))


def test_corrupt_weights_name_the_file(tmp_path, tiny_model_dir):
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(tiny_model_dir, bad)
    weights = next(bad.glob("*.safetensors"))
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(ModelLoadError, match=f"corrupt weights file .*{weights.name}"):
        LLM(str(bad))


def test_unsupported_architecture_is_refused(tmp_path, tiny_model_dir):
    import shutil

    other = tmp_path / "gpt2ish"
    shutil.copytree(tiny_model_dir, other)
    cfg = json.loads((other / "config.json").read_text())
    cfg["model_type"] = "gpt2"
    (other / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ConfigError, match="'gpt2' is not supported.*llama, qwen2, qwen3, mistral"):
        LLM(str(other))


def test_bad_prompts_are_rejected_and_lose_nothing(tiny_model_dir):
    llm = LLM(str(tiny_model_dir), kv_cache_tokens=256)
    with pytest.raises(PromptTooLongError, match="256"):
        llm.generate([[5] * 300], SamplingParams(max_tokens=4))
    with pytest.raises(ValueError, match="empty"):
        llm.generate([[]], SamplingParams(max_tokens=4))
    with pytest.raises(ValueError, match="token ids"):
        llm.generate([[5, 10**9]], SamplingParams(max_tokens=4))
    # a bad prompt in a batch admits none of it, and the engine is still usable
    with pytest.raises(PromptTooLongError):
        llm.generate([[5, 6, 7], [5] * 300], SamplingParams(max_tokens=4))
    assert not llm.engine.has_unfinished_requests()
    assert llm.engine.pool.num_free == llm.engine.pool.num_blocks
    out = llm.generate([[5, 6, 7]], SamplingParams(temperature=0, max_tokens=4, ignore_eos=True))
    assert len(out[0].token_ids) == 4


def test_generation_stops_at_the_context_limit(tiny_model_dir):
    llm = LLM(str(tiny_model_dir), kv_cache_tokens=4096, max_model_len=64)
    out = llm.generate([[7] * 60], SamplingParams(temperature=0, max_tokens=50, ignore_eos=True))[0]
    assert len(out.token_ids) == 4 and out.finish_reason == "length"


def test_text_prompts_and_chat_template(tiny_model_dir):
    llm = LLM(str(tiny_model_dir), kv_cache_tokens=2048)
    text_out, ids_out = llm.generate(
        ["The quick brown fox", llm.tokenizer.encode("The quick brown fox", add_special_tokens=False)],
        SamplingParams(temperature=0, max_tokens=6, ignore_eos=True))
    assert text_out.token_ids == ids_out.token_ids and text_out.prompt == "The quick brown fox"
    (chat,) = llm.chat([{"role": "user", "content": "ls -la"}], SamplingParams(temperature=0, max_tokens=4))
    assert chat.prompt.startswith("<|im_start|>user\nls -la<|im_end|>\n<|im_start|>assistant\n")
