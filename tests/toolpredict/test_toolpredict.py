"""toolpredict: call features, duration distributions, predictors, TTL policies and the evaluate CLI."""

from __future__ import annotations

import json
import math
import pickle
import random
from pathlib import Path

import numpy as np
import pytest

from benchmarks.collect_timings import ProgramGenerator, Tree
from benchmarks.toolpredict_eval import main as evaluate_main
from toolpredict import (CostModelTTL, DurationDistribution, EmpiricalCDF, FixedTTL, LearnedPredictor,
                         PerToolECDFPredictor, PerToolMeanPredictor, PointMass, QuantileDistribution,
                         ToolCallRecord, TTLContext, extract_features, history_features, load_predictor,
                         make_advisor, make_policy, make_predictor, memoryfulness, optimal_ttl, read_records)
from toolpredict.features import HISTORY_FIELDS, HistoryItem

DATA = Path(__file__).parents[2] / "toolpredict" / "data" / "tool_timings.jsonl"


# --- features -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("command, bucket", [
    ("cat setup.py", "bash::light::cat"),
    ("cd /repo && cat a.py && echo --- && cat b.py", "bash::light::cat::chained"),
    ("ls -la src/", "bash::light::ls"),
    ("grep -rn 'def foo' --include='*.py' .", "bash::light::grep::recursive"),
    ("grep -n foo a.py | head -5", "bash::light::grep::chained"),
    ("sed -n '10,80p' src/pkg/mod.py", "bash::light::sed"),
    ("find . -name '*.py'", "bash::find::with_name_basic"),
    ("find . -name '*.py' | head -20", "bash::find::with_name_pipe"),
    ("find . -name '*.py' -exec grep -l foo {} \\;", "bash::find::exec_grep"),
    ("find . -type d", "bash::find::dir_only"),
    ("git log --oneline -5", "bash::git::log"),
    ("git -C repo status", "bash::git::-C"),
    ("python -m pytest tests/test_x.py::TestA::test_b -q", "bash::python::pytest_single_test"),
    ("cd /repo && python -m pytest -k 'foo and not bar' tests/", "bash::python::pytest_single_test"),
    ("pytest tests/test_x.py -x -q", "bash::python::pytest_path"),
    ("PYTHONPATH=. timeout 60 python3 -m pytest tests/test_a.py 2>&1 | tail -20", "bash::python::pytest_path"),
    ("pytest -q", "bash::python::pytest_full_discovery"),
    ("python -m pytest tests/", "bash::python::pytest_full_discovery"),
    ("python -m unittest discover", "bash::python::unittest_discover"),
    ("pip install --no-deps --no-build-isolation -e .", "bash::pip::editable_local::no_build_iso"),
    ("cd /repo && pip install -e .", "bash::pip::editable_local::default"),
    ("pip install -e '.[dev]'", "bash::pip::editable_extras::default"),
    ("pip install --no-deps --no-build-isolation .", "bash::pip::local_path::no_build_iso"),
    ("pip install requests", "bash::pip::pypi::single"),
    ("pip install numpy scipy", "bash::pip::pypi::multi_pkg"),
    ("pip uninstall -y six", "bash::pip::uninstall"),
    ("python -c 'import six; print(six.__version__)'", "bash::python::interactive_short"),
    ("python reproduce_issue.py", "bash::python::script_repro"),
    ("python - << 'EOF'\nimport os\nprint(os.getcwd())\nEOF", "bash::python::interactive_short"),
    ("cat > /tmp/x.py << 'EOF'\nprint('a && b | c')\nEOF\npython /tmp/x.py", "bash::python::script_other"),
    ("python setup.py develop", "bash::python::setup_dev_build"),
    ("python -m mypy src", "bash::python::module_mypy"),
    ("make test", "bash::other::make"),
    ("cd /tmp", "bash::light::cd"),
    ("", "bash::empty"),
    ("echo 'unterminated && pytest", "bash::light::echo"),
])
def test_bucket_of_shell_commands(command, bucket):
    assert extract_features("bash", {"command": command}).bucket == bucket


