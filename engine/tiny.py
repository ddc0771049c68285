"""Tiny randomly initialised Llama-family models (llama, qwen2, qwen3, mistral), written as real Hugging Face directories.

For fast tests: the engine loads them through the same path as any model, and transformers can
load the same directory as the reference. The tokenizer is a small byte-level BPE trained on a
fixed text, with a ChatML chat template, so that text prompts and chat work too.
"""

from __future__ import annotations

import json
from pathlib import Path

_CORPUS = (
    "The quick brown fox jumps over the lazy dog. Agents call tools, read their output and call "
    "the model again. def main(): print('hello world') # a comment\n"
    "ls -la && grep -rn TODO src/ | head -n 20\n{\"name\": \"bash\", \"arguments\": {\"cmd\": \"pytest -q\"}}\n"
) * 4

CHATML_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def _write_tokenizer(path: Path, vocab_size: int) -> None:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator([_CORPUS], trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|im_end|>",
                                   bos_token="<|im_start|>", unk_token="<|endoftext|>")
    fast.chat_template = CHATML_TEMPLATE
    fast.save_pretrained(path)


def make_tiny_model(path: str | Path, *, arch: str = "llama", num_layers: int = 2, hidden_size: int = 64,
                    num_heads: int = 4, num_kv_heads: int = 2, intermediate_size: int = 128,
                    vocab_size: int = 384, tie_word_embeddings: bool = False, head_dim: int | None = None,
                    rope_scaling: dict | None = None, max_position_embeddings: int = 2048,
                    seed: int = 0) -> Path:
    """Writes config, random float32 safetensors weights and a tokenizer to `path` (if not there yet)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    path = Path(path)
    if (path / "config.json").exists() and list(path.glob("*.safetensors")):
        return path
    path.mkdir(parents=True, exist_ok=True)
    _write_tokenizer(path, vocab_size)
    eos = json.loads((path / "tokenizer.json").read_text())["model"]["vocab"]["<|im_end|>"]
    kwargs = dict(
        vocab_size=vocab_size, hidden_size=hidden_size, intermediate_size=intermediate_size,
        num_hidden_layers=num_layers, num_attention_heads=num_heads, num_key_value_heads=num_kv_heads,
        max_position_embeddings=max_position_embeddings, tie_word_embeddings=tie_word_embeddings,
        eos_token_id=eos, rms_norm_eps=1e-5, head_dim=head_dim or hidden_size // num_heads,
    )
    if rope_scaling:
        kwargs["rope_parameters"] = {"rope_theta": 500000.0, **rope_scaling}
    config = AutoConfig.for_model(arch, **kwargs)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    with torch.no_grad():  # larger than the default init so that logits are far from ties
        for name, p in model.named_parameters():
            if p.dim() > 1 or name.endswith(".bias"):
                p.normal_(0.0, 0.1)
            elif name.endswith(("q_norm.weight", "k_norm.weight")):  # Qwen3's: not all ones, so they count
                p.normal_(1.0, 0.2)
    model.save_pretrained(path, safe_serialization=True)
    return path
