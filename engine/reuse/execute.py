"""KV reuse execution: the `Reuser` carries out a `ReusePlan` (engine.reuse.plan) on one model
runner's model and KV cache: the KV copy with K re-rotated, DHD's probe and selection, the sparse
layers over the selected tokens, and the decode stage. See `engine.reuse` for the method.
"""

from __future__ import annotations

import copy
import math
from dataclasses import replace

import torch

from engine.attention import AttentionBackend, AttentionMetadata, PrefillSpan
from engine.model import LayerHook, LlamaModel, rope_cos_sin
from engine.request import Request
from engine.reuse.plan import ReuseOptions, ReusePlan
from kernels import cpu_features
from kernels.kv_copy import copy_reused_kv_
from kernels.kv_store import store_kv_ref


def probe_precision(name: str, model_dtype: torch.dtype, device: torch.device) -> torch.dtype:
    """The dtype DHD's run-ahead computes in. Its output only weights the selection (it never enters
    the KV that is kept, nor the logits), so `auto` takes bfloat16 wherever bfloat16 matmuls are
    fast: a CUDA device, or a CPU with bfloat16 matmul hardware, per kernels/cpu_features.py (on this project's AVX512-BF16
    EPYC, ~1.8x for the tail's linear layers and ~3x for its attention's matmuls against float32);
    else the model's dtype."""
    if name == "model":
        return model_dtype
    if name != "auto":
        return getattr(torch, name)
    if device.type == "cuda":
        fast = torch.cuda.is_bf16_supported()
    else:
        fast = device.type == "cpu" and cpu_features.native_bf16()
    return torch.bfloat16 if fast else model_dtype


class DecodeStageHook(LayerHook):
    """The decode stage's part in a step's forward, through the model's generic layer hook: keeps the
    queries of the probed decode rows (`probe_idx`, flat) at `probe_layer`, and, given `join_hidden`,
    appends the pending recomputes as rows that enter at `join_layer` with their saved hidden states,
    after the step's tokens: from that layer on the backend reads `join_meta`, the step's metadata with
    their slots added and each of them as one more decode entry (a query at its own position, keys up
    to it)."""

    def __init__(self, inv_freq: torch.Tensor, probe_layer: int, probe_idx: torch.Tensor | None,
                 join_layer: int = -1, join_hidden: torch.Tensor | None = None,
                 join_positions: torch.Tensor | None = None, join_meta: AttentionMetadata | None = None):
        self.inv_freq, self.probe_layer, self.probe_idx = inv_freq, probe_layer, probe_idx
        self.join_layer, self.join_hidden, self.join_positions, self.join_meta = (
            join_layer, join_hidden, join_positions, join_meta)
        self.probe_q: torch.Tensor | None = None  # [len(probe_idx), H, D] once the probe layer ran

    @property
    def num_joining(self) -> int:
        return 0 if self.join_positions is None else int(self.join_positions.shape[0])

    def before_layer(self, index, x, cos, sin, attn):
        if self.join_hidden is None or index != self.join_layer:
            return x, cos, sin
        jc, js = rope_cos_sin(self.inv_freq, self.join_positions, x.dtype)
        attn.begin_step(self.join_meta)
        return torch.cat([x, self.join_hidden.to(x.dtype)]), torch.cat([cos, jc]), torch.cat([sin, js])

    def after_qkv(self, index, q):
        if self.probe_idx is not None and index == self.probe_layer:
            self.probe_q = q.index_select(0, self.probe_idx)


