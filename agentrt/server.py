"""OpenAI-compatible HTTP server over the embedded engine (`engine.AsyncEngine`): the app, its endpoints,
request -> engine and engine -> response. Its parts: agentrt/serve_schema.py (request bodies, refused
fields, errors), serve_programs.py (program identity, turns, lifetime), serve_metrics.py (Prometheus),
serve_tools.py (tools through the chat template, the reply's calls back as `tool_calls`),
serve_config.py (the `agentrt serve` flags). All web code lives in these; the engine has none.

    run_server(model="path/to/model", port=8000, preset="agentrt", kv_cache_tokens=65536)   # blocking
    app = create_app(AsyncEngine(EngineConfig(model=...)), "my-model")     # ASGI app for tests/embedding

Endpoints: POST /v1/chat/completions, POST /v1/completions (both streaming as SSE or not),
GET /v1/models, GET /health, GET /metrics (Prometheus, vLLM's metric names plus agentrt's). Tools in
chat go through the model's own chat template where it takes them (else Hermes text in the system
prompt), and the reply's calls, in the model's format (hermes, llama3_json or mistral;
`tool_call_parser` overrides), come back as OpenAI `tool_calls`; `tool_choice` `required` or a named
function prefills the start of a call.

The server is a runtime: it identifies the agent program a request belongs to from whatever the
client sends (`program_id`/`job_id` or X-Agentrt-Program-Id; else SGLang's `session_id` or the
X-Session-ID header that vLLM's router keys sessions on; else OpenAI's `prompt_cache_key`), counts
its turns when the client does not, and, with a preset's retention policy, pins the program's KV
after each non-final turn for the TTL predicted for the tool call read out of the reply (in the
tool-call format when `tools` were given, a bash block otherwise; a client's own `agentrt.ttl_s` wins).
The gap until the program's next request is the tool's duration, which teaches the predictor.

Invariants:
- The engine's step loop runs only inside the app's lifespan (`async with engine`).
- A request is fully validated (body, model, unsupported fields, sampling values, prompt length)
  before any response starts, so every bad input gets a 4xx OpenAI-style error body and never a
  half-open stream.
- Every engine stream is closed on every exit path (finished, client disconnect, error), which
  aborts its request and gives its KV blocks back; the request's metrics, log line and program
  bookkeeping are recorded on that same path, exactly once.
- A request that fails inside the model (engine finish reason `error`, e.g. out of memory; the
  engine frees it and serves the others) is answered 500 `server_error`, or, once streaming,
  ends with finish_reason `error`.
- A program's server-side state ends at its explicit last turn, or once it has been idle (no request
  in flight) longer than both its last pin's TTL and the idle timeout, on the app's injectable clock.
- Engine figures in /metrics come from `EngineSnapshot` only, never from engine internals.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import time
import uuid
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import anyio
import jinja2
import uvicorn
from fastapi import APIRouter, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import PlainTextResponse, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.exceptions import HTTPException
from starlette.types import Receive, Scope, Send

from engine.async_engine import AsyncEngine
from engine.config import EngineConfig
from engine.engine import PromptTooLongError
from engine.params import ProgramHint, SamplingParams
from engine.request import RequestOutput
from engine.snapshot import EngineSnapshot

from agentrt import toolcalls
from agentrt.presets import DEFAULT_PRESET, Preset, get_preset
from agentrt.retention import Retention
from agentrt.serve_config import DEFAULT_PROGRAM_IDLE_TIMEOUT_S, load_chat_template
from agentrt.types import ToolCall, ToolResult

from agentrt.serve_metrics import MIN_DURATION_S, ServerMetrics
from agentrt.serve_programs import ProgramTable, _EndedProgram, _PendingCall
from agentrt.serve_schema import (
    APIError,
    ChatCompletionRequest,
    CompletionRequest,
    _api_error_handler,
    _APIKeyMiddleware,
    _GenerationRequest,
    _http_error_handler,
    _refuse_unsupported,
    _validation_error_handler,
)
from agentrt.serve_tools import ToolSetup, reply_tool_calls, tool_mode

logger = logging.getLogger("agentrt.server")


# ---- request -> engine ---------------------------------------------------------------------------

@dataclass(slots=True)
class _Server:
    aengine: AsyncEngine
    model_name: str
    num_requests: int = 0
    retention: Retention | None = None  # the preset's; None: KV is pinned only when a client asks
    clock: Callable[[], float] = time.monotonic  # program lifetimes and tool gaps
    programs: ProgramTable = None  # type: ignore[assignment]
    chat_template: str | None = None  # overrides the tokenizer's
    tools: ToolSetup = None  # type: ignore[assignment]  # how tools are rendered and calls parsed
    log_requests: bool = True
    # finished requests by finish reason (each present from the start, as vLLM's are)
    finished: dict[str, int] = field(default_factory=lambda: dict.fromkeys(("stop", "length", "abort", "error"), 0))
    metrics: ServerMetrics = None  # type: ignore[assignment]


@dataclass(slots=True)
class _Job:
    """A validated request, ready for the engine."""

    id: str
    created: int
    prompt_ids: list[int]
    params: SamplingParams
    hint: ProgramHint
    tool_format: str = "bash"  # how the reply asks for a tool: the tool-call parser's when tools are parsed, else a bash block
    parse_tools: bool = False  # the reply's calls become OpenAI tool_calls
    reply_prefix: str = ""  # text the server prefilled into the reply (tool_choice required / named)
    ttl_s: float | None = None  # the client's TTL for this turn's pin (agentrt.ttl_s)
    this_func_call: str | None = None
    arrival_perf: float = field(default_factory=time.perf_counter)
    pin_ttl_s: float | None = None  # what the turn end pinned for (set from the engine thread)


def _sampling_params(req: _GenerationRequest, max_tokens: int | None, logprobs: int | None,
                     default_max_tokens: int) -> SamplingParams:
    if req.n != 1:
        raise APIError(400, "only n=1 is supported", param="n")
    temperature = 1.0 if req.temperature is None else req.temperature
    try:
        return SamplingParams(
            temperature=temperature,
            top_p=1.0 if req.top_p is None else req.top_p, top_k=req.top_k or 0, seed=req.seed,
            # no limit asked: the context length ends the request
            max_tokens=default_max_tokens if max_tokens is None else max_tokens,
            stop=req.stop, stop_token_ids=req.stop_token_ids, ignore_eos=req.ignore_eos, logprobs=logprobs)
    except ValueError as exc:
        raise APIError(400, str(exc)) from None


_TRUE, _FALSE = ("1", "true", "yes"), ("", "0", "false", "no")


@dataclass(slots=True, frozen=True)
class _Identity:
    program_id: str | None
    turn: int | None  # None: not sent, the server counts
    is_last_turn: bool
    tenant: str | None


def _identity(req: _GenerationRequest, headers: Mapping[str, str]) -> _Identity:
    """Who sent the request, from the body's fields and the headers (a body field wins over its
    header). The program, strongest first: `program_id` / `job_id` / X-Agentrt-Program-Id;
    `session_id` / X-Session-ID; `prompt_cache_key`. The tenant (the prefix cache's salt): `tenant` /
    X-Agentrt-Tenant, joined with vLLM's `cache_salt` when both are given."""
    program = next((v for v in (req.program_id, req.job_id, headers.get("x-agentrt-program-id"), req.session_id,
                                headers.get("x-session-id"), req.prompt_cache_key) if v is not None and v != ""),
                   None)
    given = req.model_fields_set  # a field the body sets wins even at its default (`"turn": 0`)
    turn: int | None = req.turn if "turn" in given else None
    if turn is None and "x-agentrt-turn" in headers:
        try:
            turn = int(headers["x-agentrt-turn"])
        except ValueError:
            raise APIError(400, "header X-Agentrt-Turn must be an integer", param="X-Agentrt-Turn") from None
    if turn is not None and turn < 0:
        raise APIError(400, f"turn must be >= 0, got {turn}", param="turn")
    last = headers.get("x-agentrt-last-turn", "").strip().lower()
    if last not in _TRUE + _FALSE:
        raise APIError(400, "header X-Agentrt-Last-Turn must be true or false", param="X-Agentrt-Last-Turn")
    body_last = req.is_last_turn or req.is_last_step
    is_last = body_last if given & {"is_last_turn", "is_last_step"} else last in _TRUE
    tenant = req.tenant if req.tenant is not None else headers.get("x-agentrt-tenant")
    if req.cache_salt is not None:
        tenant = req.cache_salt if tenant is None else f"{tenant}\x1f{req.cache_salt}"
    return _Identity(None if program is None else str(program), turn, is_last, tenant)


def _make_job(server: _Server, req: _GenerationRequest, prompt: str | list[int], max_tokens: int | None,
              logprobs: int | None, prefix: str, headers: Mapping[str, str], *, parse_tools: bool = False,
              reply_prefix: str = "") -> _Job:
    """Validates everything up front: `AsyncEngine.generate` only checks once iterated, too late for a 400."""
    if req.model != server.model_name:
        raise APIError(404, f"The model {req.model!r} does not exist; this server serves {server.model_name!r}.",
                       param="model", code="model_not_found")
    _refuse_unsupported(req)
    engine = server.aengine.engine
    prompt_param = "messages" if isinstance(req, ChatCompletionRequest) else "prompt"
    params = _sampling_params(req, max_tokens, logprobs, engine.max_model_len)
    if parse_tools:  # a model's call markers are often special tokens: keep them in the text (as vLLM does)
        params = replace(params, skip_special_tokens=False)
    try:
        prompt_ids = engine.make_request(prompt, params).token_ids
    except PromptTooLongError as exc:
        raise APIError(400, str(exc), param=prompt_param, code="context_length_exceeded") from None
    except ValueError as exc:
        raise APIError(400, str(exc), param=prompt_param) from None
    who = _identity(req, headers)
    turn = who.turn or 0
    if who.program_id is not None:  # last: nothing after this may refuse the request
        turn, pending, now, ended = server.programs.arrive(who.program_id, who.turn)
        _programs_ended(server, ended)
        if pending is not None:
            _observe_tool_gap(server, who.program_id, pending, now)
    server.num_requests += 1
    hint = ProgramHint(program_id=who.program_id, turn=turn, is_last_turn=who.is_last_turn, tenant=who.tenant)
    return _Job(f"{prefix}-{uuid.uuid4().hex}", int(time.time()), prompt_ids, params, hint,
                server.tools.parser if parse_tools else "bash", parse_tools, reply_prefix,
                req.agentrt.ttl_s if req.agentrt is not None else None, req.this_func_call)


def _observe_tool_gap(server: _Server, pid: str, pending: _PendingCall, now: float) -> None:
    """The program's next request arrived: the time since its last reply is what its tool took."""
    observed = max(0.0, now - pending.reply_end_s)
    if server.retention is not None:
        server.retention.observe(pid, ToolResult(pending.call, "", True, 0, started_at=pending.reply_end_s,
                                                 finished_at=pending.reply_end_s + observed))
    if pending.predicted_s is not None:
        error = abs(math.log(max(pending.predicted_s, MIN_DURATION_S)) - math.log(max(observed, MIN_DURATION_S)))
        server.metrics.tool_error.observe(error)


def _programs_ended(server: _Server, ended: list[_EndedProgram]) -> None:
    for p in ended:
        server.metrics.jct.observe(max(0.0, p.jct_s))
        if server.retention is not None:
            server.retention.program_finished(p.program_id, p.turns)


def _retention_callback(server: _Server, job: _Job) -> Callable | None:
    """At the end of a non-final turn: the TTL to pin the program's KV for: the client's, else the
    one predicted for the tool call read out of the reply (0 if none)."""
    retention, pid = server.retention, job.hint.program_id
    if pid is None or job.hint.is_last_turn or (retention is None and job.ttl_s is None):
        return None

    def ttl_s(out: RequestOutput, snapshot: EngineSnapshot) -> float:  # runs in the engine thread
        calls, _ = toolcalls.parse(job.tool_format, job.reply_prefix + _reply_text(server, job, out))
        call = calls[0] if calls else (ToolCall(job.this_func_call, {}) if job.this_func_call else None)
        ttl, pending = job.ttl_s or 0.0, None
        if call is not None and retention is not None:
            now = server.clock()
            if job.ttl_s is None:
                decision = retention.ttl_for(pid, call, len(out.prompt_token_ids) + len(out.token_ids), snapshot)
                ttl, pending = decision.ttl_s, _PendingCall(call, now, decision.predicted_median_s)
            else:
                pending = _PendingCall(call, now, None)
        job.pin_ttl_s = ttl
        server.programs.reply_ended(pid, ttl, pending)
        return ttl
    return ttl_s


async def _outputs(server: _Server, job: _Job) -> AsyncIterator[RequestOutput]:
    """The engine's outputs for `job`, timed; on every exit (finished, disconnect, error) the request's
    metrics, log line and program bookkeeping are recorded. Iterate it under `contextlib.aclosing`:
    leaving early closes the engine's generator, which aborts the request."""
    metrics, last, prev = server.metrics, None, None
    try:
        async with contextlib.aclosing(server.aengine.generate(
                job.prompt_ids, job.params, hint=job.hint, request_id=job.id,
                retention=_retention_callback(server, job))) as outputs:
            async for last in outputs:
                new = len(last.delta_token_ids)
                if new:
                    now = time.perf_counter()
                    if prev is None:
                        metrics.ttft.observe(now - job.arrival_perf)
                    else:
                        for _ in range(new):
                            metrics.itl.observe((now - prev) / new)
                    prev = now
                yield last
    finally:
        _request_done(server, job, last)


def _request_done(server: _Server, job: _Job, last: RequestOutput | None) -> None:
    m = server.metrics
    e2e = time.perf_counter() - job.arrival_perf
    reason = last.finish_reason if last is not None and last.finished else "abort"
    server.finished[reason] = server.finished.get(reason, 0) + 1
    m.e2e.observe(e2e)
    if last is not None:
        m.prompt_tokens.observe(len(last.prompt_token_ids))
        m.generation_tokens.observe(len(last.token_ids))
        rm = last.metrics
        if rm is not None and rm.first_scheduled_time is not None:
            m.queue.observe(max(0.0, rm.first_scheduled_time - rm.arrival_time))
    pid = job.hint.program_id
    if pid is not None:
        ended = server.programs.request_done(pid, job.hint.is_last_turn)
        if ended is not None:
            _programs_ended(server, [ended])
    if server.log_requests:
        prompt = len(last.prompt_token_ids) if last is not None else len(job.prompt_ids)
        logger.info("%s: finish=%s program=%s turn=%d tenant=%s prompt_tokens=%d cached_tokens=%d "
                    "completion_tokens=%d e2e=%.3fs pin_ttl=%s", job.id, reason, pid, job.hint.turn,
                    job.hint.tenant, prompt, last.num_cached_tokens if last is not None else 0,
                    len(last.token_ids) if last is not None else 0, e2e,
                    "-" if job.pin_ttl_s is None else f"{job.pin_ttl_s:.3f}s")


async def _final_output(server: _Server, job: _Job) -> RequestOutput:
    last = None
    async with contextlib.aclosing(_outputs(server, job)) as outputs:
        async for last in outputs:
            pass
    if last.finish_reason == "error":  # the engine freed it and serves the others; this one is lost
        raise APIError(500, f"The model failed on this request: {last.stop_reason}", code="model_error")
    return last


def _chat_prompt(server: _Server, req: ChatCompletionRequest, with_tools: bool, reply_prefix: str) -> str:
    messages, tools = server.tools.render(req, with_tools)
    prefill = reply_prefix
    if req.continue_final_message:
        if messages[-1]["role"] != "assistant" or req.add_generation_prompt:
            raise APIError(400, "continue_final_message needs a final assistant message and "
                                "add_generation_prompt=false", param="continue_final_message")
        prefill = messages.pop()["content"]
    try:
        add_prompt = req.add_generation_prompt or req.continue_final_message
        if server.chat_template is None and tools is None:
            text = server.aengine.engine.apply_chat_template(messages, add_generation_prompt=add_prompt)
        else:  # a template of the server's own, or the model's taking the tools
            text = server.aengine.tokenizer.apply_chat_template(
                messages, tools=tools, chat_template=server.chat_template, tokenize=False,
                add_generation_prompt=add_prompt)
        return text + prefill
    except (ValueError, jinja2.TemplateError) as exc:
        raise APIError(400, f"cannot apply the chat template: {exc}", param="messages") from None


# ---- engine -> response --------------------------------------------------------------------------

def _reply_text(server: _Server, job: _Job, out: RequestOutput) -> str:
    """The reply's text. With tools parsed it is decoded with its special tokens (a model's call
    markers, e.g. Qwen's `<tool_call>`, often are ones), less the special token that stopped it."""
    text = out.text
    if job.parse_tools and out.finished and out.finish_reason == "stop" and not isinstance(out.stop_reason, str) \
            and out.token_ids:
        decode = server.aengine.tokenizer.decode
        last = out.token_ids[-1]
        if decode([last], skip_special_tokens=True) == "":
            text = text.removesuffix(decode([last], skip_special_tokens=False))
    return text


def _reply_tool_calls(server: _Server, job: _Job, req: ChatCompletionRequest,
                      text: str) -> tuple[str | None, list[dict[str, Any]]]:
    """(content, tool_calls) of a finished chat reply (the prefilled start of a call included)."""
    if not job.parse_tools:
        return text, []
    return reply_tool_calls(server.tools.parser, job.reply_prefix + text, req.parallel_tool_calls)


def _usage(out: RequestOutput) -> dict[str, Any]:
    prompt, completion = len(out.prompt_token_ids), len(out.token_ids)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion,
            "prompt_tokens_details": {"cached_tokens": out.num_cached_tokens}}


