"""What a caller attaches to a request: how to sample (`SamplingParams`) and whose it is (`ProgramHint`)."""

from __future__ import annotations

from dataclasses import dataclass, field


# vLLM's _SAMPLING_EPS: a temperature under it samples greedily (logits / 1e-45 overflow to inf, and
# such a distribution is greedy anyway)
GREEDY_BELOW = 1e-5


@dataclass(slots=True, frozen=True)
class ProgramHint:
    """Identity of the agent program a request belongs to. The scheduler's program-level policies and
    KV retention read it; the default FCFS policy ignores it."""

    program_id: str | None = None
    turn: int = 0
    is_last_turn: bool = False
    tenant: str | None = None


@dataclass(slots=True)
class SamplingParams:
    """vLLM-compatible sampling options. temperature 0 (below 1e-5) is greedy; top_k 0 (or -1) and top_p 1 disable them."""

    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    seed: int | None = None
    max_tokens: int = 256
    stop: list[str] | str | None = None
    stop_token_ids: list[int] = field(default_factory=list)
    ignore_eos: bool = False
    include_stop_str_in_output: bool = False
    logprobs: int | None = None  # None: no logprobs; n >= 0: sampled token's logprob plus the top n
    skip_special_tokens: bool = True

    def __post_init__(self) -> None:
        if isinstance(self.stop, str):
            self.stop = [self.stop]
        self.stop = list(self.stop or [])
        self.stop_token_ids = list(self.stop_token_ids or [])
        if self.top_k == -1:
            self.top_k = 0
        problems = []
        if not self.temperature >= 0:
            problems.append(f"temperature must be >= 0, got {self.temperature}")
        if self.top_k < 0:
            problems.append(f"top_k must be >= 0 (or -1 for off), got {self.top_k}")
        if not 0 < self.top_p <= 1:
            problems.append(f"top_p must be in (0, 1], got {self.top_p}")
        if self.max_tokens < 1:
            problems.append(f"max_tokens must be >= 1, got {self.max_tokens}")
        if self.logprobs is not None and not 0 <= self.logprobs <= 20:
            problems.append(f"logprobs must be between 0 and 20, got {self.logprobs}")
        if any(not s for s in self.stop):
            problems.append("stop strings must be non-empty")
        if problems:
            raise ValueError("; ".join(problems))

    @property
    def greedy(self) -> bool:
        return self.temperature < GREEDY_BELOW
