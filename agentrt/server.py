"""OpenAI-compatible HTTP server over the embedded engine (`engine.AsyncEngine`); all web code lives here.

    run_server(model="path/to/model", port=8000, preset="agentrt", kv_cache_tokens=65536)   # blocking
    app = create_app(AsyncEngine(EngineConfig(model=...)), "my-model")     # ASGI app for tests/embedding

Endpoints: POST /v1/chat/completions, POST /v1/completions (both streaming as SSE or not),
GET /v1/models, GET /health, GET /metrics (Prometheus text). Tools in chat are rendered into the
system prompt in the hermes format and parsed back into OpenAI `tool_calls`. Program hints
(`program_id`/`job_id`, `turn`, `is_last_turn`/`is_last_step`, `tenant`) ride as extra body fields,
or as X-Agentrt-Program-Id / -Turn / -Last-Turn / -Tenant headers. With a preset's retention policy
(`run_server(preset=...)`, default `agentrt`), a program's non-final turn pins its KV for the TTL
predicted for the tool call read out of the reply (hermes `<tool_call>` when `tools` were given, a
bash block otherwise), and the gap until the program's next request teaches the predictor.

Invariants:
- The engine's step loop runs only inside the app's lifespan (`async with engine`).
- A request is fully validated (body, model, sampling values, prompt length) before any response
  starts, so every bad input gets a 4xx OpenAI-style error body and never a half-open stream.
- Every engine stream is closed on every exit path (finished, client disconnect, error), which
  aborts its request and gives its KV blocks back.
- A request that fails inside the model (engine finish reason `error`, e.g. out of memory; the
  engine frees it and serves the others) is answered 500 `server_error`, or, once streaming,
  ends with finish_reason `error`.
"""

from __future__ import annotations

import contextlib
import json
import secrets
import time
import uuid
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import anyio
import jinja2
import uvicorn
from fastapi import APIRouter, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, model_validator
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Receive, Scope, Send

from engine.async_engine import AsyncEngine
from engine.config import EngineConfig
from engine.engine import PromptTooLongError
from engine.params import ProgramHint, SamplingParams
from engine.request import RequestOutput

from agentrt import toolcalls
from agentrt.presets import DEFAULT_PRESET, Preset, get_preset
from agentrt.retention import Retention
from agentrt.types import ToolCall, ToolResult

TOOL_CALL_TAG = "<tool_call>"


# ---- errors --------------------------------------------------------------------------------------

class APIError(Exception):
    """A client error, answered as OpenAI's `{"error": {...}}` body with `status`."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code


def _error_response(status: int, message: str, param: str | None = None, code: str | None = None) -> JSONResponse:
    kind = "invalid_request_error" if status < 500 else "server_error"
    body = {"error": {"message": message, "type": kind, "param": param, "code": code}}
    return JSONResponse(body, status_code=status)


async def _api_error_handler(_: Request, exc: APIError) -> JSONResponse:
    return _error_response(exc.status, exc.message, exc.param, exc.code)


async def _validation_error_handler(_: Request, exc: RequestValidationError) -> JSONResponse:
    # OpenAI answers 400 for any bad body; FastAPI's default would be a 422 in its own shape.
    errors = exc.errors()
    if errors and errors[0]["type"] == "json_invalid":
        return _error_response(400, f"Malformed JSON body: {errors[0].get('ctx', {}).get('error', 'invalid JSON')}")
    locs = [".".join(str(p) for p in e["loc"] if p != "body") for e in errors]
    message = "; ".join(f"{loc or 'body'}: {e['msg']}" for loc, e in zip(locs, errors))
    return _error_response(400, message or "invalid request body", locs[0] if locs and locs[0] else None)


async def _http_error_handler(_: Request, exc: HTTPException) -> JSONResponse:
    return _error_response(exc.status_code, str(exc.detail))


class _APIKeyMiddleware:
    """Pure ASGI (not BaseHTTPMiddleware, which would get between a stream and its disconnect), and
    before routing so that an unauthenticated caller learns nothing about its body's validity."""

    def __init__(self, app: ASGIApp, api_key: str):
        self.app, self._expected = app, f"Bearer {api_key}".encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"].startswith("/v1/"):
            given = dict(scope["headers"]).get(b"authorization", b"")
            if not secrets.compare_digest(given, self._expected):
                response = _error_response(401, "Invalid or missing API key (Authorization: Bearer <key>).",
                                           code="invalid_api_key")
                return await response(scope, receive, send)
        await self.app(scope, receive, send)