def _chat_logprobs(server: _Server, out: RequestOutput, start: int, count: int) -> dict[str, Any]:
    def entry(token_id: int, logprob: float) -> dict[str, Any]:
        token = server.aengine.tokenizer.decode([token_id])
        return {"token": token, "logprob": logprob, "bytes": list(token.encode())}
    return {"content": [{**entry(lp.token_id, lp.logprob), "top_logprobs": [entry(t, v) for t, v in lp.top]}
                        for lp in out.logprobs[start:start + count]]}


def _completion_logprobs(server: _Server, out: RequestOutput, start: int, count: int) -> dict[str, Any]:
    lps, decode = out.logprobs[start:start + count], server.aengine.tokenizer.decode
    return {"tokens": [decode([lp.token_id]) for lp in lps], "token_logprobs": [lp.logprob for lp in lps],
            "top_logprobs": [{decode([t]): v for t, v in lp.top} for lp in lps]}


def _sse(obj: dict[str, Any] | str) -> str:
    return f"data: {obj if isinstance(obj, str) else json.dumps(obj)}\n\n"


class _SSEResponse(StreamingResponse):
    """Closes its body on every exit: Starlette cancels a disconnected stream without closing the
    generator, which would leave the engine request running until garbage collection."""

    def __init__(self, content: AsyncIterator[str]):
        super().__init__(content, media_type="text/event-stream", headers={"Cache-Control": "no-cache"})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            with anyio.CancelScope(shield=True):
                await self.body_iterator.aclose()


