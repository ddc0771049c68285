"""The KV reuse copy (kernels/kv_copy.py): the C kernel against its torch reference, and the
reference against RoPE itself (a key copied with delta equals the key computed at the new position)."""

from __future__ import annotations

import pytest
import torch

from kernels import _cc, kv_copy
from kernels.fused import rope_ref

# Only a machine without any C compiler skips; where one exists a failed build fails the tests
# (kernels/_cc.py raises KernelBuildError with the compiler's output).
pytestmark = pytest.mark.skipif(_cc.compiler() is None, reason="no C compiler (cc or gcc) on PATH, or not Linux")


def test_the_c_kernel_is_what_runs_on_float32_cpu_caches(monkeypatch):
    """The comparisons below are C against torch only if the C path is taken: count the reference's calls."""
    assert kv_copy._library() is not None
    ref_calls = []
    real = kv_copy.copy_reused_kv_ref_
    monkeypatch.setattr(kv_copy, "copy_reused_kv_ref_", lambda *a, **k: ref_calls.append(1) or real(*a, **k))
    k, v = _caches()
    src, dst = torch.arange(16, 32), torch.arange(200, 216)
    kv_copy.copy_reused_kv_(k, v, src, dst, dst - src, _inv_freq(64), range(4))
    assert ref_calls == []
    kv_copy.copy_reused_kv_(k.to(torch.bfloat16), v.to(torch.bfloat16), src, dst, dst - src, _inv_freq(64), range(4))
    assert ref_calls == [1]  # no C kernel for bfloat16: the reference


def _caches(layers=4, blocks=32, kv_heads=3, block_size=16, head_dim=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    shape = (layers, blocks, kv_heads, block_size, head_dim)
    return torch.randn(shape, generator=g), torch.randn(shape, generator=g)


def _inv_freq(head_dim: int) -> torch.Tensor:
    return 1.0 / (10000 ** (torch.arange(0, head_dim, 2).float() / head_dim))


@pytest.mark.parametrize("kv_heads, block_size, head_dim", [(3, 16, 64), (1, 4, 128), (4, 8, 36)])
def test_kernel_matches_reference_in_the_given_layers_only(kv_heads, block_size, head_dim):
    k, v = _caches(kv_heads=kv_heads, block_size=block_size, head_dim=head_dim)
    n = 3 * block_size + 5  # unaligned: rows move within and across blocks
    src = torch.arange(block_size + 2, block_size + 2 + n)  # blocks 1..4
    dst = torch.arange(10 * block_size + 7, 10 * block_size + 7 + n)  # blocks 10..14
    delta = torch.randint(-3000, 3000, (n,), generator=torch.Generator().manual_seed(1))
    inv = _inv_freq(head_dim)
    want_k, want_v = k.clone(), v.clone()
    kv_copy.copy_reused_kv_ref_(want_k, want_v, src, dst, delta, inv, range(1, 3))
    kv_copy.copy_reused_kv_(k, v, src, dst, delta, inv, range(1, 3))
    torch.testing.assert_close(k, want_k, atol=2e-5, rtol=1e-5)
    assert torch.equal(v, want_v)  # V is copied bit for bit
    untouched = _caches(kv_heads=kv_heads, block_size=block_size, head_dim=head_dim)
    for layer in (0, 3):  # outside the range nothing moved
        assert torch.equal(k[layer], untouched[0][layer]) and torch.equal(v[layer], untouched[1][layer])
    assert not torch.equal(k[1], untouched[0][1])  # inside it something did


def test_copied_key_equals_the_key_computed_at_the_new_position():
    head_dim, block_size = 64, 16
    g = torch.Generator().manual_seed(2)
    raw = torch.randn(40, 3, head_dim, generator=g)  # un-rotated keys of 40 tokens
    old_pos, new_pos = torch.arange(5, 45), torch.arange(700, 740)
    inv = _inv_freq(head_dim)

    def rotated(pos):
        freqs = pos.float()[:, None] * inv[None, :]
        emb = torch.cat((freqs, freqs), dim=-1)
        return rope_ref(raw, emb.cos(), emb.sin())

    k, v = _caches(layers=1, blocks=64, block_size=block_size, head_dim=head_dim)
    src, dst = torch.arange(16, 56), torch.arange(320, 360)
    k[0].view(-1, 3, block_size, head_dim)[src // block_size, :, src % block_size] = rotated(old_pos)
    kv_copy.copy_reused_kv_(k, v, src, dst, new_pos - old_pos, inv, range(1))
    got = k[0][dst // block_size, :, dst % block_size]
    # float32 angles of ~700 rad carry ~1e-4 of rounding, in RoPE itself as in the composed rotation
    torch.testing.assert_close(got, rotated(new_pos), atol=5e-4, rtol=1e-4)
    # and back: rotating by -delta returns the original keys (rows 400.. are free)
    back = torch.arange(400, 440)
    kv_copy.copy_reused_kv_(k, v, dst, back, old_pos - new_pos, inv, range(1))
    torch.testing.assert_close(k[0][back // block_size, :, back % block_size], rotated(old_pos), atol=5e-4, rtol=1e-4)


def test_overlapping_or_out_of_range_slots_are_refused():
    k, v = _caches()
    src = torch.arange(16, 32)
    with pytest.raises(ValueError, match="overlap"):
        kv_copy.copy_reused_kv_(k, v, src, src + 4, torch.full((16,), 4), _inv_freq(64), range(4))
    with pytest.raises(ValueError, match="slots must be"):  # past the cache's last slot: refused, not written
        kv_copy.copy_reused_kv_(k, v, src, src + 32 * 16, torch.full((16,), 512), _inv_freq(64), range(4))


def test_other_dtypes_take_the_torch_path_with_the_same_result():
    """A bfloat16 cache (no C kernel for it) goes through the reference: the same rows as float32,
    to bfloat16's rounding."""
    k, v = _caches()
    kb, vb = k.to(torch.bfloat16), v.to(torch.bfloat16)
    src, dst = torch.arange(16, 50), torch.arange(200, 234)
    delta = dst - src
    kv_copy.copy_reused_kv_(k, v, src, dst, delta, _inv_freq(64), range(4))
    kv_copy.copy_reused_kv_(kb, vb, src, dst, delta, _inv_freq(64), range(4))
    torch.testing.assert_close(kb.float(), k, atol=3e-2, rtol=2e-2)
    assert torch.equal(vb.float(), v.to(torch.bfloat16).float())
