"""Evaluate the duration predictors on a JSON-lines file of real tool timings, as a live system would.

`python -m toolpredict.evaluate --data FILE.jsonl [--json OUT] [--train-fraction 0.7] [--no-online]`

Each predictor is fit on the first `train_fraction` of the records in file order; then every later
record is predicted (with its program's earlier calls as history) before it is revealed, and, unless
`--no-online`, fed to `update` afterwards. Metrics over the test part, in log space with durations
floored at EPS_S (1 ms) so that sub-millisecond calls do not dominate:
- `log_mae`: mean |log(predicted median) − log(actual)|;
- `pinball`: mean pinball loss over QUANTILE_LEVELS of log(predicted quantile) against log(actual);
- `p95_coverage`: share of actual durations <= the predicted 95th percentile.
Output JSON: {"models": {NAME: {"log_mae", "pinball", "p95_coverage", ...}}, ...}.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from toolpredict.features import HistoryItem, ToolCallRecord, extract_features, read_records
from toolpredict.predictors import QUANTILE_LEVELS, PREDICTORS, make_predictor

EPS_S = 1e-3
# per_bucket_ecdf is an ablation beyond the three: what bucketing alone gives, without the trees.
MODELS: tuple[str, ...] = ("per_tool_mean", "per_tool_ecdf", "per_bucket_ecdf", "learned")


def _log(seconds: float) -> float:
    return math.log(max(seconds, 0.0) + EPS_S)


def evaluate(records: Sequence[ToolCallRecord], models: Sequence[str] = MODELS, train_fraction: float = 0.7,
             online: bool = True) -> dict:
    """Metrics per model (see the module docstring); records are in time order."""
    if not 0 < train_fraction < 1:
        raise ValueError("train_fraction must be in (0, 1)")
    split = int(len(records) * train_fraction)
    train, test = records[:split], records[split:]
    if not train or not test:
        raise ValueError(f"need records on both sides of the split, got {len(records)} records")
    # Each record's history: the earlier calls of its program, across the split as a live system sees them.
    histories: list[list[HistoryItem]] = []
    programs: dict[str, list[HistoryItem]] = {}
    for r in records:
        items = programs.setdefault(r.program_id, []) if r.program_id is not None else []
        histories.append(list(items))
        if r.program_id is not None:
            f = extract_features(r.tool, r.args)
            items.append(HistoryItem.of(r, f))

    results: dict[str, dict] = {}
    for name in models:
        started = time.perf_counter()
        predictor = make_predictor(name).fit(train)
        fit_s = time.perf_counter() - started
        abs_err = pinball = covered = 0.0
        started = time.perf_counter()
        for i, r in enumerate(test, start=split):
            dist = predictor.predict(r.tool, r.args, histories[i])
            actual = _log(r.duration_s)
            abs_err += abs(_log(dist.median()) - actual)
            for q in QUANTILE_LEVELS:
                diff = actual - _log(dist.quantile(q))
                pinball += max(q * diff, (q - 1) * diff) / len(QUANTILE_LEVELS)
            covered += r.duration_s <= dist.quantile(0.95)
            if online:
                predictor.update(r)
        n = len(test)
        per_call_ms = 1000 * (time.perf_counter() - started) / n
        results[name] = {"log_mae": abs_err / n, "pinball": pinball / n, "p95_coverage": covered / n,
                         "fit_s": round(fit_s, 3), "predict_update_ms": round(per_call_ms, 3)}
    out: dict = {"models": results, "n_train": len(train), "n_test": len(test), "online": online,
                 "quantile_levels": list(QUANTILE_LEVELS), "eps_s": EPS_S}
    if "learned" in results and "per_tool_mean" in results and results["per_tool_mean"]["log_mae"] > 0:
        out["learned_log_mae_reduction_vs_per_tool_mean"] = \
            1 - results["learned"]["log_mae"] / results["per_tool_mean"]["log_mae"]
    return out


def format_table(report: dict) -> str:
    lines = [f"{'model':<15} {'log_mae':>8} {'pinball':>8} {'p95_cov':>8}"]
    for name, m in report["models"].items():
        lines.append(f"{name:<15} {m['log_mae']:>8.3f} {m['pinball']:>8.3f} {m['p95_coverage']:>8.3f}")
    lines.append(f"train {report['n_train']} / test {report['n_test']} records, online updates: {report['online']}")
    if "learned_log_mae_reduction_vs_per_tool_mean" in report:
        lines.append(f"learned log-MAE vs per_tool_mean: "
                     f"{100 * report['learned_log_mae_reduction_vs_per_tool_mean']:.1f}% lower")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m toolpredict.evaluate", description=__doc__.split("\n")[0])
    parser.add_argument("--data", required=True, type=Path, help="JSON lines of tool calls with duration_s")
    parser.add_argument("--json", type=Path, help="also write the report as JSON here")
    parser.add_argument("--train-fraction", type=float, default=0.7)
    parser.add_argument("--no-online", action="store_true", help="do not update the predictors on test records")
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=sorted(PREDICTORS))
    args = parser.parse_args(argv)
    try:
        report = evaluate(read_records(args.data), args.models, args.train_fraction, not args.no_online)
    except (OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(format_table(report))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