def test_argument_shape_features():
    command = "cd /r && PYTHONPATH=. python -m pytest a/b/test_c.py::T::t -x -q | tail -5"
    f = extract_features("bash", {"command": command})
    assert (f.family, f.verb, f.pytest_kind, f.has_node_id, f.has_x, f.has_q, f.has_k) == \
        ("bash::python", "python", 3, 1, 1, 1, 0)
    assert (f.has_cd, f.has_env_prefix, f.n_pipes, f.n_chain, f.n_segments) == (1, 1, 1, 1, 3)
    assert f.n_paths == 1 and f.path_depth_max == 3
    f = extract_features("bash", {"command": "sed -n '1,250p' src/pkg/mod.py"})
    assert f.max_number_log == pytest.approx(math.log1p(250)) and f.path_depth_max == 3
    f = extract_features("bash", {"command": "python - <<'EOF'\n" + "x = 1\n" * 30 + "EOF"})
    assert f.heredoc_chars > 150 and f.bucket == "bash::python::interactive_medium"
    f = extract_features("bash", {"command": "pip install --no-deps --no-build-isolation -e ."})
    assert (f.editable, f.no_deps, f.no_build_isolation, f.n_packages) == (1, 1, 1, 1)


def test_argv_and_non_shell_tools():
    assert extract_features("bash", {"argv": ["bash", "-c", "ls -la"]}).bucket == "bash::light::ls"
    assert extract_features("bash", {"argv": ["python", "-m", "pytest", "-q"]}).bucket == \
        "bash::python::pytest_full_discovery"
    f = extract_features("str_replace_editor", {"command": "view", "path": "/repo/a/b.py"})
    assert (f.bucket, f.is_shell, f.path_depth_max) == ("str_replace_editor::view", 0, 3)
    assert extract_features("get_weather", {"city": "Paris"}).bucket == "get_weather"


def test_extraction_never_raises():
    rng = random.Random(0)
    alphabet = "ab '\"\\|&;<>()$`#\n-=/.:*"
    for _ in range(500):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 40)))
        f = extract_features("bash", {"command": text})
        assert f.bucket.startswith("bash::")
    for args in (None, {"command": 3}, {"argv": []}, {"x": object()}):
        extract_features("bash", args)


def test_history_features():
    f = extract_features("bash", {"command": "pytest tests/test_a.py -q"})
    other = extract_features("bash", {"command": "cat a.py"})
    history = [HistoryItem("bash", f.bucket, f.command_key, math.log(0.5)),
               HistoryItem("bash", other.bucket, other.command_key, math.log(0.01)),
               HistoryItem("bash", f.bucket, "pytest other", math.log(2.0))]
    h = dict(zip(HISTORY_FIELDS, history_features(f, history), strict=True))
    assert h["same_bucket_n"] == pytest.approx(math.log1p(2))
    assert h["same_bucket_mean"] == pytest.approx((math.log(0.5) + math.log(2.0)) / 2)
    assert h["same_bucket_last"] == pytest.approx(math.log(2.0))
    assert h["same_command_last"] == pytest.approx(math.log(0.5))
    assert h["same_tool_n"] == pytest.approx(math.log1p(3)) and h["prog_last"] == pytest.approx(math.log(2.0))
    empty = dict(zip(HISTORY_FIELDS, history_features(f, []), strict=True))
    assert empty["prog_calls"] == empty["same_bucket_n"] == empty["same_tool_n"] == 0.0
    assert all(math.isnan(v) for k, v in empty.items() if not k.endswith(("_n", "_calls")))


# --- distributions --------------------------------------------------------------------------------------

def test_empirical_cdf_maths():
    e = EmpiricalCDF([3.0, 1.0, 2.0, 4.0])
    assert e.n == 4 and e.mean() == pytest.approx(2.5)
    assert [e.cdf(t) for t in (0.5, 1.0, 2.5, 4.0, 9.0)] == [0.0, 0.25, 0.5, 1.0, 1.0]
    assert [e.quantile(q) for q in (0.0, 0.25, 0.26, 0.5, 1.0)] == [1.0, 1.0, 2.0, 2.0, 4.0]
    assert list(e.cdf_many(np.array([1.0, 3.0]))) == [0.25, 0.75]
    e.add(10.0)
    assert e.n == 5 and e.mean() == pytest.approx(4.0) and e.quantile(1.0) == 10.0
    w = EmpiricalCDF([5.0, 1.0, 2.0], max_samples=2)  # the window keeps the latest two
    assert w.n == 2 and w.quantile(0.0) == 1.0 and w.mean() == pytest.approx(1.5)
    with pytest.raises(ValueError, match="empty EmpiricalCDF"):
        EmpiricalCDF().cdf(1.0)
    with pytest.raises(ValueError, match=r"duration must be finite and >= 0, got -1\.0"):
        e.add(-1.0)