# ---- request bodies ------------------------------------------------------------------------------

class _Body(BaseModel):
    model_config = ConfigDict(extra="allow")  # unknown OpenAI fields (user, tool_choice, ...) are ignored


class StreamOptions(_Body):
    include_usage: bool = False


def _check_unicode(value: Any) -> None:
    """JSON may escape a lone UTF-16 surrogate (`"\\ud800"`), which is no character: refused here,
    before it can reach the tokenizer or a hash (where it would fail inside the engine)."""
    if isinstance(value, str):
        try:
            value.encode()
        except UnicodeEncodeError as exc:
            raise ValueError(f"text holds a lone surrogate ({value[exc.start]!r}), which is not valid unicode") from None
    elif isinstance(value, dict):
        for k, v in value.items():
            _check_unicode(k)
            _check_unicode(v)
    elif isinstance(value, list):
        for v in value:
            _check_unicode(v)


class _GenerationRequest(_Body):
    """Fields shared by chat and completions: sampling, streaming and the program hint."""

    @model_validator(mode="before")
    @classmethod
    def _valid_unicode(cls, data: Any) -> Any:
        _check_unicode(data)
        return data

    model: str
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    seed: int | None = None
    stop: str | list[str] | None = None
    stop_token_ids: list[int] | None = None
    ignore_eos: bool = False
    n: int = 1
    stream: bool = False
    stream_options: StreamOptions | None = None
    # program hint: this project's names, and vllm-continuum's job_id / is_last_step
    # (its this_func_call is accepted as an extra field and ignored)
    program_id: str | int | None = None
    job_id: str | int | None = None
    turn: int = 0
    is_last_turn: bool = False
    is_last_step: bool = False
    tenant: str | None = None


class TextPart(_Body):
    type: Literal["text"]
    text: str


class ChatMessage(_Body):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart] | None = None
    tool_calls: list[dict[str, Any]] | None = None


class FunctionSpec(_Body):
    name: str
    description: str | None = None
    parameters: dict[str, Any] | None = None


class ToolSpec(_Body):
    type: Literal["function"] = "function"
    function: FunctionSpec


class ChatCompletionRequest(_GenerationRequest):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = None
    logprobs: bool = False
    top_logprobs: int | None = None
    tools: list[ToolSpec] | None = None
    # vLLM's extensions: continue the last (assistant) message instead of starting a new one
    continue_final_message: bool = False
    add_generation_prompt: bool = True


class CompletionRequest(_GenerationRequest):
    prompt: str | list[int]
    logprobs: int | None = None


# ---- request -> engine ---------------------------------------------------------------------------

@dataclass(slots=True)
class _Server:
    aengine: AsyncEngine
    model_name: str
    num_requests: int = 0
    retention: Retention | None = None  # the preset's; None: KV is never pinned between turns
    # program -> (the tool call its last reply asked for, when that reply ended): the gap until the
    # program's next request is the tool's duration, which teaches the predictor online
    pending_calls: dict[str, tuple[ToolCall, float]] = field(default_factory=dict)


@dataclass(slots=True)
class _Job:
    """A validated request, ready for the engine."""

    id: str
    created: int
    prompt_ids: list[int]
    params: SamplingParams
    hint: ProgramHint
    tool_format: str = "bash"  # how the reply asks for a tool: hermes when `tools` were given, else a bash block


