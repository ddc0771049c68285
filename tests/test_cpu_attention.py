"""The C paged decode-attention kernel against its torch reference (kernels/cpu_attention.py)."""

from __future__ import annotations

import pytest
import torch

from kernels import cpu_attention

pytestmark = pytest.mark.skipif(not cpu_attention.available(), reason="no working C compiler on this machine")


@pytest.mark.parametrize("heads, kv_heads, head_dim, block_size", [
    (9, 3, 64, 16),   # SmolLM2: GQA 3, AVX2 path
    (8, 8, 128, 16),  # MHA, two 64-wide chunks
    (28, 4, 128, 32),  # GQA 7
    (4, 2, 36, 16),   # head_dim not a multiple of 8: scalar path
    (4, 1, 64, 4),    # block smaller than 8 rows: scalar path
])
def test_kernel_matches_reference(heads, kv_heads, head_dim, block_size):
    g = torch.Generator().manual_seed(heads * 1000 + head_dim)
    num_blocks = 64
    k = torch.randn(num_blocks, kv_heads, block_size, head_dim, generator=g)
    v = torch.randn(num_blocks, kv_heads, block_size, head_dim, generator=g)
    # ragged: 1 token, exactly one block, one past a boundary, long, and a partial last block
    lens = torch.tensor([1, block_size, block_size + 1, 7 * block_size + 3, 3 * block_size - 1])
    width = int((lens.max() + block_size - 1) // block_size)
    tables = torch.randperm(num_blocks, generator=g)[: len(lens) * width].view(len(lens), width)
    q = torch.randn(len(lens), heads, head_dim, generator=g)
    scale = head_dim ** -0.5
    got = cpu_attention.paged_decode_attention(q, k, v, tables, lens, scale)
    ref = cpu_attention.paged_decode_attention_ref(q, k, v, tables, lens, scale)
    torch.testing.assert_close(got, ref, atol=2e-6, rtol=1e-5)


def test_padding_blocks_and_stale_cache_contents_are_ignored():
    """Table entries past a sequence's length point at a block full of NaN: the result must not see it."""
    k = torch.randn(8, 3, 16, 64)
    v = torch.randn(8, 3, 16, 64)
    k[7] = float("nan")
    v[7] = float("nan")
    tables = torch.tensor([[0, 1, 7], [2, 7, 7]])
    lens = torch.tensor([20, 5])
    q = torch.randn(2, 9, 64)
    got = cpu_attention.paged_decode_attention(q, k, v, tables, lens, 0.125)
    assert torch.isfinite(got).all()
    clean_k, clean_v = k.nan_to_num(0.0), v.nan_to_num(0.0)  # the reference's masked SDPA would carry NaN
    ref = cpu_attention.paged_decode_attention_ref(q, clean_k, clean_v, tables, lens, 0.125)
    torch.testing.assert_close(got, ref, atol=2e-6, rtol=1e-5)


def test_rejects_wrong_dtype():
    q = torch.randn(1, 2, 8, dtype=torch.float64)
    k = torch.randn(1, 1, 8, 8)
    with pytest.raises(TypeError, match="float32"):
        cpu_attention.paged_decode_attention(q, k, k, torch.zeros(1, 1, dtype=torch.long), torch.tensor([1]), 1.0)