async def _chat_stream(server: _Server, job: _Job, req: ChatCompletionRequest) -> AsyncIterator[str]:
    base = {"id": job.id, "object": "chat.completion.chunk", "created": job.created, "model": server.model_name}

    def chunk(delta: dict[str, Any], finish_reason: str | None = None, logprobs: dict | None = None) -> str:
        return _sse({**base, "choices": [{"index": 0, "delta": delta, "logprobs": logprobs,
                                          "finish_reason": finish_reason}]})

    yield chunk({"role": "assistant", "content": ""})
    sent, num_tokens, last = "", 0, None
    tool_calls: list[dict[str, Any]] = []
    async with contextlib.aclosing(_outputs(server, job)) as outputs:
        async for last in outputs:
            if not job.parse_tools:
                visible = last.text
            elif last.finished:
                content, tool_calls = _reply_tool_calls(server, job, req, _reply_text(server, job, last))
                visible = content or ""
            else:
                visible = toolcalls.streamable_content(server.tools.parser, job.reply_prefix + last.text)
            new_tokens = len(last.delta_token_ids)
            logprobs = _chat_logprobs(server, last, num_tokens, new_tokens) if req.logprobs and new_tokens else None
            num_tokens += new_tokens
            if visible != sent or logprobs:
                yield chunk({"content": visible[len(sent):]}, logprobs=logprobs)
                sent = visible
    if tool_calls:
        yield chunk({"tool_calls": [{"index": i, **call} for i, call in enumerate(tool_calls)]}, "tool_calls")
    else:
        yield chunk({}, last.finish_reason)
    if req.stream_options and req.stream_options.include_usage:
        yield _sse({**base, "choices": [], "usage": _usage(last)})
    yield _sse("[DONE]")


