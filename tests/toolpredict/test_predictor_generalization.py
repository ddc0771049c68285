"""The mechanisms behind the generalizing duration predictor and its evaluation: conformal calibration,
leave-one-group-out splits, the baselines' arithmetic, online updates, the compiled trees, the
cross-fitted training rows, and the streaming protocol (predict before reveal)."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest

from benchmarks.toolpredict_eval import (BASELINES, TreeBucketMedianPredictor, _make, evaluate, repo_folds,
                                         select_config, stream, time_fold)
from toolpredict import LearnedPredictor, PointMass, QuantileDistribution, ToolCallRecord, make_predictor
from toolpredict.features import FeatureCache, extract_features, offset_log
from toolpredict.learned import _CompiledTrees, _Window, program_group


def _rec(command: str, seconds: float, program: str | None = None, seq: int | None = None) -> ToolCallRecord:
    return ToolCallRecord("bash", {"command": command}, seconds, program, seq)


# --- conformal calibration ------------------------------------------------------------------------------

def test_conformal_window_ranks_are_finite_sample_corrected():
    w = _Window(maxlen=1000)
    for v in range(1, 20):  # 1..19: n = 19, so level q covers ceil(20 q) of them
        w.add(float(v))
    assert w.conformal([0.5, 0.9, 0.95]) == [10.0, 18.0, 19.0]
    assert w.conformal([0.05, 0.1, 0.25]) == [1.0, 2.0, 5.0]  # lower levels round down
    assert w.median() == 10.0 and w.mean_abs() == pytest.approx(10.0)
    small = _Window(maxlen=3)
    for v in (5.0, -1.0, 2.0, 7.0):  # the window keeps the latest three: -1, 2, 7
        small.add(v)
    assert small.sorted == [-1.0, 2.0, 7.0] and small.mean_abs() == pytest.approx(10 / 3)


_KINDS = {"cat src/mod.py": 0.2, "pytest tests/test_a.py -q": 0.8, "pytest -q": 3.0,
          "pip install --no-deps --no-build-isolation -e .": 2.0}
SIGMA = 0.3


def _lognormal_programs(n_programs: int, seed: int, prefix: str) -> list[ToolCallRecord]:
    """Durations lognormal around a median per command kind with a known sigma; nothing else to learn."""
    rng = random.Random(seed)
    out = []
    for p in range(n_programs):
        for seq in range(12):
            command = rng.choice(list(_KINDS))
            out.append(_rec(command, _KINDS[command] * math.exp(rng.gauss(0, SIGMA)), f"{prefix}{p % 4}-{p:03d}", seq))
    return out


@pytest.fixture(scope="module")
def calibrated() -> tuple[LearnedPredictor, list[ToolCallRecord]]:
    train = _lognormal_programs(40, seed=1, prefix="tree")
    return LearnedPredictor(max_iter=40).fit(train), _lognormal_programs(30, seed=2, prefix="new")


def test_quantiles_match_known_lognormal_quantiles(calibrated):
    predictor, _ = calibrated
    z95 = 1.6448536269514722
    for command, median in _KINDS.items():
        d = predictor.predict("bash", {"command": command})
        assert isinstance(d, QuantileDistribution)
        assert d.median() == pytest.approx(median, rel=0.12)
        assert d.quantile(0.95) == pytest.approx(median * math.exp(z95 * SIGMA), rel=0.2)
        assert d.quantile(0.05) == pytest.approx(median * math.exp(-z95 * SIGMA), rel=0.2)


def test_p95_covers_about_95_percent_of_unseen_programs(calibrated):
    predictor, test = calibrated
    history: dict[str, list[ToolCallRecord]] = {}
    covered = []
    for r in test:
        h = history.setdefault(r.program_id, [])
        covered.append(r.duration_s <= predictor.predict(r.tool, r.args, h).quantile(0.95))
        h.append(r)
    assert 0.90 <= sum(covered) / len(covered) <= 0.99


# --- splits ---------------------------------------------------------------------------------------------

def test_program_group_strips_a_trailing_number_only():
    assert program_group("toolz-001") == "toolz"
    assert program_group("django__django-11099") == "django__django"
    assert program_group("sess_42") == "sess"
    assert program_group("p12") == "p12"  # no separator: its own group
    assert program_group("3f2a9c") == "3f2a9c"
    assert program_group(None) == ""


def test_leave_one_repository_out_folds():
    records = [_rec("ls", 0.01 * i, f"{tree}-{i:03d}", 0)
               for i, tree in enumerate(["a", "b", "a", "c", "b", "a", "c"])]
    folds = repo_folds(records)
    assert [f.name for f in folds] == ["a", "b", "c"]
    for fold in folds:
        assert {program_group(r.program_id) for r in fold.test} == {fold.name}
        assert fold.name not in {program_group(r.program_id) for r in fold.train}
        assert len(fold.train) + len(fold.test) == len(records)
        # both sides keep the original (time) order
        for side in (fold.train, fold.test):
            assert [records.index(r) for r in side] == sorted(records.index(r) for r in side)
    assert sorted(id(r) for f in folds for r in f.test) == sorted(id(r) for r in records)
    with pytest.raises(ValueError):
        repo_folds(records[:1])


def test_time_split():
    records = [_rec("ls", 0.01, f"t-{i:03d}") for i in range(10)]
    (fold,) = time_fold(records, 0.6)
    assert fold.train == records[:6] and fold.test == records[6:]
    with pytest.raises(ValueError):
        time_fold(records, 1.0)


def test_selection_never_sees_the_held_out_tree(monkeypatch):
    import benchmarks.toolpredict_eval as ev

    seen: list[set[str]] = []
    real = ev.stream

    def spy(predictor, train, test, online=True):
        seen.append({program_group(r.program_id) for r in [*train, *test]})
        return real(predictor, train, test, online)

    monkeypatch.setattr(ev, "stream", spy)
    records = _lognormal_programs(24, seed=3, prefix="t")[:200]  # trees t0..t3
    (held_out, *_) = repo_folds(records)
    options, candidates = select_config(held_out.train, grid=({}, {"max_iter": 10}))
    assert len(candidates) == 2 and options in ({}, {"max_iter": 10})
    assert seen and all(held_out.name not in trees for trees in seen)


# --- baselines on a hand-made dataset -------------------------------------------------------------------

HAND = [
    _rec("grep -n foo a.py", 0.010, "x-001", 0),
    _rec("grep -rn foo .", 0.030, "x-001", 1),
    _rec("pytest tests/test_a.py -q", 1.0, "x-001", 2),
    _rec("pytest tests/test_a.py -q", 3.0, "y-002", 0),
    _rec("pytest tests/test_b.py -q", 2.0, "y-002", 1),
]


def _fit(name: str):
    return _make(*BASELINES[name]).fit(HAND)


def test_baselines_compute_what_they_say():
    verb = _fit("verb_median")  # grep: 0.010, 0.030 -> the lower median 0.010; pytest: 1, 3, 2 -> 2
    assert verb.predict("bash", {"command": "grep x y"}).median() == 0.010
    assert verb.predict("bash", {"command": "pytest -q"}).median() == 2.0
    assert verb.predict("bash", {"command": "python -m pytest -q"}).median() == 1.0  # unseen verb: all calls
    bucket = _fit("bucket_median")  # pytest_path: 1, 3, 2; light::grep::recursive: 0.030 alone
    assert bucket.predict("bash", {"command": "pytest tests/test_c.py"}).median() == 2.0
    assert bucket.predict("bash", {"command": "grep -rn bar src"}).median() == 0.030
    mean = _fit("per_tool_mean")
    assert mean.predict("bash", {}).mean() == pytest.approx((0.01 + 0.03 + 1 + 3 + 2) / 5)
    ecdf = make_predictor("per_tool_ecdf", min_samples=1).fit(HAND)
    assert ecdf.predict("bash", {}).quantile(0.8) == 2.0
    last = _fit("last_same_command")
    history = HAND[3:5]  # y-002 ran test_a in 3.0 s
    assert last.predict("bash", {"command": "pytest  tests/test_a.py -q"}, history).median() == 3.0
    assert isinstance(last.predict("bash", {"command": "pytest tests/test_a.py -q"}, history), PointMass)
    assert last.predict("bash", {"command": "pytest tests/test_z.py -q"}, history).median() == 2.0  # bucket
    tree = _fit("tree_bucket_median")  # the tree of the program named by the history
    assert tree.predict("bash", {"command": "pytest tests/test_c.py"}, HAND[:1]).median() == 1.0  # x: 1.0
    assert tree.predict("bash", {"command": "pytest tests/test_c.py"}, HAND[3:4]).median() == 2.0  # y: 2, 3
    assert tree.predict("bash", {"command": "pytest tests/test_c.py"}).median() == 2.0  # no history: all trees


def test_stream_predicts_before_it_reveals():
    events: list[tuple[str, float]] = []

    class Spy(TreeBucketMedianPredictor):
        def predict(self, tool, args, history=None):
            events.append(("predict", len(history or ())))
            return super().predict(tool, args, history)

        def update(self, record):
            events.append(("update", record.duration_s))
            super().update(record)

    scores = stream(Spy(), HAND[:2], HAND[2:], online=True)
    test_events = events[2:]  # after the two training updates
    assert test_events == [("predict", 2), ("update", 1.0), ("predict", 0), ("update", 3.0),
                           ("predict", 1), ("update", 2.0)]
    assert len(scores.abs_err) == 3
    # The first held-out call: no pytest call seen anywhere yet, so the per-tool ECDF of the two grep
    # calls answers (lower median 0.010); errors are measured in offset-log space.
    assert scores.abs_err[0] == pytest.approx(abs(offset_log(0.010) - offset_log(1.0)))


# --- the learned predictor ------------------------------------------------------------------------------

def test_compiled_trees_equal_sklearn():
    from sklearn.ensemble import HistGradientBoostingRegressor

    rng = np.random.default_rng(0)
    x = rng.normal(size=(400, 6))
    x[rng.random(x.shape) < 0.2] = np.nan  # missing values take the learned side
    y = np.nan_to_num(x[:, 0]) * 2 + np.where(np.isnan(x[:, 1]), 1.0, 0.0) + rng.normal(size=400) * 0.1
    model = HistGradientBoostingRegressor(loss="absolute_error", max_iter=30, max_leaf_nodes=7,
                                          early_stopping=False).fit(x, y)
    compiled = _CompiledTrees(model)
    assert [compiled.predict_one(row) for row in x.tolist()] == pytest.approx(model.predict(x).tolist(), abs=1e-12)


def test_observe_moves_a_prediction():
    # No refit (the online tables alone move it), and no `bucket` expert, which ignores the tree by design.
    clone = LearnedPredictor(max_iter=40, refit_min=10_000, experts=("prior", "trees", "blend"))
    clone.fit(_lognormal_programs(40, seed=1, prefix="tree"))
    call = ("bash", {"command": "pytest -q"})
    history = [_rec("ls", 0.004, "slow-001", 0)]
    before = clone.predict(*call, history).median()
    for i in range(6):
        clone.observe(_rec("pytest -q", 12.0, f"slow-{i + 1:03d}", 1))  # the same tree, 4x slower suites
    after = clone.predict(*call, history).median()
    assert after > 1.5 * before
    # another tree is not dragged along: the tree's own memory carries the move
    elsewhere = clone.predict(*call, [_rec("ls", 0.004, "other-001", 0)]).median()
    assert elsewhere < after / 1.3


def test_program_history_moves_a_prediction():
    # Programs that run everything 0.5x, 1x or 2x as long: a program's earlier calls tell which.
    rng = random.Random(4)
    records = []
    for p in range(60):
        scale = rng.choice([0.5, 1.0, 2.0])
        for seq in range(12):
            command = rng.choice(list(_KINDS))
            records.append(_rec(command, _KINDS[command] * scale * math.exp(rng.gauss(0, 0.1)),
                                f"tree{p % 4}-{p:03d}", seq))
    predictor = LearnedPredictor(max_iter=60).fit(records)
    call = ("bash", {"command": "pytest tests/test_a.py -q"})
    slow = [_rec("pytest tests/test_a.py -q", 4.0, "tree0-900", 0)]
    fast = [_rec("pytest tests/test_a.py -q", 0.2, "tree0-900", 0)]
    assert predictor.predict(*call, slow).median() > predictor.predict(*call, fast).median()


def test_training_rows_are_cross_fitted_by_group():
    # Two trees whose pytest suites differ 10x; a row's prior must come from the *other* tree.
    rows = [_rec("pytest -q", 1.0, f"fast-{i:03d}", 0) for i in range(30)] + \
           [_rec("pytest -q", 10.0, f"slow-{i:03d}", 0) for i in range(30)]
    p = LearnedPredictor(min_train=10_000, cv_folds=2).fit(rows)  # untrained: rows kept, no trees
    x, y, priors, bucket_priors, evidence, folds = p.training_rows()
    assert set(folds[:30]) == {folds[0]} and set(folds[30:]) == {folds[30]} and folds[0] != folds[30]
    assert bucket_priors[0] == pytest.approx(offset_log(10.0), abs=1e-9)  # fast's first row: slow's median
    assert bucket_priors[30] == pytest.approx(offset_log(1.0), abs=1e-9)
    assert y[0] == pytest.approx(offset_log(1.0))
    # a program's first call knows no group; each row here is a program's first call
    assert np.all(evidence == 0.0)


def test_feature_cache_returns_what_extraction_returns():
    cache = FeatureCache(max_entries=2)
    for command in ("ls -la", "pytest -q", "ls -la", "cat a.py", "pytest -q"):
        assert cache("bash", {"command": command}) == extract_features("bash", {"command": command})
    assert len(cache._entries) == 2
    assert cache("get_weather", {"city": "Paris"}).bucket == "get_weather"


def test_evaluate_reports_every_baseline_and_the_target():
    records = _lognormal_programs(16, seed=5, prefix="r")
    report = evaluate(records, "repo", models=("bucket_median", "last_same_command", "learned"), select=False)
    assert set(report["models"]) == {"bucket_median", "last_same_command", "learned"}
    assert report["n_test"] == len(records) and len(report["folds"]) == 4
    target = report["target"]["issue_baselines"]
    best = min(("bucket_median", "last_same_command"), key=lambda m: report["models"][m]["log_mae"])
    assert target["best_baseline"] == best
    assert target["log_mae_reduction"] == pytest.approx(
        1 - report["models"]["learned"]["log_mae"] / report["models"][best]["log_mae"])
    for m in report["models"].values():
        assert m["p50_coverage"] <= m["p90_coverage"] <= m["p95_coverage"] <= 1
        assert math.isfinite(m["log_mae"]) and m["log_mae"] >= 0
