"""KVShare: span matching, re-rotated copies, DHD selective recompute, tenancy, the cache-aware policy."""

from __future__ import annotations

import pytest
import torch

from engine import Engine
from engine.attention import PrefillSpan
from engine.block_pool import BlockPool
from engine.kv_manager import KVCacheManager
from engine.reuse.execute import Reuser, probe_precision
from engine.reuse.plan import ReuseOptions, plan_reuse
from engine.params import ProgramHint, SamplingParams
from engine.request import Request
from engine.scheduler import Scheduler, make_policy

BS = 4
GREEDY = SamplingParams(temperature=0, max_tokens=8, ignore_eos=True)


def _cached_sequence(kv: KVCacheManager, tokens: list[int], tenant: str | None = None) -> Request:
    req = Request("seed", None, tokens, GREEDY, ProgramHint(tenant=tenant))
    assert kv.allocate(req, len(tokens))
    req.num_computed_tokens = len(tokens)
    kv.commit(req)
    return req


def _manager(scope: str = "tenant", blocks: int = 64) -> KVCacheManager:
    return KVCacheManager(BlockPool(blocks), BS, content_scope=scope)


def test_span_match_finds_blocks_at_other_offsets():
    kv = _manager()
    doc = list(range(100, 124))  # 6 blocks of 4
    _cached_sequence(kv, doc)
    new = Request("new", None, [7, 8, 9] + doc + [1, 2], GREEDY)
    plan = plan_reuse(kv, new, 0, min_span=8)
    assert plan is not None
    assert plan.positions == list(range(3, 27))
    assert plan.src_positions == list(range(0, 24))  # same tokens, computed 3 positions earlier
    seed_slots = [b.block_id * BS + r for b in kv.pool.blocks if b.content_key for r in range(BS)]
    assert set(plan.src_slots) <= set(seed_slots)


def test_span_match_drops_short_runs_and_never_takes_the_last_token():
    kv = _manager()
    _cached_sequence(kv, list(range(200, 208)) + list(range(300, 316)))
    short = Request("a", None, [1] + list(range(200, 204)) + [2, 3], GREEDY)  # one 4-token block only
    assert plan_reuse(kv, short, 0, min_span=8) is None
    assert plan_reuse(kv, short, 0, min_span=4).positions == [1, 2, 3, 4]
    ends_in_doc = Request("b", None, [9] + list(range(300, 308)), GREEDY)  # 307 is the last token: computed
    assert plan_reuse(kv, ends_in_doc, 0, min_span=4).positions == list(range(1, 8))


def test_spans_extend_past_block_edges_into_their_neighbours():
    kv = _manager()
    _cached_sequence(kv, list(range(100, 132)))  # 8 blocks of 4
    unaligned = Request("u", None, [7] + list(range(102, 130)) + [1], GREEDY)
    plan = plan_reuse(kv, unaligned, 0, min_span=8)
    assert plan.positions == list(range(1, 29))  # 102..129: partial first and last blocks included
    assert plan.src_positions == list(range(2, 30))
    assert len(plan.sources) == 8


def test_span_index_is_per_tenant_unless_global():
    doc = list(range(500, 516))
    for scope, found in (("tenant", False), ("global", True)):
        kv = _manager(scope)
        _cached_sequence(kv, doc, tenant="alice")
        bob = Request("b", None, [1, 2] + doc + [3], GREEDY, ProgramHint(tenant="bob"))
        assert (plan_reuse(kv, bob, 0, min_span=4) is not None) is found
        alice = Request("a", None, [1, 2] + doc + [3], GREEDY, ProgramHint(tenant="alice"))
        assert plan_reuse(kv, alice, 0, min_span=4) is not None


def test_evicted_blocks_leave_the_content_index():
    kv = _manager(blocks=8)
    seed = _cached_sequence(kv, list(range(600, 632)))  # all 8 blocks
    kv.free(seed)
    kv.pool.allocate(8)  # reuses every block: their old content must be gone
    assert len(list(kv.pool.content.items())) == 0
    kv.pool.check_integrity()


# ---- the engine on a tiny random model ----------------------------------------------------------

def _engine(deep_tiny_model_dir, **kw) -> Engine:
    # float32 on any device: the tests compare K/V and tokens with a fresh computation to float32 rounding
    return Engine(model=str(deep_tiny_model_dir), kv_cache_tokens=4096, block_size=BS * 4, dtype="float32", **kw)