async def _completion_stream(server: _Server, job: _Job, req: CompletionRequest) -> AsyncIterator[str]:
    base = {"id": job.id, "object": "text_completion", "created": job.created, "model": server.model_name}
    num_tokens, last = 0, None
    async with contextlib.aclosing(_outputs(server, job)) as outputs:
        async for last in outputs:
            new_tokens = len(last.delta_token_ids)
            logprobs = (_completion_logprobs(server, last, num_tokens, new_tokens)
                        if req.logprobs is not None else None)
            num_tokens += new_tokens
            yield _sse({**base, "choices": [{"index": 0, "text": last.delta_text, "logprobs": logprobs,
                                             "finish_reason": last.finish_reason if last.finished else None}]})
    if req.stream_options and req.stream_options.include_usage:
        yield _sse({**base, "choices": [], "usage": _usage(last)})
    yield _sse("[DONE]")


# ---- endpoints -----------------------------------------------------------------------------------

router = APIRouter()


@router.post("/v1/chat/completions")
async def chat_completions(body: ChatCompletionRequest, request: Request):
    server: _Server = request.app.state.server
    max_tokens = body.max_completion_tokens if body.max_completion_tokens is not None else body.max_tokens
    top = (body.top_logprobs or 0) if body.logprobs else None
    parse_tools, reply_prefix = tool_mode(body, server.tools.parser)
    prompt = _chat_prompt(server, body, parse_tools, reply_prefix)
    job = _make_job(server, body, prompt, max_tokens, top, "chatcmpl", request.headers,
                    parse_tools=parse_tools, reply_prefix=reply_prefix)
    if body.stream:
        return _SSEResponse(_chat_stream(server, job, body))
    out = await _final_output(server, job)
    content, tool_calls = _reply_tool_calls(server, job, body, _reply_text(server, job, out))
    message: dict[str, Any] = {"role": "assistant", "content": content}
    if tool_calls:
        message["tool_calls"] = tool_calls
    choice = {"index": 0, "message": message,
              "logprobs": _chat_logprobs(server, out, 0, len(out.token_ids)) if body.logprobs else None,
              "finish_reason": "tool_calls" if tool_calls else out.finish_reason}
    return {"id": job.id, "object": "chat.completion", "created": job.created, "model": server.model_name,
            "choices": [choice], "usage": _usage(out)}


