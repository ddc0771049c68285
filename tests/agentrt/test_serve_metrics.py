"""/metrics through prometheus_client, over real HTTP: every vLLM-named and agentrt metric present
with its `model_name` label and moving by what the requests did, and one log line per request.

The running / waiting gauges are read while the engine is held inside a step (a gate in
`Engine.on_logits` that the test opens one step at a time), the pin counters on a small KV pool
with a fake engine clock, tool-duration error and JCT on the app's fake clock: nothing depends on
how fast the machine is.
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Iterator

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from agentrt.server import create_app
from engine import AsyncEngine, EngineConfig
from engine.engine import Engine
from tests.conftest import force_outputs, serve
from toolpredict.ttl import TTLDecision

MODEL = "tiny-metrics"
KV_TOKENS = 512  # 32 blocks: a 400-token prompt needs a pinned program's blocks
PREDICTED_S, TTL_S = 2.0, 1000.0

VLLM_GAUGES = ("vllm:num_requests_running", "vllm:num_requests_waiting", "vllm:kv_cache_usage_perc")
VLLM_COUNTERS = ("vllm:prompt_tokens", "vllm:generation_tokens", "vllm:prefix_cache_queries",
                 "vllm:prefix_cache_hits", "vllm:request_success", "vllm:num_preemptions")
VLLM_HISTOGRAMS = ("vllm:time_to_first_token_seconds", "vllm:inter_token_latency_seconds",
                   "vllm:e2e_request_latency_seconds", "vllm:request_queue_time_seconds",
                   "vllm:request_prompt_tokens", "vllm:request_generation_tokens")
AGENTRT_COUNTERS = ("agentrt:requests", "agentrt:kv_pins", "agentrt:kv_pin_hits", "agentrt:kv_pin_expired",
                    "agentrt:kv_pin_released")
AGENTRT_GAUGES = ("agentrt:kv_pinned_blocks", "agentrt:programs_active", "agentrt:kv_blocks_total",
                  "agentrt:kv_blocks_free")
AGENTRT_HISTOGRAMS = ("agentrt:program_jct_seconds", "agentrt:tool_duration_abs_log_error")


class FakeClock:
    def __init__(self, now: float = 100.0):
        self.now = now

    def __call__(self) -> float:
        return self.now


class FixedRetention:
    """Pins every tool call TTL_S seconds, predicting PREDICTED_S for it."""

    def __init__(self):
        self.finished: list[tuple[str, int]] = []

    def ttl_for(self, pid, call, context_tokens, snapshot):
        return TTLDecision(TTL_S, predicted_median_s=PREDICTED_S)

    def observe(self, pid, result):
        pass

    def program_finished(self, pid, turns):
        self.finished.append((pid, turns))


class Gate:
    """Holds the engine inside every step that samples for program "gated" until `release()`."""

    def __init__(self):
        self._cond = threading.Condition()
        self.calls = 0  # steps that reached the gate
        self.allowed = 0

    def __call__(self, reqs, logits) -> None:
        if not any(r.hint.program_id == "gated" for r in reqs):
            return
        with self._cond:
            self.calls += 1
            self._cond.notify_all()
            assert self._cond.wait_for(lambda: self.allowed >= self.calls, timeout=120), "gate never opened"

    def wait_held(self, n: int) -> None:
        with self._cond:
            assert self._cond.wait_for(lambda: self.calls >= n, timeout=120), f"step {n} never reached the gate"

    def release(self) -> None:
        with self._cond:
            self.allowed += 1
            self._cond.notify_all()

    def open(self) -> None:
        with self._cond:
            self.allowed = 10**9
            self._cond.notify_all()


@pytest.fixture(scope="module")
def app_parts(tiny_model_dir):
    engine_clock, app_clock = FakeClock(), FakeClock(7000.0)
    aengine = AsyncEngine(Engine(EngineConfig(model=str(tiny_model_dir)), clock=engine_clock,
                                 kv_cache_tokens=KV_TOKENS, max_num_seqs=1))
    retention = FixedRetention()
    app = create_app(aengine, MODEL, retention=retention, clock=app_clock)
    with serve(app) as url:
        yield {"url": url, "engine": aengine.engine, "engine_clock": engine_clock, "clock": app_clock,
               "retention": retention}


@pytest.fixture()
def http(app_parts) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=app_parts["url"], timeout=120) as c:
        yield c


def scrape(http: httpx.Client) -> dict[tuple[str, tuple], float]:
    """{(sample name, sorted labels): value}, parsed by prometheus_client's own parser."""
    r = http.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(r.text) for s in family.samples}


