"""Tool-duration predictors behind one interface: fit, update online, predict a distribution, save/load.

- `per_tool_mean` (`PerToolMeanPredictor`): the released Continuum code; a running mean per tool name,
  returned as a point mass.
- `per_tool_ecdf` (`PerToolECDFPredictor`): the Continuum paper; an empirical CDF per tool name, the
  global ECDF until a tool has `min_samples` samples.
- `per_bucket_ecdf` (`PerBucketECDFPredictor`): an ECDF per command bucket, per tool until it has data.
- `learned` (`LearnedPredictor`): scikit-learn quantile regressors (gradient-boosted trees with the
  pinball loss, one per level, in log-duration space) on `features.py`'s call features, the program's
  own history and running per-bucket statistics. Quantiles are sorted, so they are monotone. It falls
  back to ECDFs (per bucket, then the paper's per tool / global) while untrained and for buckets the
  trees never saw; `update` feeds the ECDFs at once and refits the trees on a geometric schedule
  (after max(refit_min, refit_fraction x the last training size) new samples), so the amortized cost
  per sample stays constant.

Invariants: `predict` never raises for any tool name or arguments and always returns a distribution
(a point mass at `prior_s` before any data); `fit(records)` equals a fresh predictor fed the records
in order (plus, for `learned`, one training at the end); a saved and loaded predictor predicts
exactly what the original did. Records are processed in the order given: that order is time.
`save` writes a pickle; load only files you trust.
"""

from __future__ import annotations

import contextlib
import math
import pickle
from abc import ABC, abstractmethod
from collections import OrderedDict, deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Self

import numpy as np

from toolpredict.distributions import DurationDistribution, EmpiricalCDF, PointMass, QuantileDistribution
from toolpredict.features import (HISTORY_WINDOW, NUMERIC_FIELDS, CallFeatures, HistoryItem,
                                  ToolCallRecord, extract_features, history_features, log_duration)

QUANTILE_LEVELS: tuple[float, ...] = (0.05, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95)
_FORMAT = "toolpredict-predictor/1"

History = Sequence[ToolCallRecord | HistoryItem]


def _history_items(history: History | None) -> list[HistoryItem]:
    return [h if isinstance(h, HistoryItem) else HistoryItem.of(h) for h in (history or ())]


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


class PerBucketECDFPredictor(DurationPredictor):
    """Empirical CDF per command bucket (`features.py`), the per-tool/global ECDFs of the paper while a
    bucket has fewer than `min_samples` samples. The learned predictor's fallback, and the ablation that
    shows what its trees add beyond bucketing."""

    name = "per_bucket_ecdf"

    def __init__(self, min_samples: int = 5, max_samples: int | None = 2000, prior_s: float = 1.0):
        self.min_samples = min_samples
        self.max_samples = max_samples
        self.prior_s = prior_s
        self._reset()

    def _reset(self) -> None:
        self._per_bucket: dict[str, EmpiricalCDF] = {}
        self._per_tool = PerToolECDFPredictor(prior_s=self.prior_s)

    def update(self, record: ToolCallRecord) -> None:
        self.update_bucket(extract_features(record.tool, record.args).bucket, record)

    def update_bucket(self, bucket: str, record: ToolCallRecord) -> None:
        """`update` for a caller that already knows the record's bucket."""
        ecdf = self._per_bucket.get(bucket)
        if ecdf is None:
            ecdf = self._per_bucket[bucket] = EmpiricalCDF(max_samples=self.max_samples)
        ecdf.add(record.duration_s)
        self._per_tool.update(record)

    def predict(self, tool: str, args: Mapping[str, Any] | None,
                history: History | None = None) -> DurationDistribution:
        return self.predict_bucket(extract_features(tool, args).bucket, tool)

    def predict_bucket(self, bucket: str, tool: str) -> DurationDistribution:
        """`predict` for a caller that already knows the call's bucket."""
        ecdf = self._per_bucket.get(bucket)
        if ecdf is not None and ecdf.n >= self.min_samples:
            return ecdf
        return self._per_tool.predict(tool, None)