@router.post("/v1/completions")
async def completions(body: CompletionRequest, request: Request):
    server: _Server = request.app.state.server
    job = _make_job(server, body, body.prompt, body.max_tokens, body.logprobs, "cmpl", request.headers)
    if body.stream:
        return _SSEResponse(_completion_stream(server, job, body))
    out = await _final_output(server, job)
    logprobs = _completion_logprobs(server, out, 0, len(out.token_ids)) if body.logprobs is not None else None
    choice = {"index": 0, "text": out.text, "logprobs": logprobs, "finish_reason": out.finish_reason}
    return {"id": job.id, "object": "text_completion", "created": job.created, "model": server.model_name,
            "choices": [choice], "usage": _usage(out)}


@router.get("/v1/models")
async def models(request: Request) -> dict[str, Any]:
    name = request.app.state.server.model_name
    return {"object": "list", "data": [{"id": name, "object": "model", "created": 0, "owned_by": "agentrt"}]}


@router.get("/health")
async def health() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/metrics")
async def metrics(request: Request) -> PlainTextResponse:
    server: _Server = request.app.state.server
    _programs_ended(server, server.programs.sweep())  # programs_active counts only live ones
    return PlainTextResponse(generate_latest(server.metrics.registry).decode(), media_type=CONTENT_TYPE_LATEST)


