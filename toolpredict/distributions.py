"""Duration distributions: what every predictor returns and every TTL policy consumes.

`DurationDistribution` is the interface: `cdf(t)`, `quantile(q)`, `mean()`, plus `cdf_many` (vectorized,
for the TTL search) and `support_points()` (where the CDF jumps or bends, so a search over τ can be
exact on step and piecewise CDFs). Three implementations:
- `PointMass`: all mass at one value (the released Continuum code's running mean).
- `EmpiricalCDF`: the samples themselves, updated online, optionally over a sliding window.
  Invariant: `_sorted` is always the sorted contents of `_window`, and `_sum` their sum.
- `QuantileDistribution`: a learned predictor's quantiles, with a CDF piecewise linear in log time
  between them. Invariant: knots strictly increasing in both level and value.
All durations are seconds, >= 0; quantile levels lie in [0, 1].
"""

from __future__ import annotations

import bisect
import math
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Iterable, Sequence

import numpy as np

from toolpredict.features import MIN_DURATION_S


class DurationDistribution(ABC):
    """A distribution of a tool call's duration in seconds."""

    @abstractmethod
    def cdf(self, t: float) -> float:
        """P(duration <= t)."""

    @abstractmethod
    def quantile(self, q: float) -> float:
        """The smallest t with cdf(t) >= q (q in [0, 1])."""

    @abstractmethod
    def mean(self) -> float:
        """Expected duration in seconds."""

    def median(self) -> float:
        return self.quantile(0.5)

    def cdf_many(self, ts: np.ndarray) -> np.ndarray:
        return np.array([self.cdf(float(t)) for t in ts])

    def support_points(self) -> Sequence[float]:
        """Durations where the CDF jumps or changes slope; empty for smooth distributions."""
        return ()


def _check_level(q: float) -> float:
    if not 0.0 <= q <= 1.0:
        raise ValueError(f"quantile level must be in [0, 1], got {q}")
    return q


class PointMass(DurationDistribution):
    """Every call takes exactly `value_s` seconds."""

    __slots__ = ("value_s",)

    def __init__(self, value_s: float):
        if not math.isfinite(value_s) or value_s < 0:
            raise ValueError(f"duration must be finite and >= 0, got {value_s}")
        self.value_s = float(value_s)

    def cdf(self, t: float) -> float:
        return 1.0 if t >= self.value_s else 0.0

    def cdf_many(self, ts: np.ndarray) -> np.ndarray:
        return (np.asarray(ts, dtype=float) >= self.value_s).astype(float)

    def quantile(self, q: float) -> float:
        _check_level(q)
        return self.value_s

    def mean(self) -> float:
        return self.value_s

    def support_points(self) -> Sequence[float]:
        return (self.value_s,)

    def __repr__(self) -> str:
        return f"PointMass({self.value_s:.6g})"


class EmpiricalCDF(DurationDistribution):
    """The empirical distribution of observed durations; `add` updates it online.

    With `max_samples`, only the latest that many samples count (a sliding window that follows drift
    and bounds memory); None keeps everything."""

    __slots__ = ("max_samples", "_window", "_sorted", "_sum")

    def __init__(self, samples: Iterable[float] = (), max_samples: int | None = 10_000):
        if max_samples is not None and max_samples < 1:
            raise ValueError("max_samples must be >= 1 or None")
        self.max_samples = max_samples
        self._window: deque[float] = deque()
        self._sorted: list[float] = []
        self._sum = 0.0
        for s in samples:
            self.add(s)

    @property
    def n(self) -> int:
        return len(self._sorted)

    def add(self, sample: float) -> None:
        sample = float(sample)
        if not math.isfinite(sample) or sample < 0:
            raise ValueError(f"duration must be finite and >= 0, got {sample}")
        self._window.append(sample)
        bisect.insort(self._sorted, sample)
        self._sum += sample
        if self.max_samples is not None and len(self._window) > self.max_samples:
            old = self._window.popleft()
            del self._sorted[bisect.bisect_left(self._sorted, old)]
            self._sum -= old

    def _require(self) -> None:
        if not self._sorted:
            raise ValueError("empty EmpiricalCDF: add samples first")

    def cdf(self, t: float) -> float:
        self._require()
        return bisect.bisect_right(self._sorted, t) / len(self._sorted)

    def cdf_many(self, ts: np.ndarray) -> np.ndarray:
        self._require()
        return np.searchsorted(np.asarray(self._sorted), np.asarray(ts, dtype=float), side="right") / self.n

    def quantile(self, q: float) -> float:
        self._require()
        _check_level(q)
        idx = max(math.ceil(q * len(self._sorted)) - 1, 0)
        return self._sorted[idx]

    def mean(self) -> float:
        self._require()
        return max(self._sum / len(self._sorted), 0.0)  # float drift of the running sum stays >= 0

    def support_points(self) -> Sequence[float]:
        return self._sorted

    def __repr__(self) -> str:
        if not self._sorted:
            return "EmpiricalCDF(n=0)"
        return f"EmpiricalCDF(n={self.n}, median={self.quantile(0.5):.6g})"


