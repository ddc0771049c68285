"""Tool-duration predictors behind one interface: fit, update online, predict a distribution, save/load.

Baselines (each also a fallback of the learned predictor, toolpredict/learned.py):
- `per_tool_mean` (`PerToolMeanPredictor`): the released Continuum code; a running mean per tool name,
  returned as a point mass.
- `per_tool_ecdf` (`PerToolECDFPredictor`): the Continuum paper; an empirical CDF per tool name, the
  global ECDF until a tool has `min_samples` samples.
- `per_bucket_ecdf` (`PerBucketECDFPredictor`): an ECDF per command bucket, per tool until it has data.
- `per_verb_ecdf` (`PerVerbECDFPredictor`): an ECDF per command verb (`grep`, `python`, `git`, ...).
- `last_same_command` (`LastSameCommandPredictor`): the program's own last duration of the same
  command, the bucket's ECDF when the program has not run it yet.

Invariants: `predict` never raises for any tool name or arguments and always returns a distribution
(a point mass at `prior_s` before any data); `fit(records)` equals a fresh predictor fed the records
in order (plus, for `learned`, one training at the end); a saved and loaded predictor predicts
exactly what the original did. Records are processed in the order given: that order is time.
`observe` is `update` (the runtime's name for it). `save` writes a pickle; load only files you trust.
"""

from __future__ import annotations

import math
import pickle
from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar, Self


from toolpredict.distributions import DurationDistribution, EmpiricalCDF, PointMass
from toolpredict.features import (CallFeatures,
                                  FeatureCache, HistoryItem, ToolCallRecord)

QUANTILE_LEVELS: tuple[float, ...] = (0.05, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95)
_FORMAT = "toolpredict-predictor/1"

History = Sequence[ToolCallRecord | HistoryItem]


class DurationPredictor(ABC):
    """Predicts the duration distribution of a tool call before it runs."""

    name: ClassVar[str]

    def fit(self, records: Iterable[ToolCallRecord]) -> Self:
        """Forget everything, then learn from `records` in order."""
        self._reset()
        for record in records:
            self.update(record)
        return self

    @abstractmethod
    def _reset(self) -> None: ...

    @abstractmethod
    def update(self, record: ToolCallRecord) -> None:
        """Learn from one finished call (online)."""

    def observe(self, record: ToolCallRecord) -> None:
        """`update`, under the name the runtime's tool hooks use."""
        self.update(record)

    @abstractmethod
    def predict(self, tool: str, args: Mapping[str, Any] | None,
                history: History | None = None) -> DurationDistribution:
        """The duration distribution of a call; `history` is the program's earlier calls, oldest first.

        An ECDF that comes back is the predictor's live table (no copy per call): read what you need
        from it before the next `update`."""

    def save(self, path: str | Path) -> None:
        with open(path, "wb") as f:
            pickle.dump({"format": _FORMAT, "name": self.name, "predictor": self}, f,
                        protocol=pickle.HIGHEST_PROTOCOL)

    @classmethod
    def load(cls, path: str | Path) -> Self:
        predictor = load_predictor(path)
        if not isinstance(predictor, cls):
            raise TypeError(f"{path} holds a {type(predictor).__name__}, not a {cls.__name__}")
        return predictor


def load_predictor(path: str | Path) -> DurationPredictor:
    """Any predictor written by `save` (a pickle: load only files you trust)."""
    with open(path, "rb") as f:
        payload = pickle.load(f)
    if not isinstance(payload, dict) or payload.get("format") != _FORMAT:
        raise ValueError(f"{path} is not a saved toolpredict predictor")
    return payload["predictor"]


class PerToolMeanPredictor(DurationPredictor):
    """Running mean per tool name (the released Continuum code): a point mass at the mean.
    An unseen tool gets the global mean, or `prior_s` before any data."""

    name = "per_tool_mean"

    def __init__(self, prior_s: float = 1.0):
        self.prior_s = prior_s
        self._reset()

    def _reset(self) -> None:
        self._sums: dict[str, list[float]] = {}  # tool -> [count, sum of seconds]
        self._total = [0.0, 0.0]

    def update(self, record: ToolCallRecord) -> None:
        acc = self._sums.setdefault(record.tool, [0.0, 0.0])
        for a in (acc, self._total):
            a[0] += 1
            a[1] += record.duration_s

    def predict(self, tool: str, args: Mapping[str, Any] | None,
                history: History | None = None) -> DurationDistribution:
        acc = self._sums.get(str(tool))
        if acc is None:
            acc = self._total
        return PointMass(acc[1] / acc[0] if acc[0] else self.prior_s)


