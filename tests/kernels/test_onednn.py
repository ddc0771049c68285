"""oneDNN linear layers with packed weights (kernels/onednn.py) against F.linear, their torch reference,
and the CPU feature detection that picks the engine's dtype (kernels/cpu_features.py)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from kernels import cpu_features, onednn

DTYPES = [d for d in (torch.float32, torch.bfloat16) if onednn.works(d)]
TOL = {torch.float32: 1e-5, torch.bfloat16: 2e-2}


@pytest.mark.skipif(not DTYPES, reason="this torch build has no oneDNN linear on the CPU")
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("rows", [1, 7, 64])
def test_linear_matches_f_linear(dtype, rows):
    torch.manual_seed(rows)
    x, w, b = torch.randn(rows, 96).to(dtype), torch.randn(160, 96).to(dtype), torch.randn(160).to(dtype)
    for bias in (None, b):
        got, want = onednn.linear(x, w, bias).float(), F.linear(x, w, bias).float()
        assert got.shape == (rows, 160)
        torch.testing.assert_close(got, want, atol=TOL[dtype] * 10, rtol=TOL[dtype])


@pytest.mark.skipif(torch.float32 not in DTYPES, reason="this torch build has no oneDNN linear on the CPU")
def test_packed_weight_is_repacked_when_the_weight_changes():
    x, w = torch.randn(4, 32), torch.randn(8, 32)
    first = onednn.linear(x, w)
    w.mul_(2.0)  # in place: same tensor, new version; a stale packed copy would give `first` again
    torch.testing.assert_close(onednn.linear(x, w), 2 * first, atol=1e-4, rtol=1e-5)
    fresh = torch.randn(8, 32)
    torch.testing.assert_close(onednn.linear(x, fresh), F.linear(x, fresh), atol=1e-5, rtol=1e-5)


def test_cpu_features_are_consistent():
    flags = cpu_features.cpu_flags()
    assert flags == frozenset(cpu_features.cpuinfo().get("flags", "").split())
    if cpu_features.native_bf16():
        assert any(f in flags for f in cpu_features.BF16_FLAGS)
    described = cpu_features.describe()
    assert described.startswith(cpu_features.simd_level())
    assert all((f in described) == (f in flags) for f in cpu_features.BF16_FLAGS)