_MEAN_GRID = (np.arange(512) + 0.5) / 512


class QuantileDistribution(DurationDistribution):
    """A distribution given by quantiles `values` at `levels`; the CDF is linear in log(t) between
    knots, and the tails continue the outer segments' slopes down to level 0 and up to level 1."""

    __slots__ = ("_levels", "_logs", "_mean")

    def __init__(self, levels: Sequence[float], values: Sequence[float]):
        levels_arr = np.asarray(levels, dtype=float)
        values_arr = np.asarray(values, dtype=float)
        if levels_arr.ndim != 1 or levels_arr.shape != values_arr.shape or len(levels_arr) < 2:
            raise ValueError("need at least two (level, value) pairs of equal length")
        if not np.all(np.diff(levels_arr) > 0) or levels_arr[0] <= 0 or levels_arr[-1] >= 1:
            raise ValueError("levels must be strictly increasing inside (0, 1)")
        if not np.all(np.isfinite(values_arr)):
            raise ValueError("quantile values must be finite")
        logs = np.log(np.maximum(np.sort(values_arr), MIN_DURATION_S))
        # Equal neighbouring quantiles would make the CDF jump; a tiny step keeps the knots strictly
        # increasing so the log-linear interpolation stays well defined.
        for i in range(1, len(logs)):
            logs[i] = max(logs[i], logs[i - 1] + 1e-9)
        lo = logs[0] - levels_arr[0] * (logs[1] - logs[0]) / (levels_arr[1] - levels_arr[0])
        hi = logs[-1] + (1 - levels_arr[-1]) * (logs[-1] - logs[-2]) / (levels_arr[-1] - levels_arr[-2])
        self._levels = np.concatenate([[0.0], levels_arr, [1.0]])
        self._logs = np.concatenate([[lo - 1e-9], logs, [hi + 1e-9]])
        self._mean: float | None = None  # computed on first use: a prediction's caller may never ask

    @property
    def levels(self) -> np.ndarray:
        return self._levels[1:-1].copy()

    @property
    def values(self) -> np.ndarray:
        return np.exp(self._logs[1:-1])

    def cdf(self, t: float) -> float:
        return float(self.cdf_many(np.array([t]))[0])

    def cdf_many(self, ts: np.ndarray) -> np.ndarray:
        ts = np.asarray(ts, dtype=float)
        logs = np.log(np.maximum(ts, MIN_DURATION_S * 1e-3))
        out = np.interp(logs, self._logs, self._levels, left=0.0, right=1.0)
        return np.where(ts <= 0, 0.0, out)

    def quantile(self, q: float) -> float:
        _check_level(q)
        return float(np.exp(np.interp(q, self._levels, self._logs)))

    def mean(self) -> float:
        if self._mean is None:
            # The mean of a distribution is the integral of its quantile function over (0, 1).
            self._mean = float(np.mean(np.exp(np.interp(_MEAN_GRID, self._levels, self._logs))))
        return self._mean

    def support_points(self) -> Sequence[float]:
        return np.exp(self._logs).tolist()

    def __repr__(self) -> str:
        return f"QuantileDistribution(median={self.quantile(0.5):.6g}, p95={self.quantile(0.95):.6g})"
