"""Triton kernels (kernels/) against their torch references, and the engine's Triton backend against
the torch backend. Without a GPU they run on CPU tensors in Triton's interpreter (tests/conftest.py
sets TRITON_INTERPRET=1 before any kernel module is imported); on a GPU they run on CUDA in bf16 too
(benchmarks/gpu_check.sh)."""

from __future__ import annotations

import pytest
import torch

from engine.attention import (
    AttentionMetadata,
    PrefillSpan,
    TorchAttentionBackend,
    make_attention_backend,
)
from engine.config import ModelConfig
from engine.model import apply_rope, rope_cos_sin, rope_inv_freq
from kernels import kv_store, rope
from kernels import paged_attention as pa
from kernels._triton import interpreting

DEVICE = torch.device("cpu" if interpreting() else "cuda")
DTYPES = [torch.float32, torch.float16] + ([torch.bfloat16] if DEVICE.type == "cuda" else [])
# The kernels compute in float32 whatever the storage dtype, so the tolerance is the output's rounding
# (and on GPUs the 16-bit operands of the dot products).
TOL = {torch.float32: {"atol": 1e-4, "rtol": 1e-4}, torch.float16: {"atol": 2e-3, "rtol": 2e-3},
       torch.bfloat16: {"atol": 2e-2, "rtol": 2e-2}}


def _cache(num_blocks, kv_heads, block_size, head_dim, dtype, gen):
    shape = (num_blocks, kv_heads, block_size, head_dim)
    k = torch.randn(shape, generator=gen).to(device=DEVICE, dtype=dtype)
    v = torch.randn(shape, generator=gen).to(device=DEVICE, dtype=dtype)
    return k, v


