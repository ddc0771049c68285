"""The fused elementwise kernels (kernels/fused.py) against their torch references, and a model
running them against the reference path. Without a GPU they run in Triton's interpreter on CPU."""

from __future__ import annotations

import pytest
import torch

from engine.model import rope_cos_sin, rope_inv_freq
from engine.config import ModelConfig
from kernels import _triton, fused
from kernels._triton import interpreting

# triton is a dev dependency on Linux; elsewhere only the references exist, and the kernels with them
pytestmark = pytest.mark.skipif(not _triton.AVAILABLE, reason="triton is not installed (Linux only)")
DEVICE = torch.device("cpu" if interpreting() or not torch.cuda.is_available() else "cuda")
DTYPES = [torch.float32, torch.float16] + ([torch.bfloat16] if DEVICE.type == "cuda" else [])
# one rounding of the output (the references round after each op, the kernels once at the end)
TOL = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 2e-2}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("rows,cols", [(1, 64), (7, 576), (3, 100)])
def test_rms_norm_and_fused_residual_match_reference(dtype, rows, cols):
    gen = torch.Generator().manual_seed(rows * cols)
    x = torch.randn(rows, cols, generator=gen).to(DEVICE, dtype)
    a = torch.randn(rows, cols, generator=gen).to(DEVICE, dtype)
    w = (1 + 0.1 * torch.randn(cols, generator=gen)).to(DEVICE, dtype)
    tol = TOL[dtype]
    torch.testing.assert_close(fused.rms_norm(x, w, 1e-5), fused.rms_norm_ref(x, w, 1e-5), atol=tol, rtol=tol)
    stream = x.clone()
    out = fused.rms_norm(a, w, 1e-5, residual=stream)
    torch.testing.assert_close(stream, x + a, atol=tol, rtol=tol)  # the residual stream, updated in place
    torch.testing.assert_close(out, fused.rms_norm_ref(x + a, w, 1e-5), atol=tol, rtol=tol)


@pytest.mark.parametrize("dtype", DTYPES)
def test_rope_in_place_on_a_strided_view_matches_reference(dtype):
    cfg = ModelConfig("llama", 64, 64, 128, 1, 4, 2, 32, 1e-5, 500000.0,
                      {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                       "original_max_position_embeddings": 64}, 4096, False, False)
    n, heads, kv_heads, d = 9, 4, 2, 32
    gen = torch.Generator().manual_seed(3)
    qkv = torch.randn(n, (heads + 2 * kv_heads) * d, generator=gen).to(DEVICE, dtype)
    pos = torch.tensor([0, 1, 2, 15, 16, 63, 64, 500, 4000], device=DEVICE)
    cos, sin = rope_cos_sin(rope_inv_freq(cfg).to(DEVICE), pos, dtype)
    q, k, v = qkv.split([heads * d, kv_heads * d, kv_heads * d], dim=-1)
    want_q = fused.rope_ref(q.reshape(n, heads, d), cos, sin)
    want_k = fused.rope_ref(k.reshape(n, kv_heads, d), cos, sin)
    v_before = v.clone()
    fused.rope_(q.view(n, heads, d), cos, sin)
    fused.rope_(k.view(n, kv_heads, d), cos, sin)
    tol = TOL[dtype]
    torch.testing.assert_close(q.view(n, heads, d), want_q, atol=tol, rtol=tol)
    torch.testing.assert_close(k.view(n, kv_heads, d), want_k, atol=tol, rtol=tol)
    assert torch.equal(v, v_before)  # only q and k were touched


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("inter", [128, 1536, 1100])
def test_silu_mul_matches_reference(dtype, inter):
    gen = torch.Generator().manual_seed(inter)
    gu = (3 * torch.randn(5, 2 * inter, generator=gen)).to(DEVICE, dtype)
    tol = TOL[dtype]
    torch.testing.assert_close(fused.silu_mul(gu), fused.silu_mul_ref(gu), atol=tol, rtol=tol)


def test_model_with_fused_kernels_matches_the_reference_path(tiny_model_dir, monkeypatch):
    """The tiny model through the engine's runner: logits with the fused kernels equal the reference
    path's to float32 rounding, on a prefill and the decode step after it."""
    from engine import Engine
    from engine.params import SamplingParams

    calls = []
    real = fused.silu_mul
    monkeypatch.setattr(fused, "silu_mul", lambda gu: calls.append(gu.shape[0]) or real(gu))
    prompt = list(range(3, 40))
    logits = {}
    for use in (False, True):
        engine = Engine(model=str(tiny_model_dir), kv_cache_tokens=512, device=str(DEVICE), dtype="float32",
                        attention_backend="torch")
        if use:
            engine.model.use_fused_kernels()
        seen = []
        engine.on_logits = lambda reqs, rows: seen.append(rows.clone())
        engine.add_request(prompt, SamplingParams(temperature=0.0, max_tokens=3, ignore_eos=True))
        while engine.has_unfinished_requests():
            engine.step()
        logits[use] = torch.cat(seen)
    assert logits[True].shape[0] == 3
    layers = len(engine.model.layers)
    assert calls == [len(prompt)] * layers + [1] * 2 * layers  # the fused path ran: prefill, 2 decodes
    torch.testing.assert_close(logits[True], logits[False], atol=1e-4, rtol=1e-4)