def _sampling_params(req: _GenerationRequest, max_tokens: int | None, logprobs: int | None,
                     default_max_tokens: int) -> SamplingParams:
    if req.n != 1:
        raise APIError(400, "only n=1 is supported", param="n")
    try:
        return SamplingParams(
            temperature=1.0 if req.temperature is None else req.temperature,
            top_p=1.0 if req.top_p is None else req.top_p, top_k=req.top_k or 0, seed=req.seed,
            # no limit asked: the context length ends the request
            max_tokens=default_max_tokens if max_tokens is None else max_tokens,
            stop=req.stop, stop_token_ids=req.stop_token_ids, ignore_eos=req.ignore_eos, logprobs=logprobs)
    except ValueError as exc:
        raise APIError(400, str(exc)) from None


_TRUE, _FALSE = ("1", "true", "yes"), ("", "0", "false", "no")


def _hint(req: _GenerationRequest, headers: Mapping[str, str]) -> ProgramHint:
    """The program hint from the body's fields, else from X-Agentrt-Program-Id / -Turn / -Last-Turn /
    -Tenant headers (for clients that can add headers but not body fields, such as BFCL's OpenAI
    handler); a body field wins over its header."""
    program = req.program_id if req.program_id is not None else req.job_id
    if program is None:
        program = headers.get("x-agentrt-program-id")
    given = req.model_fields_set  # a field the body sets wins even at its default (`"turn": 0`)
    turn = req.turn
    if "turn" not in given and "x-agentrt-turn" in headers:
        try:
            turn = int(headers["x-agentrt-turn"])
        except ValueError:
            raise APIError(400, "header X-Agentrt-Turn must be an integer", param="X-Agentrt-Turn") from None
    last = headers.get("x-agentrt-last-turn", "").strip().lower()
    if last not in _TRUE + _FALSE:
        raise APIError(400, "header X-Agentrt-Last-Turn must be true or false", param="X-Agentrt-Last-Turn")
    tenant = req.tenant if req.tenant is not None else headers.get("x-agentrt-tenant")
    body_last = req.is_last_turn or req.is_last_step
    is_last = body_last if given & {"is_last_turn", "is_last_step"} else last in _TRUE
    return ProgramHint(program_id=None if program is None else str(program), turn=turn,
                       is_last_turn=is_last, tenant=tenant)


def _make_job(server: _Server, req: _GenerationRequest, prompt: str | list[int], max_tokens: int | None,
              logprobs: int | None, prefix: str, headers: Mapping[str, str]) -> _Job:
    """Validates everything up front: `AsyncEngine.generate` only checks once iterated, too late for a 400."""
    if req.model != server.model_name:
        raise APIError(404, f"The model {req.model!r} does not exist; this server serves {server.model_name!r}.",
                       param="model", code="model_not_found")
    engine = server.aengine.engine
    prompt_param = "messages" if isinstance(req, ChatCompletionRequest) else "prompt"
    params = _sampling_params(req, max_tokens, logprobs, engine.max_model_len)
    try:
        prompt_ids = engine.make_request(prompt, params).token_ids
    except PromptTooLongError as exc:
        raise APIError(400, str(exc), param=prompt_param, code="context_length_exceeded") from None
    except ValueError as exc:
        raise APIError(400, str(exc), param=prompt_param) from None
    server.num_requests += 1
    hint = _hint(req, headers)
    fmt = "hermes" if isinstance(req, ChatCompletionRequest) and req.tools else "bash"
    _observe_tool_gap(server, hint.program_id)
    return _Job(f"{prefix}-{uuid.uuid4().hex}", int(time.time()), prompt_ids, params, hint, fmt)


def _observe_tool_gap(server: _Server, program_id: str | None) -> None:
    """The program's next request arrived: the time since its last reply is what its tool took."""
    pending = server.pending_calls.pop(program_id, None) if program_id is not None else None
    if pending is not None and server.retention is not None:
        call, ended = pending
        now = time.time()
        server.retention.observe(program_id, ToolResult(call, "", True, 0, started_at=ended, finished_at=now))