def _varlen_batch(block_size, num_blocks, gen):
    """Sequences as (query positions, keys in the cache): an empty one, a single fresh token, a chunk over
    a cached prefix crossing block edges, a decode on the last row of a block, a chunk starting on a
    block edge, a fresh multi-block prefill, and the sparse (DHD-style) queries of a long context."""
    bs = block_size
    seqs = [[], [0], list(range(2 * bs + 5, 2 * bs + 10)), [bs - 1], list(range(bs, 2 * bs + 1)),
            list(range(2 * bs + 1)), [3, bs, 2 * bs - 1, 3 * bs + 2, 4 * bs + 1]]
    width = max(-(-(max(p, default=0) + 1) // bs) for p in seqs)
    perm = torch.randperm(num_blocks - 1, generator=gen)
    # Each sequence its own blocks; the table's padding points at the last block, which the tests poison.
    tables = torch.full((len(seqs), width), num_blocks - 1, dtype=torch.int64)
    used = 0
    for i, pos in enumerate(seqs):
        n = -(-(max(pos, default=-1) + 1) // bs)
        tables[i, :n] = perm[used:used + n]
        used += n
    cu = [0]
    for pos in seqs:
        cu.append(cu[-1] + len(pos))
    q_pos = torch.tensor([p for pos in seqs for p in pos], dtype=torch.int64)
    return seqs, tables.to(DEVICE), cu, q_pos.to(DEVICE)


def _poison_unreadable(k_cache, v_cache, seqs, tables, block_size):
    """NaN in every cache row no query may read (past each sequence's last query, padding block):
    a kernel that loads them would turn its output NaN."""
    k_cache[-1] = float("nan")
    v_cache[-1] = float("nan")
    for i, pos in enumerate(seqs):
        if pos:
            last = max(pos) + 1
            block = tables[i, (last - 1) // block_size]
            k_cache[block, :, last % block_size or block_size:] = float("nan")
            v_cache[block, :, last % block_size or block_size:] = float("nan")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("group", [1, 2, 4])
@pytest.mark.parametrize("block_size, block_n, num_splits", [(16, 16, 1), (8, 32, 1), (32, 16, 3)])
def test_paged_attention_matches_reference(dtype, group, block_size, block_n, num_splits):
    gen = torch.Generator().manual_seed(group * 100 + block_size)
    kv_heads, head_dim, num_blocks = 2, 32, 40
    seqs, tables, cu, q_pos = _varlen_batch(block_size, num_blocks, gen)
    k_cache, v_cache = _cache(num_blocks, kv_heads, block_size, head_dim, dtype, gen)
    ref = pa.paged_attention_ref  # computed before poisoning: it never reads past a sequence's last query
    q = torch.randn(cu[-1], kv_heads * group, head_dim, generator=gen).to(device=DEVICE, dtype=dtype)
    want = ref(q, k_cache, v_cache, tables, cu, q_pos, head_dim ** -0.5)
    _poison_unreadable(k_cache, v_cache, seqs, tables, block_size)
    got = pa.paged_attention(q, k_cache, v_cache, tables, cu, q_pos, head_dim ** -0.5, num_splits=num_splits,
                             block_n=block_n)
    assert torch.isfinite(got).all()
    torch.testing.assert_close(got, want, **TOL[dtype])


@pytest.mark.parametrize("block_q", [1, 4])
def test_query_tiles_of_any_size_give_the_same_result(block_q):
    """Tiles smaller than a sequence's run of queries (several tiles per sequence) and one-query tiles."""
    gen = torch.Generator().manual_seed(7)
    _, tables, cu, q_pos = _varlen_batch(16, 40, gen)
    k_cache, v_cache = _cache(40, 2, 16, 32, torch.float32, gen)
    q = torch.randn(cu[-1], 4, 32, generator=gen).to(DEVICE)
    want = pa.paged_attention_ref(q, k_cache, v_cache, tables, cu, q_pos, 0.2)
    got = pa.paged_attention(q, k_cache, v_cache, tables, cu, q_pos, 0.2, block_q=block_q)
    torch.testing.assert_close(got, want, **TOL[torch.float32])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("group, num_splits", [(1, 1), (2, 4), (4, None)])
def test_paged_decode_attention_matches_reference(dtype, group, num_splits):
    gen = torch.Generator().manual_seed(group)
    kv_heads, block_size, head_dim, num_blocks = 2, 16, 64, 64
    k_cache, v_cache = _cache(num_blocks, kv_heads, block_size, head_dim, dtype, gen)
    # one token, a full block, one past a block edge, long, and a partial last block
    lens = torch.tensor([1, block_size, block_size + 1, 9 * block_size + 3, 3 * block_size - 1])
    width = -(-int(lens.max()) // block_size)
    tables = torch.randperm(num_blocks, generator=gen)[: len(lens) * width].view(len(lens), width)
    q = torch.randn(len(lens), kv_heads * group, head_dim, generator=gen).to(device=DEVICE, dtype=dtype)
    tables, lens = tables.to(DEVICE), lens.to(DEVICE)
    # the reference in float32: its SDPA in fp16 on CPU would be the less exact of the two
    want = pa.paged_decode_attention_ref(q.float(), k_cache.float(), v_cache.float(), tables, lens, 0.125)
    got = pa.paged_decode_attention(q, k_cache, v_cache, tables, lens, 0.125, num_splits=num_splits)
    torch.testing.assert_close(got, want.to(dtype), **TOL[dtype])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kv_heads", [1, 3])
def test_store_kv_matches_reference_and_skips_minus_one(dtype, kv_heads):
    gen = torch.Generator().manual_seed(kv_heads)
    head_dim, block_size = 24, 8  # head_dim not a power of two: masked lanes
    k_cache, v_cache = _cache(6, kv_heads, block_size, head_dim, dtype, gen)
    # k and v as the model makes them: views into one fused qkv row (non-contiguous tokens)
    qkv = torch.randn(7, 3 * kv_heads * head_dim, generator=gen).to(device=DEVICE, dtype=dtype)
    k = qkv[:, kv_heads * head_dim: 2 * kv_heads * head_dim].view(7, kv_heads, head_dim)
    v = qkv[:, 2 * kv_heads * head_dim:].view(7, kv_heads, head_dim)
    slots = torch.tensor([0, -1, 7, 8, 21, -1, 47], device=DEVICE)
    want_k, want_v = k_cache.clone(), v_cache.clone()
    kv_store.store_kv_ref(k, v, want_k, want_v, slots)
    kv_store.store_kv(k, v, k_cache, v_cache, slots)
    assert torch.equal(k_cache, want_k) and torch.equal(v_cache, want_v)
    assert torch.equal(k_cache[2, :, 5], k[4])  # slot 21 = block 2, row 5
    kv_store.store_kv(k[:0], v[:0], k_cache, v_cache, slots[:0])  # an empty step is a no-op
    assert torch.equal(k_cache, want_k)


def _llama3_inv_freq(head_dim: int) -> torch.Tensor:
    cfg = ModelConfig("llama", 10, head_dim * 2, 8, 1, 2, 1, head_dim, 1e-5, 500000.0,
                      {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                       "original_max_position_embeddings": 64}, 4096, False, False)
    return rope_inv_freq(cfg)


@pytest.mark.parametrize("dtype", DTYPES)
def test_rope_shift_equals_rope_at_the_new_position(dtype):
    """K rotated at p then shifted by delta equals K rotated at p + delta (engine.model's RoPE, Llama-3 scaled),
    and shifting back by -delta restores it."""
    gen = torch.Generator().manual_seed(3)
    head_dim, kv_heads = 32, 2
    inv_freq = _llama3_inv_freq(head_dim)
    unscaled = 1.0 / (500000.0 ** (torch.arange(0, head_dim, 2).float() / head_dim))
    assert not torch.allclose(inv_freq, unscaled)  # the scaling is really in play
    raw = torch.randn(9, kv_heads, head_dim, generator=gen)
    pos = torch.tensor([0, 1, 5, 17, 100, 1000, 3, 64, 2000])
    delta = torch.tensor([0, 3, -5, 40, -99, 1500, 0, -64, 7])
    cos, sin = rope_cos_sin(inv_freq, pos, torch.float32)
    at_p = apply_rope(raw, cos, sin).to(device=DEVICE, dtype=dtype)
    cos, sin = rope_cos_sin(inv_freq, pos + delta, torch.float32)
    at_new = apply_rope(raw, cos, sin).to(device=DEVICE, dtype=dtype)
    inv_freq, delta = inv_freq.to(DEVICE), delta.to(DEVICE)
    shifted = rope.rope_shift(at_p, delta, inv_freq)
    assert shifted.dtype == dtype
    torch.testing.assert_close(shifted, rope.rope_shift_ref(at_p, delta, inv_freq), **TOL[dtype])
    torch.testing.assert_close(shifted, at_new, **TOL[dtype])
    torch.testing.assert_close(rope.rope_shift(shifted, -delta, inv_freq), at_p, **TOL[dtype])


@pytest.mark.parametrize("dtype", DTYPES)
def test_rope_shift_cache_rotates_only_the_given_slots_in_every_layer(dtype):
    gen = torch.Generator().manual_seed(4)
    layers, num_blocks, kv_heads, block_size, head_dim = 3, 5, 2, 4, 16
    inv_freq = _llama3_inv_freq(head_dim).to(DEVICE)
    cache = torch.randn(layers, num_blocks, kv_heads, block_size, head_dim, generator=gen).to(device=DEVICE, dtype=dtype)
    slots = torch.tensor([1, -1, 4, 5, 19], device=DEVICE)
    delta = torch.tensor([7, 100, -3, 0, 12], device=DEVICE)
    want = cache.clone()
    rope.rope_shift_cache_ref_(want, slots, delta, inv_freq)
    got = cache.clone()
    rope.rope_shift_cache_(got, slots, delta, inv_freq)
    torch.testing.assert_close(got, want, **TOL[dtype])
    untouched = torch.ones(num_blocks * block_size, dtype=torch.bool)
    untouched[[1, 4, 19]] = False  # slot 5 has delta 0: rotated by nothing
    rows = lambda c: c.transpose(2, 3).reshape(layers, -1, kv_heads, head_dim)
    assert torch.equal(rows(got)[:, untouched.to(DEVICE)], rows(cache)[:, untouched.to(DEVICE)])
    assert not torch.allclose(rows(got)[:, 19].float(), rows(cache)[:, 19].float())
    one_layer = cache[1].clone()
    rope.rope_shift_cache_(one_layer, slots, delta, inv_freq)  # a single layer's 4-d cache works too
    torch.testing.assert_close(one_layer, want[1], **TOL[dtype])


def test_triton_backend_matches_torch_backend_on_a_mixed_step():
    """One step of fresh prefill, chunk over a cached prefix, sparse queries and decodes, interleaved in
    flat order as the runner builds it: outputs and cache contents agree with the torch backend."""
    gen = torch.Generator().manual_seed(11)
    layers, num_blocks, kv_heads, block_size, head_dim, heads = 2, 24, 2, 8, 16, 4
    shape = (layers, num_blocks, kv_heads, block_size, head_dim)
    k0 = torch.randn(shape, generator=gen).to(DEVICE)
    v0 = torch.randn(shape, generator=gen).to(DEVICE)
    backends = [TorchAttentionBackend(k0.clone(), v0.clone()),
                make_attention_backend("triton", k0.clone(), v0.clone())]
    tables = {"decode_a": [3, 4, 5], "fresh": [6, 7], "chunk": [8, 9, 10], "sparse": [11, 12, 13], "decode_b": [14]}
    # (name, ctx_len, positions of this step's tokens)
    plan = [("decode_a", 20, [20]), ("fresh", 0, list(range(11))), ("chunk", 13, list(range(13, 19))),
            ("decode_b", 7, [7]), ("sparse", 22, [2, 9, 17, 21])]
    slots, prefills, dec_idx, dec_tables, dec_lens = [], [], [], [], []
    for name, ctx, pos in plan:
        ids = tables[name]
        flat = len(slots)
        slots += [ids[p // block_size] * block_size + p % block_size for p in pos]
        if name.startswith("decode"):
            dec_idx.append(flat)
            dec_tables.append(ids + [0] * (3 - len(ids)))
            dec_lens.append(ctx + 1)
        else:
            tiles = backends[0].tile_rows(torch.tensor(ids, device=DEVICE)) if ctx else None
            q_pos = torch.tensor(pos, device=DEVICE) if name == "sparse" else None
            prefills.append(PrefillSpan(flat, flat + len(pos), ctx, tiles, q_pos))
    t = lambda x: torch.tensor(x, device=DEVICE)
    q = torch.randn(len(slots), heads, head_dim, generator=gen).to(DEVICE)
    k = torch.randn(len(slots), kv_heads, head_dim, generator=gen).to(DEVICE)
    v = torch.randn(len(slots), kv_heads, head_dim, generator=gen).to(DEVICE)
    outs = []
    for backend in backends:
        backend.begin_step(AttentionMetadata(t(slots), prefills, t(dec_idx), t(dec_tables), t(dec_lens)))
        outs.append([backend.forward(layer, q, k, v) for layer in range(layers)])
    for torch_out, triton_out in zip(*outs):
        torch.testing.assert_close(triton_out, torch_out, atol=1e-5, rtol=1e-5)
    assert torch.equal(backends[0].k_cache, backends[1].k_cache)
    assert torch.equal(backends[0].v_cache, backends[1].v_cache)


def test_engine_greedy_output_is_the_same_on_both_backends(tiny_model_dir):
    """The tiny model through the whole engine: shared prefixes (prefix-cache hits), chunked prefill
    mixed with decodes, then decode-only steps."""
    from engine import LLM
    from engine.params import SamplingParams

    shared = "The quick brown fox jumps over the lazy dog. Agents call tools, read their output and call the model."
    params = SamplingParams(temperature=0.0, max_tokens=6, ignore_eos=True, logprobs=0)
    runs = {}
    for backend in ("torch", "triton"):
        llm = LLM(str(tiny_model_dir), attention_backend=backend, kv_cache_tokens=512, block_size=8,
                  max_num_batched_tokens=16, device=str(DEVICE), dtype="float32")
        first = llm.generate([shared], params)  # then a prompt extending it hits the prefix cache
        runs[backend] = first + llm.generate([shared + " ls -la && grep -rn TODO src/", "def main(): print"], params)
    for a, b in zip(runs["torch"], runs["triton"]):
        assert a.token_ids == b.token_ids
        assert [x.logprob for x in b.logprobs] == pytest.approx([x.logprob for x in a.logprobs], abs=1e-4)
    assert runs["triton"][1].num_cached_tokens >= 8  # its prefill ran over cached blocks


def test_kv_reuse_gives_the_same_tokens_on_both_backends(deep_tiny_model_dir):
    """DHD's selective prefill (re-rotated copy, check-layer scoring, the tail's probe, sparse
    queries) and its decode stage (drift 1.01: it fires every step) through the Triton backend
    match the torch backend."""
    from engine import Engine
    from engine.params import SamplingParams

    g = torch.Generator().manual_seed(0)
    doc_a, doc_b, header = (torch.randint(10, 200, (n,), generator=g).tolist() for n in (96, 80, 7))
    params = SamplingParams(temperature=0, max_tokens=6, ignore_eos=True)
    runs = {}
    for backend in ("torch", "triton"):
        engine = Engine(model=str(deep_tiny_model_dir), kv_cache_tokens=4096, block_size=16, dtype="float32",
                        device=str(DEVICE), attention_backend=backend, kv_reuse="dhd", kv_reuse_ratio=0.2,
                        kv_reuse_drift=1.01)
        outs = []
        for prompt in (doc_a + doc_b, header + doc_b + doc_a + [5, 6, 7]):
            engine.add_request(prompt, params)
            while engine.has_unfinished_requests():
                outs += [o for o in engine.step() if o.finished]
        runs[backend] = (outs[-1].token_ids, engine.stats.num_reused_tokens, engine.runner.num_decode_recomputed)
        engine.pool.check_integrity()
    assert runs["triton"] == runs["torch"]
    assert runs["torch"][1] >= 128 and runs["torch"][2] > 0  # reuse and the decode stage both ran
