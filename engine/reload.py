"""Reload time: how long re-prefilling a context of n tokens takes on this engine (Continuum's reload(r)).

Profiled by running real prefills of a few lengths through the engine (unique tenant salt, so no
prefix hit; one output token each) and fitting t(n) = a + b·n + c·n² by least squares, c >= 0
(attention's quadratic term). The TTL cost model weighs a pin against this time.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

import numpy as np

from engine.params import ProgramHint, SamplingParams


@dataclass(slots=True, frozen=True)
class ReloadModel:
    a: float
    b: float
    c: float

    def __call__(self, num_tokens: int) -> float:
        n = float(num_tokens)
        return max(0.0, self.a + self.b * n + self.c * n * n)

    @classmethod
    def fit(cls, lengths: list[int], seconds: list[float]) -> "ReloadModel":
        n = np.asarray(lengths, dtype=float)
        t = np.asarray(seconds, dtype=float)
        a, b, c = np.linalg.lstsq(np.stack([np.ones_like(n), n, n * n], 1), t, rcond=None)[0]
        if c < 0:  # too few or noisy points: fall back to a line
            (a, b), c = np.linalg.lstsq(np.stack([np.ones_like(n), n], 1), t, rcond=None)[0], 0.0
        return cls(float(a), float(b), float(c))


def profile_reload(engine, lengths: tuple[int, ...] = (64, 256, 1024, 2048), repeats: int = 2) -> ReloadModel:
    """Times prefills of `lengths` tokens (clipped to the engine's limits) on an otherwise idle engine, on
    the engine's clock (virtual in the simulator, so there it fits the cost model's prefill times)."""
    if engine.has_unfinished_requests():
        raise RuntimeError("profile_reload needs an idle engine")
    vocab = engine.model_config.vocab_size
    limit = min(engine.max_model_len - 2, engine.pool.num_blocks * engine.config.block_size - 2)
    sizes = sorted({max(1, min(n, limit)) for n in lengths})
    params = SamplingParams(temperature=0.0, max_tokens=1, ignore_eos=True)
    xs, ts = [], []
    for n in sizes:
        for _ in range(repeats):
            prompt = [(i * 7919 + 13) % vocab for i in range(n)]
            engine.add_request(prompt, params, hint=ProgramHint(tenant=f"reload-profile-{uuid.uuid4().hex}"))
            t0 = engine.clock()
            while engine.has_unfinished_requests():
                engine.step()
            xs.append(n)
            ts.append(engine.clock() - t0)
    return ReloadModel.fit(xs, ts)