def _run(engine: Engine, prompt: list[int], tenant: str | None = None, params=GREEDY):
    engine.add_request(prompt, params, hint=ProgramHint(tenant=tenant))
    outs = []
    while engine.has_unfinished_requests():
        outs += [o for o in engine.step() if o.finished]
    return outs[-1]


def _prompts(engine: Engine) -> tuple[list[int], list[int]]:
    g = torch.Generator().manual_seed(0)
    vocab = engine.model_config.vocab_size
    doc_a = torch.randint(10, vocab, (96,), generator=g).tolist()
    doc_b = torch.randint(10, vocab, (80,), generator=g).tolist()
    header = torch.randint(10, vocab, (7,), generator=g).tolist()
    return doc_a + doc_b, header + doc_b + doc_a + [5, 6, 7]


def test_dhd_with_full_ratio_equals_full_recompute(deep_tiny_model_dir):
    ref_engine = _engine(deep_tiny_model_dir, enable_prefix_caching=False)
    seed, prompt = _prompts(ref_engine)
    ref = _run(ref_engine, prompt)
    engine = _engine(deep_tiny_model_dir, kv_reuse="dhd", kv_reuse_ratio=1.0)
    _run(engine, seed)
    out = _run(engine, prompt)
    assert engine.stats.num_reused_tokens >= 128  # both documents found at their new offsets
    assert out.num_reused_tokens == engine.stats.num_reused_tokens  # reported per request (the store keeps it)
    assert out.token_ids == ref.token_ids
    engine.pool.check_integrity()
    assert engine.pool.num_free == engine.pool.num_blocks