def value(samples: dict, name: str, **labels: str) -> float:
    """The sum of `name`'s samples whose labels include `labels` (model_name must be ours)."""
    found = [v for (n, ls), v in samples.items() if n == name and dict(ls).get("model_name") == MODEL
             and all(dict(ls).get(k) == want for k, want in labels.items())]
    assert found, f"no sample {name} {labels}"
    return sum(found)


def complete(http: httpx.Client, **body) -> dict:
    r = http.post("/v1/completions", json={"model": MODEL, "temperature": 0, **body})
    assert r.status_code == 200, r.text
    return r.json()


def test_every_metric_is_exposed_with_the_model_name_label(http):
    text = http.get("/metrics").text
    families = {f.name: f for f in text_string_to_metric_families(text)}
    for name in VLLM_GAUGES + AGENTRT_GAUGES:
        assert families[name].type == "gauge", name
    for name in VLLM_COUNTERS + AGENTRT_COUNTERS:
        assert families[name].type == "counter", name
        assert f"# TYPE {name}_total counter" in text
    for name in VLLM_HISTOGRAMS + AGENTRT_HISTOGRAMS:
        assert families[name].type == "histogram", name
    for name in VLLM_GAUGES + AGENTRT_GAUGES + AGENTRT_COUNTERS[:-1] + VLLM_COUNTERS[:4]:
        assert all(s.labels.get("model_name") == MODEL for s in families[name].samples), name
    assert not any(line.startswith("agentrt_") for line in text.splitlines())  # the old names are gone


