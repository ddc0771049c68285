"""Configuration records: the model's architecture (read from a Hugging Face config) and the engine's knobs."""

from __future__ import annotations

from dataclasses import dataclass

SUPPORTED_ARCHITECTURES = ("llama", "qwen2", "qwen3", "mistral")


class ConfigError(ValueError):
    """An engine option or model config is invalid; the message says which and why."""


@dataclass(slots=True)
class ModelConfig:
    model_type: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rms_norm_eps: float
    rope_theta: float
    rope_scaling: dict | None
    max_position_embeddings: int
    tie_word_embeddings: bool
    qkv_bias: bool
    qk_norm: bool = False  # Qwen3: RMSNorm over each head of q and k before RoPE
    eos_token_ids: tuple[int, ...] = ()

    @classmethod
    def from_hf_dict(cls, raw: dict) -> "ModelConfig":
        model_type = raw.get("model_type", "")
        if model_type not in SUPPORTED_ARCHITECTURES:
            raise ConfigError(
                f"model_type {model_type!r} is not supported; agentrt runs the Llama family "
                f"({', '.join(SUPPORTED_ARCHITECTURES)})."
            )
        # transformers >= 5 nests rope settings in `rope_parameters`; older configs use rope_theta/rope_scaling.
        rope = raw.get("rope_parameters") or {}
        theta = rope.get("rope_theta", raw.get("rope_theta", 10000.0))
        scaling = raw.get("rope_scaling") or (rope if rope.get("rope_type", "default") != "default" else None)
        if scaling is not None:
            kind = scaling.get("rope_type", scaling.get("type", "default"))
            if kind not in ("default", "llama3", "linear"):
                raise ConfigError(f"rope scaling type {kind!r} is not supported (llama3, linear, default are).")
            if kind == "default":
                scaling = None
        heads = raw["num_attention_heads"]
        eos = raw.get("eos_token_id")
        eos_ids = tuple(eos) if isinstance(eos, list) else ((eos,) if eos is not None else ())
        return cls(
            model_type=model_type,
            vocab_size=raw["vocab_size"],
            hidden_size=raw["hidden_size"],
            intermediate_size=raw["intermediate_size"],
            num_layers=raw["num_hidden_layers"],
            num_heads=heads,
            num_kv_heads=raw.get("num_key_value_heads") or heads,
            head_dim=raw.get("head_dim") or raw["hidden_size"] // heads,
            rms_norm_eps=raw.get("rms_norm_eps", 1e-6),
            rope_theta=float(theta),
            rope_scaling=scaling,
            max_position_embeddings=raw.get("max_position_embeddings", 2048),
            tie_word_embeddings=bool(raw.get("tie_word_embeddings", False)),
            # Qwen2 has q/k/v biases without saying so in its config; Llama says attention_bias.
            qkv_bias=bool(raw.get("attention_bias", model_type == "qwen2")),
            qk_norm=model_type == "qwen3",
            eos_token_ids=eos_ids,
        )


@dataclass(slots=True)
class EngineConfig:
    """Engine options. `kv_cache_tokens` sizes the paged KV pool (rounded up to whole blocks)."""

    model: str | None = None
    device: str | None = None  # None: cuda if available, else cpu
    dtype: str | None = "auto"  # auto (or None): see resolve_dtype
    block_size: int = 16
    kv_cache_tokens: int | None = None  # None: what fits in kv_cache_memory_gb
    kv_cache_memory_gb: float = 4.0
    max_model_len: int | None = None  # None: the model's max_position_embeddings
    max_num_seqs: int = 128
    max_num_batched_tokens: int = 2048
    enable_prefix_caching: bool = True
    scheduling_policy: str = "fcfs"
    attention_backend: str = "auto"  # auto | torch | cpu | triton
    matmul: str = "auto"  # auto | torch | onednn (see engine.model.pick_linear)
    seed: int = 0
    profile_reload: bool = False  # time prefills at start-up for the reload model (engine/reload.py)
    # a waiting request releases only pins of programs that arrived after its own (engine/retention.py)
    protect_earlier_pins: bool = False
    num_threads: int | None = None
    # KVShare (engine/reuse/): reuse cached KV found at other positions, with selective recompute
    kv_reuse: str = "off"  # off | naive | cacheblend | dhd
    kv_reuse_ratio: float = 0.2  # share of reused tokens recomputed
    kv_reuse_check_layer: int = 1
    kv_reuse_drift: float = 0.3  # dhd decode stage: cosine threshold of attention drift (0: off)
    kv_reuse_min_span: int = 32  # shortest reused span, tokens
    kv_reuse_probe_layers: int | None = None  # dhd: layers the prompt's tail runs ahead through (None: all)
    kv_reuse_probe_dtype: str = "auto"  # dhd: the run-ahead's precision (engine.reuse.execute.probe_precision)
    kv_reuse_cross_tenant: bool = False  # reuse KV across tenants (their salts otherwise keep caches apart)

    def resolve_dtype(self, device) -> "torch.dtype":
        """The weights' and KV cache's dtype on `device`: `dtype` when named; `auto` (or None) is
        bfloat16 on CUDA and on a CPU with bfloat16 matmul hardware (AVX512-BF16 or AMX, detected once:
        kernels/cpu_features.py), float32 on other CPUs (where bf16 matmuls are emulated and slow)."""
        import torch

        from kernels import cpu_features

        if self.dtype not in (None, "auto"):
            return getattr(torch, self.dtype)
        if device.type == "cuda" or (device.type == "cpu" and cpu_features.native_bf16()):
            return torch.bfloat16
        return torch.float32

    def reuse_options(self):
        """The KV reuse options as one record (engine.reuse.plan.ReuseOptions), or None when off."""
        from engine.reuse.plan import ReuseOptions

        if self.kv_reuse == "off":
            return None
        return ReuseOptions(self.kv_reuse, self.kv_reuse_ratio, self.kv_reuse_check_layer, self.kv_reuse_drift,
                            min_span=self.kv_reuse_min_span, probe_layers=self.kv_reuse_probe_layers,
                            probe_dtype=self.kv_reuse_probe_dtype)

    def validate(self) -> None:
        if self.block_size <= 0 or self.block_size & (self.block_size - 1):
            raise ConfigError(f"block_size must be a positive power of two, got {self.block_size}")
        if self.max_num_seqs <= 0:
            raise ConfigError(f"max_num_seqs must be positive, got {self.max_num_seqs}")
        if self.max_num_batched_tokens < self.block_size:
            raise ConfigError(
                f"max_num_batched_tokens ({self.max_num_batched_tokens}) must be at least block_size ({self.block_size})"
            )
        if self.kv_reuse != "off" and not self.enable_prefix_caching:
            raise ConfigError("kv_reuse needs enable_prefix_caching (reused KV comes from cached blocks)")
        if self.kv_cache_tokens is not None and self.kv_cache_tokens < self.block_size:
            raise ConfigError(f"kv_cache_tokens ({self.kv_cache_tokens}) must hold at least one block")
        try:
            self.reuse_options()
        except ValueError as exc:
            raise ConfigError(str(exc)) from exc