def test_point_mass_and_quantile_distribution():
    p = PointMass(2.0)
    assert (p.cdf(1.9), p.cdf(2.0), p.quantile(0.3), p.mean()) == (0.0, 1.0, 2.0, 2.0)
    levels, values = [0.1, 0.5, 0.9], [1.0, 2.0, 4.0]
    d = QuantileDistribution(levels, values)
    for q, v in zip(levels, values):
        assert d.quantile(q) == pytest.approx(v) and d.cdf(v) == pytest.approx(q)
    ts = np.geomspace(0.01, 100, 50)
    assert np.all(np.diff(d.cdf_many(ts)) >= 0) and d.cdf(0.0) == 0.0 and d.cdf(1e6) == 1.0
    assert 1.0 < d.mean() < 4.0
    # Unsorted or tied quantiles still give a valid, monotone distribution.
    tied = QuantileDistribution([0.25, 0.5, 0.75], [3.0, 1.0, 1.0])
    assert tied.quantile(0.25) <= tied.quantile(0.5) <= tied.quantile(0.75)


# --- predictors -----------------------------------------------------------------------------------------

_KINDS = [("cat src/mod.py", 0.004), ("grep -rn foo .", 0.02), ("pytest tests/test_a.py -q", 0.6),
          ("pytest tests/test_a.py::test_one -q", 0.35), ("pytest -q", 3.0),
          ("pip install --no-deps --no-build-isolation -e .", 2.0)]


def _synthetic(n_programs: int = 40, seed: int = 0) -> list[ToolCallRecord]:
    """Programs of shell calls whose durations depend on the command kind and on the program (a slower
    or faster tree), with lognormal noise."""
    rng = random.Random(seed)
    records = []
    for p in range(n_programs):
        scale = rng.choice([0.5, 1.0, 2.0])
        for seq in range(rng.randint(8, 16)):
            command, median = rng.choice(_KINDS)
            records.append(ToolCallRecord("bash", {"command": command}, median * scale * math.exp(rng.gauss(0, 0.2)),
                                          f"p{p}", seq))
    return records


def _snapshot(dist: DurationDistribution) -> list[float]:
    return [dist.quantile(q) for q in (0.05, 0.25, 0.5, 0.75, 0.95)] + [dist.mean()]


@pytest.fixture(scope="module")
def synthetic() -> list[ToolCallRecord]:
    return _synthetic()


@pytest.fixture(scope="module")
def learned(synthetic) -> LearnedPredictor:
    return LearnedPredictor(max_iter=60).fit(synthetic)


def test_per_tool_mean(synthetic):
    p = PerToolMeanPredictor().fit(synthetic)
    mean = sum(r.duration_s for r in synthetic) / len(synthetic)
    assert p.predict("bash", {"command": "ls"}).mean() == pytest.approx(mean)
    assert p.predict("unseen", {}).mean() == pytest.approx(mean)  # global mean for an unseen tool
    assert PerToolMeanPredictor(prior_s=0.7).predict("bash", {}).mean() == 0.7
    p.update(ToolCallRecord("bash", {"command": "sleep 100"}, 100.0))
    assert p.predict("bash", {}).mean() > mean


def test_per_tool_ecdf_falls_back_to_global(synthetic):
    p = PerToolECDFPredictor(min_samples=10).fit(synthetic)
    for i in range(5):
        p.update(ToolCallRecord("python_fn", {}, 100.0 + i))
    assert p.predict("python_fn", {}).quantile(0.5) < 10  # 5 samples: still the global ECDF
    for i in range(5):
        p.update(ToolCallRecord("python_fn", {}, 100.0 + i))
    assert p.predict("python_fn", {}).quantile(0.5) >= 100  # 10 samples: its own ECDF
    assert isinstance(PerToolECDFPredictor().predict("bash", {}), PointMass)


