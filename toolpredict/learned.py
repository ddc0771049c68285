"""The learned tool-duration predictor (`learned`, `LearnedPredictor`), behind the interface of
toolpredict/predictors.py.

It predicts in log(duration + 1 ms) space, with no repository name
anywhere in its features (a new source tree is described by the command kinds it runs and by what its
own calls took so far):
- prior: the median of the bucket's durations so far, shrunk towards its family's, its tool's and the
  global median while the bucket has few samples; then the median of the bucket within the program's
  *group* (`program_group`: `toolz-001` -> `toolz`, the source tree; an opaque id is its own group)
  where that group has run it, shrunk towards the former;
- experts, chosen per call family online by their recent absolute error: the bucket prior alone (the
  simple baseline: the fallback where nothing beats it), the group-aware prior, the prior plus a
  gradient-boosted correction (absolute loss, so it targets the median) on the command's shape, the
  prior's confidence, the program's own history (earlier calls' residuals: same command, same bucket,
  same family, light vs heavy calls), remembered residuals per command, path and group, and the
  stream's recent residuals (machine load), and the same trees on top of a convex blend of the prior
  with that evidence (weights per family, fitted by least absolute error);
- training rows are cross-fitted: a row's tables come from the *other* groups plus its own group's
  earlier calls, which is what a call of an unseen repository sees at prediction time;
- quantiles: the chosen centre plus the empirical quantiles of that expert's signed errors in the
  call's family: first the cross-fitted (out-of-group) errors, then a sliding window of the errors it
  makes online (split conformal, adaptive), so the P95 tracks the share of calls it covers; the
  per-bucket ECDF while untrained and for buckets the trees never saw.
The trees are compiled into flat lists at training time; a prediction walks them in Python (tens of
microseconds) instead of going through scikit-learn's per-call validation (~0.7 ms).
`update` feeds the tables at once and refits on a geometric schedule (after max(refit_min,
refit_fraction x the last training size) new samples), so the amortized cost per sample stays constant.
"""


from __future__ import annotations

import bisect
import contextlib
import math
import re
from collections import OrderedDict, deque
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Self

import numpy as np

from toolpredict.distributions import DurationDistribution, QuantileDistribution
from toolpredict.features import (HISTORY_WINDOW, LOG_OFFSET_S, MIN_DURATION_S, NUMERIC_FIELDS, CallFeatures,
                                  FeatureCache, HistoryItem, ToolCallRecord, offset_log)

from toolpredict.predictors import QUANTILE_LEVELS, DurationPredictor, History, PerBucketECDFPredictor


_HEAVY_FAMILIES = frozenset({"bash::python", "bash::pip", "bash::apt", "bash::conda"})
_RECENT = 8  # the latest calls that "recent" statistics average over


