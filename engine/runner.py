"""Model runner: turns a scheduled batch into flat tensors, runs the model once, returns logits.

It owns the model, the KV cache tensors and the attention backend. Per step it builds the flat
token/position arrays, the slot mapping and the attention metadata (decodes batched, prefill
spans listed), and the indices of the tokens whose logits are needed (each request's last
scheduled token, when that token completes the request's known tokens). A request admitted with a
KVShare reuse plan is prefilled on its own by `engine.reuse.execute.Reuser` after the batched forward.
Requests that hold reused KV have their newest query at the decode probe layer kept for KVShare's
decode stage, and the reused tokens it picked last step join this step's forward past the check layer.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from engine.attention import AttentionMetadata, PrefillSpan, make_attention_backend
from engine.config import ModelConfig
from engine.cuda_graphs import make_decode_graphs
from engine.model import LayerHook, LlamaModel
from engine.request import Request
from engine.reuse.execute import Reuser
from engine.reuse.plan import ReuseOptions
from kernels import cpu_features, onednn

logger = logging.getLogger("engine")


@dataclass(slots=True)
class StepInputs:
    """One step's flat model inputs, built from the scheduled requests (`ModelRunner._prepare`)."""

    tokens: list[int] = field(default_factory=list)
    positions: list[int] = field(default_factory=list)
    slots: list[int] = field(default_factory=list)  # KV cache slot of each token
    decode_idx: list[int] = field(default_factory=list)  # flat index of each decode row's token
    logits_idx: list[int] = field(default_factory=list)  # flat tokens whose logits are sampled
    sampling: list[Request] = field(default_factory=list)  # the requests those logits belong to
    reusing: list[Request] = field(default_factory=list)  # KVShare prefills, run after the forward
    probed: list[tuple[Request, int]] = field(default_factory=list)  # decode rows whose query the decode stage reads
    joining: list[tuple[Request, int]] = field(default_factory=list)  # decode rows with a pending recompute
    meta: AttentionMetadata | None = None


