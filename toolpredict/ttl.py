"""KV time-to-live policies: how long to keep a program's KV pinned while its tool call runs.

One interface, `TTLPolicy.ttl_s(dist, ctx) -> seconds` (0 = do not pin), four policies:
- `none`: never pin (vLLM-style: free the KV when the request ends).
- `fixed`: the released Continuum code; pin `pin_s` (2 s) when the tool's mean duration is <= 2 s.
- `cost-model`: the Continuum paper; τ* = argmax over τ >= 0 of P(τ)·B − τ with B = T·η + reload,
  P the CDF of the tool's duration (per-tool ECDF), T the recent queueing delay of evicted requests,
  η the memoryfulness of turn counts, reload the time to re-prefill this context. Pinning for τ costs
  τ seconds of held KV; it saves B when the tool returns within τ.
- `learned`: the same maths on the learned predictor's distribution.
Each policy names the predictor whose distribution it expects (`predictor_name`); `TTLAdvisor` pairs
a policy with that predictor for a runtime: decide at the end of a turn, observe when the tool ends.

Invariants: a TTL is finite, >= 0 and, for the cost model, never above B (pinning longer than the
whole benefit cannot pay) nor above `max_ttl_s`; ties go to the shorter TTL, so 0 wins when pinning
buys nothing.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from toolpredict.distributions import DurationDistribution
from toolpredict.features import ToolCallRecord
from toolpredict.predictors import DurationPredictor, History
from toolpredict.registry import make_predictor


@dataclass(slots=True, frozen=True)
class TTLContext:
    """What the engine knows when a turn ends in a tool call."""

    queue_delay_s: float = 0.0  # T: recent mean queueing delay of requests whose KV had been freed
    eta: float = 1.0  # memoryfulness of turn counts, see `memoryfulness`
    reload_s: float = 0.0  # time to re-prefill this program's context if its KV is dropped

    @property
    def benefit_s(self) -> float:
        """B = T·η + reload: what a pin saves when the tool returns before it expires."""
        return max(self.queue_delay_s * self.eta, 0.0) + max(self.reload_s, 0.0)


class TTLPolicy(ABC):
    """Maps a predicted duration distribution and the engine's context to a pin time in seconds."""

    name: ClassVar[str]
    predictor_name: ClassVar[str | None]  # the predictor whose distributions this policy expects

    @abstractmethod
    def ttl_s(self, dist: DurationDistribution | None, ctx: TTLContext) -> float:
        """Seconds to pin the program's KV; 0 means do not pin."""


class NoTTL(TTLPolicy):
    """Never pin."""

    name = "none"
    predictor_name = None

    def ttl_s(self, dist: DurationDistribution | None, ctx: TTLContext) -> float:
        return 0.0


class FixedTTL(TTLPolicy):
    """The released Continuum rule: pin `pin_s` when the tool's (running mean) duration is <= `max_mean_s`."""

    name = "fixed"
    predictor_name = "per_tool_mean"

    def __init__(self, pin_s: float = 2.0, max_mean_s: float = 2.0):
        self.pin_s = pin_s
        self.max_mean_s = max_mean_s

    def ttl_s(self, dist: DurationDistribution | None, ctx: TTLContext) -> float:
        if dist is None:
            return 0.0
        return self.pin_s if dist.mean() <= self.max_mean_s else 0.0


def optimal_ttl(dist: DurationDistribution, benefit_s: float, max_ttl_s: float | None = None,
                grid_points: int = 256) -> float:
    """τ* = argmax over τ in [0, min(B, max_ttl_s)] of cdf(τ)·B − τ (B = benefit_s).

    Candidates: 0, the distribution's own jump/kink points, 99 of its quantiles and a geometric grid;
    then a golden-section refinement around the best candidate for smooth CDFs. Exact for step and
    piecewise CDFs, within ~1e-6 relative for smooth unimodal objectives."""
    if not benefit_s > 0 or not math.isfinite(benefit_s):
        return 0.0
    upper = benefit_s if max_ttl_s is None else min(benefit_s, max_ttl_s)
    if upper <= 0:
        return 0.0
    quantiles = [dist.quantile(q) for q in np.linspace(0.01, 0.99, 99)]
    candidates = np.concatenate([[0.0, upper], np.asarray(dist.support_points(), dtype=float), quantiles,
                                 np.geomspace(upper * 1e-4, upper, grid_points)])
    candidates = np.unique(candidates[(candidates >= 0) & (candidates <= upper)])

    def value(ts: np.ndarray) -> np.ndarray:
        return dist.cdf_many(ts) * benefit_s - ts

    values = value(candidates)
    tol = 1e-12 * max(1.0, benefit_s)
    i = int(np.flatnonzero(values >= values.max() - tol)[0])  # the shortest of the (near-)best
    best_t, best_v = float(candidates[i]), float(values[i])
    # Golden-section search between the neighbours: the grid's spacing is the only error left on a
    # smooth CDF, and on a step CDF the objective falls between jumps, so nothing better is found.
    lo = float(candidates[max(i - 1, 0)])
    hi = float(candidates[min(i + 1, len(candidates) - 1)])
    ratio = (math.sqrt(5) - 1) / 2
    a, b = lo, hi
    for _ in range(60):
        c, d = b - ratio * (b - a), a + ratio * (b - a)
        vc, vd = value(np.array([c, d]))
        if vc >= vd:
            b = d
        else:
            a = c
    t = (a + b) / 2
    v = float(value(np.array([t]))[0])
    if v > best_v + tol:
        best_t, best_v = t, v
    return best_t if best_v > float(value(np.array([0.0]))[0]) + tol else 0.0


