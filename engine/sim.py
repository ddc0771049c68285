"""The engine in virtual time: the real scheduler, block pool, prefix index and pins, no model.

`SimulatedEngine` is an `Engine` whose runner does not run a model. A step costs what a cost model
says for the batch's shape (tokens, sequences, attention work), and `execute` advances a
`VirtualClock` by that much instead of taking that long. Everything else is the real engine:
`Engine.step`, `Scheduler`, `BlockPool`, `KVCacheManager`, `PinManager`, and the reload profile
(`profile_reload` times prefills on the engine's clock, so here it fits the cost model).

Invariants:
- the simulated model always emits `SIM_TOKEN_ID` and the engine knows no EOS, so a request ends at
  its `max_tokens` (callers pass the recorded output length) or at the context limit;
- the clock only moves forward: by a step's cost inside `execute`, or by the caller between steps;
- there is no text: prompts are token ids and outputs decode to "".

Cost models: `LinearCostModel`, coefficients fitted to the real engine's steps timed on this
machine as the runtime drives them (`StepRecorder`; benchmarks/sim_calibrate.py `profile_runtime`, cached in
engine/data/), and `RooflineCostModel`, a GPU's memory bandwidth and FLOP rate against a model's
weight and KV bytes and FLOPs. `hardware(name)` gives the ready-made ones (`HARDWARE`).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from engine.config import ConfigError, EngineConfig, ModelConfig
from engine.engine import Engine
from engine.request import Request

SIM_TOKEN_ID = 1  # what the simulated model "generates": never an EOS, the engine has none
_DATA = Path(__file__).with_name("data")
CPU_CALIBRATION = _DATA / "sim-cpu-smollm2.json"


class VirtualClock:
    """Seconds of simulated time; the engine, scheduler and pins read it through `__call__`."""

    def __init__(self, start_s: float = 0.0):
        self.now = start_s

    def __call__(self) -> float:
        return self.now

    def advance(self, dt_s: float) -> None:
        if dt_s < 0:
            raise ValueError(f"time cannot go back ({dt_s} s)")
        self.now += dt_s

    def advance_to(self, t_s: float) -> None:
        self.now = max(self.now, t_s)


@dataclass(slots=True, frozen=True)
class StepShape:
    """What a step's cost depends on. A decode row is one new token after a computed context; every
    other row is a prefill span of n tokens after `start` computed ones (attention: n·start + n(n+1)/2
    query-key pairs)."""

    num_seqs: int = 0
    num_tokens: int = 0
    num_logits: int = 0  # rows that reach the LM head (the request's last known token)
    prefill_tokens: int = 0
    prefill_attn_pairs: int = 0
    prefill_context_tokens: int = 0  # cached context the prefill spans read (sum of `start`)
    decode_seqs: int = 0
    decode_context_tokens: int = 0  # keys the decode rows attend to (sum of start + 1)

    @classmethod
    def of(cls, reqs: list[Request], num_new: list[int]) -> StepShape:
        n_tok = logits = pre_tok = pairs = pre_ctx = dec = dec_ctx = 0
        for req, n in zip(reqs, num_new):
            start = req.num_computed_tokens
            n_tok += n
            if start + n == req.num_tokens:
                logits += 1
            if n == 1 and start > 0:
                dec += 1
                dec_ctx += start + 1
            else:
                pre_tok += n
                pairs += n * start + n * (n + 1) // 2
                pre_ctx += start
        return cls(len(reqs), n_tok, logits, pre_tok, pairs, pre_ctx, dec, dec_ctx)


class CostModel:
    """Seconds one engine step of a given shape takes; `model` is the architecture being simulated."""

    name: str
    model: ModelConfig
    dtype: str  # the KV cache's dtype (sets bytes per token)

    def step_s(self, shape: StepShape) -> float:
        raise NotImplementedError

    def describe(self) -> dict:
        raise NotImplementedError


# the linear model's features, in the order of its coefficients
_FEATURES = ("const", "num_seqs", "num_tokens", "num_logits", "prefill_attn_pairs", "decode_context_tokens")


def _feature_row(shape: StepShape) -> list[float]:
    return [1.0, shape.num_seqs, shape.num_tokens, shape.num_logits, shape.prefill_attn_pairs,
            shape.decode_context_tokens]


@dataclass(slots=True)
class LinearCostModel(CostModel):
    """t = overhead + per_seq·seqs + per_token·tokens + per_logit·LM-head rows + per_pair·prefill
    attention pairs + per_key·decode keys; all coefficients >= 0, so t grows with every input."""

    name: str
    model: ModelConfig
    dtype: str
    coef: dict[str, float]
    source: dict  # how the coefficients were measured (command, machine, fit error)

    def step_s(self, shape: StepShape) -> float:
        c = self.coef
        return (c["const"] + c["num_seqs"] * shape.num_seqs + c["num_tokens"] * shape.num_tokens
                + c["num_logits"] * shape.num_logits + c["prefill_attn_pairs"] * shape.prefill_attn_pairs
                + c["decode_context_tokens"] * shape.decode_context_tokens)

    def describe(self) -> dict:
        return {"kind": "linear", "name": self.name, "coef": self.coef, "source": self.source}

    @classmethod
    def fit(cls, name: str, model: ModelConfig, dtype: str, shapes: list[StepShape], seconds: list[float],
            source: dict) -> LinearCostModel:
        """Non-negative least squares on relative error (every step counts alike, short or long)."""
        from scipy.optimize import nnls

        x = np.asarray([_feature_row(s) for s in shapes], dtype=float)
        t = np.asarray(seconds, dtype=float)
        scale = x.max(axis=0)
        scale[scale == 0] = 1.0
        w = 1.0 / t
        coef, _ = nnls((x / scale) * w[:, None], t * w)
        coef = coef / scale
        pred = x @ coef
        fit_error = {"steps": len(t), "mean_abs_rel_error": float(np.mean(np.abs(pred - t) / t)),
                     "total_rel_error": float(pred.sum() / t.sum() - 1.0)}
        samples = {"features": list(_FEATURES), "rows": x.tolist(), "seconds": t.tolist()}
        return cls(name, model, dtype, dict(zip(_FEATURES, map(float, coef))),
                   {**source, "fit": fit_error, "samples": samples})

    def to_json(self) -> dict:
        return {"name": self.name, "dtype": self.dtype, "model": asdict(self.model), "coef": self.coef,
                "source": self.source}

    @classmethod
    def from_json(cls, raw: dict) -> LinearCostModel:
        model = raw["model"]
        model["eos_token_ids"] = tuple(model.get("eos_token_ids", ()))
        return cls(raw["name"], ModelConfig(**model), raw["dtype"], raw["coef"], raw["source"])


@dataclass(slots=True, frozen=True)
class GPUSpec:
    name: str
    mem_bw_Bps: float  # achievable HBM bandwidth
    flops: float  # dense bf16 FLOP/s
    compute_efficiency: float  # share of `flops` large GEMMs reach
    step_overhead_s: float  # launch/scheduling time per step that no roofline shows
    per_seq_overhead_s: float


# Assumed, not measured here (no GPU on this machine): HBM3 ~3.35 TB/s peak, ~3.0 achievable; dense
# bf16 ~990 TFLOP/s peak (SXM), ~790 quoted for sustained GEMMs, of which attention-heavy steps reach less.
H100 = GPUSpec("H100-SXM", 3.0e12, 790e12, 0.7, 2.0e-3, 20e-6)


@dataclass(slots=True)
class RooflineCostModel(CostModel):
    """t = max(FLOPs / (flops·efficiency), bytes / bandwidth) + overheads. FLOPs: 2·params per token
    through the layers, 2·vocab·hidden per LM-head row, 4·layers·heads·head_dim per attention pair.
    Bytes: all weights once per step, plus the KV of every context a row attends to."""

    name: str
    model: ModelConfig
    gpu: GPUSpec
    dtype: str = "bfloat16"

    def __post_init__(self) -> None:
        m = self.model
        attn = m.hidden_size * m.head_dim * (2 * m.num_heads + 2 * m.num_kv_heads)
        self.layer_params = m.num_layers * (attn + 3 * m.hidden_size * m.intermediate_size)
        self.head_params = m.vocab_size * m.hidden_size
        embed = self.head_params * (1 if m.tie_word_embeddings else 2)
        elem = torch.empty((), dtype=getattr(torch, self.dtype)).element_size()
        self.weight_bytes = (self.layer_params + embed) * elem
        self.kv_bytes_per_token = 2 * m.num_layers * m.num_kv_heads * m.head_dim * elem

    def step_s(self, shape: StepShape) -> float:
        m, g = self.model, self.gpu
        pairs = shape.prefill_attn_pairs + shape.decode_context_tokens
        flops = (2 * self.layer_params * shape.num_tokens + 2 * self.head_params * shape.num_logits
                 + 4 * m.num_layers * m.num_heads * m.head_dim * pairs)
        kv_read = shape.decode_context_tokens + shape.prefill_context_tokens + shape.prefill_tokens
        nbytes = self.weight_bytes + self.kv_bytes_per_token * kv_read
        return (max(flops / (g.flops * g.compute_efficiency), nbytes / g.mem_bw_Bps)
                + g.step_overhead_s + g.per_seq_overhead_s * shape.num_seqs)

    def describe(self) -> dict:
        return {"kind": "roofline", "name": self.name, "gpu": asdict(self.gpu), "dtype": self.dtype,
                "weight_bytes": self.weight_bytes, "kv_bytes_per_token": self.kv_bytes_per_token}

    def kv_blocks_that_fit(self, memory_bytes: float, block_size: int = 16, utilization: float = 0.9) -> int:
        """KV blocks left in `memory_bytes` x `utilization` after the weights (vLLM's gpu_memory_utilization)."""
        return int((memory_bytes * utilization - self.weight_bytes) // (self.kv_bytes_per_token * block_size))


# Llama-3.1-8B's architecture (its published config.json); the weights are never needed.
LLAMA_3_1_8B = ModelConfig(
    model_type="llama", vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_layers=32, num_heads=32,
    num_kv_heads=8, head_dim=128, rms_norm_eps=1e-5, rope_theta=500000.0, rope_scaling=None,
    max_position_embeddings=131072, tie_word_embeddings=False, qkv_bias=False)


@dataclass(slots=True, frozen=True)
class Hardware:
    """A named simulated machine: its cost model and the KV pool it holds by default."""

    name: str
    cost_model: CostModel
    default_kv_blocks: int
    max_num_seqs: int


def hardware(name: str) -> Hardware:
    """`cpu-smollm2`: this machine running the default model (calibrated, engine/data/); `h100-llama8b`:
    Llama-3.1-8B in bf16 on one 80 GB H100 (roofline)."""
    if name == "cpu-smollm2":
        if not CPU_CALIBRATION.exists():
            raise ConfigError(f"no CPU calibration at {CPU_CALIBRATION}; run `python -m benchmarks.sim_calibrate`")
        cost = LinearCostModel.from_json(json.loads(CPU_CALIBRATION.read_text()))
        return Hardware(name, cost, default_kv_blocks=256, max_num_seqs=32)
    if name == "h100-llama8b":
        cost = RooflineCostModel("Llama-3.1-8B", LLAMA_3_1_8B, H100)
        return Hardware(name, cost, default_kv_blocks=cost.kv_blocks_that_fit(80e9), max_num_seqs=256)
    raise ConfigError(f"unknown hardware {name!r}; choose from {HARDWARE}")


HARDWARE = ("cpu-smollm2", "h100-llama8b")


class SimulatedRunner:
    """`ModelRunner.execute`'s interface: costs the step, advances the clock, returns logits that
    only allow `SIM_TOKEN_ID` for every request that samples."""

    def __init__(self, cost_model: CostModel, clock: VirtualClock):
        self.cost_model = cost_model
        self.clock = clock
        self.last_forward_s = 0.0
        self._logits = torch.zeros(0, SIM_TOKEN_ID + 1)

    def execute(self, reqs: list[Request], num_new: list[int]) -> tuple[torch.Tensor, list[Request]]:
        self.last_forward_s = self.cost_model.step_s(StepShape.of(reqs, num_new))
        self.clock.advance(self.last_forward_s)
        sampling = [r for r, n in zip(reqs, num_new) if r.num_computed_tokens + n == r.num_tokens]
        if len(sampling) > len(self._logits):
            # every other token impossible: greedy or sampled, with any top-k/top-p, it is SIM_TOKEN_ID
            self._logits = torch.full((len(sampling), SIM_TOKEN_ID + 1), float("-inf"))
            self._logits[:, SIM_TOKEN_ID] = 0.0
        return self._logits[: len(sampling)], sampling


class _NoText:
    """The simulator's tokenizer: prompts must be token ids; outputs have no text."""

    eos_token_id = None
    chat_template = None

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        raise ValueError("the simulated engine takes prompts as token ids, not text")

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        return ""


class SimulatedEngine(Engine):
    """An `Engine` over a `SimulatedRunner`. `clock` defaults to a fresh `VirtualClock` at 0."""

    def __init__(self, cost_model: CostModel, config: EngineConfig | None = None, *,
                 clock: VirtualClock | None = None, **overrides):
        self.cost_model = cost_model
        super().__init__(config, clock=clock or VirtualClock(), **overrides)

    def _load_model(self) -> None:
        self.device = torch.device("cpu")
        self.dtype = getattr(torch, self.cost_model.dtype)
        self.model_dir = Path(self.cost_model.name)
        self.model_config = self.cost_model.model
        self.tokenizer = _NoText()
        self.model = None
        self.eos_token_ids: set[int] = set()

    def _make_runner(self, num_blocks: int) -> SimulatedRunner:
        return SimulatedRunner(self.cost_model, self.clock)


class StepRecorder:
    """Wraps a real `ModelRunner` and notes the shape of each step it runs (`shape`; the caller resets
    it to None before a step, so a step that ran nothing leaves None): how the CPU cost model is
    calibrated from the real engine (benchmarks/sim_calibrate.py `profile_runtime`)."""

    def __init__(self, runner):
        self.runner = runner
        self.shape: StepShape | None = None

    def __getattr__(self, name):
        return getattr(self.runner, name)

    def execute(self, reqs: list[Request], num_new: list[int]):
        self.shape = StepShape.of(reqs, num_new)
        return self.runner.execute(reqs, num_new)