def test_learned_uses_features_and_history(learned, synthetic):
    assert learned.trained
    cat = learned.predict("bash", {"command": "cat src/mod.py"}).median()
    suite = learned.predict("bash", {"command": "pytest -q"}).median()
    assert cat < 0.02 < 1.0 < suite
    # The same suite in a program whose earlier runs were slow is predicted slower.
    slow = [ToolCallRecord("bash", {"command": "pytest -q"}, 6.0, "x", 0)]
    fast = [ToolCallRecord("bash", {"command": "pytest -q"}, 1.5, "x", 0)]
    assert learned.predict("bash", {"command": "pytest -q"}, slow).median() > \
        learned.predict("bash", {"command": "pytest -q"}, fast).median()
    d = learned.predict("bash", {"command": "pytest tests/test_a.py -q"})
    assert isinstance(d, QuantileDistribution)
    assert all(a <= b for a, b in zip(d.values, d.values[1:]))


def test_learned_falls_back_to_ecdfs(synthetic):
    untrained = LearnedPredictor(min_train=1000).fit(synthetic[:100])
    assert not untrained.trained
    assert isinstance(untrained.predict("bash", {"command": "pytest -q"}), EmpiricalCDF)
    assert isinstance(LearnedPredictor().predict("bash", {"command": "ls"}), PointMass)


def test_learned_unseen_bucket_uses_bucket_ecdf_after_updates(learned, tmp_path):
    learned.save(tmp_path / "copy.pkl")
    p = LearnedPredictor.load(tmp_path / "copy.pkl")  # a copy: the module's fixture stays as fitted
    assert not isinstance(p.predict("bash", {"command": "make docs"}), QuantileDistribution)  # trees never saw make
    for i in range(6):
        p.update(ToolCallRecord("bash", {"command": "make docs"}, 40.0 + i))
    assert p.predict("bash", {"command": "make docs"}).median() >= 40


@pytest.mark.parametrize("name", ["per_tool_mean", "per_tool_ecdf", "per_bucket_ecdf", "learned"])
def test_save_load_roundtrip_and_online_update(name, synthetic, tmp_path):
    options = {"max_iter": 30, "refit_min": 20} if name == "learned" else {}
    predictor = make_predictor(name, **options).fit(synthetic[:300])
    calls = [("bash", {"command": c}) for c, _ in _KINDS] + [("other_tool", {"x": 1})]
    history = synthetic[:3]
    before = [_snapshot(predictor.predict(t, a, history)) for t, a in calls]
    path = tmp_path / f"{name}.pkl"
    predictor.save(path)
    loaded = type(predictor).load(path)
    assert [_snapshot(loaded.predict(t, a, history)) for t, a in calls] == before
    for r in synthetic[300:]:
        loaded.update(ToolCallRecord(r.tool, r.args, r.duration_s * 20, r.program_id, r.seq))
    after = [_snapshot(loaded.predict(t, a, history)) for t, a in calls]
    assert after != before
    assert after[4][2] > before[4][2]  # the whole suite got slower, and so does its prediction


def test_load_rejects_other_files(tmp_path):
    bad = tmp_path / "x.pkl"
    bad.write_bytes(b"not a pickle")
    with pytest.raises(pickle.UnpicklingError, match="invalid load key"):
        load_predictor(bad)
    other = tmp_path / "other.pkl"
    other.write_bytes(pickle.dumps({"format": "something else", "predictor": None}))
    with pytest.raises(ValueError, match=r"other\.pkl is not a saved toolpredict predictor"):
        load_predictor(other)
    PerToolMeanPredictor().save(tmp_path / "m.pkl")
    with pytest.raises(TypeError, match="holds a PerToolMeanPredictor, not a LearnedPredictor"):
        LearnedPredictor.load(tmp_path / "m.pkl")
    with pytest.raises(ValueError, match="unknown predictor 'nope'"):
        make_predictor("nope")