def _slots(req: Request, positions: torch.Tensor, bs: int) -> torch.Tensor:
    ids = torch.tensor([b.block_id for b in req.blocks], dtype=torch.int64, device=positions.device)
    return ids[positions // bs] * bs + positions % bs


class Reuser:
    """Runs reuse prefills and the decode stage for one model runner's model and KV cache."""

    def __init__(self, model: LlamaModel, attn: AttentionBackend, options: ReuseOptions, device: torch.device):
        self.model, self.attn, self.options, self.device = model, attn, options, device
        self.k_cache, self.v_cache = attn.k_cache, attn.v_cache
        self.bs = attn.block_size
        # the dtype DHD's probe computes in; the probe layers in it are made once here (in bfloat16,
        # half a float32 layer's memory each), none when it is the model's own. Setting probe_dtype
        # back to the model's makes the probe use the model's layers (the bench compares the two).
        self.probe_dtype = probe_precision(options.probe_dtype, model.embed.dtype, device)
        low = options.method == "dhd" and self.probe_dtype != model.embed.dtype
        self._probe_copies = {i: copy.deepcopy(model.layers[i]).to(self.probe_dtype)
                              for i in (options.probe(len(model.layers)) if low else ())}

    def _tensor(self, data) -> torch.Tensor:
        return torch.tensor(data, dtype=torch.int64, device=self.device)

    def _tiles(self, req: Request, n: int) -> torch.Tensor:
        """Tile rows of the blocks holding req's first n tokens."""
        return self.attn.tile_rows(self._tensor([b.block_id for b in req.blocks[: -(-n // self.bs)]]))

    def _cache_rows(self, cache: torch.Tensor, layer: int, slots: torch.Tensor) -> torch.Tensor:
        """[len(slots), KVH, D] of `cache[layer]` at flat slots."""
        c = cache[layer]  # [NB, KVH, bs, D]
        return c[slots // self.bs, :, slots % self.bs]

    def copy(self, req: Request, plan: ReusePlan) -> None:
        """Copies the plan's source KV into the request's slots, K re-rotated, in the layers >= c
        only: layers < c are computed afresh for every token (the check layer reads the cached
        values from the sources themselves)."""
        dst_pos = self._tensor(plan.positions)
        layers = range(self.options.computed_layers(len(self.model.layers)), len(self.model.layers))
        copy_reused_kv_(self.k_cache, self.v_cache, self._tensor(plan.src_slots), _slots(req, dst_pos, self.bs),
                        dst_pos - self._tensor(plan.src_positions), self.model.inv_freq, layers)
        plan.copied = True

    def _layers(self, x: torch.Tensor, pos: torch.Tensor, slots: torch.Tensor, span: PrefillSpan,
                layers: range) -> torch.Tensor:
        self.attn.begin_step(AttentionMetadata(slots, [span], None, None, None))
        cos, sin = rope_cos_sin(self.model.inv_freq, pos, x.dtype)
        for i in layers:
            x = self.model.layers[i](x, cos, sin, self.attn)
        return x

    def _attention(self, layer: int, q: torch.Tensor, q_pos: torch.Tensor, slots: torch.Tensor,
                   chunk: int = 64, valid: torch.Tensor | None = None
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Causal softmax attention of queries q [m, H, D] at ascending q_pos over the KV at `slots`
        (positions 0..n-1), matmuls in q's dtype and softmax in float32, in chunks of queries, each
        over the keys up to its last query: the output [m, H, D] (q's dtype), the attention each key
        receives summed over queries and heads [n], and the last query's attention [H, n] (float32);
        keys where `valid` [n] is False are left out."""
        dt = q.dtype
        k = self._cache_rows(self.k_cache, layer, slots).to(dt).permute(1, 2, 0)  # [KVH, D, n]
        v = self._cache_rows(self.v_cache, layer, slots).to(dt).transpose(0, 1)  # [KVH, n, D]
        kvh, hd, n = k.shape
        group = q.shape[1] // kvh
        qg = (q * hd ** -0.5).view(-1, kvh, group, hd).transpose(0, 1)  # [KVH, m, G, D]: a kv head's queries together
        kv_pos = torch.arange(n, device=q.device)
        received = torch.zeros(n, device=q.device)
        out = torch.empty(q.shape[0], kvh, group, hd, dtype=dt, device=q.device)
        for c0 in range(0, q.shape[0], chunk):
            pos = q_pos[c0:c0 + chunk]
            mc, lo, hi = pos.shape[0], int(pos[0]), int(pos[-1]) + 1
            s = torch.matmul(qg[:, c0:c0 + chunk].reshape(kvh, mc * group, hd), k[:, :, :hi]).view(kvh, mc, group, hi)
            s[..., lo:].masked_fill_((kv_pos[lo:hi] > pos[:, None])[None, :, None, :], float("-inf"))
            if valid is not None:
                s.masked_fill_(~valid[:hi], float("-inf"))
            probs = torch.softmax(s, dim=-1, dtype=torch.float32)
            received[:hi] += probs.view(-1, hi).sum(dim=0)
            o = torch.matmul(probs.view(kvh, mc * group, hi).to(dt), v[:, :hi])
            out[c0:c0 + chunk] = o.view(kvh, mc, group, hd).transpose(0, 1)
        last = torch.zeros(q.shape[1], n, device=q.device)
        last[:, :hi] = probs[:, -1].reshape(q.shape[1], hi)
        return out.view(q.shape), received, last

    def _probe(self, req: Request, plan: ReusePlan, x: torch.Tensor, pos: torch.Tensor, reused: torch.Tensor,
               layers: range) -> tuple[torch.Tensor, torch.Tensor]:
        """DHD's weights: the prompt's tail (its tokens after the last reused one, which are computed
        in any case; at least the last token), hidden states x[tail] after the check layer, runs
        ahead through `layers` over the copied KV, before any selection. Returns the attention each
        key receives from it, summed over the tail's queries, the heads and those layers [n], and
        the last token's attention at the decode stage's probe layer [H, n]. Keys not written yet
        (tokens without a cached value before the tail) are left out. The tail's KV written here is
        provisional: it is in the recompute set, which writes it again. It computes in `probe_dtype`."""
        n = req.num_tokens
        tail = (pos > pos[reused[-1]]).nonzero().squeeze(1)
        xt, tp = x[tail].to(self.probe_dtype), pos[tail]
        all_slots = _slots(req, torch.arange(n, device=self.device), self.bs)
        valid = torch.zeros(n, dtype=torch.bool, device=self.device)
        valid[: int(pos[0])] = True  # the exact cached prefix
        valid[pos[reused]] = True
        valid[tp] = True
        cos, sin = rope_cos_sin(self.model.inv_freq, tp, xt.dtype)
        received = torch.zeros(n, device=self.device)
        ref_layer = self.decode_probe_layer()
        for i in layers:
            layer = self.model.layers[i] if self.probe_dtype == self.model.embed.dtype else self._probe_copies[i]
            q, k, v = layer.qkv_proj(xt, cos, sin)
            store_kv_ref(k, v, self.k_cache[i], self.v_cache[i], all_slots[tp])
            o, r, last = self._attention(i, q, tp, all_slots, valid=valid)
            received += r
            if i == ref_layer:
                reference = last
            xt = layer.finish(xt, o)
        plan.probe_tokens = len(layers) * int(tp.shape[0])
        plan.probe_keys = len(layers) * int((tp + 1).sum())
        return received, reference

    @torch.inference_mode()
    def prefill(self, req: Request, plan: ReusePlan, start: int) -> torch.Tensor:
        """Computes positions [start, n) of req with the plan's KV reused; returns the last token's logits [1, V]."""
        opts, model, bs = self.options, self.model, self.bs
        n = req.num_tokens
        if not plan.copied:
            self.copy(req, plan)
        pos = torch.arange(start, n, device=self.device)
        slots = _slots(req, pos, bs)
        tiles = self._tiles(req, n)
        full_span = PrefillSpan(0, n - start, start, tiles if start else None)  # layers < c: every token
        reused = self._tensor(plan.positions) - start  # local indices into pos
        x = model.embed[self._tensor(req.token_ids[start:n])]
        c = opts.computed_layers(len(model.layers))
        x = self._layers(x, pos, slots, full_span, range(c - 1))
        is_new = torch.ones(n - start, dtype=torch.bool, device=self.device)
        is_new[reused] = False
        is_new[-1] = True
        score = torch.zeros(reused.shape[0], device=self.device)
        if c > 0:  # the check layer: fresh K/V for every token, scored against the cached values
            layer = model.layers[c - 1]
            cos, sin = rope_cos_sin(model.inv_freq, pos, x.dtype)
            self.attn.begin_step(AttentionMetadata(slots, [full_span], None, None, None))
            q, k, v = layer.qkv_proj(x, cos, sin)
            v_old = self._cache_rows(self.v_cache, c - 1, self._tensor(plan.src_slots)).float()
            score = (v[reused].float() - v_old).abs().sum(dim=(1, 2))
            x = layer.finish(x, self.attn.forward(c - 1, q, k, v))
        probe = opts.probe(len(model.layers))
        # (at ratio 1 every token is recomputed: no weights)
        weighted = opts.method == "dhd" and c > 0 and len(probe) > 0 and opts.ratio < 1
        if weighted:
            received, last = self._probe(req, plan, x, pos, reused, probe)
            score = score * received[start:][reused]
        keep = math.ceil(opts.ratio * reused.shape[0]) if opts.method != "naive" else 0
        if keep:
            is_new[reused[torch.topk(score, min(keep, reused.shape[0])).indices]] = True
        sel = is_new.nonzero().squeeze(1)
        plan.num_recomputed = int(sel.shape[0])
        if weighted and opts.drift > 0:
            rest = reused[~is_new[reused]]
            plan.remaining = rest + start
            plan.hidden = x[rest].clone()
            # their K at the decode probe layer: copied, and never written again while they remain
            plan.keys = self._cache_rows(self.k_cache, self.decode_probe_layer(),
                                         slots[rest]).float().permute(1, 2, 0).contiguous()
            last = last.sum(dim=0)[plan.remaining]  # the last prompt token's attention
            plan.reference = last / last.sum().clamp_min(1e-30)
        x = x[sel]
        q_pos = pos[sel]
        plan.attended_keys = int((q_pos + 1).sum())
        span = PrefillSpan(0, sel.shape[0], start, tiles, q_pos=q_pos)
        x = self._layers(x, q_pos, slots[sel], span, range(c, len(model.layers)))
        return model.logits(x[-1:])

    def decode_probe_layer(self) -> int:
        """The layer whose decode query the decode stage compares: the last probe layer."""
        return self.options.probe(len(self.model.layers))[-1]

    def _attention_to_remaining(self, req: Request, plan: ReusePlan, q: torch.Tensor) -> torch.Tensor:
        """The attention the newest token's query q [H, D] at the decode probe layer pays each of
        plan.remaining [R], summed over heads, each head's softmax over all the request's keys: the
        remaining ones from `plan.keys`, the others (exact prefix, recomputed, new and generated
        tokens) read from the cache. Keeping the remaining keys spares a gather of the whole
        context per step."""
        other = torch.ones(req.num_tokens, dtype=torch.bool, device=self.device)
        other[plan.remaining] = False  # called right after the forward: every token has its KV in the cache
        k = self._cache_rows(self.k_cache, self.decode_probe_layer(), _slots(req, other.nonzero().squeeze(1), self.bs))
        kvh, hd, r = plan.keys.shape
        qg = q.float().view(kvh, -1, hd) * hd ** -0.5  # [KVH, G, D]: a kv head's query heads together
        s = torch.cat([torch.matmul(qg, plan.keys), torch.matmul(qg, k.float().permute(1, 2, 0))], dim=-1)
        return torch.softmax(s, dim=-1)[..., :r].sum(dim=(0, 1))

    @torch.inference_mode()
    def after_decode(self, req: Request, q: torch.Tensor) -> None:
        """Decode stage for one request: q [H, D] is its newest token's query at the last probe layer.
        When attention has drifted, picks a few reused tokens for the next step to recompute."""
        plan, opts = req.reuse, self.options
        if plan is None or plan.remaining is None or plan.remaining.numel() == 0:
            return
        now = self._attention_to_remaining(req, plan, q)
        now = now / now.sum().clamp_min(1e-30)
        if torch.nn.functional.cosine_similarity(now, plan.reference, dim=0) >= opts.drift:
            return
        pick = torch.topk(now, min(opts.decode_tokens, now.shape[0])).indices.sort().values
        plan.pending = (plan.remaining[pick], plan.hidden[pick])  # the runner consumes it in the request's next step
        keep = torch.ones(plan.remaining.shape[0], dtype=torch.bool, device=self.device)
        keep[pick] = False
        plan.remaining, plan.hidden, plan.keys = plan.remaining[keep], plan.hidden[keep], plan.keys[..., keep]
        ref = now[keep]
        plan.reference = ref / ref.sum().clamp_min(1e-30)

    def step_hook(self, probed: list[tuple[Request, int]], joining: list[tuple[Request, int]],
                  meta: AttentionMetadata, flat: int) -> DecodeStageHook | None:
        """The hook for a step whose decode rows include requests that hold reused KV: `probed`
        (request, flat index of its decode token), whose queries the decode stage reads after the
        forward; `joining` (request, its decode row in `meta`), those with a pending recompute. The
        batch has `flat` tokens. Each pending recompute becomes one more decode entry, a query at its
        own position over its request's blocks, keys up to it: the backend's decode path reads them
        in place (the C kernel on a CPU), where a prefill span would gather the request's whole KV in
        every layer (+13 ms a step measured)."""
        if not probed and not joining:
            return None
        probe_idx = self._tensor([i for _, i in probed]) if probed else None
        hook = DecodeStageHook(self.model.inv_freq, self.decode_probe_layer(), probe_idx)
        if not joining:
            return hook
        hidden, positions, slots, tables = [], [], [], []
        for req, row in joining:
            plan = req.reuse
            q_pos, h = plan.pending
            plan.pending = None
            hidden.append(h)
            positions.append(q_pos)
            slots.append(_slots(req, q_pos, self.bs))
            tables.append(meta.decode_block_tables[row].expand(q_pos.shape[0], -1))
        positions = torch.cat(positions)
        idx = torch.arange(flat, flat + positions.shape[0], device=self.device)
        hook.join_meta = replace(meta, slot_mapping=torch.cat([meta.slot_mapping, *slots]),
                                 decode_token_idx=torch.cat([meta.decode_token_idx, idx]),
                                 decode_block_tables=torch.cat([meta.decode_block_tables, *tables]),
                                 decode_ctx_lens=torch.cat([meta.decode_ctx_lens, positions + 1]))
        hook.join_layer = self.options.computed_layers(len(self.model.layers))
        hook.join_hidden, hook.join_positions = torch.cat(hidden), positions
        return hook
