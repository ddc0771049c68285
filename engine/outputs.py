"""From sampled tokens to what callers see: stop checks, incremental detokenization, `RequestOutput`.

A request is finished by exactly one of: a stop token (EOS unless `ignore_eos`, or
`stop_token_ids`), a stop string (text cut before it unless `include_stop_str_in_output`),
`max_tokens`, or the context limit. Streamed text is held back while a stop string could still cut
it, so no caller ever sees text that a later token takes back. No torch, no model.
"""

from __future__ import annotations

from collections.abc import Callable

from engine.request import Request, RequestOutput, RequestStatus


class OutputProcessor:
    def __init__(self, tokenizer, eos_token_ids: set[int], max_model_len: int, clock: Callable[[], float]):
        self.tokenizer, self.eos_token_ids, self.max_model_len, self.clock = (
            tokenizer, eos_token_ids, max_model_len, clock)

    def check_stop(self, req: Request, tok: int) -> None:
        """`tok` was just appended to req: finishes req if it (or the text it completes) stops it."""
        p = req.params
        if tok in p.stop_token_ids:
            return self.finish(req, "stop", tok)
        if not p.ignore_eos and tok in self.eos_token_ids:
            return self.finish(req, "stop")
        if p.stop or req.stream:
            seen = len(req.detok.text)
            self._detokenize(req)
            if p.stop and self._match_stop_string(req, seen):
                return
        if req.num_output_tokens >= p.max_tokens or req.num_tokens >= self.max_model_len:
            self.finish(req, "length")

    def _detokenize(self, req: Request, flush: bool = False) -> None:
        """Incremental detokenization: decode from a few tokens back so that merges and multi-byte
        characters come out right, and hold back text that still ends in a partial character
        (unless `flush`: the request is over and what is there is final)."""
        skip, ids, d = req.params.skip_special_tokens, req.token_ids, req.detok
        prefix = self.tokenizer.decode(ids[d.prefix_offset:d.read_offset], skip_special_tokens=skip)
        full = self.tokenizer.decode(ids[d.prefix_offset:], skip_special_tokens=skip)
        if len(full) > len(prefix) and (flush or not full.endswith("\ufffd")):
            d.text += full[len(prefix):]
            d.prefix_offset, d.read_offset = d.read_offset, len(ids)

    def _match_stop_string(self, req: Request, seen: int) -> bool:
        """Finds a stop string that ends in the text added since `seen` characters."""
        stops = req.params.stop
        tail_start = max(0, seen - max(len(s) for s in stops) + 1)
        hits = [(at, s) for s in stops if (at := req.detok.text.find(s, tail_start)) >= 0]
        if not hits:
            return False
        at, s = min(hits)
        req.detok.text = req.detok.text[: at + len(s) if req.params.include_stop_str_in_output else at]
        self.finish(req, "stop", s)
        return True

    def finish(self, req: Request, reason: str, stop_reason: str | int | None = None) -> None:
        req.status = RequestStatus.FINISHED
        req.finish_reason = reason
        req.stop_reason = stop_reason
        req.metrics.finish_time = self.clock()

    def output(self, req: Request) -> RequestOutput:
        """req's snapshot for the caller; advances what it has been shown."""
        if req.finished and not (req.params.stop or req.stream):
            skip = req.params.skip_special_tokens
            req.detok.text = self.tokenizer.decode(req.output_token_ids, skip_special_tokens=skip)
        elif req.finished and not isinstance(req.stop_reason, str):
            self._detokenize(req, flush=True)
        # stream out only text that a stop string could no longer cut back
        d = req.detok
        hold = 0 if req.finished or not req.params.stop else max(len(s) for s in req.params.stop) - 1
        visible = max(len(d.text) - hold, d.emitted_text_len)
        out = RequestOutput(
            request_id=req.request_id, prompt=req.prompt,
            prompt_token_ids=req.token_ids[: req.num_prompt_tokens],
            token_ids=req.output_token_ids, text=d.text[:visible], finished=req.finished,
            finish_reason=req.finish_reason, stop_reason=req.stop_reason,
            delta_token_ids=req.token_ids[req.num_prompt_tokens + d.emitted_tokens:],
            delta_text=d.text[d.emitted_text_len:visible],
            logprobs=req.logprobs, num_cached_tokens=req.num_cached_tokens,
            num_reused_tokens=req.num_reused_tokens, metrics=req.metrics,
        )
        d.emitted_tokens = req.num_output_tokens
        d.emitted_text_len = visible
        return out