# ---- app -----------------------------------------------------------------------------------------

def create_app(engine: AsyncEngine, model_name: str, api_key: str | None = None,
               retention: Retention | None = None, *, clock: Callable[[], float] = time.monotonic,
               program_idle_timeout_s: float = DEFAULT_PROGRAM_IDLE_TIMEOUT_S, chat_template: str | None = None,
               tool_call_parser: str | None = None, log_requests: bool = True) -> FastAPI:
    """The ASGI app; its lifespan runs the engine's step loop. `api_key` guards every /v1/* route.
    `retention` (a preset's) pins a program's KV after each non-final turn, for the TTL predicted for
    the tool call read out of the reply. `clock` times programs (their idle end, tool gaps, JCT);
    `chat_template` (Jinja text) replaces the tokenizer's; `tool_call_parser` (hermes, llama3_json,
    mistral) overrides the format read from the model; `log_requests`: one log line per request."""
    tools = ToolSetup.for_model(engine.tokenizer, chat_template, tool_call_parser)  # a bad parser fails here

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        async with engine:
            yield

    app = FastAPI(title="agentrt", lifespan=lifespan)
    server = _Server(engine, model_name, retention=retention, clock=clock,
                     programs=ProgramTable(clock, program_idle_timeout_s), chat_template=chat_template,
                     tools=tools, log_requests=log_requests)
    server.metrics = ServerMetrics(server)
    app.state.server = server
    app.include_router(router)
    app.add_exception_handler(APIError, _api_error_handler)
    app.add_exception_handler(RequestValidationError, _validation_error_handler)
    app.add_exception_handler(HTTPException, _http_error_handler)
    if api_key:
        app.add_middleware(_APIKeyMiddleware, api_key=api_key)
    return app


