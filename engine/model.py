"""Llama-family decoder (Llama 2/3/3.2, Qwen2, Qwen3, Mistral, SmolLM) over flat, packed token batches.

The model sees one step's tokens as a flat `[num_tokens]` array with explicit positions; which
sequence a token belongs to, and where its KV lives, is known only to the attention backend through
the step's metadata. Numerics follow Hugging Face's implementation op for op (RMSNorm in float32,
rotate-half RoPE, SwiGLU, Qwen3's per-head q/k RMSNorm before RoPE) so that greedy decoding is
token-exact against transformers in float32.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from engine.attention import AttentionBackend
from engine.config import ModelConfig
from kernels import fused, onednn
from kernels.fused import rms_norm_ref as rms_norm
from kernels.fused import rope_ref as apply_rope


class LayerHook:
    """A step's hook into the model's layers: one generic interface, so the model knows nothing of
    who uses it (KV reuse's decode stage does: engine/reuse/execute.py). A plain step has none."""

    def before_layer(self, index: int, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                     attn: AttentionBackend) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """May add rows to the step (hidden states x, their RoPE cos/sin) before layer `index`."""
        return x, cos, sin

    def after_qkv(self, index: int, q: torch.Tensor) -> None:
        """Sees layer `index`'s queries [n, H, D] before its attention."""


def rope_inv_freq(cfg: ModelConfig) -> torch.Tensor:
    """Inverse frequencies, including Llama-3 and linear rope scaling (as transformers computes them)."""
    dim = cfg.head_dim
    inv_freq = 1.0 / (cfg.rope_theta ** (torch.arange(0, dim, 2, dtype=torch.int64).float() / dim))
    scaling = cfg.rope_scaling
    if not scaling:
        return inv_freq
    kind = scaling.get("rope_type", scaling.get("type"))
    if kind == "linear":
        return inv_freq / float(scaling["factor"])
    # llama3: leave high frequencies alone, divide low ones by `factor`, interpolate smoothly between.
    factor = float(scaling["factor"])
    low_ff = float(scaling.get("low_freq_factor", 1.0))
    high_ff = float(scaling.get("high_freq_factor", 4.0))
    old_len = float(scaling.get("original_max_position_embeddings", 8192))
    low_wavelen, high_wavelen = old_len / low_ff, old_len / high_ff
    wavelen = 2 * math.pi / inv_freq
    scaled = torch.where(wavelen > low_wavelen, inv_freq / factor, inv_freq)
    smooth = (old_len / wavelen - low_ff) / (high_ff - low_ff)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    is_medium = ~(wavelen < high_wavelen) & ~(wavelen > low_wavelen)
    return torch.where(is_medium, smoothed, scaled)


def rope_cos_sin(inv_freq: torch.Tensor, positions: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    freqs = positions.float()[:, None] * inv_freq[None, :]
    emb = torch.cat((freqs, freqs), dim=-1)
    return emb.cos().to(dtype), emb.sin().to(dtype)


Linear = Callable[[torch.Tensor, torch.Tensor, torch.Tensor | None], torch.Tensor]


def pick_linear(kind: str, device: torch.device, dtype: torch.dtype) -> Linear:
    """`torch` is F.linear (MKL on CPU, the same kernels Hugging Face runs); `onednn` is oneDNN's GEMM
    with weights packed once (kernels/onednn.py): in float32 2-2.8x MKL on AMD CPUs with AVX-512 (MKL
    takes its slow path there), with rounding differences of ~1e-6 relative; in bfloat16 twice
    float32 where the CPU has bf16 hardware. `auto`: onednn on a CPU, in float32 or bfloat16, if it works."""
    if kind == "auto":
        onednn_dtype = dtype in (torch.float32, torch.bfloat16)
        kind = "onednn" if device.type == "cpu" and onednn_dtype and onednn.works(dtype) else "torch"
    if kind == "torch":
        return F.linear
    if kind == "onednn":
        if not onednn.works(dtype):
            raise ValueError(f"matmul 'onednn' is not available in this torch build for {dtype}")
        return onednn.linear
    raise ValueError(f"unknown matmul {kind!r}; choose from 'auto', 'torch', 'onednn'")


class DecoderLayer(nn.Module):
    def __init__(self, cfg: ModelConfig, index: int, linear: Linear = F.linear):
        super().__init__()
        self.index = index
        self.linear = linear
        self.eps = cfg.rms_norm_eps
        self.num_heads, self.num_kv_heads, self.head_dim = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
        q, kv = cfg.num_heads * cfg.head_dim, cfg.num_kv_heads * cfg.head_dim
        self.q_size, self.kv_size = q, kv
        self.input_norm = nn.Parameter(torch.ones(cfg.hidden_size), requires_grad=False)
        self.post_attn_norm = nn.Parameter(torch.ones(cfg.hidden_size), requires_grad=False)
        # q, k and v projections fused into one matmul; gate and up likewise.
        self.qkv = nn.Parameter(torch.empty(q + 2 * kv, cfg.hidden_size), requires_grad=False)
        self.qkv_bias = nn.Parameter(torch.zeros(q + 2 * kv), requires_grad=False) if cfg.qkv_bias else None
        # Qwen3: RMSNorm over each head's head_dim of q and k, before RoPE
        self.q_norm = nn.Parameter(torch.ones(cfg.head_dim), requires_grad=False) if cfg.qk_norm else None
        self.k_norm = nn.Parameter(torch.ones(cfg.head_dim), requires_grad=False) if cfg.qk_norm else None
        self.o = nn.Parameter(torch.empty(cfg.hidden_size, q), requires_grad=False)
        self.gate_up = nn.Parameter(torch.empty(2 * cfg.intermediate_size, cfg.hidden_size), requires_grad=False)
        self.down = nn.Parameter(torch.empty(cfg.hidden_size, cfg.intermediate_size), requires_grad=False)
        self.fused = False  # Triton kernels (kernels/fused.py) for norms, RoPE and SiLU: CUDA + Triton only

    def qkv_proj(self, x, cos, sin) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The attention inputs: q [n, H, D], k and v [n, KVH, D], q and k rotated."""
        n = x.shape[0]
        norm = fused.rms_norm if self.fused else rms_norm
        qkv = self.linear(norm(x, self.input_norm, self.eps), self.qkv, self.qkv_bias)
        q, k, v = qkv.split([self.q_size, self.kv_size, self.kv_size], dim=-1)
        q, k = q.view(n, self.num_heads, self.head_dim), k.view(n, self.num_kv_heads, self.head_dim)
        if self.q_norm is not None:  # per-head norms give new tensors, which the fused RoPE then rotates
            q, k = rms_norm(q, self.q_norm, self.eps), rms_norm(k, self.k_norm, self.eps)
        rope = fused.rope_ if self.fused else apply_rope  # fused: q and k rotated in place in the qkv output
        q, k = rope(q, cos, sin), rope(k, cos, sin)
        return q, k, v.view(n, self.num_kv_heads, self.head_dim)

    def finish(self, x, o):
        """The rest of the layer after attention output `o` [n, H, D]: o-projection, residual, MLP."""
        linear = self.linear
        a = linear(o.reshape(x.shape[0], self.q_size), self.o)
        if self.fused:  # x += a in place (callers pass x on and never reuse it), fused with the norm
            h = fused.rms_norm(a, self.post_attn_norm, self.eps, residual=x)
            return x + linear(fused.silu_mul(linear(h, self.gate_up)), self.down)
        x = x + a
        h = rms_norm(x, self.post_attn_norm, self.eps)
        gate, up = linear(h, self.gate_up).chunk(2, dim=-1)
        return x + linear(F.silu(gate) * up, self.down)

    def forward(self, x, cos, sin, attn: AttentionBackend, hook: LayerHook | None = None):
        q, k, v = self.qkv_proj(x, cos, sin)
        if hook is not None:
            hook.after_qkv(self.index, q)
        return self.finish(x, attn.forward(self.index, q, k, v))


class LlamaModel(nn.Module):
    def __init__(self, cfg: ModelConfig, linear: Linear = F.linear):
        super().__init__()
        self.cfg = cfg
        self.linear = linear
        self.embed = nn.Parameter(torch.empty(cfg.vocab_size, cfg.hidden_size), requires_grad=False)
        self.layers = nn.ModuleList(DecoderLayer(cfg, i, linear) for i in range(cfg.num_layers))
        self.norm = nn.Parameter(torch.ones(cfg.hidden_size), requires_grad=False)
        self.lm_head = None if cfg.tie_word_embeddings else nn.Parameter(
            torch.empty(cfg.vocab_size, cfg.hidden_size), requires_grad=False)
        self.register_buffer("inv_freq", rope_inv_freq(cfg), persistent=False)

    def forward(self, token_ids: torch.Tensor, positions: torch.Tensor, logits_indices: torch.Tensor,
                attn: AttentionBackend, hook: LayerHook | None = None) -> torch.Tensor:
        """Returns float32 logits for the tokens at `logits_indices` only (the ones that sample);
        rows a `hook` adds come after the tokens and give no logits."""
        x = F.embedding(token_ids, self.embed)
        cos, sin = rope_cos_sin(self.inv_freq, positions, x.dtype)
        for layer in self.layers:
            if hook is not None:
                x, cos, sin = hook.before_layer(layer.index, x, cos, sin, attn)
            x = layer(x, cos, sin, attn, hook)
        return self.logits(x.index_select(0, logits_indices))

    def use_fused_kernels(self) -> None:
        """Runs norms, RoPE and SiLU through the Triton kernels of kernels/fused.py (CUDA only)."""
        for layer in self.layers:
            layer.fused = True

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """float32 logits of final hidden states x [k, hidden]."""
        x = rms_norm(x, self.norm, self.cfg.rms_norm_eps)
        head = self.embed if self.lm_head is None else self.lm_head
        return self.linear(x, head).float()

    def load_hf_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Copies Hugging Face-named weights in, fusing q/k/v and gate/up; reports missing names."""
        def take(name: str) -> torch.Tensor:
            try:
                return state.pop(name)
            except KeyError:
                raise KeyError(f"weights file lacks tensor {name!r}") from None

        with torch.no_grad():
            self.embed.copy_(take("model.embed_tokens.weight"))
            self.norm.copy_(take("model.norm.weight"))
            if self.lm_head is not None:
                self.lm_head.copy_(take("lm_head.weight"))
            else:
                state.pop("lm_head.weight", None)
            for i, layer in enumerate(self.layers):
                p = f"model.layers.{i}."
                layer.input_norm.copy_(take(p + "input_layernorm.weight"))
                layer.post_attn_norm.copy_(take(p + "post_attention_layernorm.weight"))
                layer.qkv.copy_(torch.cat([take(p + f"self_attn.{n}_proj.weight") for n in "qkv"]))
                if layer.qkv_bias is not None:
                    layer.qkv_bias.copy_(torch.cat([take(p + f"self_attn.{n}_proj.bias") for n in "qkv"]))
                if layer.q_norm is not None:
                    layer.q_norm.copy_(take(p + "self_attn.q_norm.weight"))
                    layer.k_norm.copy_(take(p + "self_attn.k_norm.weight"))
                layer.o.copy_(take(p + "self_attn.o_proj.weight"))
                layer.gate_up.copy_(torch.cat([take(p + "mlp.gate_proj.weight"), take(p + "mlp.up_proj.weight")]))
                layer.down.copy_(take(p + "mlp.down_proj.weight"))
        leftover = [k for k in state if "rotary_emb" not in k]
        if leftover:
            raise KeyError(f"weights file has tensors this model does not use: {leftover[:5]}")
