"""The engine loop: `add_request`, then `step()` until done. Each step schedules (engine/scheduler.py),
runs the model once (engine/runner.py), samples, hands the new tokens to the output processor
(engine/outputs.py: stop checks, detokenization), ends finished requests' turns (engine/programs.py:
pins between a program's turns) and frees their blocks, then publishes an `EngineSnapshot`.

A request is finished by exactly one of: a stop condition (engine/outputs.py), `abort_request`, or a
failure inside the model that the request hits even when run alone (`error`, e.g. out of memory): a
failing step is retried request by request, so one bad request never takes the others down.
Finished requests always give back all their blocks. The config is validated once and never changed.
"""

from __future__ import annotations

import dataclasses
import itertools
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from engine import loader
from engine.block_pool import BlockPool
from engine.config import ConfigError, EngineConfig
from engine.kv_manager import KVCacheManager
from engine.model import LlamaModel, pick_linear, rope_inv_freq
from engine.outputs import OutputProcessor
from engine.params import ProgramHint, SamplingParams
from engine.programs import Programs
from engine.reload import ReloadModel, profile_reload
from engine.request import Request, RequestOutput
from engine.retention import PinManager
from engine.runner import ModelRunner
from engine.sampler import sample
from engine.scheduler import ScheduledBatch, Scheduler, make_policy
from engine.snapshot import EngineSnapshot

# a request's retention callback: (its final output, the engine's snapshot) -> seconds to pin its program's KV
Retention = Callable[[RequestOutput, EngineSnapshot], float]


class PromptTooLongError(ValueError):
    """The prompt does not fit the model's context (or the KV cache)."""


@dataclass(slots=True)
class EngineStats:
    num_steps: int = 0
    num_prompt_tokens: int = 0  # prompt tokens of admitted requests
    num_prefix_hit_tokens: int = 0  # of those, served from the prefix cache
    num_computed_tokens: int = 0  # tokens run through the model (prefill + decode + recompute)
    num_generated_tokens: int = 0
    num_recomputed_prefill_tokens: int = 0  # a program's earlier context computed again in a later turn
    num_reuse_requests: int = 0  # KVShare: requests admitted with KV reused from other positions
    num_reused_tokens: int = 0  # prompt tokens whose KV was copied from another sequence
    num_reuse_recomputed_tokens: int = 0  # tokens of those requests computed past the check layer
    forward_s: float = 0.0  # time inside the model forward
    step_s: float = 0.0  # whole step time


@dataclass(slots=True)
class StepInfo:
    """The last step's shape and timing (benchmarks read it)."""

    num_requests: int = 0
    num_tokens: int = 0
    forward_s: float = 0.0
    step_s: float = 0.0


def _resolve_device(device: str | None) -> torch.device:
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


