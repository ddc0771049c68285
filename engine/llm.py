"""Offline batch API: `LLM(...).generate(prompts, params)` and `.chat(conversations, params)`."""

from __future__ import annotations

from collections.abc import Sequence

from engine.config import EngineConfig
from engine.engine import Engine
from engine.params import ProgramHint, SamplingParams
from engine.request import RequestOutput


class LLM:
    """Loads a model (the default SmolLM2-135M-Instruct when `model` is None) and runs batches to completion.

    Keyword options are `EngineConfig` fields: `kv_cache_tokens`, `device`, `dtype`, `block_size`,
    `max_num_seqs`, `max_num_batched_tokens`, `enable_prefix_caching`, `max_model_len`, `seed`, ...
    """

    def __init__(self, model: str | None = None, **options):
        self.engine = Engine(EngineConfig(model=model), **options)

    @classmethod
    def from_engine(cls, engine: Engine) -> "LLM":
        """Wraps an existing engine (keeps its prefix cache and statistics)."""
        llm = cls.__new__(cls)
        llm.engine = engine
        return llm

    @property
    def tokenizer(self):
        return self.engine.tokenizer

    def generate(self, prompts: str | Sequence[str] | Sequence[list[int]],
                 params: SamplingParams | Sequence[SamplingParams] | None = None,
                 hints: Sequence[ProgramHint] | None = None) -> list[RequestOutput]:
        """Runs every prompt (strings or token-id lists) to completion; outputs come back in input order."""
        if isinstance(prompts, str) or (prompts and isinstance(prompts[0], int)):
            prompts = [prompts]
        n = len(prompts)
        if params is None or isinstance(params, SamplingParams):
            params = [params or SamplingParams()] * n
        if len(params) != n or (hints is not None and len(hints) != n):
            raise ValueError(f"got {n} prompts but {len(params)} sampling params / hints")
        ids = []
        try:
            for i, prompt in enumerate(prompts):
                ids.append(self.engine.add_request(prompt, params[i], hint=hints[i] if hints else None))
        except Exception:
            for rid in ids:
                self.engine.abort_request(rid)
            raise
        done: dict[str, RequestOutput] = {}
        while len(done) < n:
            for out in self.engine.step():
                if out.finished:
                    done[out.request_id] = out
        return [done[rid] for rid in ids]

    def chat(self, conversations: list[dict] | Sequence[list[dict]],
             params: SamplingParams | Sequence[SamplingParams] | None = None,
             add_generation_prompt: bool = True) -> list[RequestOutput]:
        """Applies the tokenizer's chat template to each conversation (a list of role/content messages)."""
        if conversations and isinstance(conversations[0], dict):
            conversations = [conversations]
        prompts = [self.engine.apply_chat_template(c, add_generation_prompt) for c in conversations]
        return self.generate(prompts, params)
