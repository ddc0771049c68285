"""Fused elementwise kernels of a decoder layer (Triton) and their torch references.

A decode step of a small batch is launch-bound once its matmuls run at memory bandwidth: on an H200
the graph of a Llama-3.1-8B-shaped batch-1 step held 1,371 kernels, ~1,300 of them RMSNorm, RoPE,
SiLU and residual pieces of a few microseconds each. These kernels do each of those in one launch:
- `rms_norm(x, w, eps, residual=None)`: with `residual`, first x = x + residual (returned as the
  new residual stream), then the norm: one read and one write of the row instead of ~7 kernels;
- `rope_(x, cos, sin)`: rotate-half RoPE of x [tokens, heads, head_dim] in place (x may be a
  strided view, e.g. q or k split out of the fused qkv output);
- `silu_mul(gate_up)`: SiLU(gate) * up of the fused gate/up projection [tokens, 2 * inter].
Arithmetic is float32 whatever the storage dtype, rounded once at the end. The `*_ref` functions are
the engine's own torch implementations (Hugging Face's op order, token-exact against transformers
in float32), which the model runs everywhere the kernels are not used (CPU, the torch backend).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from kernels._triton import require, tl, triton


def rms_norm_ref(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    dtype = x.dtype
    h = x.to(torch.float32)
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)
    return weight * h.to(dtype)


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def rope_ref(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x: [tokens, heads, head_dim]; cos/sin: [tokens, head_dim] -> rotated copy."""
    cos, sin = cos[:, None, :], sin[:, None, :]
    return (x * cos) + (_rotate_half(x) * sin)


def silu_mul_ref(gate_up: torch.Tensor) -> torch.Tensor:
    gate, up = gate_up.chunk(2, dim=-1)
    return F.silu(gate) * up


@triton.jit
def _rms_norm_kernel(x_ptr, res_ptr, w_ptr, out_ptr, n_cols, eps, stride_x, stride_r, stride_o,
                     HAS_RES: tl.constexpr, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK)
    ok = cols < n_cols
    x = tl.load(x_ptr + row * stride_x + cols, mask=ok, other=0.0).to(tl.float32)
    if HAS_RES:  # x + residual, rounded to the storage dtype as the unfused add would, kept as the new stream
        x = (x + tl.load(res_ptr + row * stride_r + cols, mask=ok, other=0.0).to(tl.float32))
        x = x.to(res_ptr.dtype.element_ty)
        tl.store(res_ptr + row * stride_r + cols, x, mask=ok)
        x = x.to(tl.float32)
    r = 1.0 / tl.sqrt(tl.sum(x * x, axis=0) / n_cols + eps)
    h = (x * r).to(out_ptr.dtype.element_ty).to(tl.float32)
    w = tl.load(w_ptr + cols, mask=ok, other=0.0).to(tl.float32)
    tl.store(out_ptr + row * stride_o + cols, (w * h).to(out_ptr.dtype.element_ty), mask=ok)


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float,
             residual: torch.Tensor | None = None) -> torch.Tensor:
    """RMSNorm of x [tokens, hidden]. With `residual` (same shape, contiguous rows), residual += x
    in place first and the norm is of that sum (the caller keeps `residual` as the stream)."""
    require()
    out = torch.empty_like(x)
    n, cols = x.shape
    if n:
        res = residual if residual is not None else x
        _rms_norm_kernel[(n,)](x, res, weight, out, cols, eps, x.stride(0), res.stride(0), out.stride(0),
                               HAS_RES=residual is not None, BLOCK=triton.next_power_of_2(cols))
    return out


@triton.jit
def _rope_kernel(x_ptr, cos_ptr, sin_ptr, heads, half, stride_t, stride_h, stride_c,
                 BLOCK_H: tl.constexpr, BLOCK_HALF: tl.constexpr):
    """Program (token): every head of one token; cos/sin rows hold [half | half] (HF's emb layout)."""
    t = tl.program_id(0).to(tl.int64)
    h = tl.arange(0, BLOCK_H)[:, None]
    i = tl.arange(0, BLOCK_HALF)[None, :]
    ok = (h < heads) & (i < half)
    cos = tl.load(cos_ptr + t * stride_c + i, mask=i < half, other=0.0).to(tl.float32)
    sin = tl.load(sin_ptr + t * stride_c + i, mask=i < half, other=0.0).to(tl.float32)
    base = x_ptr + t * stride_t + h * stride_h + i
    x1 = tl.load(base, mask=ok, other=0.0).to(tl.float32)
    x2 = tl.load(base + half, mask=ok, other=0.0).to(tl.float32)
    tl.store(base, (x1 * cos - x2 * sin).to(x_ptr.dtype.element_ty), mask=ok)
    tl.store(base + half, (x2 * cos + x1 * sin).to(x_ptr.dtype.element_ty), mask=ok)


def rope_(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotates x [tokens, heads, head_dim] (last dim contiguous) in place; cos/sin [tokens, head_dim]."""
    require()
    n, heads, dim = x.shape
    if n:
        assert x.stride(2) == 1 and cos.stride(1) == 1 and sin.stride() == cos.stride()
        _rope_kernel[(n,)](x, cos, sin, heads, dim // 2, x.stride(0), x.stride(1), cos.stride(0),
                           BLOCK_H=triton.next_power_of_2(heads), BLOCK_HALF=triton.next_power_of_2(dim // 2))
    return x


@triton.jit
def _silu_mul_kernel(gu_ptr, out_ptr, inter, stride_g, stride_o, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    ok = cols < inter
    gate = tl.load(gu_ptr + row * stride_g + cols, mask=ok, other=0.0).to(tl.float32)
    up = tl.load(gu_ptr + row * stride_g + inter + cols, mask=ok, other=0.0).to(tl.float32)
    act = (gate / (1.0 + tl.exp(-gate))).to(out_ptr.dtype.element_ty).to(tl.float32)  # F.silu rounds here
    tl.store(out_ptr + row * stride_o + cols, (act * up).to(out_ptr.dtype.element_ty), mask=ok)


def silu_mul(gate_up: torch.Tensor) -> torch.Tensor:
    """SiLU(gate) * up for gate_up [tokens, 2 * inter] (gate first, as the fused projection stores it)."""
    require()
    n, two = gate_up.shape
    inter = two // 2
    out = torch.empty((n, inter), dtype=gate_up.dtype, device=gate_up.device)
    if n:
        block = min(1024, triton.next_power_of_2(inter))
        _silu_mul_kernel[(n, triton.cdiv(inter, block))](gate_up, out, inter, gate_up.stride(0), out.stride(0),
                                                         BLOCK=block)
    return out