class Engine:
    def __init__(self, config: EngineConfig | None = None, *, clock: Callable[[], float] = time.monotonic,
                 **overrides):
        """`clock` gives the time (s) that arrivals, pins, queueing and finish times are read from; the
        simulator (engine/sim.py) passes a virtual one."""
        cfg = config or EngineConfig()
        unknown = [k for k in overrides if k not in EngineConfig.__dataclass_fields__]
        if unknown:
            raise ConfigError(f"unknown engine option {unknown[0]!r}")
        cfg = dataclasses.replace(cfg, **overrides)  # the caller's config is never changed
        cfg.validate()
        self.config = cfg
        self.clock = clock
        if cfg.num_threads:
            torch.set_num_threads(cfg.num_threads)
        self._load_model()
        mc = self.model_config
        bs = cfg.block_size
        per_token = ModelRunner.kv_bytes_per_token(mc, self.dtype)
        kv_tokens = cfg.kv_cache_tokens or int(cfg.kv_cache_memory_gb * 2**30 // per_token)
        num_blocks = -(-kv_tokens // bs)
        self.max_model_len = min(cfg.max_model_len or mc.max_position_embeddings, num_blocks * bs)
        self.pool = BlockPool(num_blocks, cfg.enable_prefix_caching)
        self.reuse = cfg.reuse_options()
        scope = None if self.reuse is None else "global" if cfg.kv_reuse_cross_tenant else "tenant"
        self.kv = KVCacheManager(self.pool, bs, scope)
        self.pins = PinManager(self.pool)
        self.scheduler = Scheduler(
            self.kv, make_policy(cfg.scheduling_policy), cfg.max_num_seqs, cfg.max_num_batched_tokens,
            pins=self.pins, clock=clock, reuse=self.reuse, protect_earlier_pins=cfg.protect_earlier_pins,
            reused_token_work=self.reuse.reused_token_work(mc.num_layers) if self.reuse else 1.0)
        self.programs = Programs(self.pool, self.pins, self.scheduler, clock)
        self.outputs = OutputProcessor(self.tokenizer, self.eos_token_ids, self.max_model_len, clock)
        self.runner = self._make_runner(num_blocks)
        self.generator = torch.Generator().manual_seed(cfg.seed)
        self.requests: dict[str, Request] = {}
        # called with (requests, their logits [k, vocab]) after each forward, before sampling
        self.on_logits: Callable[[list[Request], torch.Tensor], None] | None = None
        self.stats = EngineStats()
        self.last_step = StepInfo()
        self._ids = itertools.count()
        if cfg.profile_reload:
            self.programs.reload_model = profile_reload(self)
            self.stats = EngineStats()  # the profile's prefills are not the user's traffic
        self.snapshot = self.take_snapshot()

    def _load_model(self) -> None:
        """Sets device, dtype, model_dir, model_config, tokenizer, model and eos_token_ids."""
        cfg = self.config
        self.device = _resolve_device(cfg.device)
        self.dtype = cfg.resolve_dtype(self.device)

        self.model_dir = loader.resolve_model(cfg.model)
        self.model_config = loader.load_model_config(self.model_dir)
        self.tokenizer = loader.load_tokenizer(self.model_dir)
        self.model = LlamaModel(self.model_config, pick_linear(cfg.matmul, self.device, self.dtype))
        try:
            self.model.load_hf_state_dict(loader.load_state_dict(self.model_dir))
        except KeyError as exc:
            raise loader.ModelLoadError(f"{self.model_dir}: {exc.args[0]}") from exc
        self.model.to(device=self.device, dtype=self.dtype).eval()
        self.model.inv_freq = rope_inv_freq(self.model_config).to(self.device)  # stays float32

        mc = self.model_config
        self.eos_token_ids = set(mc.eos_token_ids)
        gen_cfg = self.model_dir / "generation_config.json"
        if gen_cfg.exists():
            import json
            eos = json.loads(gen_cfg.read_text()).get("eos_token_id")
            self.eos_token_ids |= set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
        if self.tokenizer.eos_token_id is not None:
            self.eos_token_ids.add(self.tokenizer.eos_token_id)

    def _make_runner(self, num_blocks: int) -> ModelRunner:
        cfg = self.config
        return ModelRunner(self.model, self.model_config, num_blocks, cfg.block_size, self.device, self.dtype,
                           cfg.attention_backend, self.reuse)

    # ---- requests -------------------------------------------------------------------------------

    def encode_prompt(self, prompt: str | list[int]) -> tuple[str | None, list[int]]:
        if isinstance(prompt, str):
            return prompt, self.tokenizer.encode(prompt, add_special_tokens=False)
        ids = list(prompt)
        vocab = self.model_config.vocab_size
        if any(not isinstance(t, int) or not 0 <= t < vocab for t in ids):
            raise ValueError(f"prompt token ids must be ints in [0, {vocab})")
        return None, ids

    def apply_chat_template(self, messages: list[dict], add_generation_prompt: bool = True) -> str:
        if not getattr(self.tokenizer, "chat_template", None):
            raise ValueError(f"the tokenizer in {self.model_dir} has no chat template; pass plain prompts")
        return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)

    def add_request(self, prompt: str | list[int], params: SamplingParams | None = None, *,
                    request_id: str | None = None, hint: ProgramHint | None = None,
                    stream: bool = False, retention: Retention | None = None) -> str:
        """Queues a request; returns its id. `stream` makes `step()` report it after every token.
        `retention(final_output, snapshot)` is asked, when a non-final turn of a program ends, for how
        many seconds to pin the program's KV (0: don't)."""
        req = self.make_request(prompt, params, request_id=request_id, hint=hint, stream=stream,
                                retention=retention)
        self.submit(req)
        return req.request_id

    def make_request(self, prompt: str | list[int], params: SamplingParams | None = None, *,
                     request_id: str | None = None, hint: ProgramHint | None = None,
                     stream: bool = False, retention: Retention | None = None) -> Request:
        """Validates and tokenizes a request without touching the queues (safe while a step runs)."""
        params = params or SamplingParams()
        text, ids = self.encode_prompt(prompt)
        if not ids:
            raise ValueError("the prompt is empty")
        if len(ids) >= self.max_model_len:
            raise PromptTooLongError(
                f"prompt has {len(ids)} tokens; this engine holds at most {self.max_model_len} per request "
                f"(prompt + output). Shorten the prompt or raise max_model_len / kv_cache_tokens.")
        rid = request_id if request_id is not None else f"req-{next(self._ids)}"
        return Request(rid, text, ids, params, hint, stream, arrival_time=self.clock(), retention=retention)

    def submit(self, req: Request) -> None:
        if req.request_id in self.requests:
            raise ValueError(f"request id {req.request_id!r} is already in use")
        self.requests[req.request_id] = req
        self.scheduler.add(req)

    def abort_request(self, request_id: str) -> RequestOutput | None:
        return self._end(request_id, "abort")

    def _end(self, request_id: str, reason: str, stop_reason: str | None = None) -> RequestOutput | None:
        req = self.requests.pop(request_id, None)
        if req is None:
            return None
        self.scheduler.remove(req)
        self.outputs.finish(req, reason, stop_reason)
        return self.outputs.output(req)

    @property
    def reload_model(self) -> ReloadModel | None:
        return self.programs.reload_model

    def reload_time_s(self, num_tokens: int) -> float:
        """Estimated time to prefill `num_tokens` again (see `EngineSnapshot.reload_time_s`)."""
        return self.take_snapshot().reload_time_s(num_tokens)

    def take_snapshot(self) -> EngineSnapshot:
        """The engine's state now, as an immutable record (published after every step as `snapshot`)."""
        now, st, pins, pool, sched = self.clock(), self.stats, self.pins, self.pool, self.scheduler
        ahead = [p.expires_at for p in pins.pins.values() if p.expires_at > now]
        ps = pins.stats
        return EngineSnapshot(
            time_s=now, num_steps=st.num_steps, num_running=len(sched.running), num_waiting=len(sched.waiting),
            num_blocks=pool.num_blocks, num_free_blocks=pool.num_free, num_pinned_blocks=pins.num_pinned_blocks,
            pinned_programs=frozenset(pins.pins), next_pin_expiry_s=min(ahead, default=None),
            num_pins=ps.pins, num_pin_hits=ps.hits, num_pin_expiries=ps.expiries,
            num_pin_forced_releases=ps.forced_releases, num_pin_last_turn_releases=ps.last_turn_releases,
            pinned_block_seconds=ps.pinned_block_seconds, num_preemptions=sched.num_preemptions,
            num_prompt_tokens=st.num_prompt_tokens, num_prefix_hit_tokens=st.num_prefix_hit_tokens,
            num_computed_tokens=st.num_computed_tokens, num_generated_tokens=st.num_generated_tokens,
            num_recomputed_prefill_tokens=st.num_recomputed_prefill_tokens,
            num_reuse_requests=st.num_reuse_requests, num_reused_tokens=st.num_reused_tokens,
            forward_s=st.forward_s, step_s=st.step_s,
            queue_delay_s=self.programs.queue_delay_s, reload=self.programs.reload_model)

    def check_integrity(self) -> None:
        """Raises AssertionError if the KV bookkeeping is inconsistent: the block pool's invariants
        (engine/block_pool.py), and no block counting fewer references than the live requests and
        pins that hold it (more is allowed: a reuse plan's sources hold references of their own)."""
        self.pool.check_integrity()
        held: dict[int, int] = {}
        for req in self.requests.values():
            for b in req.blocks:
                held[b.block_id] = held.get(b.block_id, 0) + 1
        for pin in self.pins.pins.values():
            for b in pin.blocks:
                held[b.block_id] = held.get(b.block_id, 0) + 1
        for b in self.pool.blocks:
            if b.ref_count < held.get(b.block_id, 0):
                raise AssertionError(f"{b!r} is held {held[b.block_id]} times but counts {b.ref_count} references")

    def has_unfinished_requests(self) -> bool:
        return self.scheduler.has_unfinished()

    # ---- the step -------------------------------------------------------------------------------

    def step(self) -> list[RequestOutput]:
        t0 = time.perf_counter()
        batch = self.scheduler.schedule()
        if not batch.requests:
            # with protected pins, waiting for an earlier program's pin to end is legitimate
            if self.scheduler.waiting and not self.scheduler.running and not self.pins.pins:
                raise RuntimeError("scheduler made no progress with free KV blocks; this is a bug")
            self.last_step = StepInfo()
            self.snapshot = self.take_snapshot()
            return []
        for req in batch.requests:
            if req.metrics.first_scheduled_time is None:
                self._first_scheduled(req)
        logits, sampling, outputs = self._execute(batch)
        if self.on_logits is not None and sampling:
            self.on_logits(sampling, logits)
        st = self.stats
        computed = batch.num_tokens
        for req, n in zip(batch.requests, batch.num_new_tokens):
            plan = req.reuse
            if plan is not None and plan.sources:  # admitted with reused KV: the copy is done
                self.kv.release_reuse_sources(req)
                st.num_reuse_requests += 1
                st.num_reused_tokens += len(plan.positions)
                st.num_reuse_recomputed_tokens += plan.num_recomputed
                computed -= n - plan.num_recomputed
            req.num_computed_tokens += n
            self.kv.commit(req)
        new_tokens = sample(logits, sampling, self.generator) if sampling else []
        now = self.clock()
        for req, tok in zip(sampling, new_tokens):
            req.token_ids.append(tok)
            if req.metrics.first_token_time is None:
                req.metrics.first_token_time = now
            self.outputs.check_stop(req, tok)
            out = self.outputs.output(req) if req.finished or req.stream else None
            if req.finished:
                del self.requests[req.request_id]
                self.programs.turn_ended(req, out, self.take_snapshot)
                self.scheduler.remove(req)
            if out is not None:
                outputs.append(out)
        st.num_steps += 1
        st.num_computed_tokens += computed
        st.num_generated_tokens += len(new_tokens)
        step_s = time.perf_counter() - t0
        st.forward_s += self.runner.last_forward_s
        st.step_s += step_s
        self.last_step = StepInfo(len(batch.requests), batch.num_tokens, self.runner.last_forward_s, step_s)
        self.snapshot = self.take_snapshot()
        return outputs

    def _execute(self, batch: ScheduledBatch) -> tuple[torch.Tensor | None, list[Request], list[RequestOutput]]:
        """The batch's forward: (logits, the requests they belong to, outputs of failed requests).
        If the forward fails (out of memory, a kernel error), each request is run alone; one that
        fails by itself is finished with reason "error" (the exception as its `stop_reason`, its
        blocks freed) and dropped from `batch`. Running a request's tokens again is safe: nothing is
        committed to the prefix index or counted as computed before its forward succeeds."""
        try:
            return (*self.runner.execute(batch.requests, batch.num_new_tokens), [])
        except (RuntimeError, MemoryError):  # torch.OutOfMemoryError is a RuntimeError
            pass
        if self.device.type == "cuda":
            torch.cuda.empty_cache()  # the failed batch's activations may be what a lone request needs
        parts, sampling, failed, kept = [], [], [], []
        for req, n in zip(batch.requests, batch.num_new_tokens):
            try:
                logits, wanted = self.runner.execute([req], [n])
            except (RuntimeError, MemoryError) as exc:
                failed.append(self._end(req.request_id, "error", f"{type(exc).__name__}: {exc}"))
                continue
            kept.append((req, n))
            if wanted:
                parts.append(logits)
                sampling += wanted
        batch.requests, batch.num_new_tokens = [r for r, _ in kept], [n for _, n in kept]
        return (torch.cat(parts) if parts else None), sampling, failed

    def _first_scheduled(self, req: Request) -> None:
        now = self.clock()
        req.metrics.first_scheduled_time = now
        st = self.stats
        st.num_prompt_tokens += req.num_prompt_tokens
        st.num_prefix_hit_tokens += req.num_cached_tokens
        st.num_recomputed_prefill_tokens += self.programs.first_scheduled(req, now)