def _retention_callback(server: _Server, job: _Job) -> Callable | None:
    """At the end of a non-final turn: the TTL for the tool call read out of the reply (0 if none)."""
    retention, pid = server.retention, job.hint.program_id
    if retention is None or pid is None or job.hint.is_last_turn:
        return None

    def ttl_s(out: RequestOutput, snapshot) -> float:  # runs in the engine thread
        calls, _ = toolcalls.parse(job.tool_format, out.text)
        if not calls:
            return 0.0
        server.pending_calls[pid] = (calls[0], time.time())
        return retention.ttl_for(pid, calls[0], len(out.prompt_token_ids) + len(out.token_ids), snapshot).ttl_s
    return ttl_s


def _outputs(server: _Server, job: _Job) -> contextlib.aclosing:
    # aclosing: leaving early (disconnect, error) closes the engine's generator, which aborts the request
    return contextlib.aclosing(server.aengine.generate(job.prompt_ids, job.params, hint=job.hint, request_id=job.id,
                                                       retention=_retention_callback(server, job)))


async def _final_output(server: _Server, job: _Job) -> RequestOutput:
    last = None
    async with _outputs(server, job) as outputs:
        async for last in outputs:
            pass
    if last.finish_reason == "error":  # the engine freed it and serves the others; this one is lost
        raise APIError(500, f"The model failed on this request: {last.stop_reason}", code="model_error")
    return last


def _render_message(msg: ChatMessage) -> dict[str, str]:
    """An OpenAI message as a chat-template message; an assistant's earlier tool calls become hermes
    text, the form the model was taught to write them in."""
    text = "".join(p.text for p in msg.content) if isinstance(msg.content, list) else msg.content or ""
    if msg.tool_calls:
        try:
            calls = toolcalls.parse_openai_tool_calls(msg.tool_calls)
        except ValueError as exc:
            raise APIError(400, f"invalid tool_calls in an assistant message: {exc}", param="messages") from None
        text += "".join(f"\n{TOOL_CALL_TAG}\n{json.dumps({'name': c.name, 'arguments': c.arguments})}\n</tool_call>"
                        for c in calls)
    return {"role": "system" if msg.role == "developer" else msg.role, "content": text}


def _chat_prompt(server: _Server, req: ChatCompletionRequest) -> str:
    messages = [_render_message(m) for m in req.messages]
    if req.tools:
        tools_text = toolcalls.render_tools("hermes", [t.model_dump(exclude_none=True) for t in req.tools])
        if messages[0]["role"] == "system":
            messages[0] = {"role": "system", "content": f"{messages[0]['content']}\n\n{tools_text}"}
        else:
            messages.insert(0, {"role": "system", "content": tools_text})
    prefill = ""
    if req.continue_final_message:
        if messages[-1]["role"] != "assistant" or req.add_generation_prompt:
            raise APIError(400, "continue_final_message needs a final assistant message and "
                                "add_generation_prompt=false", param="continue_final_message")
        prefill = messages.pop()["content"]
    try:
        add_prompt = req.add_generation_prompt or req.continue_final_message
        return server.aengine.engine.apply_chat_template(messages, add_generation_prompt=add_prompt) + prefill
    except (ValueError, jinja2.TemplateError) as exc:
        raise APIError(400, f"cannot apply the chat template: {exc}", param="messages") from None


# ---- engine -> response --------------------------------------------------------------------------

