"""Presets: the serving configurations agentrt compares, each a named bundle of engine options and a
KV retention policy. One word turns one on: `Runtime(EmbeddedBackend(preset="agentrt"))`,
`agentrt run --preset agentrt`, `agentrt serve --preset agentrt`; the benchmarks use the same objects.

    fcfs             request FCFS, KV freed when a request finishes, LRU prefix cache: what vLLM does
    program          program-level FCFS (a program's turns keep its first arrival), no pins
    continuum-fixed  program-level FCFS + the released Continuum rule: pin 2 s if the tool's mean <= 2 s
    continuum        program-level FCFS + the Continuum paper's cost model on a per-tool ECDF
    agentrt          program-level FCFS + the cost model on the learned, feature-based duration
                     distribution, a pin's cost scaled by how full the KV pool is, and pins that a
                     later-arriving program cannot evict (it waits for them to end instead)
    agentrt-fixed    ablation: continuum-fixed's 2 s TTLs with agentrt's protected-pins rule

A preset with a TTL policy profiles the engine's reload time at start-up (the cost model's reload(r)).
Its predictor starts from a prior (by default the tool timings shipped in toolpredict/data) and learns
online from the run's own tool calls.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from importlib.resources import files

from toolpredict.features import ToolCallRecord, read_records
from toolpredict.registry import make_predictor
from toolpredict.ttl import TTLAdvisor, make_policy

from agentrt.retention import Retention


@dataclass(slots=True, frozen=True)
class Preset:
    name: str
    summary: str
    scheduling_policy: str = "fcfs"
    ttl_policy: str | None = None  # toolpredict.ttl policy name; None: KV is never pinned
    protect_earlier_pins: bool = False  # a waiting request may not evict an earlier program's pin
    pressure_aware: bool = False  # a pinned second costs in proportion to how full the KV pool is

    @property
    def pins(self) -> bool:
        return self.ttl_policy is not None

    def engine_options(self) -> dict:
        """The engine options this preset sets (EngineConfig fields)."""
        return {"scheduling_policy": self.scheduling_policy, "profile_reload": self.pins,
                "protect_earlier_pins": self.protect_earlier_pins}

    def retention(self, prior: Iterable[ToolCallRecord] | None = None) -> Retention | None:
        """A fresh retention policy (predictor fitted on `prior`, default: the shipped tool timings),
        or None for a preset that never pins."""
        if not self.pins:
            return None
        policy = make_policy(self.ttl_policy)
        records = default_prior() if prior is None else list(prior)
        predictor = make_predictor(policy.predictor_name).fit(records)
        return Retention(TTLAdvisor(policy, predictor), pressure_aware=self.pressure_aware)


PRESETS: dict[str, Preset] = {p.name: p for p in (
    Preset("fcfs", "request FCFS, KV freed at finish, LRU prefix cache (vLLM's behaviour)"),
    Preset("program", "program-level FCFS, no pins", "program"),
    Preset("continuum-fixed", "program-level FCFS + pin 2 s if the tool's mean <= 2 s (released Continuum)",
           "program", "fixed"),
    Preset("continuum", "program-level FCFS + the Continuum cost model on a per-tool ECDF", "program", "cost-model"),
    Preset("agentrt", "program-level FCFS + the cost model on the learned predictor, pressure-aware, "
           "protected earlier pins", "program", "learned", protect_earlier_pins=True, pressure_aware=True),
    Preset("agentrt-fixed", "ablation: fixed 2 s TTLs with agentrt's protected-pins rule", "program", "fixed",
           protect_earlier_pins=True),
)}
DEFAULT_PRESET = "agentrt"


def get_preset(preset: str | Preset) -> Preset:
    if isinstance(preset, Preset):
        return preset
    try:
        return PRESETS[preset]
    except KeyError:
        raise ValueError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}") from None


def default_prior() -> list[ToolCallRecord]:
    """Real wall-clock timings of SWE-style shell commands shipped with toolpredict (its data/README.md)."""
    return read_records(files("toolpredict") / "data" / "tool_timings.jsonl")