# --- TTL policies ---------------------------------------------------------------------------------------

class Exponential(DurationDistribution):
    def __init__(self, rate: float = 1.0):
        self.rate = rate

    def cdf(self, t: float) -> float:
        return 1 - math.exp(-self.rate * t) if t > 0 else 0.0

    def cdf_many(self, ts):
        ts = np.asarray(ts, dtype=float)
        return np.where(ts > 0, 1 - np.exp(-self.rate * ts), 0.0)

    def quantile(self, q: float) -> float:
        return -math.log(1 - q) / self.rate if q < 1 else math.inf

    def mean(self) -> float:
        return 1 / self.rate


def test_none_and_fixed_policies():
    ctx = TTLContext(queue_delay_s=5.0, eta=1.0, reload_s=1.0)
    assert make_policy("none").ttl_s(PointMass(0.1), ctx) == 0.0
    fixed = make_policy("fixed")
    assert isinstance(fixed, FixedTTL)
    assert fixed.ttl_s(PointMass(2.0), ctx) == 2.0
    assert fixed.ttl_s(PointMass(2.01), ctx) == 0.0
    assert fixed.ttl_s(EmpiricalCDF([0.1, 3.0]), ctx) == 2.0  # mean 1.55 <= 2


@pytest.mark.parametrize("benefit", [1.5, 2.0, 5.0, 20.0, 100.0])
def test_cost_model_on_exponential_is_log_b(benefit):
    ctx = TTLContext(queue_delay_s=benefit / 2, eta=0.5, reload_s=benefit * 0.75)
    assert ctx.benefit_s == pytest.approx(benefit)
    assert make_policy("cost-model").ttl_s(Exponential(1.0), ctx) == pytest.approx(math.log(benefit), rel=1e-4)


@pytest.mark.parametrize("benefit", [0.0, 0.5, 1.0])
def test_cost_model_does_not_pin_when_benefit_is_small(benefit):
    assert optimal_ttl(Exponential(1.0), benefit) == 0.0


def test_cost_model_on_point_mass_and_ecdf():
    policy = CostModelTTL()
    assert policy.ttl_s(PointMass(0.5), TTLContext(reload_s=2.0)) == pytest.approx(0.5)
    assert policy.ttl_s(PointMass(0.5), TTLContext(reload_s=0.4)) == 0.0
    assert CostModelTTL(max_ttl_s=0.3).ttl_s(PointMass(0.5), TTLContext(reload_s=2.0)) == 0.0
    # Half the calls take 0.1 s, half 10 s; B = 3: pin to catch the fast half only (0.5*3 - 0.1 > 0).
    ecdf = EmpiricalCDF([0.1] * 5 + [10.0] * 5)
    assert policy.ttl_s(ecdf, TTLContext(queue_delay_s=3.0)) == pytest.approx(0.1)
    assert policy.ttl_s(ecdf, TTLContext(queue_delay_s=30.0, eta=1.0)) == pytest.approx(10.0)


def test_learned_policy_uses_learned_distribution(learned):
    advisor = make_advisor("learned", predictor=learned)
    assert advisor.policy.name == "learned" and advisor.predictor is learned
    ctx = TTLContext(queue_delay_s=2.0, eta=0.8, reload_s=0.5)
    call = ("bash", {"command": "pytest tests/test_a.py -q"})
    dist = learned.predict(*call)
    decision = advisor.decide(*call, None, ctx)
    assert decision.ttl_s == pytest.approx(optimal_ttl(dist, ctx.benefit_s))
    assert decision.predicted_median_s == pytest.approx(dist.median())
    assert 0 < decision.ttl_s <= ctx.benefit_s
    # A fresh advisor builds the predictor its policy names; `none` predicts nothing.
    assert isinstance(make_advisor("cost-model").predictor, PerToolECDFPredictor)
    assert isinstance(make_advisor("fixed").predictor, PerToolMeanPredictor)
    assert make_advisor("none").decide("bash", {}, None, ctx).ttl_s == 0.0
    fixed = make_advisor("fixed")
    fixed.observe(ToolCallRecord("bash", {"command": "ls"}, 0.5))
    assert fixed.decide("bash", {}, None, ctx).ttl_s == 2.0