def test_reused_keys_are_rerotated_to_their_new_positions(deep_tiny_model_dir):
    """Layer 0's K depends only on token and position, so the copied, re-rotated K of layer 0 must
    equal a fresh computation at the new position; naive reuse keeps it."""
    engine = _engine(deep_tiny_model_dir, kv_reuse="naive", kv_reuse_ratio=0.0)
    seed, prompt = _prompts(engine)
    _run(engine, seed)
    req = engine.make_request(prompt, GREEDY)
    engine.submit(req)
    engine.step()
    plan = req.reuse
    assert plan is not None and plan.positions
    fresh = _engine(deep_tiny_model_dir, enable_prefix_caching=False)
    ref = fresh.make_request(prompt, GREEDY)
    fresh.submit(ref)
    fresh.step()
    bs = engine.config.block_size

    def k_rows(e: Engine, r: Request, layer: int) -> torch.Tensor:
        return torch.stack([e.runner.k_cache[layer, r.blocks[p // bs].block_id, :, p % bs] for p in plan.positions])

    assert torch.allclose(k_rows(engine, req, 0), k_rows(fresh, ref, 0), atol=1e-5)
    assert any(p != s for p, s in zip(plan.positions, plan.src_positions))  # they did move


def test_reuse_does_not_cross_tenants_unless_enabled(deep_tiny_model_dir):
    for cross, reused in ((False, False), (True, True)):
        engine = _engine(deep_tiny_model_dir, kv_reuse="dhd", kv_reuse_cross_tenant=cross)
        seed, prompt = _prompts(engine)
        _run(engine, seed, tenant="alice")
        _run(engine, prompt, tenant="bob")
        assert (engine.stats.num_reused_tokens > 0) is reused
        engine.pool.check_integrity()


def test_approximate_kv_never_serves_an_exact_prefix_hit(deep_tiny_model_dir):
    engine = _engine(deep_tiny_model_dir, kv_reuse="dhd", kv_reuse_ratio=0.2)
    seed, prompt = _prompts(engine)
    _run(engine, seed)
    _run(engine, prompt)  # reuses from position 7 on: only what precedes is exact
    again = _run(engine, prompt + [9, 9, 9])
    assert again.num_cached_tokens <= 7
    assert engine.stats.num_reuse_requests == 2  # it reused spans again instead


def test_selective_recompute_computes_what_the_ratio_says(deep_tiny_model_dir):
    engine = _engine(deep_tiny_model_dir, kv_reuse="cacheblend", kv_reuse_ratio=0.25)
    seed, prompt = _prompts(engine)
    _run(engine, seed)
    _run(engine, prompt)
    st = engine.stats
    new_tokens = len(prompt) - st.num_reused_tokens
    assert st.num_reuse_recomputed_tokens == new_tokens + -(-st.num_reused_tokens // 4)


def test_decode_stage_recomputes_only_when_attention_drifts(deep_tiny_model_dir):
    params = SamplingParams(temperature=0, max_tokens=12, ignore_eos=True)
    counts = {}
    for drift in (0.0, 1.01):  # never / always below the threshold
        engine = _engine(deep_tiny_model_dir, kv_reuse="dhd", kv_reuse_ratio=0.1, kv_reuse_drift=drift)
        seed, prompt = _prompts(engine)
        _run(engine, seed)
        _run(engine, prompt, params=params)
        counts[drift] = engine.runner.num_decode_recomputed
        engine.pool.check_integrity()
    assert counts[0.0] == 0
    # 3 tokens picked after each of the 11 decode steps and recomputed in the next step's forward:
    # the last step's pick goes with the finished request
    assert counts[1.01] == 3 * 10


def test_decode_stage_attention_matches_a_dense_pass_over_the_cache(deep_tiny_model_dir):
    """The decode stage keeps the remaining reused tokens' keys at its probe layer instead of
    gathering the context every step: after recomputes (drift 1.01: every step), the kept keys must
    still be the cache's, and the attention they give must be a dense pass's over all the keys."""
    engine = _engine(deep_tiny_model_dir, kv_reuse="dhd", kv_reuse_ratio=0.25, kv_reuse_drift=1.01)
    reuser = engine.runner.reuser
    seed, prompt = _prompts(engine)
    _run(engine, seed)
    req = engine.make_request(prompt, SamplingParams(temperature=0, max_tokens=8, ignore_eos=True))
    engine.submit(req)
    for _ in range(4):  # the prefill, then three decode steps (each picking 3 tokens for the next)
        engine.step()
    plan, layer, n, bs = req.reuse, reuser.decode_probe_layer(), req.num_tokens, reuser.bs
    assert engine.runner.num_decode_recomputed == 6 and plan.pending[0].shape[0] == 3
    assert plan.keys.shape[-1] == plan.remaining.shape[0]
    rows = torch.stack([engine.runner.k_cache[layer, req.blocks[p // bs].block_id, :, p % bs]
                        for p in plan.remaining.tolist()])  # [R, KVH, D]
    torch.testing.assert_close(plan.keys, rows.permute(1, 2, 0), atol=0, rtol=0)
    cfg = engine.model_config
    q = torch.randn(cfg.num_heads, cfg.head_dim, generator=torch.Generator().manual_seed(5))
    slots = torch.tensor([req.blocks[p // bs].block_id * bs + p % bs for p in range(n)])
    dense = reuser._attention(layer, q[None], torch.tensor([n - 1]), slots)[1][plan.remaining]
    torch.testing.assert_close(reuser._attention_to_remaining(req, plan, q), dense, atol=1e-6, rtol=1e-5)


def test_decode_stage_recompute_in_the_next_forward_equals_a_pass_of_its_own(deep_tiny_model_dir):
    """The reused tokens a decode step picks join the next step's forward past the check layer; the
    K/V they leave must be what a separate pass over the same cache computes for them."""
    engine = _engine(deep_tiny_model_dir, kv_reuse="dhd", kv_reuse_ratio=0.25, kv_reuse_drift=1.01)
    reuser, runner = engine.runner.reuser, engine.runner
    seed, prompt = _prompts(engine)
    _run(engine, seed)
    req = engine.make_request(prompt, SamplingParams(temperature=0, max_tokens=8, ignore_eos=True))
    engine.submit(req)
    engine.step()  # the prefill
    engine.step()  # a decode step: picks 3 reused tokens
    q_pos, hidden = req.reuse.pending
    old = runner.k_cache.clone()
    engine.step()  # they join this step
    assert req.reuse.pending is not None and not torch.equal(req.reuse.pending[0], q_pos)  # the next pick
    bs, c, layers = reuser.bs, reuser.options.full_layers, len(reuser.model.layers)
    slots = torch.tensor([req.blocks[p // bs].block_id * bs + p % bs for p in q_pos.tolist()])
    folded = [reuser._cache_rows(cache, i, slots).clone() for cache in (runner.k_cache, runner.v_cache)
              for i in range(c, layers)]
    assert not torch.equal(folded[0], reuser._cache_rows(old, c, slots))  # they were rewritten
    ctx = req.num_computed_tokens
    span = PrefillSpan(0, q_pos.shape[0], ctx, reuser._tiles(req, ctx), q_pos=q_pos)
    with torch.inference_mode():
        reuser._layers(hidden, q_pos, slots, span, range(c, layers))
    alone = [reuser._cache_rows(cache, i, slots) for cache in (runner.k_cache, runner.v_cache)
             for i in range(c, layers)]
    for a, b in zip(folded, alone):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)

# ---- the cache-aware policy ----------------------------------------------------------------------

def test_cache_aware_policy_serves_the_least_prefill_work_first():
    """A short cold prompt goes ahead of a long prompt that is partly cached but leaves more to
    compute (hit-rate order alone would put the long one first); the work counts reused tokens at
    the share selective recompute spends on them."""
    kv = _manager(blocks=64)
    doc = list(range(700, 764))
    _cached_sequence(kv, doc)
    now = [100.0]
    sched = Scheduler(kv, make_policy("cache-aware"), 8, 1024, clock=lambda: now[0],
                      reuse=ReuseOptions("dhd", 0.2), reused_token_work=0.25)
    long_warm = Request("long", None, [1, 2, 3] + doc + list(range(900, 1100)), GREEDY, arrival_time=100.0)
    short_cold = Request("short", None, list(range(1200, 1240)), GREEDY, arrival_time=100.0)
    for r in (long_warm, short_cold):
        sched.add(r)
    assert long_warm.hit_rate > short_cold.hit_rate == 0.0
    assert long_warm.prefill_work == pytest.approx(3 + 200 + 0.25 * 64)
    assert short_cold.prefill_work == 40
    sched.now = 100.0
    assert min([long_warm, short_cold], key=lambda r: sched.policy.key(r, sched)) is short_cold
    kv.pool.check_integrity()


def test_cache_aware_policy_orders_by_work_and_ages():
    kv = _manager(blocks=64)
    doc = list(range(700, 764))
    _cached_sequence(kv, doc)
    now = [100.0]
    sched = Scheduler(kv, make_policy("cache-aware"), 8, 1024, clock=lambda: now[0])
    cold = Request("cold", None, list(range(900, 1500)), GREEDY, arrival_time=99.0)  # 600 tokens
    warm = Request("warm", None, doc + [1], GREEDY, arrival_time=100.0)
    for r in (cold, warm):
        sched.add(r)
    assert warm.hit_rate > 0.9 and cold.hit_rate == 0.0
    assert (warm.prefill_work, cold.prefill_work) == (1, 600)
    policy = sched.policy
    first = lambda: min([cold, warm], key=lambda r: policy.key(r, sched))  # noqa: E731
    sched.now = 100.0
    assert first() is warm
    # aging: 600 tokens are 600/1024 of a step, and each aging_s of wait is worth a step, so a cheap
    # request arriving 0.6 aging_s after the cold one no longer overtakes it
    warm.metrics.arrival_time = sched.now = 99.0 + 0.6 * policy.aging_s
    assert first() is cold
    warm.metrics.arrival_time = 100.0
    warm.prefill_work = 5000  # whatever it costs, once cold has waited its bound it goes first
    sched.now = 99.0 + policy.max_wait_s
    assert first() is cold


def test_cache_aware_keeps_a_long_prefill_out_of_a_cheap_ones_step():
    """Every request of a step gets its first token when the step ends: cache-aware admits the cheap
    prefills alone and the long one a step later (unless it is overdue); fcfs admits them together."""
    doc = list(range(700, 764))
    now = [100.0]

    def first_step(policy: str, cold_arrival: float = 99.0) -> list[str]:
        kv = _manager(blocks=512)
        _cached_sequence(kv, doc)
        sched = Scheduler(kv, make_policy(policy), 8, 4096, clock=lambda: now[0])
        reqs = [Request("cold", None, list(range(900, 1500)), GREEDY, arrival_time=cold_arrival),  # 600 tokens
                Request("warm1", None, doc + [1], GREEDY, arrival_time=100.0),  # 1 token of work
                Request("warm2", None, doc + [2], GREEDY, arrival_time=100.0)]
        for r in reqs:
            sched.add(r)
        return sorted(r.request_id for r in sched.schedule().requests)

    assert first_step("fcfs") == ["cold", "warm1", "warm2"]
    assert first_step("cache-aware") == ["warm1", "warm2"]  # equal work joins; 600 > 2 waits
    overdue = 100.0 - make_policy("cache-aware").max_wait_s
    assert first_step("cache-aware", cold_arrival=overdue) == ["cold", "warm1", "warm2"]
    assert first_step("program+cache-aware") == ["warm1", "warm2"]


def test_program_policy_composes_with_cache_aware():
    policy = make_policy("program+cache-aware")
    assert policy.then is not None and policy.needs_prefill_estimate
    with pytest.raises(ValueError):
        make_policy("cache-unaware")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_probe_attention_matches_a_dense_reference(deep_tiny_model_dir, dtype):
    """DHD's probe takes its output and its scores from one chunked pass (Reuser._attention), its
    matmuls in the queries' dtype: both must equal a dense causal softmax over the same keys, to
    float32 rounding, or to bfloat16's (8 bits of mantissa) for bfloat16 queries."""
    engine = _engine(deep_tiny_model_dir, kv_reuse="dhd")
    reuser, cfg = engine.runner.reuser, engine.model_config
    n, layer = 150, 1
    g = torch.Generator().manual_seed(3)
    k_cache, v_cache = reuser.k_cache, reuser.v_cache
    slots = torch.randperm(k_cache.shape[1] * BS * 4, generator=g)[:n]  # scattered over the cache
    k = torch.randn(n, cfg.num_kv_heads, cfg.head_dim, generator=g)
    v = torch.randn(n, cfg.num_kv_heads, cfg.head_dim, generator=g)
    bs = reuser.bs
    k_cache[layer][slots // bs, :, slots % bs] = k
    v_cache[layer][slots // bs, :, slots % bs] = v
    q_pos = torch.sort(torch.randperm(n - 1, generator=g)[:70]).values
    q_pos = torch.cat([q_pos, torch.tensor([n - 1])])  # sparse queries, the last token last
    q = torch.randn(q_pos.shape[0], cfg.num_heads, cfg.head_dim, generator=g)
    valid = torch.rand(n, generator=g) > 0.2  # keys not written yet are left out (DHD's probe)
    valid[0] = True  # every query sees one key at least
    tol = {"atol": 1e-5, "rtol": 1e-5} if dtype == torch.float32 else {"atol": 3e-2, "rtol": 3e-2}
    for mask in (None, valid):
        out, received, last = reuser._attention(layer, q.to(dtype), q_pos, slots, chunk=16, valid=mask)
        assert out.dtype == dtype and received.dtype == last.dtype == torch.float32
        group = cfg.num_heads // cfg.num_kv_heads
        kr, vr = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)  # [n, H, D]
        s = torch.einsum("mhd,nhd->hmn", q, kr) * cfg.head_dim ** -0.5
        s.masked_fill_(torch.arange(n)[None, None, :] > q_pos[None, :, None], float("-inf"))
        if mask is not None:
            s.masked_fill_(~mask, float("-inf"))
            assert received[~mask].abs().max() == 0
        p = torch.softmax(s, dim=-1)  # [H, m, n]
        torch.testing.assert_close(out.float(), torch.einsum("hmn,nhd->mhd", p, vr), **tol)
        torch.testing.assert_close(received, p.sum(dim=(0, 1)), atol=tol["atol"] * 10, rtol=tol["rtol"])
        torch.testing.assert_close(last, p[:, -1], atol=tol["atol"] / 10, rtol=tol["rtol"])


def test_probe_precision_follows_the_option():
    f32, bf16 = torch.float32, torch.bfloat16
    assert probe_precision("model", f32, torch.device("cpu")) == f32
    assert probe_precision("float32", bf16, torch.device("cpu")) == f32
    assert probe_precision("bfloat16", f32, torch.device("cpu")) == bf16
    assert probe_precision("auto", f32, torch.device("cpu")) in (f32, bf16)
    with pytest.raises(ValueError, match="kv_reuse_probe_dtype"):
        ReuseOptions("dhd", probe_dtype="half")


def test_low_precision_probe_selects_what_float32_selects(deep_tiny_model_dir, monkeypatch):
    """The run-ahead only weights the selection, so it may compute in bfloat16: its weights must be
    float32's to bfloat16 rounding and pick (nearly) the same tokens; where it picks the same, the KV
    the prefill leaves is float32's bit for bit (the recompute rewrites the tail's provisional K/V).
    Its layers are bfloat16 copies; the model's stay float32."""
    weights, selected, kv = {}, {}, {}
    probe = Reuser._probe

    def keep(self, *args):
        received, last = probe(self, *args)
        weights[self.probe_dtype] = received
        return received, last

    monkeypatch.setattr(Reuser, "_probe", keep)
    for dtype in ("float32", "bfloat16"):
        engine = _engine(deep_tiny_model_dir, kv_reuse="dhd", kv_reuse_ratio=0.25, kv_reuse_probe_dtype=dtype)
        seed, prompt = _prompts(engine)
        _run(engine, seed)
        req = engine.make_request(prompt, GREEDY)
        engine.submit(req)
        engine.step()
        reused = set(req.reuse.positions)
        selected[dtype] = reused - set(req.reuse.remaining.tolist())
        reuser, bs = engine.runner.reuser, engine.config.block_size
        rows = [(req.blocks[p // bs].block_id, p % bs) for p in range(len(prompt))]
        kv[dtype] = torch.stack([torch.stack([engine.runner.k_cache[:, b, :, r], engine.runner.v_cache[:, b, :, r]])
                                 for b, r in rows])
        assert reuser.probe_dtype == getattr(torch, dtype)
        low = {i: layer.qkv.dtype for i, layer in reuser._probe_copies.items()}
        assert low == ({} if dtype == "float32" else {i: torch.bfloat16 for i in reuser.options.probe(4)})
        assert all(layer.qkv.dtype == torch.float32 for layer in reuser.model.layers)
    f32, bf16 = weights[torch.float32], weights[torch.bfloat16]
    assert (bf16 - f32).abs().sum() / f32.abs().sum() < 0.01  # 0.0007 measured
    same = len(selected["float32"] & selected["bfloat16"])
    assert same >= 0.9 * len(selected["float32"]) and len(selected["float32"]) == len(selected["bfloat16"])
    if selected["float32"] == selected["bfloat16"]:  # as here (44 of 44); a near tie could flip one
        torch.testing.assert_close(kv["bfloat16"], kv["float32"], atol=0, rtol=0)


def test_dhd_probe_reads_only_keys_already_written(deep_tiny_model_dir):
    """DHD's tail runs ahead through the probe layers before the other new tokens (here the header
    before the reused documents) have KV there: with the cache poisoned by NaN beforehand, the
    selection and every K/V the prefill leaves must be those of a clean cache."""
    caches = []
    for poison in (False, True):
        engine = _engine(deep_tiny_model_dir, kv_reuse="dhd", kv_reuse_ratio=0.25, kv_reuse_probe_layers=1)
        if poison:
            engine.runner.k_cache.fill_(float("nan"))
            engine.runner.v_cache.fill_(float("nan"))
        seed, prompt = _prompts(engine)
        _run(engine, seed)
        req = engine.make_request(prompt, GREEDY)
        engine.submit(req)
        engine.step()
        assert req.reuse is not None and req.reuse.probe_tokens == 3  # the tail [5, 6, 7], one probe layer
        bs = engine.config.block_size
        rows = [(req.blocks[p // bs].block_id, p % bs) for p in range(len(prompt))]
        caches.append(torch.stack([torch.stack([engine.runner.k_cache[:, b, :, r], engine.runner.v_cache[:, b, :, r]])
                                   for b, r in rows]))
    assert not caches[1].isnan().any()
    torch.testing.assert_close(caches[1], caches[0], atol=0, rtol=0)


def test_dhd_probe_layers_default_to_every_layer_after_the_check_layer():
    assert ReuseOptions("dhd").probe(30) == range(2, 30)
    assert ReuseOptions("dhd", probe_layers=6).probe(30) == range(2, 8)
    assert ReuseOptions("dhd", check_layer=3, probe_layers=6).probe(8) == range(4, 8)
    with pytest.raises(ValueError, match="kv_reuse_probe_layers"):
        ReuseOptions("dhd", probe_layers=0)