@dataclass(slots=True, frozen=True)
class _Row:
    """One training example, kept raw so the categorical vocabulary can change at each refit."""

    features: CallFeatures
    numbers: tuple[float, ...]  # history_features + running bucket/tool statistics, as seen before the call
    y: float  # log duration


# A row: these categories (as codes), NUMERIC_FIELDS, HISTORY_FIELDS, then the running bucket mean log
# duration, log(1 + bucket count) and tool mean log duration.
_CATEGORICAL = ("bucket", "family", "verb", "tool")


class LearnedPredictor(DurationPredictor):
    """Gradient-boosted quantile regressors in log-duration space over call features and history."""

    name = "learned"

    def __init__(self, levels: Sequence[float] = QUANTILE_LEVELS, *, min_train: int = 50,
                 min_bucket_samples: int = 5, refit_min: int = 50, refit_fraction: float = 0.25,
                 max_train: int = 4000, max_iter: int = 50, max_leaf_nodes: int = 7,
                 learning_rate: float = 0.2, min_samples_leaf: int = 5, random_state: int = 0,
                 max_programs: int = 4096, fit_threads: int | None = 1, prior_s: float = 1.0):
        levels = tuple(sorted(float(q) for q in levels))
        if len(levels) < 2 or levels[0] <= 0 or levels[-1] >= 1 or len(set(levels)) != len(levels):
            raise ValueError("levels must be at least two distinct quantile levels inside (0, 1)")
        self.levels = levels
        self.min_train = min_train
        self.min_bucket_samples = min_bucket_samples
        self.refit_min = refit_min
        self.refit_fraction = refit_fraction
        self.max_train = max_train
        self.max_programs = max_programs
        self.prior_s = prior_s
        self.fit_threads = fit_threads
        self._controller: Any = None
        self._tree_params = dict(max_iter=max_iter, max_leaf_nodes=max_leaf_nodes, learning_rate=learning_rate,
                                 min_samples_leaf=min_samples_leaf, random_state=random_state,
                                 early_stopping=False)
        self._reset()

    def _reset(self) -> None:
        self._ecdfs = PerBucketECDFPredictor(self.min_bucket_samples, prior_s=self.prior_s)
        self._bucket_log: dict[str, list[float]] = {}  # bucket -> [count, sum of log durations]
        self._tool_log: dict[str, list[float]] = {}
        self._programs: OrderedDict[str, deque[HistoryItem]] = OrderedDict()
        self._rows: deque[_Row] = deque(maxlen=self.max_train)
        self._models: list[Any] | None = None
        self._vocab: dict[str, dict[str, int]] = {}
        self._trained_rows = 0
        self._since_fit = 0

    @property
    def trained(self) -> bool:
        return self._models is not None

    # --- learning -------------------------------------------------------------------------------------

    def fit(self, records: Iterable[ToolCallRecord]) -> Self:
        self._reset()
        for record in records:
            self._observe(record)
        if len(self._rows) >= self.min_train:
            self._refit()
        return self

    def update(self, record: ToolCallRecord) -> None:
        self._observe(record)
        due = max(self.refit_min, self.refit_fraction * self._trained_rows)
        if len(self._rows) >= self.min_train and self._since_fit >= due:
            self._refit()

    def _observe(self, record: ToolCallRecord) -> None:
        features = extract_features(record.tool, record.args)
        history: Sequence[HistoryItem] = ()
        if record.program_id is not None:
            history = self._programs.get(record.program_id, ())
        y = log_duration(record.duration_s)
        self._rows.append(_Row(features, self._numbers(features, history), y))
        self._since_fit += 1

        self._ecdfs.update_bucket(features.bucket, record)
        for table, key in ((self._bucket_log, features.bucket), (self._tool_log, features.tool)):
            acc = table.setdefault(key, [0.0, 0.0])
            acc[0] += 1
            acc[1] += y
        if record.program_id is not None:
            items = self._programs.pop(record.program_id, None) or deque(maxlen=HISTORY_WINDOW)
            items.append(HistoryItem(features.tool, features.bucket, features.command_key, y))
            self._programs[record.program_id] = items  # most recently used last
            if len(self._programs) > self.max_programs:
                self._programs.popitem(last=False)

    def _numbers(self, features: CallFeatures, history: Sequence[HistoryItem]) -> tuple[float, ...]:
        # Running statistics from calls *before* this one: the same thing is known at prediction time,
        # and a row's own duration never leaks into its features.
        bucket = self._bucket_log.get(features.bucket)
        tool = self._tool_log.get(features.tool)
        stats = (bucket[1] / bucket[0] if bucket else math.nan, math.log1p(bucket[0]) if bucket else 0.0,
                 tool[1] / tool[0] if tool else math.nan)
        return (*history_features(features, history), *stats)

    def _encode(self, features: CallFeatures, numbers: tuple[float, ...]) -> list[float]:
        cats = [float(self._vocab[c].get(getattr(features, c), math.nan)) for c in _CATEGORICAL]
        return [*cats, *(float(getattr(features, k)) for k in NUMERIC_FIELDS), *numbers]

    def _refit(self) -> None:
        from sklearn.ensemble import HistGradientBoostingRegressor  # imported on first training only

        rows = list(self._rows)
        # Categories become their rank by mean log duration in the training window: ordered this way,
        # a threshold split equals the best split of the categories into two groups (the ordering the
        # trees' own categorical support would search), and prediction skips sklearn's per-call
        # categorical encoder, which was 85% of a prediction's time.
        self._vocab = {}
        for c in _CATEGORICAL:
            sums: dict[str, list[float]] = {}
            for r in rows:
                acc = sums.setdefault(getattr(r.features, c), [0.0, 0.0])
                acc[0] += 1
                acc[1] += r.y
            order = sorted(sums, key=lambda v: (sums[v][1] / sums[v][0], v))
            self._vocab[c] = {v: i for i, v in enumerate(order)}
        x = np.array([self._encode(r.features, r.numbers) for r in rows], dtype=float)
        y = np.array([r.y for r in rows])
        models = []
        with self._threads(self.fit_threads):
            for q in self.levels:
                model = HistGradientBoostingRegressor(loss="quantile", quantile=q, **self._tree_params)
                models.append(model.fit(x, y))
        self._models = models
        self._trained_rows = len(rows)
        self._since_fit = 0

    def _threads(self, limit: int | None) -> contextlib.AbstractContextManager:
        """Limit sklearn's OpenMP threads. The trees are small: on a shared machine, OpenMP threads that
        spin while another process holds the other cores made a refit 30x and a prediction 20x slower.
        The controller is built once per predictor object (building costs milliseconds, limiting microseconds)."""
        if limit is None:
            return contextlib.nullcontext()
        if self._controller is None:
            from threadpoolctl import ThreadpoolController

            self._controller = ThreadpoolController()
        return self._controller.limit(limits=limit, user_api="openmp")

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_controller"] = None  # process-local: describes this process's loaded libraries
        return state

    # --- prediction -----------------------------------------------------------------------------------

    def predict(self, tool: str, args: Mapping[str, Any] | None,
                history: History | None = None) -> DurationDistribution:
        features = extract_features(tool, args)
        if self._models is None or features.bucket not in self._vocab["bucket"]:
            return self._ecdfs.predict_bucket(features.bucket, str(tool))
        numbers = self._numbers(features, _history_items(history))
        x = np.array([self._encode(features, numbers)], dtype=float)
        with self._threads(1):
            logs = np.sort([float(m.predict(x)[0]) for m in self._models])
        return QuantileDistribution(self.levels, np.exp(logs))



PREDICTORS: dict[str, type[DurationPredictor]] = {
    cls.name: cls
    for cls in (PerToolMeanPredictor, PerToolECDFPredictor, PerBucketECDFPredictor, LearnedPredictor)
}


def make_predictor(name: str, **options: Any) -> DurationPredictor:
    """A fresh predictor by name: "per_tool_mean", "per_tool_ecdf", "per_bucket_ecdf" or "learned"."""
    try:
        cls = PREDICTORS[name]
    except KeyError:
        raise ValueError(f"unknown predictor {name!r}; choose one of {sorted(PREDICTORS)}") from None
    return cls(**options)