def hermes_to_openai(text: str) -> tuple[str | None, list[dict[str, Any]]]:
    """(content, tool_calls) of a reply in the hermes format. Without a parsable call the whole
    text is the content; with calls, the content is what precedes the first `<tool_call>`."""
    calls, _error = toolcalls.parse("hermes", text)
    if not calls:
        return text, []
    content = text[:text.find(TOOL_CALL_TAG)]
    return (content if content.strip() else None), [
        {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": json.dumps(c.arguments)}}
        for c in calls]


def _streamable_content(text: str) -> str:
    """While streaming with tools: the text that cannot turn out to be part of a tool call, i.e.
    before any `<tool_call>`, less a tail that may be its beginning."""
    at = text.find(TOOL_CALL_TAG)
    if at >= 0:
        return text[:at]
    for k in range(len(TOOL_CALL_TAG) - 1, 0, -1):
        if text.endswith(TOOL_CALL_TAG[:k]):
            return text[:-k]
    return text


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
    async with _outputs(server, job) as outputs:
        async for last in outputs:
            if not req.tools:
                visible = last.text
            elif last.finished:
                content, tool_calls = hermes_to_openai(last.text)
                visible = content or ""
            else:
                visible = _streamable_content(last.text)
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
    async with _outputs(server, job) as outputs:
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
    job = _make_job(server, body, _chat_prompt(server, body), max_tokens, top, "chatcmpl", request.headers)
    if body.stream:
        return _SSEResponse(_chat_stream(server, job, body))
    out = await _final_output(server, job)
    content, tool_calls = hermes_to_openai(out.text) if body.tools else (out.text, [])
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


def _metric(name: str, kind: str, help_text: str, value: float) -> str:
    return f"# HELP {name} {help_text}\n# TYPE {name} {kind}\n{name} {value}\n"


@router.get("/metrics")
async def metrics(request: Request) -> PlainTextResponse:
    server: _Server = request.app.state.server
    snap = server.aengine.engine.snapshot  # immutable: safe to read while the engine steps
    text = "".join([
        _metric("agentrt_requests_total", "counter", "Generation requests accepted.", server.num_requests),
        _metric("agentrt_prompt_tokens_total", "counter", "Prompt tokens of admitted requests.",
                snap.num_prompt_tokens),
        _metric("agentrt_generation_tokens_total", "counter", "Tokens generated.", snap.num_generated_tokens),
        _metric("agentrt_prefix_cache_hit_tokens_total", "counter", "Prompt tokens served from the prefix cache.",
                snap.num_prefix_hit_tokens),
        _metric("agentrt_kv_blocks_free", "gauge", "Free KV cache blocks.", snap.num_free_blocks),
        _metric("agentrt_kv_blocks_total", "gauge", "KV cache blocks.", snap.num_blocks),
        _metric("agentrt_requests_running", "gauge", "Requests being run.", snap.num_running),
        _metric("agentrt_requests_waiting", "gauge", "Requests waiting to run.", snap.num_waiting),
        _metric("agentrt_kv_pins_total", "counter", "KV pins made between a program's turns.", snap.num_pins),
        _metric("agentrt_kv_pin_hits_total", "counter", "Pins whose program came back in time.", snap.num_pin_hits),
        _metric("agentrt_kv_pinned_blocks", "gauge", "KV blocks held by pins.", snap.num_pinned_blocks),
    ])
    return PlainTextResponse(text, media_type="text/plain; version=0.0.4")


# ---- app -----------------------------------------------------------------------------------------

def create_app(engine: AsyncEngine, model_name: str, api_key: str | None = None,
               retention: Retention | None = None) -> FastAPI:
    """The ASGI app; its lifespan runs the engine's step loop. `api_key` guards every /v1/* route.
    `retention` (a preset's) pins a program's KV after each non-final turn, for the TTL predicted for
    the tool call read out of the reply."""

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        async with engine:
            yield

    app = FastAPI(title="agentrt", lifespan=lifespan)
    app.state.server = _Server(engine, model_name, retention=retention)
    app.include_router(router)
    app.add_exception_handler(APIError, _api_error_handler)
    app.add_exception_handler(RequestValidationError, _validation_error_handler)
    app.add_exception_handler(HTTPException, _http_error_handler)
    if api_key:
        app.add_middleware(_APIKeyMiddleware, api_key=api_key)
    return app


def run_server(*, model: str | None = None, host: str = "127.0.0.1", port: int = 8000, api_key: str | None = None,
               served_model_name: str | None = None, preset: str | Preset = DEFAULT_PRESET,
               **engine_options: Any) -> None:
    """Loads the model with the preset's engine options (`engine_options`, EngineConfig fields,
    override them) and serves it with the preset's retention policy until interrupted."""
    preset = get_preset(preset)
    aengine = AsyncEngine(EngineConfig(model=model), **{**preset.engine_options(), **engine_options})
    name = served_model_name or aengine.engine.model_dir.name
    uvicorn.run(create_app(aengine, name, api_key, preset.retention()), host=host, port=port)