class _Window:
    """A sliding window of floats kept sorted too: O(log n) search, O(n) memmove per add."""

    __slots__ = ("maxlen", "fifo", "sorted", "abs_sum")

    def __init__(self, maxlen: int):
        self.maxlen = maxlen
        self.fifo: deque[float] = deque()
        self.sorted: list[float] = []
        self.abs_sum = 0.0

    def add(self, value: float) -> None:
        self.fifo.append(value)
        bisect.insort(self.sorted, value)
        self.abs_sum += abs(value)
        if len(self.fifo) > self.maxlen:
            old = self.fifo.popleft()
            del self.sorted[bisect.bisect_left(self.sorted, old)]
            self.abs_sum -= abs(old)

    def __len__(self) -> int:
        return len(self.sorted)

    def median(self) -> float:
        v, n = self.sorted, len(self.sorted)
        return v[n // 2] if n % 2 else 0.5 * (v[n // 2 - 1] + v[n // 2])

    def iqr(self) -> float:
        v, n = self.sorted, len(self.sorted)
        return v[(3 * n) // 4] - v[n // 4]

    def mean_abs(self) -> float:
        return self.abs_sum / len(self.sorted)

    def conformal(self, levels: Sequence[float]) -> list[float]:
        """Empirical quantiles with the split-conformal finite-sample correction: the upper levels
        round up and the lower ones down over n + 1 ranks, so a level-q quantile covers >= q."""
        v, n = self.sorted, len(self.sorted)
        out = []
        for q in levels:
            rank = math.ceil((n + 1) * q) if q >= 0.5 else math.floor((n + 1) * q)
            out.append(v[min(max(rank - 1, 0), n - 1)])
        return out


class _PriorTables:
    """Online statistics of log(duration + 1 ms): sliding-window medians per bucket, family, tool,
    normalized command text and overall (the priors); residuals against the prior per path named and
    per (program group, bucket or command) (what this source tree's calls took so far); the latest
    values per bucket; EWMAs of all calls', light calls' and each family's residuals (a proxy for how
    loaded the machine is right now)."""

    _MAX_KEYS = 8192

    def __init__(self, strength: float, window: int, default_z: float, group_strength: float = 1.0):
        self.strength = strength
        self.group_strength = group_strength
        self.window = window
        self.default_z = default_z
        self.windows: dict[tuple[str, str], _Window] = {}
        self.commands: OrderedDict[str, _Window] = OrderedDict()  # command text -> its log durations
        self.paths: OrderedDict[str, _Window] = OrderedDict()  # path -> residuals of calls naming it
        self.groups: OrderedDict[tuple[str, str], _Window] = OrderedDict()  # (group, "b:"/"c:" key) -> log durations
        self.recent: dict[str, deque[float]] = {}
        self.family_load: dict[str, float] = {}
        self.load = math.nan
        self.light_load = math.nan

    @staticmethod
    def _push(table: OrderedDict, key: Any, value: float, size: int, max_keys: int) -> None:
        w = table.pop(key, None) or _Window(size)
        w.add(value)
        table[key] = w  # most recently used last
        if len(table) > max_keys:
            table.popitem(last=False)

    def add(self, f: CallFeatures, z: float, group: str | None, live: bool = True) -> None:
        """Count one call of a program in `group` (None: unknown); `live` also moves the recency
        statistics (the calls of the other folds that seed a cross-fitting table are background,
        not the recent past)."""
        residual = z - self.prior(f.tool, f.family, f.bucket, group)
        for path in f.paths:
            self._push(self.paths, path, residual, 16, self._MAX_KEYS)
        if group is not None:
            self._push(self.groups, (group, "b:" + f.bucket), z, 16, 4 * self._MAX_KEYS)
            self._push(self.groups, (group, "c:" + f.command_key), z, 8, 4 * self._MAX_KEYS)
        if live:
            self.load = residual if self.load != self.load else 0.9 * self.load + 0.1 * residual
            if f.family not in _HEAVY_FAMILIES:
                ll = self.light_load
                self.light_load = residual if ll != ll else 0.8 * ll + 0.2 * residual
            fl = self.family_load.get(f.family)
            self.family_load[f.family] = residual if fl is None else 0.7 * fl + 0.3 * residual
            recent = self.recent.get(f.bucket)
            if recent is None:
                recent = self.recent[f.bucket] = deque(maxlen=_RECENT)
            recent.append(z)
        for key in (("*", ""), ("t", f.tool), ("f", f.family), ("b", f.bucket)):
            w = self.windows.get(key)
            if w is None:
                w = self.windows[key] = _Window(self.window)
            w.add(z)
        self._push(self.commands, f.command_key, z, 16, self._MAX_KEYS)

    def prior(self, tool: str, family: str, bucket: str, group: str | None = None) -> float:
        """The bucket's median in the program's group (its source tree) shrunk towards the bucket's
        median over all groups, shrunk towards its family's, its tool's, the global median:
        (n·median + strength·parent) / (n + strength) at each level."""
        w = self.windows.get(("*", ""))
        p = w.median() if w is not None else self.default_z
        k = self.strength
        for key in (("t", tool), ("f", family), ("b", bucket)):
            w = self.windows.get(key)
            if w is not None:
                n = len(w)
                p = (n * w.median() + k * p) / (n + k)
        if group is not None:
            w = self.groups.get((group, "b:" + bucket))
            if w is not None:
                n = len(w)
                p = (n * w.median() + self.group_strength * p) / (n + self.group_strength)
        return p


# Feature groups of the learned correction (names in order); the selection chooses among groups.
FEATURE_GROUPS: dict[str, tuple[str, ...]] = {
    "shape": NUMERIC_FIELDS,
    "prior": ("prior", "bucket_n", "bucket_iqr"),
    "program": ("prog_n", "prev_residual", "prev_z", "light_residual", "heavy_residual", "family_residual",
                "same_command_residual", "same_command_n", "same_bucket_residual"),
    "memory": ("command_residual", "command_n", "path_residual", "path_n", "group_bucket_last",
               "group_bucket_median", "group_bucket_n", "group_command_median"),
    "recent": ("load", "light_load", "family_load", "recent_bucket_residual", "last_bucket_residual"),
}
DEFAULT_FEATURE_GROUPS: tuple[str, ...] = ("shape", "prior", "program", "memory", "recent")
# The residuals the `blend` expert weighs (0 where unknown): the program's last run of the same
# command and its last call of the same bucket; its group's (source tree's) last call of the bucket
# and median run of the command; the median of earlier calls naming the same paths.
EVIDENCE: tuple[str, ...] = ("same_command", "same_bucket", "group_bucket", "group_command", "path")


class _Item:
    """One earlier call of a program, as the learned predictor needs it."""

    __slots__ = ("tool", "family", "bucket", "command_key", "z")

    def __init__(self, tool: str, family: str, bucket: str, command_key: str, z: float):
        self.tool, self.family, self.bucket, self.command_key, self.z = tool, family, bucket, command_key, z


def _row(f: CallFeatures, items: Sequence[_Item], group: str | None, tables: _PriorTables,
         groups: tuple[str, ...], evidence_mask: Sequence[bool]) -> tuple[list[float], float, list[float]]:
    """(feature row in FEATURE_GROUPS order of `groups`, the call's prior, its EVIDENCE residuals
    with 0 for what is unknown or masked). A history item's residual is against its bucket's
    *current* prior, so a history passed by the caller needs nothing stored. `group` is the
    program's group, None while unknown (a program's first call: predict learns it from history)."""
    nan = math.nan
    prior = tables.prior(f.tool, f.family, f.bucket, group)
    priors: dict[str, float] = {}
    prev_r = prev_z = same_r = bucket_r = nan
    n_same = 0
    light: list[float] = []
    heavy: list[float] = []
    family: list[float] = []
    for it in reversed(items):
        p = priors.get(it.bucket)
        if p is None:
            p = priors[it.bucket] = tables.prior(it.tool, it.family, it.bucket, group)
        r = it.z - p
        if prev_r != prev_r:
            prev_r, prev_z = r, it.z
        if it.command_key == f.command_key:
            n_same += 1
            if same_r != same_r:
                same_r = r
        if bucket_r != bucket_r and it.bucket == f.bucket:
            bucket_r = r
        target = heavy if it.family in _HEAVY_FAMILIES else light
        if len(target) < _RECENT:
            target.append(r)
        if it.family == f.family and len(family) < _RECENT:
            family.append(r)
    command = tables.commands.get(f.command_key)
    path_medians, path_n = [], 0
    for path in f.paths:
        w = tables.paths.get(path)
        if w is not None:
            path_medians.append(w.median())
            path_n += len(w)
    path_r = sum(path_medians) / len(path_medians) if path_medians else nan
    group_bucket = tables.groups.get((group, "b:" + f.bucket)) if group is not None else None
    group_command = tables.groups.get((group, "c:" + f.command_key)) if group is not None else None
    group_last = group_bucket.fifo[-1] - prior if group_bucket is not None else nan
    group_command_r = group_command.median() - prior if group_command is not None else nan
    evidence = [0.0 if v != v or not m else v
                for v, m in zip((same_r, bucket_r, group_last, group_command_r, path_r), evidence_mask)]
    row: list[float] = []
    for g in groups:
        if g == "shape":
            row += [float(getattr(f, k)) for k in NUMERIC_FIELDS]
        elif g == "prior":
            w = tables.windows.get(("b", f.bucket))
            row += [prior, math.log1p(len(w)) if w is not None else 0.0,
                    w.iqr() if w is not None and len(w) >= 4 else nan]
        elif g == "program":
            row += [math.log1p(len(items)), prev_r, prev_z,
                    sum(light) / len(light) if light else nan, sum(heavy) / len(heavy) if heavy else nan,
                    sum(family) / len(family) if family else nan, same_r, float(n_same), bucket_r]
        elif g == "memory":
            row += [(command.median() - prior) if command is not None else nan,
                    math.log1p(len(command)) if command is not None else 0.0, path_r, math.log1p(path_n),
                    group_last, group_bucket.median() - prior if group_bucket is not None else nan,
                    math.log1p(len(group_bucket)) if group_bucket is not None else 0.0, group_command_r]
        elif g == "recent":
            recent = tables.recent.get(f.bucket)
            row += [tables.load, tables.light_load, tables.family_load.get(f.family, nan),
                    (sorted(recent)[len(recent) // 2] - prior) if recent else nan,
                    (recent[-1] - prior) if recent else nan]
    return row, prior, evidence


def _convex_lad(e: np.ndarray, r: np.ndarray) -> list[float]:
    """argmin over w >= 0, sum(w) <= 1 of sum |r - e·w|, as a linear program (HiGHS)."""
    from scipy import sparse
    from scipy.optimize import linprog

    n, m = e.shape
    # variables: w (m), u+ (n), u- (n) >= 0 with e·w + u+ - u- = r; minimize sum(u+ + u-)
    cost = np.concatenate([np.zeros(m), np.ones(2 * n)])
    eye = sparse.identity(n, format="csr")
    a_eq = sparse.hstack([sparse.csr_matrix(e), eye, -eye], format="csr")
    a_ub = sparse.csr_matrix(np.concatenate([np.ones(m), np.zeros(2 * n)])[None, :])
    res = linprog(cost, A_ub=a_ub, b_ub=[1.0], A_eq=a_eq, b_eq=r, bounds=(0, None), method="highs")
    return res.x[:m].tolist() if res.success else [0.0] * m


class _CompiledTrees:
    """A fitted HistGradientBoostingRegressor (numeric features, identity link) as flat lists, walked
    in Python: bit-for-bit the same sums as `predict` for one row, without its ~0.7 ms of overhead."""

    __slots__ = ("baseline", "roots", "feature", "threshold", "left", "right", "missing_left", "leaf", "value")

    def __init__(self, model: Any):
        self.baseline = float(np.ravel(model._baseline_prediction)[0])
        self.roots: list[int] = []
        feature, threshold, left, right, missing_left, leaf, value = [], [], [], [], [], [], []
        for (tree,) in model._predictors:
            nodes = tree.nodes
            if np.any(nodes["is_categorical"]):
                raise ValueError("categorical splits are not compiled")
            offset = len(feature)
            self.roots.append(offset)
            feature += nodes["feature_idx"].tolist()
            threshold += nodes["num_threshold"].tolist()
            left += (nodes["left"] + offset).tolist()
            right += (nodes["right"] + offset).tolist()
            missing_left += nodes["missing_go_to_left"].astype(bool).tolist()
            leaf += nodes["is_leaf"].astype(bool).tolist()
            value += nodes["value"].tolist()
        self.feature, self.threshold, self.left, self.right = feature, threshold, left, right
        self.missing_left, self.leaf, self.value = missing_left, leaf, value

    def predict_one(self, x: Sequence[float]) -> float:
        feature, threshold, left, right = self.feature, self.threshold, self.left, self.right
        leaf, missing_left, value = self.leaf, self.missing_left, self.value
        total = self.baseline
        for i in self.roots:
            while not leaf[i]:
                v = x[feature[i]]
                if v <= threshold[i]:
                    i = left[i]
                elif v != v:  # NaN: the side the training's missing values went
                    i = left[i] if missing_left[i] else right[i]
                else:
                    i = right[i]
            total += value[i]
        return total


_GROUP_SUFFIX = re.compile(r"[-_]\d+$")


def program_group(program_id: str | None) -> str:
    """The group of a program for cross-fitting: its id without a trailing `-NNN`/`_NNN` (`toolz-001`
    -> `toolz`, `django__django-11099` -> `django__django`), so that programs on one source tree are
    held out together; an id without such a suffix is its own group."""
    if program_id is None:
        return ""
    return _GROUP_SUFFIX.sub("", program_id) or program_id


EXPERTS: tuple[str, ...] = ("bucket", "prior", "trees", "blend")


def _fit(model, x: np.ndarray, target: np.ndarray):
    """`model.fit` on rows where a feature may be missing everywhere (e.g. no call had a command):
    scikit-learn's binning fails on an all-NaN column, so such a column is trained as a constant
    (a tree cannot split on it either way; NaN at prediction time takes the missing-value branch)."""
    empty = np.isnan(x).all(axis=0)
    if empty.any():
        x = x.copy()
        x[:, empty] = 0.0
    return model.fit(x, target)


class LearnedPredictor(DurationPredictor):
    """A per-bucket prior and two learned corrections of it, chosen per call family online, with
    conformal quantiles (module docstring). The experts:
    - `bucket`: the prior without its group level: the bucket's median over all trees (the simple
      baseline, the fallback for noisy commands, where a few calls of one tree mislead);
    - `prior`: the prior alone, the group's (source tree's) median of the bucket included;
    - `trees`: prior + trees trained on the residual against the prior;
    - `blend`: the prior blended with EVIDENCE (convex weights per family) + trees trained on the
      residual against that blend.
    `blend` leans on what the stream has just shown (the latest call of the bucket anywhere, say):
    worth most when one repository's programs follow each other, misleading when programs of many
    repositories interleave. Training cannot tell which stream the deployment is, so the choice is
    made online, per family, by each expert's recent absolute error (an EWMA over about
    `selection_span` calls of the family)."""

    name = "learned"

    def __init__(self, levels: Sequence[float] = QUANTILE_LEVELS, *,
                 feature_groups: Sequence[str] = DEFAULT_FEATURE_GROUPS, evidence: Sequence[str] = EVIDENCE,
                 experts: Sequence[str] = EXPERTS, min_train: int = 50, min_bucket_samples: int = 5,
                 refit_min: int = 50, refit_fraction: float = 0.25, max_train: int = 4000, max_iter: int = 100,
                 max_leaf_nodes: int = 7, learning_rate: float = 0.05, min_samples_leaf: int = 20,
                 l2_regularization: float = 0.0, prior_strength: float = 3.0, group_strength: float = 1.0,
                 prior_window: int = 2000,
                 cv_folds: int = 4, group_by: str = "prefix", error_window: int = 500,
                 min_family_errors: int = 30, selection_span: int = 100, random_state: int = 0,
                 max_programs: int = 4096, fit_threads: int | None = 1, prior_s: float = 1.0):
        levels = tuple(sorted(float(q) for q in levels))
        if len(levels) < 2 or levels[0] <= 0 or levels[-1] >= 1 or len(set(levels)) != len(levels):
            raise ValueError("levels must be at least two distinct quantile levels inside (0, 1)")
        if not feature_groups or not set(feature_groups) <= set(FEATURE_GROUPS):
            raise ValueError(f"feature_groups must be a non-empty subset of {list(FEATURE_GROUPS)}")
        if not set(evidence) <= set(EVIDENCE):
            raise ValueError(f"evidence must be a subset of {list(EVIDENCE)}")
        if not experts or not set(experts) <= set(EXPERTS):
            raise ValueError(f"experts must be a non-empty subset of {list(EXPERTS)}")
        if group_by not in ("prefix", "program"):
            raise ValueError("group_by must be 'prefix' or 'program'")
        self.levels = levels
        self.feature_groups = tuple(g for g in FEATURE_GROUPS if g in feature_groups)
        self.evidence_mask = tuple(name in evidence for name in EVIDENCE)
        self.experts = tuple(e for e in EXPERTS if e in experts)
        self.min_train = min_train
        self.min_bucket_samples = min_bucket_samples
        self.refit_min = refit_min
        self.refit_fraction = refit_fraction
        self.max_train = max_train
        self.max_programs = max_programs
        self.prior_strength = prior_strength
        self.group_strength = group_strength
        self.prior_window = prior_window
        self.cv_folds = cv_folds
        self.group_by = group_by
        self.error_window = error_window
        self.min_family_errors = min_family_errors
        self.selection_span = selection_span
        self.prior_s = prior_s
        self.fit_threads = fit_threads
        self._controller: Any = None
        self._features = FeatureCache()
        self._tree_params = dict(max_iter=max_iter, max_leaf_nodes=max_leaf_nodes, learning_rate=learning_rate,
                                 min_samples_leaf=min_samples_leaf, l2_regularization=l2_regularization,
                                 random_state=random_state, early_stopping=False)
        self._reset()

    @property
    def feature_names(self) -> tuple[str, ...]:
        return tuple(name for g in self.feature_groups for name in FEATURE_GROUPS[g])

    def _new_tables(self) -> _PriorTables:
        return _PriorTables(self.prior_strength, self.prior_window, offset_log(self.prior_s), self.group_strength)

    def _reset(self) -> None:
        self._ecdfs = PerBucketECDFPredictor(self.min_bucket_samples, prior_s=self.prior_s)
        self._tables = self._new_tables()
        self._programs: OrderedDict[str, deque[_Item]] = OrderedDict()
        self._rows: deque[tuple[CallFeatures, float, str | None]] = deque(maxlen=self.max_train)
        self._trees: dict[str, _CompiledTrees] | None = None  # expert -> its correction
        self._blend: dict[str, list[float]] = {}  # family ("" = all) -> convex weights of EVIDENCE
        self._trained_buckets: frozenset[str] = frozenset()
        # Per expert, per family ("" = all): signed log errors (the conformal quantiles) and an EWMA
        # of absolute errors (the online choice of expert).
        self._errors: dict[str, dict[str, _Window]] = {}
        self._scores: dict[str, dict[str, float]] = {}
        self._trained_rows = 0
        self._since_fit = 0

    @property
    def trained(self) -> bool:
        return self._trees is not None

    # --- the experts ----------------------------------------------------------------------------------

    def _blend_base(self, family: str, prior: float, evidence: Sequence[float]) -> float:
        weights = self._blend.get(family) or self._blend.get("")
        if not weights:
            return prior
        return prior + sum(w * e for w, e in zip(weights, evidence))

    def _centres(self, family: str, row: Sequence[float], prior: float, bucket_prior: float,
                 evidence: Sequence[float], only: str | None = None) -> dict[str, float]:
        """Each expert's predicted median log duration (or only that of `only`)."""
        out = {}
        for expert in self.experts if only is None else (only,):
            if expert == "bucket":
                out[expert] = bucket_prior
            elif expert == "prior":
                out[expert] = prior
            elif expert == "trees":
                out[expert] = prior + self._trees["trees"].predict_one(row)
            else:
                out[expert] = self._blend_base(family, prior, evidence) + self._trees["blend"].predict_one(row)
        return out

    def _record_error(self, expert: str, family: str, error: float) -> None:
        windows = self._errors.setdefault(expert, {})
        scores = self._scores.setdefault(expert, {})
        rate = 1.0 / self.selection_span
        for key in (family, ""):
            w = windows.get(key)
            if w is None:
                w = windows[key] = _Window(self.error_window)
            w.add(error)
            old = scores.get(key)
            scores[key] = abs(error) if old is None else old + rate * (abs(error) - old)

    def _family_key(self, family: str) -> str:
        w = self._errors[self.experts[0]].get(family)
        return family if w is not None and len(w) >= self.min_family_errors else ""

    def chosen_expert(self, family: str) -> str:
        """The expert whose recent absolute error on this call family is lowest (ties: the simpler)."""
        key = self._family_key(family)
        return min(self.experts, key=lambda e: self._scores[e][key])

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
        f = self._features(record.tool, record.args)
        z = offset_log(record.duration_s)
        items: Sequence[_Item] = ()
        if record.program_id is not None:
            items = self._programs.get(record.program_id, ())
        if self._trees is not None and f.bucket in self._trained_buckets:
            # The errors this call would have had: the online half of the conformal windows and scores.
            group = self._group(record.program_id) if items else None
            row, prior, evidence = _row(f, items, group, self._tables, self.feature_groups, self.evidence_mask)
            bucket_prior = self._tables.prior(f.tool, f.family, f.bucket)
            for expert, centre in self._centres(f.family, row, prior, bucket_prior, evidence).items():
                self._record_error(expert, f.family, z - centre)
        self._ecdfs.update_bucket(f.bucket, record)
        self._tables.add(f, z, self._group(record.program_id))
        self._rows.append((f, z, record.program_id))
        self._since_fit += 1
        if record.program_id is not None:
            queue = self._programs.pop(record.program_id, None) or deque(maxlen=HISTORY_WINDOW)
            queue.append(_Item(f.tool, f.family, f.bucket, f.command_key, z))
            self._programs[record.program_id] = queue  # most recently used last
            if len(self._programs) > self.max_programs:
                self._programs.popitem(last=False)

    def _group(self, program_id: str | None) -> str | None:
        if program_id is None:
            return None
        return program_group(program_id) if self.group_by == "prefix" else program_id

    def _fold_ids(self, rows: Sequence[tuple[CallFeatures, float, str | None]]) -> list[int]:
        """Groups dealt round-robin (in order of first appearance) into at most `cv_folds` folds; with
        a single group, contiguous blocks of rows instead."""
        order: dict[str, int] = {}
        groups = [self._group(pid) for _, _, pid in rows]
        for g in groups:
            order.setdefault(g, len(order))
        if len(order) >= 2:
            k = min(self.cv_folds, len(order))
            return [order[g] % k for g in groups]
        k = max(2, self.cv_folds)
        return [i * k // len(rows) for i in range(len(rows))]

    def training_rows(self, rows: Sequence[tuple[CallFeatures, float, str | None]] | None = None
                      ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(X, log targets, priors, bucket priors (without the group level), EVIDENCE rows, fold ids)
        of the stored rows, cross-fitted: each
        fold's rows see tables of the other folds plus their own fold's earlier rows, and their
        programs' own history."""
        rows = list(self._rows) if rows is None else list(rows)
        folds = self._fold_ids(rows)
        x: list[list[float]] = [[]] * len(rows)
        priors = np.zeros(len(rows))
        bucket_priors = np.zeros(len(rows))
        evidence = np.zeros((len(rows), len(EVIDENCE)))
        for k in sorted(set(folds)):
            tables = self._new_tables()
            for (f, z, pid), fold in zip(rows, folds):
                if fold != k:
                    tables.add(f, z, self._group(pid), live=False)
            programs: dict[str | None, list[_Item]] = {}
            for i, ((f, z, pid), fold) in enumerate(zip(rows, folds)):
                if fold != k:
                    continue
                items = programs.setdefault(pid, []) if pid is not None else []
                group = self._group(pid) if items else None
                bucket_priors[i] = tables.prior(f.tool, f.family, f.bucket)
                x[i], priors[i], evidence[i] = _row(f, items[-HISTORY_WINDOW:], group, tables,
                                                    self.feature_groups, self.evidence_mask)
                tables.add(f, z, self._group(pid))
                items.append(_Item(f.tool, f.family, f.bucket, f.command_key, z))
        y = np.array([z for _, z, _ in rows])
        return np.array(x, dtype=float), y, priors, bucket_priors, evidence, np.array(folds)

    def _fit_blend(self, families: Sequence[str], residuals: np.ndarray,
                   evidence: np.ndarray) -> dict[str, list[float]]:
        """Per family, the convex weights (w >= 0, sum w <= 1, the rest on the prior) of EVIDENCE that
        minimize the absolute error of prior + w · evidence on the cross-fitted rows, which collinear
        evidence cannot blow up; all families' weights where a family has fewer than
        `min_family_errors` rows with any evidence."""
        has = np.any(evidence != 0, axis=1)
        fam = np.array(families)
        weights = {"": _convex_lad(evidence[has], residuals[has]) if has.sum() >= self.min_family_errors
                   else [0.0] * evidence.shape[1]}
        for family in set(families):
            mask = has & (fam == family)
            if mask.sum() >= self.min_family_errors:
                weights[family] = _convex_lad(evidence[mask], residuals[mask])
        return weights

    def _refit(self) -> None:
        from sklearn.ensemble import HistGradientBoostingRegressor  # imported on first training only

        rows = list(self._rows)
        x, y, priors, bucket_priors, evidence, folds = self.training_rows(rows)
        families = [f.family for f, _, _ in rows]
        bases = {"prior": priors}
        if "trees" in self.experts:
            bases["trees"] = priors
        if "blend" in self.experts:
            self._blend = self._fit_blend(families, y - priors, evidence)
            bases["blend"] = np.array([self._blend_base(fam, p, e)
                                       for fam, p, e in zip(families, priors, evidence.tolist())])
        centres = {"prior": priors, "bucket": bucket_priors}
        trees = {}
        with self._threads(self.fit_threads):
            for expert in self.experts:
                if expert in ("prior", "bucket"):
                    continue
                base, target = bases[expert], y - bases[expert]
                oof = np.empty(len(rows))  # cross-fitted predictions: honest errors to start from
                for k in np.unique(folds):
                    inside = folds != k
                    model = HistGradientBoostingRegressor(loss="absolute_error", **self._tree_params)
                    oof[~inside] = base[~inside] + _fit(model, x[inside], target[inside]).predict(x[~inside])
                centres[expert] = oof
                model = HistGradientBoostingRegressor(loss="absolute_error", **self._tree_params)
                trees[expert] = _CompiledTrees(_fit(model, x, target))
        first = self._trees is None
        self._trees = trees
        if first:
            # Seeded once, with the cross-fitted errors; later refits keep the online errors, which
            # are what the deployment's stream says about each expert (a refit trains on rows that
            # cannot show how the stream is ordered).
            self._errors, self._scores = {}, {}
            for i, family in enumerate(families):
                for expert in self.experts:
                    self._record_error(expert, family, float(y[i] - centres[expert][i]))
            for expert in self.experts:  # start each score at its mean, not at the EWMA's tail
                for key, w in self._errors[expert].items():
                    self._scores[expert][key] = w.mean_abs()
        self._trained_buckets = frozenset(f.bucket for f, _, _ in rows)
        self._trained_rows = len(rows)
        self._since_fit = 0

    def _threads(self, limit: int | None) -> contextlib.AbstractContextManager:
        """Limit sklearn's OpenMP threads. The trees are small: on a shared machine, OpenMP threads that
        spin while another process holds the other cores made a refit 30x slower.
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

    def _items(self, history: History | None) -> list[_Item]:
        out = []
        for h in list(history or ())[-HISTORY_WINDOW:]:
            if isinstance(h, HistoryItem):
                z = offset_log(math.exp(h.log_duration))
                out.append(_Item(h.tool, h.family, h.bucket, h.command_key, z))
            else:
                f = self._features(h.tool, h.args)
                out.append(_Item(f.tool, f.family, f.bucket, f.command_key, offset_log(h.duration_s)))
        return out

    def predict(self, tool: str, args: Mapping[str, Any] | None,
                history: History | None = None) -> DurationDistribution:
        f = self._features(tool, args)
        if self._trees is None or f.bucket not in self._trained_buckets:
            return self._ecdfs.predict_bucket(f.bucket, str(tool))
        key = self._family_key(f.family)
        expert = min(self.experts, key=lambda e: self._scores[e][key])
        group = None
        if history and isinstance(history[-1], ToolCallRecord) and history[-1].program_id is not None:
            group = self._group(history[-1].program_id)
        if expert == "bucket":
            centre = self._tables.prior(f.tool, f.family, f.bucket)
        elif expert == "prior":
            centre = self._tables.prior(f.tool, f.family, f.bucket, group)
        else:
            row, prior, evidence = _row(f, self._items(history), group, self._tables, self.feature_groups,
                                        self.evidence_mask)
            centre = self._centres(f.family, row, prior, prior, evidence, only=expert)[expert]
        offsets = self._errors[expert][key].conformal(self.levels)
        return QuantileDistribution(self.levels, [max(math.exp(centre + e) - LOG_OFFSET_S, MIN_DURATION_S)
                                                  for e in offsets])
