"""toolpredict: tool-call duration prediction and KV time-to-live policies (Continuum).

Knows tool calls and durations, never tensors: it imports neither `engine` nor `agentrt`.
- features: `ToolCallRecord`, `extract_features` (command buckets, argument shape), `history_features`.
- distributions: `DurationDistribution` (cdf, quantile, mean), `EmpiricalCDF`, `PointMass`,
  `QuantileDistribution`.
- predictors: `per_tool_mean`, `per_tool_ecdf`, `per_bucket_ecdf`, `learned`, all with fit / update /
  predict / save / load.
- ttl: `TTLPolicy.ttl_s(dist, ctx)` for `none`, `fixed`, `cost-model`, `learned`; `TTLAdvisor` pairs a
  policy with its predictor; `memoryfulness` computes η from finished programs' turn counts.
- evaluate / collect: `python -m toolpredict.evaluate --data FILE.jsonl`, `python -m toolpredict.collect`.
"""

from toolpredict.distributions import DurationDistribution, EmpiricalCDF, PointMass, QuantileDistribution
from toolpredict.features import (CallFeatures, HistoryItem, ToolCallRecord, extract_features, history_features,
                                  read_records)
from toolpredict.predictors import (PREDICTORS, QUANTILE_LEVELS, DurationPredictor, LearnedPredictor,
                                    PerBucketECDFPredictor, PerToolECDFPredictor, PerToolMeanPredictor,
                                    load_predictor, make_predictor)
from toolpredict.ttl import (POLICIES, CostModelTTL, FixedTTL, LearnedTTL, NoTTL, TTLAdvisor, TTLContext,
                             TTLDecision, TTLPolicy, make_advisor, make_policy, memoryfulness, optimal_ttl)

__all__ = [
    "CallFeatures", "CostModelTTL", "DurationDistribution", "DurationPredictor", "EmpiricalCDF", "FixedTTL",
    "HistoryItem", "LearnedPredictor", "LearnedTTL", "NoTTL", "POLICIES", "PREDICTORS",
    "PerBucketECDFPredictor", "PerToolECDFPredictor", "PerToolMeanPredictor", "PointMass", "QUANTILE_LEVELS",
    "QuantileDistribution", "TTLAdvisor", "TTLContext", "TTLDecision", "TTLPolicy", "ToolCallRecord",
    "extract_features", "history_features", "load_predictor", "make_advisor", "make_policy", "make_predictor",
    "memoryfulness", "optimal_ttl", "read_records",
]