class PerToolECDFPredictor(DurationPredictor):
    """Empirical CDF per tool name (the Continuum paper), the global ECDF until a tool has
    `min_samples` samples, a point mass at `prior_s` before any data."""

    name = "per_tool_ecdf"

    def __init__(self, min_samples: int = 10, max_samples: int | None = 10_000, prior_s: float = 1.0):
        self.min_samples = min_samples
        self.max_samples = max_samples
        self.prior_s = prior_s
        self._reset()

    def _reset(self) -> None:
        self._per_tool: dict[str, EmpiricalCDF] = {}
        self._global = EmpiricalCDF(max_samples=self.max_samples)

    def update(self, record: ToolCallRecord) -> None:
        ecdf = self._per_tool.get(record.tool)
        if ecdf is None:
            ecdf = self._per_tool[record.tool] = EmpiricalCDF(max_samples=self.max_samples)
        ecdf.add(record.duration_s)
        self._global.add(record.duration_s)

    def predict(self, tool: str, args: Mapping[str, Any] | None,
                history: History | None = None) -> DurationDistribution:
        ecdf = self._per_tool.get(str(tool))
        if ecdf is not None and ecdf.n >= self.min_samples:
            return ecdf
        return self._global if self._global.n else PointMass(self.prior_s)


class _KeyedECDFPredictor(DurationPredictor):
    """An ECDF per key of a call's features, the paper's per-tool/global ECDFs while a key has fewer
    than `min_samples` samples."""

    def __init__(self, min_samples: int = 5, max_samples: int | None = 2000, prior_s: float = 1.0):
        self.min_samples = min_samples
        self.max_samples = max_samples
        self.prior_s = prior_s
        self._features = FeatureCache()
        self._reset()

    @staticmethod
    @abstractmethod
    def _key(features: CallFeatures) -> str: ...

    def _reset(self) -> None:
        self._per_key: dict[str, EmpiricalCDF] = {}
        self._per_tool = PerToolECDFPredictor(prior_s=self.prior_s)

    def update(self, record: ToolCallRecord) -> None:
        self.update_key(self._key(self._features(record.tool, record.args)), record)

    def update_key(self, key: str, record: ToolCallRecord) -> None:
        """`update` for a caller that already knows the record's key."""
        ecdf = self._per_key.get(key)
        if ecdf is None:
            ecdf = self._per_key[key] = EmpiricalCDF(max_samples=self.max_samples)
        ecdf.add(record.duration_s)
        self._per_tool.update(record)

    def predict(self, tool: str, args: Mapping[str, Any] | None,
                history: History | None = None) -> DurationDistribution:
        return self.predict_key(self._key(self._features(tool, args)), tool)

    def predict_key(self, key: str, tool: str) -> DurationDistribution:
        """`predict` for a caller that already knows the call's key."""
        ecdf = self._per_key.get(key)
        if ecdf is not None and ecdf.n >= self.min_samples:
            return ecdf
        return self._per_tool.predict(tool, None)


class PerBucketECDFPredictor(_KeyedECDFPredictor):
    """Empirical CDF per command bucket (`features.py`), the per-tool/global ECDFs of the paper while a
    bucket has fewer than `min_samples` samples. The learned predictor's cold-start fallback, and the
    baseline that shows what its trees add beyond bucketing."""

    name = "per_bucket_ecdf"

    @staticmethod
    def _key(features: CallFeatures) -> str:
        return features.bucket

    update_bucket = _KeyedECDFPredictor.update_key
    predict_bucket = _KeyedECDFPredictor.predict_key


class PerVerbECDFPredictor(_KeyedECDFPredictor):
    """Empirical CDF per command verb (the dominant segment's program: `grep`, `python`, `git`; a
    non-shell tool's operation), from the first sample on: the "median of the same verb seen so far"
    baseline."""

    name = "per_verb_ecdf"

    def __init__(self, min_samples: int = 1, max_samples: int | None = 2000, prior_s: float = 1.0):
        super().__init__(min_samples, max_samples, prior_s)

    @staticmethod
    def _key(features: CallFeatures) -> str:
        return f"{features.tool}\x00{features.verb}"


class LastSameCommandPredictor(DurationPredictor):
    """A point mass at the duration of the program's latest run of the same command (normalized text),
    taken from `history`; the per-bucket ECDF (from `min_samples` samples) when it has not run it."""

    name = "last_same_command"

    def __init__(self, min_samples: int = 1, prior_s: float = 1.0):
        self.min_samples = min_samples
        self.prior_s = prior_s
        self._features = FeatureCache()
        self._reset()

    def _reset(self) -> None:
        self._buckets = PerBucketECDFPredictor(self.min_samples, prior_s=self.prior_s)

    def update(self, record: ToolCallRecord) -> None:
        self._buckets.update_bucket(self._features(record.tool, record.args).bucket, record)

    def predict(self, tool: str, args: Mapping[str, Any] | None,
                history: History | None = None) -> DurationDistribution:
        f = self._features(tool, args)
        for h in reversed(history or ()):
            if isinstance(h, HistoryItem):
                if h.command_key == f.command_key:
                    return PointMass(math.exp(h.log_duration))
            elif self._features(h.tool, h.args).command_key == f.command_key:
                return PointMass(h.duration_s)
        return self._buckets.predict_bucket(f.bucket, str(tool))
