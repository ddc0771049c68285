"""toolpredict: tool-call duration prediction and KV time-to-live policies (Continuum).

Knows tool calls and durations, never tensors: it imports neither `engine` nor `agentrt`.
- features: `ToolCallRecord`, `extract_features` (command buckets, argument shape), `history_features`.
- distributions: `DurationDistribution` (cdf, quantile, mean), `EmpiricalCDF`, `PointMass`,
  `QuantileDistribution`.
- predictors: the interface (fit / update (= observe) / predict / save / load) and the baselines
  `per_tool_mean`, `per_tool_ecdf`, `per_bucket_ecdf`, `per_verb_ecdf`, `last_same_command`;
  learned: `learned` (a per-bucket, per-source-tree prior with learned corrections chosen online,
  conformal quantiles); registry: `make_predictor(name)`.
- ttl: `TTLPolicy.ttl_s(dist, ctx)` for `none`, `fixed`, `cost-model`, `learned`; `TTLAdvisor` pairs a
  policy with its predictor; `memoryfulness` computes η from finished programs' turn counts.
Experiments live outside the package: `python -m benchmarks.toolpredict_eval` (baselines beside the
learned predictor, split by repository or time) and `python -m benchmarks.collect_timings`.
"""

from toolpredict.distributions import DurationDistribution, EmpiricalCDF, PointMass, QuantileDistribution
from toolpredict.features import (CallFeatures, HistoryItem, ToolCallRecord, extract_features, history_features,
                                  read_records)
from toolpredict.learned import LearnedPredictor, program_group
from toolpredict.predictors import (QUANTILE_LEVELS, DurationPredictor, LastSameCommandPredictor,
                                    PerBucketECDFPredictor, PerToolECDFPredictor, PerToolMeanPredictor,
                                    PerVerbECDFPredictor, load_predictor)
from toolpredict.registry import PREDICTORS, make_predictor
from toolpredict.ttl import (POLICIES, CostModelTTL, FixedTTL, LearnedTTL, NoTTL, TTLAdvisor, TTLContext,
                             TTLDecision, TTLPolicy, make_advisor, make_policy, memoryfulness, optimal_ttl)

__all__ = [
    "CallFeatures", "CostModelTTL", "DurationDistribution", "DurationPredictor", "EmpiricalCDF", "FixedTTL",
    "HistoryItem", "LastSameCommandPredictor", "LearnedPredictor", "LearnedTTL", "NoTTL", "POLICIES", "PREDICTORS",
    "PerBucketECDFPredictor", "PerToolECDFPredictor", "PerToolMeanPredictor", "PerVerbECDFPredictor", "PointMass",
    "QUANTILE_LEVELS",
    "QuantileDistribution", "TTLAdvisor", "TTLContext", "TTLDecision", "TTLPolicy", "ToolCallRecord",
    "extract_features", "history_features", "load_predictor", "make_advisor", "make_policy", "make_predictor",
    "memoryfulness", "optimal_ttl", "program_group", "read_records",
]
