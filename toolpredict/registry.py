"""Every tool-duration predictor by name: `make_predictor("learned")` and the baselines'."""

from __future__ import annotations

from typing import Any

from toolpredict.learned import LearnedPredictor
from toolpredict.predictors import (DurationPredictor, LastSameCommandPredictor, PerBucketECDFPredictor,
                                    PerToolECDFPredictor, PerToolMeanPredictor, PerVerbECDFPredictor)

PREDICTORS: dict[str, type[DurationPredictor]] = {
    cls.name: cls
    for cls in (PerToolMeanPredictor, PerToolECDFPredictor, PerBucketECDFPredictor, PerVerbECDFPredictor,
                LastSameCommandPredictor, LearnedPredictor)
}


def make_predictor(name: str, **options: Any) -> DurationPredictor:
    """A fresh predictor by name: "per_tool_mean", "per_tool_ecdf", "per_bucket_ecdf", "per_verb_ecdf",
    "last_same_command" or "learned"."""
    try:
        cls = PREDICTORS[name]
    except KeyError:
        raise ValueError(f"unknown predictor {name!r}; choose one of {sorted(PREDICTORS)}") from None
    return cls(**options)