def test_memoryfulness():
    assert memoryfulness([10] * 20) == pytest.approx(1.0)  # fixed length: turns done tell turns left
    assert memoryfulness([5, 6], min_programs=5) == 1.0  # too few programs: the neutral default
    assert memoryfulness([5, 6], min_programs=5, default=0.3) == 0.3
    counts = [2, 3, 5, 8, 13, 21, 34, 4, 6]
    k = np.concatenate([np.arange(1, n) for n in counts])
    left = np.concatenate([n - np.arange(1, n) for n in counts])
    expected = float(np.clip(-np.corrcoef(k, left)[0, 1], 0, 1))
    assert memoryfulness(counts) == pytest.approx(expected)
    # a one-turn program has no tool-call point and is left out: the same value as without it
    assert memoryfulness([1, 2, 100, 3, 200, 2, 2, 50]) == pytest.approx(memoryfulness([2, 100, 3, 200, 2, 2, 50]))
    assert memoryfulness([2, 100, 3, 200, 2, 2, 50]) == pytest.approx(0.380092710, rel=1e-6)  # -corr, by hand
    # turns done and turns left correlated positively (-corr = -0.44): clipped to 0, not negative
    assert memoryfulness([2] * 1000 + [30] * 3) == 0.0


# --- dataset and evaluate CLI ---------------------------------------------------------------------------

def test_shipped_dataset_shape():
    records = read_records(DATA)
    assert 300 <= len(records) <= 2000 and DATA.stat().st_size < 400_000
    assert all(r.tool == "bash" and r.duration_s >= 0 and r.program_id for r in records)
    buckets = {extract_features(r.tool, r.args).bucket for r in records}
    assert {"bash::python::pytest_single_test", "bash::python::pytest_path", "bash::light::cat"} <= buckets
    assert any(b.startswith("bash::pip::") for b in buckets)


def test_collect_program_generator_is_deterministic(tmp_path):
    tree = Tree("pkg", tmp_path, tmp_path / "venv", "pkg", ["pkg/core.py", "pkg/util.py"], ["tests/test_core.py"],
                {"tests/test_core.py": ["tests/test_core.py::test_a", "tests/test_core.py::test_b[1]"]},
                ["merge", "Parser"], "tests")
    programs = [ProgramGenerator(tree, random.Random(7), 3).commands() for _ in range(2)]
    assert programs[0] == programs[1] and programs[0][-1] == "rm -f reproduce_3.py"
    buckets = {extract_features("bash", {"command": c}).bucket for c in programs[0]}
    assert any(b.startswith("bash::python::pytest") for b in buckets)
    assert not any(b.startswith("bash::other") for b in buckets)


def test_evaluate_cli_end_to_end(tmp_path, capsys):
    out = tmp_path / "report.json"
    assert evaluate_main(["--data", str(DATA), "--json", str(out), "--split", "time", "--no-select"]) == 0
    report = json.loads(out.read_text())
    assert set(report["models"]) == {"per_tool_mean", "per_tool_ecdf", "verb_median", "bucket_median",
                                     "last_same_command", "tree_bucket_median", "learned"}
    for metrics in report["models"].values():
        for key in ("log_mae", "pinball", "p95_coverage"):
            assert math.isfinite(metrics[key]) and metrics[key] >= 0
        assert metrics["p95_coverage"] <= 1
    assert "learned" in capsys.readouterr().out
    assert evaluate_main(["--data", str(tmp_path / "missing.jsonl")]) == 2


def test_learned_fits_calls_without_commands():
    """Conversational traces (tau-bench) give every call the same argument-less command: a feature
    missing on every row must not break the trees' fit, and the fitted model still predicts."""
    rng = random.Random(3)
    records = [ToolCallRecord("bash", {"command": "true"}, rng.lognormvariate(0.0, 1.0), f"p{i % 12}", i // 12)
               for i in range(240)]
    predictor = LearnedPredictor().fit(records)
    dist = predictor.predict("bash", {"command": "true"}, None)
    assert 0.0 < dist.median() < 10.0
