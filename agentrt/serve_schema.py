"""The OpenAI-compatible server's request side: typed request bodies (pydantic), the fields it
refuses with a 400 that names them, and the OpenAI-style error (`APIError`). No engine code."""

from __future__ import annotations

import secrets
from collections.abc import Callable
from typing import Any, Literal

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Receive, Scope, Send


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
    # unknown fields are accepted and ignored (clients send extras of their own); the ones the
    # server knows it does not implement are refused by name (_UNSUPPORTED)
    model_config = ConfigDict(extra="allow")


class StreamOptions(_Body):
    include_usage: bool = False
    continuous_usage_stats: bool = False  # vLLM's: usage in every chunk (refused when true)


class AgentrtOptions(_Body):
    """The `agentrt` body field: what a client that knows agentrt may ask of the server."""

    ttl_s: float | None = Field(default=None, ge=0)  # pin this program's KV this long after this turn


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
    # program identity, strongest first: this project's names and vllm-continuum's (job_id,
    # is_last_step, this_func_call), SGLang's session_id, OpenAI's prompt_cache_key
    program_id: str | int | None = None
    job_id: str | int | None = None
    session_id: str | int | None = None
    prompt_cache_key: str | None = None
    turn: int = 0
    is_last_turn: bool = False
    is_last_step: bool = False
    this_func_call: str | None = None  # the tool this reply leads to, where the reply does not say
    tenant: str | None = None
    cache_salt: str | None = Field(default=None, min_length=1)  # vLLM's: prefix-cache isolation
    agentrt: AgentrtOptions | None = None


class TextPart(_Body):
    type: Literal["text"]
    text: str


class ChatMessage(_Body):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart] | None = None
    tool_calls: list[dict[str, Any]] | None = None
    tool_call_id: str | None = None  # a tool message's: the call it answers
    name: str | None = None


class FunctionSpec(_Body):
    name: str
    description: str | None = None
    parameters: dict[str, Any] | None = None


class ToolSpec(_Body):
    type: Literal["function"] = "function"
    function: FunctionSpec


class FunctionName(_Body):
    name: str


class NamedToolChoice(_Body):
    type: Literal["function"] = "function"
    function: FunctionName


class ChatCompletionRequest(_GenerationRequest):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = None
    logprobs: bool = False
    top_logprobs: int | None = None
    tools: list[ToolSpec] | None = None
    tool_choice: Any = None  # "auto" | "none" | "required" | NamedToolChoice (checked below)
    parallel_tool_calls: bool | None = None
    # vLLM's extensions: continue the last (assistant) message instead of starting a new one
    continue_final_message: bool = False
    add_generation_prompt: bool = True


    @field_validator("tool_choice")
    @classmethod
    def _tool_choice(cls, value: Any) -> str | NamedToolChoice | None:
        # one message instead of pydantic's per-member ones (whose locations name union members)
        if value is None or value in ("auto", "none", "required"):
            return value
        try:
            return NamedToolChoice.model_validate(value)
        except ValidationError:
            raise ValueError('must be "auto", "none", "required" or {"type": "function", "function": '
                             '{"name": NAME}}') from None


class CompletionRequest(_GenerationRequest):
    prompt: str | list[int]
    logprobs: int | None = None


def _set(value: Any) -> bool:
    return value is not None


def _nonzero(value: Any) -> bool:
    return value not in (None, 0, False)


def _nonempty(value: Any) -> bool:
    return bool(value)


# Fields of OpenAI's or vLLM's API that this server does not implement, each with the test of a value
# it would have to act on: such a request is refused (400 naming the field) rather than answered as
# if the field had been honoured. Neutral values (0 penalties, text response_format) pass.
_UNSUPPORTED: dict[str, Callable[[Any], bool]] = {
    "response_format": lambda v: v is not None and v != {"type": "text"},
    "frequency_penalty": _nonzero, "presence_penalty": _nonzero,
    "repetition_penalty": lambda v: v not in (None, 1),
    "logit_bias": _nonempty, "priority": _nonzero, "best_of": lambda v: v not in (None, 1),
    "min_p": _nonzero, "min_tokens": _nonzero, "echo": _nonzero, "suffix": _nonempty,
    "use_beam_search": _nonzero, "prompt_logprobs": _set, "logits_processors": _nonempty,
    "bad_words": _nonempty, "allowed_token_ids": _nonempty,
    "guided_json": _set, "guided_regex": _set, "guided_choice": _set, "guided_grammar": _set,
    "structured_outputs": _set, "prediction": _set, "audio": _set,
    "modalities": lambda v: v not in (None, ["text"]),
    "functions": _nonempty, "function_call": _set,  # the legacy names of tools / tool_choice
    "web_search_options": _set, "reasoning_effort": _set,
    "chat_template": _set, "chat_template_kwargs": _nonempty, "documents": _nonempty,
}
# accepted and ignored, by design: they change nothing a server of one model has to do
IGNORED_FIELDS = ("user", "metadata", "store", "service_tier", "safety_identifier", "prompt_cache_retention")


def _refuse_unsupported(req: _GenerationRequest) -> None:
    for name, value in (req.model_extra or {}).items():
        test = _UNSUPPORTED.get(name)
        if test is not None and test(value):
            raise APIError(400, f"{name!r} is not supported by this server; send the request without it.",
                           param=name, code="unsupported_parameter")
    if req.stream_options is not None and req.stream_options.continuous_usage_stats:
        raise APIError(400, "'stream_options.continuous_usage_stats' is not supported by this server; "
                            "use include_usage.", param="stream_options.continuous_usage_stats",
                       code="unsupported_parameter")
