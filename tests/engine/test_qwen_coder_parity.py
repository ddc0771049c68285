"""qwen2.5-coder-0.5b-instruct by name, token-exact against Hugging Face transformers reading the same
GGUF file (float32, greedy, CPU): the chat template's ids, each prompt alone, and the prompts batched."""

from __future__ import annotations

import pytest
import torch

from engine import LLM, SamplingParams, loader, models
from tests.conftest import hf_greedy

pytestmark = pytest.mark.slow
NAME = "qwen2.5-coder-0.5b-instruct"
NEW_TOKENS = 8
PROMPTS = ["List the files in the current directory.", "What does `git status` show?",
           "Write a Python function that adds two numbers."]


@pytest.fixture(scope="module")
def llm():
    return LLM(NAME, kv_cache_tokens=4096, device="cpu", dtype="float32")


@pytest.fixture(scope="module")
def hf():
    """transformers' own reading of the verified GGUF file (not the engine's cached directory)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = loader.fetch_gguf(models.QWEN25_CODER_05B)
    tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    return tok, model.eval()


def test_named_model_matches_hf_on_the_same_gguf(llm, hf):
    hf_tok, hf_model = hf
    cfg = llm.engine.model_config
    assert (cfg.model_type, cfg.num_layers, cfg.hidden_size, cfg.qkv_bias, cfg.tie_word_embeddings) == (
        "qwen2", 24, 896, True, False)  # this GGUF has its own output matrix
    convs = [[{"role": "user", "content": p}] for p in PROMPTS]
    ids = [hf_tok.apply_chat_template(c, add_generation_prompt=True, tokenize=True, return_dict=False)
           for c in convs]
    ours = [llm.tokenizer.encode(llm.engine.apply_chat_template(c, True), add_special_tokens=False) for c in convs]
    assert ours == ids
    reference = [hf_greedy(hf_model, p, NEW_TOKENS) for p in ids]
    greedy = SamplingParams(temperature=0.0, max_tokens=NEW_TOKENS)
    for p, ref in zip(ids, reference):
        assert llm.generate([p], greedy)[0].token_ids == ref
    assert [o.token_ids for o in llm.chat(convs, greedy)] == reference