class CostModelTTL(TTLPolicy):
    """The Continuum paper's cost model on the per-tool ECDF."""

    name = "cost-model"
    predictor_name = "per_tool_ecdf"

    def __init__(self, max_ttl_s: float | None = None, grid_points: int = 256):
        self.max_ttl_s = max_ttl_s
        self.grid_points = grid_points

    def ttl_s(self, dist: DurationDistribution | None, ctx: TTLContext) -> float:
        if dist is None:
            return 0.0
        return optimal_ttl(dist, ctx.benefit_s, self.max_ttl_s, self.grid_points)


class LearnedTTL(CostModelTTL):
    """The cost model fed by the learned predictor's distribution."""

    name = "learned"
    predictor_name = "learned"


POLICIES: dict[str, type[TTLPolicy]] = {cls.name: cls for cls in (NoTTL, FixedTTL, CostModelTTL, LearnedTTL)}


def make_policy(name: str, **options: Any) -> TTLPolicy:
    """A policy by name: "none", "fixed", "cost-model" or "learned"."""
    try:
        cls = POLICIES[name]
    except KeyError:
        raise ValueError(f"unknown TTL policy {name!r}; choose one of {sorted(POLICIES)}") from None
    return cls(**options)


@dataclass(slots=True, frozen=True)
class TTLDecision:
    """A pin decision and the prediction behind it (None where the policy predicts nothing)."""

    ttl_s: float
    predicted_median_s: float | None = None
    predicted_mean_s: float | None = None
    predicted_p95_s: float | None = None


class TTLAdvisor:
    """A policy with its predictor: `decide` when a turn ends in a tool call, `observe` when it returns."""

    def __init__(self, policy: TTLPolicy, predictor: DurationPredictor | None = None):
        self.policy = policy
        if predictor is None and policy.predictor_name is not None:
            predictor = make_predictor(policy.predictor_name)
        self.predictor = predictor

    def decide(self, tool: str, args: Mapping[str, Any] | None, history: History | None,
               ctx: TTLContext) -> TTLDecision:
        if self.predictor is None:
            return TTLDecision(self.policy.ttl_s(None, ctx))
        dist = self.predictor.predict(tool, args, history)
        return TTLDecision(self.policy.ttl_s(dist, ctx), dist.median(), dist.mean(), dist.quantile(0.95))

    def observe(self, record: ToolCallRecord) -> None:
        if self.predictor is not None:
            self.predictor.update(record)


def make_advisor(policy: str, predictor: DurationPredictor | None = None, **policy_options: Any) -> TTLAdvisor:
    """An advisor for a policy name, with a fresh predictor of the policy's kind unless one is given."""
    return TTLAdvisor(make_policy(policy, **policy_options), predictor)


def memoryfulness(turn_counts: Iterable[int], *, min_programs: int = 5, default: float = 1.0) -> float:
    """η = −corr(k, N − k) over finished programs' turn counts N, at every tool-call point k = 1..N−1.

    η near 1: turns done tell how many remain (a pinned program will come back soon and often);
    near 0: they tell nothing (memoryless turn counts). Clipped to [0, 1]. With fewer than
    `min_programs` programs of two or more turns, or no spread in k or N − k, `default` (1.0: the
    undiscounted cost model)."""
    counts = [int(n) for n in turn_counts if int(n) >= 2]
    if len(counts) < min_programs:
        return default
    k = np.concatenate([np.arange(1, n) for n in counts]).astype(float)
    remaining = np.concatenate([n - np.arange(1, n) for n in counts]).astype(float)
    if k.std() == 0 or remaining.std() == 0:
        return default
    return float(np.clip(-np.corrcoef(k, remaining)[0, 1], 0.0, 1.0))
