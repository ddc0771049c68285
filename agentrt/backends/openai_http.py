"""Any OpenAI-compatible server as a backend (vLLM, SGLang, `agentrt serve`), over httpx, streaming.

Program hints travel as extra body fields under both this project's names (`program_id`, `turn`,
`is_last_turn`, `tenant`) and vllm-continuum's (`job_id`, `is_last_step`, `this_func_call`).
With several base URLs, a program sticks to the server that took its first turn for as long as it
lives (its KV is there); a new program goes to the server with the fewest live programs.
"""

from __future__ import annotations

from collections.abc import Callable

import json
import time

import httpx

from engine.params import ProgramHint, SamplingParams

from agentrt.backends.base import Backend, BackendError
from agentrt.toolcalls import ToolFormatError, parse_openai_tool_calls
from agentrt.types import ChatReply, LLMTimings


class AffinityRouter:
    """Program id -> base URL; new programs go to the least loaded URL (ties: the first listed)."""

    def __init__(self, base_urls: list[str]):
        if not base_urls:
            raise ValueError("at least one base URL is needed")
        self.base_urls = [u.rstrip("/") for u in base_urls]
        self.load = {u: 0 for u in self.base_urls}
        self.assigned: dict[str, str] = {}

    def route(self, program_id: str | None) -> str:
        if program_id is None:
            return min(self.base_urls, key=self.load.__getitem__)
        url = self.assigned.get(program_id)
        if url is None:
            url = min(self.base_urls, key=self.load.__getitem__)
            self.assigned[program_id] = url
            self.load[url] += 1
        return url

    def release(self, program_id: str) -> None:
        url = self.assigned.pop(program_id, None)
        if url is not None:
            self.load[url] -= 1


def request_body(model: str, messages: list[dict], params: SamplingParams, hint: ProgramHint,
                 tools: list[dict] | None, last_tool: str | None) -> dict:
    body = {
        "model": model, "messages": messages, "stream": True, "stream_options": {"include_usage": True},
        "temperature": params.temperature, "top_p": params.top_p, "max_tokens": params.max_tokens,
        # program identity, in both vocabularies
        "program_id": hint.program_id, "turn": hint.turn, "is_last_turn": hint.is_last_turn, "tenant": hint.tenant,
        "job_id": hint.program_id, "is_last_step": hint.is_last_turn, "this_func_call": last_tool,
    }
    if params.top_k:
        body["top_k"] = params.top_k
    if params.seed is not None:
        body["seed"] = params.seed
    if params.stop:
        body["stop"] = params.stop
    if params.ignore_eos:
        body["ignore_eos"] = True
    if tools:
        body["tools"] = tools
    return body


class OpenAIBackend(Backend):
    name = "openai"
    native_tools = True

    def __init__(self, base_urls: str | list[str], model: str | None = None, api_key: str | None = None,
                 timeout_s: float = 600.0):
        self.router = AffinityRouter([base_urls] if isinstance(base_urls, str) else list(base_urls))
        self.model = model
        self.headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.timeout_s = timeout_s
        self.client: httpx.AsyncClient | None = None

    async def __aenter__(self) -> "OpenAIBackend":
        self.client = httpx.AsyncClient(timeout=self.timeout_s, headers=self.headers,
                                        limits=httpx.Limits(max_connections=None, max_keepalive_connections=64))
        if self.model is None:
            resp = await self.client.get(f"{self.router.base_urls[0]}/models")
            self._check(resp)
            self.model = resp.json()["data"][0]["id"]
        return self

    async def __aexit__(self, *exc_info) -> None:
        if self.client is not None:
            await self.client.aclose()

    @staticmethod
    def _check(resp: httpx.Response) -> None:
        if resp.is_success:
            return
        try:
            message = resp.json()["error"]["message"]
        except (ValueError, KeyError, TypeError):
            message = resp.text[:500]
        raise BackendError(f"{resp.request.method} {resp.request.url} -> {resp.status_code}: {message}")

    async def chat(self, messages: list[dict], params: SamplingParams, hint: ProgramHint,
                   tools: list[dict] | None = None, last_tool: str | None = None,
                   prefill: str | None = None, retention: Callable | None = None) -> ChatReply:
        if self.client is None:
            raise RuntimeError("use `async with OpenAIBackend(...)` before chat()")
        url = f"{self.router.route(hint.program_id)}/chat/completions"
        if prefill:  # vLLM's (and agentrt serve's) way to continue a started assistant message
            messages = [*messages, {"role": "assistant", "content": prefill}]
        body = request_body(self.model, messages, params, hint, tools, last_tool)
        if prefill:
            body.update(continue_final_message=True, add_generation_prompt=False)
        timings = LLMTimings(queued_at=time.time())
        text, finish, usage, tool_deltas = [], None, {}, {}
        try:
            async with self.client.stream("POST", url, json=body) as resp:
                if not resp.is_success:
                    await resp.aread()
                    self._check(resp)
                timings.started_at = time.time()
                async for line in resp.aiter_lines():
                    if not line.startswith("data: ") or line == "data: [DONE]":
                        continue
                    chunk = json.loads(line[6:])
                    usage = chunk.get("usage") or usage
                    for choice in chunk.get("choices", []):
                        delta = choice.get("delta", {})
                        if delta.get("content"):
                            timings.first_token_at = timings.first_token_at or time.time()
                            text.append(delta["content"])
                        for tc in delta.get("tool_calls") or []:
                            timings.first_token_at = timings.first_token_at or time.time()
                            _merge_tool_delta(tool_deltas, tc)
                        finish = choice.get("finish_reason") or finish
        except httpx.HTTPError as exc:
            raise BackendError(f"POST {url} failed: {type(exc).__name__}: {exc}") from exc
        timings.finished_at = time.time()
        reply = ChatReply((prefill or "") + "".join(text), finish, usage.get("prompt_tokens", 0),
                          (usage.get("prompt_tokens_details") or {}).get("cached_tokens", 0),
                          usage.get("completion_tokens", 0), timings)
        if tool_deltas:
            try:
                reply.tool_calls = parse_openai_tool_calls([tool_deltas[i] for i in sorted(tool_deltas)])
            except ToolFormatError as exc:
                reply.format_error = str(exc)
        return reply

    def end_program(self, program_id: str) -> None:
        self.router.release(program_id)


def _merge_tool_delta(acc: dict[int, dict], tc: dict) -> None:
    """Streamed tool calls arrive in pieces keyed by index: name once, arguments as string fragments."""
    slot = acc.setdefault(tc.get("index", len(acc)), {"id": "", "type": "function",
                                                       "function": {"name": "", "arguments": ""}})
    slot["id"] = tc.get("id") or slot["id"]
    fn = tc.get("function") or {}
    slot["function"]["name"] += fn.get("name") or ""
    slot["function"]["arguments"] += fn.get("arguments") or ""