def test_token_counters_and_request_histograms_move_by_what_was_served(http):
    before = scrape(http)
    prompt = list(range(40, 80))  # 40 tokens: the second request finds two 16-token blocks cached
    outs = [complete(http, prompt=prompt, max_tokens=5, ignore_eos=True) for _ in range(2)]
    outs.append(complete(http, prompt="hello there", max_tokens=3, ignore_eos=True, stream=False))
    after = scrape(http)

    def moved(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    prompt_tokens = sum(o["usage"]["prompt_tokens"] for o in outs)
    completion_tokens = sum(o["usage"]["completion_tokens"] for o in outs)
    assert moved("vllm:prompt_tokens_total") == moved("vllm:prefix_cache_queries_total") == prompt_tokens
    assert moved("vllm:generation_tokens_total") == completion_tokens == 13
    assert moved("vllm:prefix_cache_hits_total") == 32
    assert moved("vllm:request_success_total", finished_reason="length") == 3
    assert moved("agentrt:requests_total") == 3
    for name in ("vllm:time_to_first_token_seconds", "vllm:e2e_request_latency_seconds",
                 "vllm:request_queue_time_seconds", "vllm:request_prompt_tokens", "vllm:request_generation_tokens"):
        assert moved(f"{name}_count") == 3, name
    assert moved("vllm:request_prompt_tokens_sum") == prompt_tokens
    assert moved("vllm:request_generation_tokens_sum") == completion_tokens
    assert moved("vllm:inter_token_latency_seconds_count") == completion_tokens - 3  # one gap per later token
    assert moved("vllm:e2e_request_latency_seconds_sum") > 0


def test_running_waiting_and_kv_usage_gauges_follow_the_engine(app_parts, http):
    engine, gate = app_parts["engine"], Gate()
    engine.on_logits = gate
    results: dict[str, httpx.Response] = {}

    def send(key: str, body: dict) -> None:
        with httpx.Client(base_url=app_parts["url"], timeout=120) as c:
            results[key] = c.post("/v1/completions", json={"model": MODEL, "temperature": 0, **body})

    gated = threading.Thread(target=send, args=("gated", {"prompt": list(range(90, 130)), "max_tokens": 8,
                                                          "ignore_eos": True, "program_id": "gated",
                                                          "is_last_turn": True}))
    other = threading.Thread(target=send, args=("other", {"prompt": "a second request", "max_tokens": 2}))
    try:
        idle = scrape(http)
        assert value(idle, "vllm:num_requests_running") == value(idle, "vllm:num_requests_waiting") == 0
        gated.start()
        gate.wait_held(1)
        gate.release()
        gate.wait_held(2)  # the first step is over: the gated request runs, holding KV
        held = scrape(http)
        assert value(held, "vllm:num_requests_running") == 1
        assert 0 < value(held, "vllm:kv_cache_usage_perc") <= 1
        assert value(held, "agentrt:kv_blocks_free") < value(held, "agentrt:kv_blocks_total")
        accepted = value(held, "agentrt:requests_total")
        other.start()
        for _ in range(200):  # accepted means handed to the engine (no await in between)
            if value(scrape(http), "agentrt:requests_total") == accepted + 1:
                break
            threading.Event().wait(0.05)
        waiting = 0.0
        for n in range(3, 7):  # max_num_seqs=1: the second request waits behind the gated one
            gate.release()
            gate.wait_held(n)
            waiting = value(scrape(http), "vllm:num_requests_waiting")
            if waiting:
                break
        assert waiting == 1
    finally:
        gate.open()
        gated.join(timeout=120)
        other.join(timeout=120)
        engine.on_logits = None
    assert results["gated"].status_code == results["other"].status_code == 200
    done = scrape(http)
    assert value(done, "vllm:num_requests_running") == value(done, "vllm:num_requests_waiting") == 0


def test_pin_program_and_prediction_metrics_move(app_parts, http):
    engine, engine_clock, clock = app_parts["engine"], app_parts["engine_clock"], app_parts["clock"]
    force_outputs(engine, {"pinned": "```bash\nls -la\n```", "pressed": "```bash\nmake\n```"})
    try:
        before = scrape(http)

        def moved(name: str, **labels: str) -> float:
            return value(scrape(http), name, **labels) - value(before, name, **labels)

        prompt = list(range(200, 360))  # 160 tokens: ten full blocks
        complete(http, prompt=prompt, max_tokens=16, program_id="pinned")
        assert moved("agentrt:kv_pins_total") == 1 and moved("agentrt:programs_active") == 1
        assert value(scrape(http), "agentrt:kv_pinned_blocks") >= 10
        clock.now += 8.0  # the tool took 8 s; predicted 2 s
        out = complete(http, prompt=prompt + [5, 6, 7], max_tokens=16, program_id="pinned")
        assert out["usage"]["prompt_tokens_details"]["cached_tokens"] == 160
        assert moved("agentrt:kv_pin_hits_total") == 1 and moved("agentrt:kv_pins_total") == 2
        assert moved("agentrt:tool_duration_abs_log_error_count") == 1
        assert moved("agentrt:tool_duration_abs_log_error_sum") == pytest.approx(math.log(8.0 / PREDICTED_S))
        # a 400-token prompt needs the pinned blocks (32 in the pool): the pin is released under pressure
        complete(http, prompt=[(7 * i) % 380 for i in range(400)], max_tokens=1)
        assert moved("agentrt:kv_pin_released_total", reason="pressure") == 1
        assert value(scrape(http), "agentrt:kv_pinned_blocks") == 0
        # a pin that runs out its TTL (on the engine's clock) expires
        complete(http, prompt=list(range(200, 300)), max_tokens=16, program_id="pressed")
        engine_clock.now += TTL_S + 1
        complete(http, prompt="step", max_tokens=1)
        assert moved("agentrt:kv_pin_expired_total") == 1
        # the last turn ends the program: its JCT, first request to last reply, on the app's clock
        clock.now += 4.0
        complete(http, prompt="bye", max_tokens=1, program_id="pinned", is_last_turn=True)
        assert moved("agentrt:program_jct_seconds_count") == 1
        assert moved("agentrt:program_jct_seconds_sum") == pytest.approx(12.0)
        assert ("pinned", 3) in app_parts["retention"].finished
        assert moved("agentrt:programs_active") == 1  # `pressed` is still live
    finally:
        engine.on_logits = None


def test_one_log_line_per_request(http, caplog):
    caplog.set_level(logging.INFO, logger="agentrt.server")
    ids = [complete(http, prompt="log me", max_tokens=2, session_id="logged")["id"] for _ in range(2)]
    with http.stream("POST", "/v1/completions", json={"model": MODEL, "prompt": "and me", "max_tokens": 2,
                                                      "stream": True}) as r:
        streamed = [line for line in r.iter_lines() if line.startswith("data: {")]
    ids.append(__import__("json").loads(streamed[0].removeprefix("data: "))["id"])
    lines = [rec.getMessage() for rec in caplog.records if rec.name == "agentrt.server"]
    for rid in ids:
        (line,) = [m for m in lines if m.startswith(f"{rid}:")]
        assert "finish=length" in line and "prompt_tokens=" in line and "completion_tokens=2" in line
    assert "program=logged turn=1" in next(m for m in lines if m.startswith(f"{ids[1]}:"))
