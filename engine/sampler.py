"""Token sampling from a step's logits: greedy, temperature, top-k, top-p, per-request seeds, logprobs.

Greedy rows take the argmax of the raw logits (exactly what Hugging Face's greedy search does; on
the CPU through a C kernel with torch.argmax's result, kernels/argmax.py: 8x faster at batch 64).
Random rows draw with the request's own generator when it has a seed, so a seeded request gives
the same tokens whatever else is in the batch. Logprobs are of the unmodified model distribution.
"""

from __future__ import annotations

import torch

from engine.request import Request, TokenLogprob
from kernels.argmax import argmax_rows


def _filter_top_k_top_p(logits: torch.Tensor, top_k: int, top_p: float) -> torch.Tensor:
    if top_k and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k).values[-1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True)
        probs = sorted_logits.softmax(-1)
        # drop a token when the mass before it already reaches top_p (the best token always stays)
        drop = probs.cumsum(-1) - probs >= top_p
        logits = logits.masked_fill(torch.zeros_like(drop).scatter(0, order, drop), float("-inf"))
    return logits


def sample(logits: torch.Tensor, reqs: list[Request], default_generator: torch.Generator) -> list[int]:
    """logits: [len(reqs), vocab] float32. Returns one token id per request and appends logprobs."""
    tokens = argmax_rows(logits).tolist()
    for row, req in enumerate(reqs):
        p = req.params
        if p.greedy:
            continue
        scaled = _filter_top_k_top_p(logits[row] / p.temperature, p.top_k, p.top_p)
        probs = scaled.softmax(-1)
        if p.seed is not None and req.generator is None:  # made on first use: the request record is torch-free
            req.generator = torch.Generator().manual_seed(p.seed)
        gen = req.generator or default_generator
        tokens[row] = int(torch.multinomial(probs, 1, generator=gen))
    if any(r.logprobs is not None for r in reqs):
        logprobs = torch.log_softmax(logits, dim=-1)
        for row, req in enumerate(reqs):
            if req.logprobs is None:
                continue
            tok = tokens[row]
            top = []
            if req.params.logprobs:
                vals, ids = torch.topk(logprobs[row], req.params.logprobs)
                top = list(zip(ids.tolist(), vals.tolist()))
            req.logprobs.append(TokenLogprob(tok, float(logprobs[row, tok]), top))
    return tokens