def run_server(*, model: str | None = None, host: str = "127.0.0.1", port: int = 8000, api_key: str | None = None,
               served_model_name: str | None = None, preset: str | Preset = DEFAULT_PRESET,
               chat_template: str | None = None, program_idle_timeout_s: float = DEFAULT_PROGRAM_IDLE_TIMEOUT_S,
               tool_call_parser: str | None = None, log_requests: bool = True, **engine_options: Any) -> None:
    """Loads the model with the preset's engine options (`engine_options`, EngineConfig fields,
    override them) and serves it with the preset's retention policy until interrupted.
    `chat_template`: a Jinja file (or the template itself) used instead of the tokenizer's;
    `tool_call_parser`: the format tool calls are read in (default: the model's)."""
    preset = get_preset(preset)
    template = load_chat_template(chat_template) if chat_template else None  # fails before the model loads
    aengine = AsyncEngine(EngineConfig(model=model), **{**preset.engine_options(), **engine_options})
    # a name (`qwen2.5-coder-0.5b-instruct`, `Org/Model`) is served as given, as vLLM does; a path by its last part
    name = served_model_name or (model if model and not Path(model).exists() else aengine.engine.model_dir.name)
    if log_requests and not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(asctime)s [%(name)s] %(message)s")
    app = create_app(aengine, name, api_key, preset.retention(), program_idle_timeout_s=program_idle_timeout_s,
                     chat_template=template, tool_call_parser=tool_call_parser, log_requests=log_requests)
    logger.info("serving %s as %r on http://%s:%d (preset %s, tool calls: %s%s)", aengine.engine.model_dir, name,
                host, port, preset.name, app.state.server.tools.parser,
                ", tools through the chat template" if app.state.server.tools.native else "")
    uvicorn.run(app, host=host, port=port)