class ModelRunner:
    def __init__(self, model: LlamaModel, cfg: ModelConfig, num_blocks: int, block_size: int,
                 device: torch.device, dtype: torch.dtype, attention_backend: str = "auto",
                 reuse: ReuseOptions | None = None):
        self.model, self.cfg = model, cfg
        self.device, self.block_size = device, block_size
        shape = (cfg.num_layers, num_blocks, cfg.num_kv_heads, block_size, cfg.head_dim)
        self.k_cache = torch.zeros(shape, dtype=dtype, device=device)
        self.v_cache = torch.zeros(shape, dtype=dtype, device=device)
        self.attn = make_attention_backend(attention_backend, self.k_cache, self.v_cache)
        # Decode-only steps replay CUDA graphs with a Triton backend on CUDA (engine/cuda_graphs.py); None elsewhere.
        max_blocks = -(-min(cfg.max_position_embeddings, num_blocks * block_size) // block_size)
        self.graphs = make_decode_graphs(model, self.attn, max_blocks)
        if self.graphs is not None:  # CUDA with the Triton backend: fused norm/RoPE/SiLU kernels too
            model.use_fused_kernels()
        self.reuser = Reuser(model, self.attn, reuse, device) if reuse is not None else None
        self.last_forward_s = 0.0
        self.num_decode_recomputed = 0  # reused tokens recomputed by KVShare's decode stage
        _announce(self.describe())

    def describe(self) -> str:
        """One line: the dtype and the kernels this runner chose (logged once at start-up)."""
        model, dtype = self.model, str(self.k_cache.dtype).removeprefix("torch.")
        matmul = {F.linear: "torch", onednn.linear: "oneDNN, packed weights"}.get(model.linear, repr(model.linear))
        fused = "Triton" if any(layer.fused for layer in model.layers) else "torch"
        where = f"cpu ({cpu_features.describe()})" if self.device.type == "cpu" else str(self.device)
        return (f"engine: {where}, dtype {dtype} (weights and KV cache), matmul {matmul}, "
                f"attention {type(self.attn).__name__}, norm/RoPE/SiLU {fused}"
                + (", CUDA graphs" if self.graphs is not None else ""))

    @staticmethod
    def kv_bytes_per_token(cfg: ModelConfig, dtype: torch.dtype) -> int:
        return 2 * cfg.num_layers * cfg.num_kv_heads * cfg.head_dim * torch.empty((), dtype=dtype).element_size()

    def _tensor(self, data) -> torch.Tensor:
        return torch.tensor(data, dtype=torch.int64, device=self.device)

    def _forward(self, meta: AttentionMetadata, tokens: list[int], positions: list[int],
                 logits_idx: list[int], hook: LayerHook | None) -> torch.Tensor:
        token_ids, pos, idx = self._tensor(tokens), self._tensor(positions), self._tensor(logits_idx)
        if self.graphs is not None and hook is None and self.graphs.can_run(meta):
            return self.graphs.run(token_ids, pos, meta).index_select(0, idx)
        return self.model(token_ids, pos, idx, self.attn, hook)

    def _prepare(self, reqs: list[Request], num_new: list[int]) -> StepInputs:
        """The step's flat inputs: each request's scheduled tokens as a decode row or a prefill span."""
        bs = self.block_size
        step = StepInputs()
        dec_tables: list[list[int]] = []
        dec_lens: list[int] = []
        prefills: list[PrefillSpan] = []
        for req, n in zip(reqs, num_new):
            start = req.num_computed_tokens
            flat = len(step.tokens)
            ids = [b.block_id for b in req.blocks]
            if req.reuse is not None and not req.reuse.copied:
                step.reusing.append(req)
                continue
            if n == 1 and start > 0:
                if req.reuse is not None and req.reuse.remaining is not None:
                    step.probed.append((req, flat))
                    if req.reuse.pending is not None:
                        step.joining.append((req, len(step.decode_idx)))
                step.tokens.append(req.token_ids[start])
                step.positions.append(start)
                step.slots.append(ids[start // bs] * bs + start % bs)
                step.decode_idx.append(flat)
                dec_tables.append(ids)
                dec_lens.append(start + 1)
            else:
                end = start + n
                step.tokens.extend(req.token_ids[start:end])
                step.positions.extend(range(start, end))
                step.slots.extend(ids[p // bs] * bs + p % bs for p in range(start, end))
                tiles = self.attn.tile_rows(self._tensor(ids[: -(-end // bs)])) if start else None
                prefills.append(PrefillSpan(flat, flat + n, start, tiles))
            if start + n == req.num_tokens:
                step.logits_idx.append(len(step.tokens) - 1)
                step.sampling.append(req)
        meta = step.meta = AttentionMetadata(self._tensor(step.slots), prefills, None, None, None)
        if step.decode_idx:
            width = max(len(t) for t in dec_tables)
            for t in dec_tables:
                t.extend([0] * (width - len(t)))
            meta.decode_token_idx = self._tensor(step.decode_idx)
            meta.decode_block_tables = self._tensor(dec_tables)
            meta.decode_ctx_lens = self._tensor(dec_lens)
        return step

    def execute(self, reqs: list[Request], num_new: list[int]) -> tuple[torch.Tensor, list[Request]]:
        """Runs one forward pass; returns logits [k, vocab] and the k requests they belong to."""
        step = self._prepare(reqs, num_new)
        tokens, meta, sampling, reusing = step.tokens, step.meta, step.sampling, step.reusing
        hook = self.reuser.step_hook(step.probed, step.joining, meta, len(tokens)) if self.reuser else None
        t0 = time.perf_counter()
        logits = torch.empty(0)
        if tokens:
            self.attn.begin_step(meta)
            with torch.inference_mode():
                logits = self._forward(meta, tokens, step.positions, step.logits_idx, hook)
        if hook is not None:
            self.num_decode_recomputed += hook.num_joining
            for i, (req, _) in enumerate(step.probed):
                self.reuser.after_decode(req, hook.probe_q[i])
        if reusing:
            rows = [self.reuser.prefill(req, req.reuse, req.num_computed_tokens) for req in reusing]
            logits = torch.cat([logits.view(-1, rows[0].shape[1]), *rows]) if tokens else torch.cat(rows)
            sampling.extend(reusing)
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        self.last_forward_s = time.perf_counter() - t0
        return logits, sampling


def _announce(line: str) -> None:
    """Logs `line` at INFO on the `engine` logger; where the program configured no logging at all,
    to stderr (as vLLM does), so that `agentrt run` and `agentrt serve` show what they run on."""
    if not logger.handlers and not logging.getLogger().handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
    logger.info(line)
