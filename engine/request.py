"""A request's life in the engine (`Request`) and what callers get back (`RequestOutput`).

`token_ids` holds prompt then generated tokens; `num_computed_tokens` of them have K/V in the cache.
A preempted request keeps its tokens and restarts from `num_computed_tokens = 0` (its prefix may
still hit the cache), so preemption never loses or duplicates a generated token.
"""

from __future__ import annotations

import enum
import itertools
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from engine.block_pool import Block
from engine.params import ProgramHint, SamplingParams

_seq_counter = itertools.count()


class RequestStatus(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    FINISHED = "finished"


@dataclass(slots=True)
class RequestMetrics:
    arrival_time: float
    first_scheduled_time: float | None = None
    first_token_time: float | None = None
    finish_time: float | None = None
    num_preemptions: int = 0


@dataclass(slots=True)
class TokenLogprob:
    token_id: int
    logprob: float
    top: list[tuple[int, float]]  # (token id, logprob), best first


@dataclass(slots=True)
class Detokenization:
    """A request's incremental detokenization (engine/outputs.py; used when streaming or matching
    stop strings): the output text so far, the token window it was decoded from, and how much of
    it callers have been shown."""

    prefix_offset: int  # decoding restarts a few tokens back, so merges come out right
    read_offset: int  # tokens before this are in `text`
    text: str = ""
    emitted_tokens: int = 0
    emitted_text_len: int = 0


class Request:
    __slots__ = (
        "request_id", "prompt", "token_ids", "num_prompt_tokens", "params", "hint", "seq_no",
        "status", "finish_reason", "stop_reason", "blocks", "block_hashes", "num_computed_tokens",
        "num_committed_blocks",
        "num_cached_tokens", "generator", "logprobs", "metrics", "stream", "detok", "salt",
        "retention", "pin_hit", "exact_tokens", "reuse", "hit_rate", "prefill_work", "num_reused_tokens",
    )

    def __init__(self, request_id: str, prompt: str | None, prompt_token_ids: list[int],
                 params: SamplingParams, hint: ProgramHint | None = None, stream: bool = False,
                 arrival_time: float | None = None, retention: Callable | None = None):
        self.request_id = request_id
        self.prompt = prompt
        self.token_ids = list(prompt_token_ids)
        self.num_prompt_tokens = len(prompt_token_ids)
        self.params = params
        self.hint = hint or ProgramHint()
        self.salt = self.hint.tenant  # prefix-cache isolation per tenant
        self.seq_no = next(_seq_counter)
        self.status = RequestStatus.WAITING
        self.finish_reason: str | None = None
        self.stop_reason: str | int | None = None
        self.blocks: list[Block] = []
        self.block_hashes: list[bytes] = []
        self.num_computed_tokens = 0
        self.num_committed_blocks = 0  # leading blocks registered in the prefix index
        self.num_cached_tokens = 0  # prompt tokens served from the prefix cache at first admission
        self.generator = None  # torch.Generator of a seeded request, made by the sampler on first use
        self.logprobs: list[TokenLogprob] | None = [] if params.logprobs is not None else None
        self.metrics = RequestMetrics(arrival_time if arrival_time is not None else time.monotonic())
        self.stream = stream
        # at the end of a non-final turn: seconds to keep the program's KV pinned (engine/retention.py)
        self.retention = retention
        self.pin_hit = False  # admitted while its program held a pin
        # KVShare: tokens whose KV is exact (before the first reused token), and the reuse plan/state
        self.exact_tokens = 1 << 62
        self.reuse = None  # engine.reuse.plan.ReusePlan while this request's KV holds reused tokens
        self.hit_rate = 0.0  # share of the prompt cached at arrival
        self.prefill_work = float(len(self.token_ids))  # prefill token-equivalents left at arrival (cache-aware's key)
        self.num_reused_tokens = 0  # prompt tokens whose KV was copied from other positions at first admission
        self.detok = Detokenization(max(self.num_prompt_tokens - 5, 0), self.num_prompt_tokens)

    @property
    def num_tokens(self) -> int:
        return len(self.token_ids)

    @property
    def num_output_tokens(self) -> int:
        return len(self.token_ids) - self.num_prompt_tokens

    @property
    def output_token_ids(self) -> list[int]:
        return self.token_ids[self.num_prompt_tokens:]

    @property
    def finished(self) -> bool:
        return self.status is RequestStatus.FINISHED

    def __repr__(self) -> str:
        return (f"Request({self.request_id!r}, {self.status.value}, tokens={self.num_tokens}, "
                f"computed={self.num_computed_tokens}, blocks={len(self.blocks)})")


@dataclass(slots=True)
class RequestOutput:
    """A snapshot of a request: cumulative `token_ids`/`text` plus the delta since the last snapshot."""

    request_id: str
    prompt: str | None
    prompt_token_ids: list[int]
    token_ids: list[int]
    text: str
    finished: bool
    finish_reason: str | None  # "stop", "length", "abort", "error" or None while running
    stop_reason: str | int | None  # the stop string or stop token that ended it; for "error", what failed
    delta_token_ids: list[int] = field(default_factory=list)
    delta_text: str = ""
    logprobs: list[TokenLogprob] | None = None
    num_cached_tokens: int = 0
    num_reused_tokens: int = 0  # KVShare: prompt tokens whose KV came from other positions
    metrics: RequestMetrics | None = None
