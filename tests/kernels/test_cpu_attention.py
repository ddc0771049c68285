"""The C paged decode-attention kernel against its torch reference (kernels/cpu_attention.py), and the
C loader (kernels/_cc.py): a build that fails where a compiler exists is an error, not a fallback."""

from __future__ import annotations

import ctypes
import platform

import pytest
import torch

from kernels import _cc, cpu_attention

# Only a machine without any C compiler skips: where one exists the kernel must build, and a failed
# build fails these tests with the compiler's output (KernelBuildError) instead of skipping them.
needs_cc = pytest.mark.skipif(_cc.compiler() is None, reason="no C compiler (cc or gcc) on PATH, or not Linux")


@needs_cc
def test_the_kernel_is_available_where_a_compiler_exists():
    assert cpu_attention.available()


@needs_cc
@pytest.mark.parametrize("heads, kv_heads, head_dim, block_size", [
    (9, 3, 64, 16),   # SmolLM2: GQA 3, AVX2 path
    (8, 8, 128, 16),  # MHA, two 64-wide chunks
    (28, 4, 128, 32),  # GQA 7
    (4, 2, 36, 16),   # head_dim not a multiple of 8: scalar path
    (4, 1, 64, 4),    # block smaller than 8 rows: scalar path
])
@pytest.mark.parametrize("cache_dtype", [torch.float32, torch.bfloat16])
def test_kernel_matches_reference(heads, kv_heads, head_dim, block_size, cache_dtype):
    """float32 arithmetic over the cache's values: a bfloat16 cache gives the reference's result on
    the same values widened to float32, to float32 rounding."""
    g = torch.Generator().manual_seed(heads * 1000 + head_dim)
    num_blocks = 64
    k = torch.randn(num_blocks, kv_heads, block_size, head_dim, generator=g).to(cache_dtype)
    v = torch.randn(num_blocks, kv_heads, block_size, head_dim, generator=g).to(cache_dtype)
    # ragged: 1 token, exactly one block, one past a boundary, long, and a partial last block
    lens = torch.tensor([1, block_size, block_size + 1, 7 * block_size + 3, 3 * block_size - 1])
    width = int((lens.max() + block_size - 1) // block_size)
    tables = torch.randperm(num_blocks, generator=g)[: len(lens) * width].view(len(lens), width)
    q = torch.randn(len(lens), heads, head_dim, generator=g)
    scale = head_dim ** -0.5
    got = cpu_attention.paged_decode_attention(q, k, v, tables, lens, scale)
    ref = cpu_attention.paged_decode_attention_ref(q, k.float(), v.float(), tables, lens, scale)
    torch.testing.assert_close(got, ref, atol=2e-6, rtol=1e-5)


@needs_cc
def test_bfloat16_queries_give_bfloat16_output_rounded_once():
    """The model's bf16 queries: the kernel widens them, computes in float32 and rounds the output
    once, so it equals the float32 result rounded to bfloat16 (and max_ctx given equals max_ctx found)."""
    g = torch.Generator().manual_seed(7)
    k = torch.randn(16, 3, 16, 64, generator=g).bfloat16()
    v = torch.randn(16, 3, 16, 64, generator=g).bfloat16()
    tables = torch.randperm(16, generator=g)[:12].view(3, 4)
    lens = torch.tensor([1, 33, 64])
    q = torch.randn(3, 9, 64, generator=g).bfloat16()
    got = cpu_attention.paged_decode_attention(q, k, v, tables, lens, 0.125, max_ctx=64)
    assert got.dtype == torch.bfloat16
    ref = cpu_attention.paged_decode_attention_ref(q.float(), k.float(), v.float(), tables, lens, 0.125)
    torch.testing.assert_close(got, ref.bfloat16(), atol=0, rtol=0.0079)  # within one bf16 rounding step


@needs_cc
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


@needs_cc
def test_rejects_wrong_dtype():
    q = torch.randn(1, 2, 8, dtype=torch.float64)
    k = torch.randn(1, 1, 8, 8)
    with pytest.raises(TypeError, match="float32"):
        cpu_attention.paged_decode_attention(q, k, k, torch.zeros(1, 1, dtype=torch.long), torch.tensor([1]), 1.0)


# ---- the loader ----------------------------------------------------------------------------------

linux_only = pytest.mark.skipif(platform.system() != "Linux", reason="the C kernels are built on Linux only")


@pytest.fixture()
def fresh_loader(tmp_path, monkeypatch):
    """An empty build cache and no remembered builds, so that `_cc` compiles again."""
    monkeypatch.setenv("AGENTRT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(_cc, "_built", {})
    monkeypatch.setattr(_cc, "_failed", {})
    return tmp_path


def _fake_compiler(path, script: str):
    path.write_text("#!/bin/sh\n" + script)
    path.chmod(0o755)
    return path


@linux_only
def test_a_failing_build_raises_with_the_compilers_output_once(fresh_loader, monkeypatch):
    calls = fresh_loader / "calls"
    cc = _fake_compiler(fresh_loader / "badcc", f'echo run >> {calls}\n'
                        'echo "cc1: error: bad value (\'sapphirerapids\') for -march= switch" >&2\nexit 1\n')
    monkeypatch.setenv("CC", str(cc))
    assert _cc.compiler() == str(cc)
    for _ in range(2):
        with pytest.raises(_cc.KernelBuildError, match=r"(?s)paged_decode_attention.*bad value .*-march="):
            _cc.load("paged_decode_attention", "paged_decode_attention_f32", [])
    assert calls.read_text().split() == ["run"]  # the failure is remembered, not rebuilt on every call
    assert not list((fresh_loader / "cache" / "kernels").glob("*.so"))  # no half-written library left
    # the engine-facing check raises too, instead of reporting "no compiler" and falling back
    monkeypatch.setattr(cpu_attention, "_library", cpu_attention._library.__wrapped__)
    with pytest.raises(_cc.KernelBuildError):
        cpu_attention.available()


@linux_only
def test_a_library_that_does_not_load_raises(fresh_loader, monkeypatch):
    """The compiler says it succeeded but wrote no loadable library."""
    cc = _fake_compiler(fresh_loader / "liarcc", 'while [ "$1" != "-o" ]; do shift; done\necho junk > "$2"\n')
    monkeypatch.setenv("CC", str(cc))
    with pytest.raises(_cc.KernelBuildError, match="dlopen"):
        _cc.load("kv_reuse_copy", "kv_reuse_copy_f32", [])


def test_no_compiler_at_all_means_no_library(fresh_loader, monkeypatch):
    monkeypatch.setenv("CC", "no-such-cc")
    monkeypatch.setenv("PATH", str(fresh_loader))  # an empty directory: no cc, no gcc
    assert _cc.compiler() is None
    assert _cc.load("paged_decode_attention", "paged_decode_attention_f32", []) is None


@needs_cc
def test_the_real_compiler_builds_a_loadable_library(fresh_loader):
    lib = _cc.load("paged_decode_attention", "paged_decode_attention_f32", [ctypes.c_void_p])
    assert isinstance(lib, ctypes.CDLL) and lib.paged_decode_attention_f32.restype is None
    assert len(list((fresh_loader / "cache" / "kernels").glob("paged_decode_attention-*.so"))) == 1
