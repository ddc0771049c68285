"""`agentrt serve` as a runtime for clients that know nothing of agentrt, over real HTTP: program
identity from `X-Session-ID` / `session_id` / `prompt_cache_key` (below `program_id` and the
X-Agentrt-* headers), turns counted by the server, a program's end (explicit last turn, or idle past
its pin and the idle timeout), pins created and hit for such clients, and a client's own TTL.

Both clocks are fakes: the engine's (pins expire only when a test moves it) and the app's (program
idle ends, tool gaps and JCT are exact), so nothing here depends on how fast the machine is.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import httpx
import pytest

from agentrt.presets import get_preset
from agentrt.server import create_app
from engine import EngineConfig
from engine.engine import Engine
from engine.sim import VirtualClock
from tests.conftest import forced_outputs, recording_engine_class, serve

MODEL = "tiny"
IDLE_TIMEOUT_S = 100.0
HELLO = [{"role": "user", "content": "The quick brown fox jumps over the lazy dog. Agents call tools."}]
BASH_REPLY = "I will list the files.\n```bash\nls -la\n```"


class RecordingRetention:
    """The continuum-fixed preset's retention (pins 2 s for a tool whose mean is <= 2 s), recording
    what the server asks and teaches it."""

    def __init__(self):
        self.inner = get_preset("continuum-fixed").retention()
        self.asked: list[tuple[str, str, dict]] = []
        self.observed: list[tuple[str, str, float]] = []
        self.finished: list[tuple[str, int]] = []

    def ttl_for(self, pid, call, context_tokens, snapshot):
        self.asked.append((pid, call.name, dict(call.arguments)))
        return self.inner.ttl_for(pid, call, context_tokens, snapshot)

    def observe(self, pid, result):
        self.observed.append((pid, result.call.name, result.duration_s))
        self.inner.observe(pid, result)

    def program_finished(self, pid, turns):
        self.finished.append((pid, turns))
        self.inner.program_finished(pid, turns)


@pytest.fixture(scope="module")
def app_parts(tiny_model_dir):
    engine_clock, app_clock = VirtualClock(1000.0), VirtualClock(5000.0)
    aengine = recording_engine_class()(Engine(EngineConfig(model=str(tiny_model_dir)), clock=engine_clock,
                                              kv_cache_tokens=4096))
    retention = RecordingRetention()
    app = create_app(aengine, MODEL, retention=retention, clock=app_clock, program_idle_timeout_s=IDLE_TIMEOUT_S)
    with serve(app) as url:
        yield {"url": url, "aengine": aengine, "engine_clock": engine_clock, "clock": app_clock,
               "retention": retention, "server": app.state.server}


@pytest.fixture()
def http(app_parts) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=app_parts["url"], timeout=60) as c:
        yield c


@pytest.fixture()
def forced(app_parts):
    """`forced[program_id] = text`: greedy requests of that program generate exactly `text`, then EOS."""
    engine = app_parts["aengine"].engine
    with forced_outputs(engine) as texts:
        yield texts


def metrics(http: httpx.Client) -> dict[str, float]:
    """Samples by name (labels dropped, samples of one name summed)."""
    out: dict[str, float] = {}
    for line in http.get("/metrics").text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.split("{")[0].split()[0], float(line.rsplit(" ", 1)[1])
            out[name] = out.get(name, 0.0) + value
    return out


def chat(http: httpx.Client, messages: list[dict], headers: dict | None = None, **body) -> dict:
    r = http.post("/v1/chat/completions", headers=headers or {},
                  json={"model": MODEL, "messages": messages, "temperature": 0, "max_tokens": 48, **body})
    assert r.status_code == 200, r.text
    return r.json()


def follow_up(messages: list[dict], reply: dict, tool_output: str = "a.py b.py") -> list[dict]:
    return [*messages, {"role": "assistant", "content": reply["choices"][0]["message"]["content"]},
            {"role": "user", "content": tool_output}]


def hints(app_parts, n: int):
    return [(h.program_id, h.turn, h.is_last_turn) for h in app_parts["aengine"].hints[-n:]]


# ---- clients that send only a session key --------------------------------------------------------

@pytest.mark.parametrize("how", ["x-session-id header", "prompt_cache_key"])
def test_a_client_with_only_a_session_key_gets_turns_counted_and_pins_made_and_hit(app_parts, http, forced, how):
    pid = f"conv-{how.split()[0]}"
    send = ({"headers": {"X-Session-ID": pid}} if how.startswith("x-") else {"prompt_cache_key": pid})
    forced[pid] = BASH_REPLY
    retention, clock = app_parts["retention"], app_parts["clock"]
    before = metrics(http)
    first = chat(http, HELLO, **send)
    assert first["choices"][0]["message"]["content"] == BASH_REPLY
    pinned = metrics(http)
    assert pinned["agentrt:kv_pins_total"] - before["agentrt:kv_pins_total"] == 1  # `ls -la`: pinned 2 s
    assert pinned["agentrt:kv_pinned_blocks"] > 0
    assert retention.asked[-1] == (pid, "bash", {"command": "ls -la"})
    clock.advance(0.75)  # the tool runs (on the app's clock)
    second = chat(http, follow_up(HELLO, first), **send)
    after = metrics(http)
    assert after["agentrt:kv_pin_hits_total"] - before["agentrt:kv_pin_hits_total"] == 1
    assert second["usage"]["prompt_tokens_details"]["cached_tokens"] >= 32
    assert hints(app_parts, 2) == [(pid, 0, False), (pid, 1, False)]
    # the gap before the next turn is the tool's observed duration; it taught the predictor
    assert retention.observed[-1] == (pid, "bash", pytest.approx(0.75))
    assert retention.inner.histories[pid][-1].duration_s == pytest.approx(0.75)
    moved = after["agentrt:tool_duration_abs_log_error_count"] - before["agentrt:tool_duration_abs_log_error_count"]
    assert moved == 1


def test_identity_precedence_program_id_then_session_then_prompt_cache_key(app_parts, http):
    every = {"program_id": "P", "session_id": "S", "prompt_cache_key": "K"}
    headers = {"X-Agentrt-Program-Id": "H", "X-Session-ID": "X"}
    cases = [  # (body fields, headers, the program the engine sees)
        (every, headers, "P"),
        ({"job_id": "J", "session_id": "S"}, headers, "J"),
        ({"session_id": "S", "prompt_cache_key": "K"}, headers, "H"),
        ({"session_id": "S", "prompt_cache_key": "K"}, {"X-Session-ID": "X"}, "S"),
        ({"prompt_cache_key": "K"}, {"X-Session-ID": "X"}, "X"),
        ({"prompt_cache_key": "K"}, {}, "K"),
        ({}, {}, None),
    ]
    for body, hdrs, expected in cases:
        http.post("/v1/completions", headers=hdrs, json={"model": MODEL, "prompt": "hi", "max_tokens": 1, **body})
        assert app_parts["aengine"].hints[-1].program_id == expected, (body, hdrs)


# ---- turns and a program's end -------------------------------------------------------------------

def test_turns_are_counted_per_program_and_an_explicit_last_turn_ends_it(app_parts, http):
    clock, retention = app_parts["clock"], app_parts["retention"]
    body = {"model": MODEL, "prompt": "hi", "max_tokens": 1}
    before = metrics(http)
    for _ in range(3):
        http.post("/v1/completions", headers={"X-Session-ID": "counted"}, json=body)
        http.post("/v1/completions", json={**body, "session_id": "other"})  # counted apart
        clock.advance(2.0)
    assert [h for h in hints(app_parts, 6) if h[0] == "counted"] == [("counted", t, False) for t in range(3)]
    assert [h for h in hints(app_parts, 6) if h[0] == "other"] == [("other", t, False) for t in range(3)]
    assert metrics(http)["agentrt:programs_active"] - before["agentrt:programs_active"] == 2
    # a turn the client states wins, and counting goes on from it
    http.post("/v1/completions", headers={"X-Session-ID": "counted"}, json={**body, "turn": 7})
    http.post("/v1/completions", headers={"X-Session-ID": "counted"}, json=body)
    assert hints(app_parts, 2) == [("counted", 7, False), ("counted", 8, False)]
    # vllm-continuum's is_last_step ends the program at once: its JCT is observed, its state dropped
    http.post("/v1/completions", headers={"X-Session-ID": "counted"}, json={**body, "is_last_step": True})
    assert hints(app_parts, 1) == [("counted", 9, True)]
    after = metrics(http)
    assert after["agentrt:programs_active"] - before["agentrt:programs_active"] == 1
    assert after["agentrt:program_jct_seconds_count"] - before["agentrt:program_jct_seconds_count"] == 1
    assert after["agentrt:program_jct_seconds_sum"] - before["agentrt:program_jct_seconds_sum"] == pytest.approx(6.0)
    assert retention.finished[-1] == ("counted", 10)
    http.post("/v1/completions", headers={"X-Session-ID": "counted"}, json=body)
    assert hints(app_parts, 1) == [("counted", 0, False)]  # a new program under the same key
    http.post("/v1/completions", json={**body, "session_id": "other", "is_last_turn": True})
    http.post("/v1/completions", headers={"X-Session-ID": "counted"}, json={**body, "is_last_turn": True})


def test_an_idle_program_ends_after_its_pin_and_the_idle_timeout(app_parts, http):
    clock, retention = app_parts["clock"], app_parts["retention"]
    body = {"model": MODEL, "prompt": "hi there", "max_tokens": 1}
    clock.advance(10 * IDLE_TIMEOUT_S)  # the earlier tests' programs end first
    before = metrics(http)
    http.post("/v1/completions", json={**body, "session_id": "short"})
    http.post("/v1/completions", json={**body, "session_id": "long", "agentrt": {"ttl_s": 3 * IDLE_TIMEOUT_S}})
    assert metrics(http)["agentrt:programs_active"] - before["agentrt:programs_active"] == 2
    clock.advance(IDLE_TIMEOUT_S - 1)
    assert metrics(http)["agentrt:programs_active"] - before["agentrt:programs_active"] == 2
    clock.advance(2)  # past the idle timeout; `long` still holds its (client-given) pin
    idle = metrics(http)
    assert idle["agentrt:programs_active"] - before["agentrt:programs_active"] == 1
    assert idle["agentrt:program_jct_seconds_count"] - before["agentrt:program_jct_seconds_count"] == 1
    assert retention.finished[-1] == ("short", 1)
    clock.advance(2 * IDLE_TIMEOUT_S)
    assert metrics(http)["agentrt:programs_active"] == before["agentrt:programs_active"] == 0
    assert retention.finished[-1] == ("long", 1)
    http.post("/v1/completions", json={**body, "session_id": "short", "is_last_turn": True})
    assert hints(app_parts, 1) == [("short", 0, True)]  # came back as a new program


# ---- a client's own TTL and tool name ------------------------------------------------------------

def test_a_clients_ttl_overrides_the_prediction_and_pins_without_a_tool_call(app_parts, http, forced):
    engine_clock = app_parts["engine_clock"]
    engine = app_parts["aengine"].engine
    engine_clock.advance(10.0)  # the earlier tests' pins (2 s) expire at the next step
    http.post("/v1/completions", json={"model": MODEL, "prompt": "step the engine", "max_tokens": 1})
    assert not engine.snapshot.pinned_programs
    forced["own-ttl"] = "Thinking, no tool call here."
    before = metrics(http)
    chat(http, HELLO, session_id="own-ttl", agentrt={"ttl_s": 37.5})
    snap = engine.snapshot
    assert "own-ttl" in snap.pinned_programs
    assert metrics(http)["agentrt:kv_pins_total"] - before["agentrt:kv_pins_total"] == 1
    assert snap.next_pin_expiry_s - engine_clock() == pytest.approx(37.5)
    # the prediction for `ls -la` (2 s) would have been shorter: the client's TTL wins over it too
    forced["own-ttl"] = BASH_REPLY
    chat(http, HELLO, session_id="own-ttl", agentrt={"ttl_s": 90})
    assert engine.snapshot.next_pin_expiry_s - engine_clock() == pytest.approx(90)
    chat(http, HELLO, session_id="own-ttl", is_last_turn=True)
    assert "own-ttl" not in engine.snapshot.pinned_programs


def test_a_ttl_below_zero_is_refused(http):
    r = http.post("/v1/completions", json={"model": MODEL, "prompt": "hi", "session_id": "x", "agentrt": {"ttl_s": -1}})
    assert r.status_code == 400 and "ttl_s" in r.json()["error"]["message"]


def test_this_func_call_names_the_tool_when_the_reply_does_not(app_parts, http, forced):
    retention = app_parts["retention"]
    forced["continuum-client"] = "Running the tests now."
    chat(http, HELLO, job_id="continuum-client", this_func_call="pytest")
    assert retention.asked[-1] == ("continuum-client", "pytest", {})
    forced["continuum-client"] = BASH_REPLY  # a call in the reply says more than the bare name
    chat(http, HELLO, job_id="continuum-client", this_func_call="pytest")
    assert retention.asked[-1] == ("continuum-client", "bash", {"command": "ls -la"})
    chat(http, HELLO, job_id="continuum-client", is_last_step=True)


def test_an_unpinned_program_expires_and_the_expiry_is_counted(app_parts, http, forced):
    engine_clock = app_parts["engine_clock"]
    forced["expiring"] = BASH_REPLY
    before = metrics(http)
    chat(http, HELLO, session_id="expiring")
    assert "expiring" in app_parts["aengine"].engine.snapshot.pinned_programs
    engine_clock.advance(2.5)  # past continuum-fixed's 2 s
    http.post("/v1/completions", json={"model": MODEL, "prompt": "step the engine", "max_tokens": 1})
    after = metrics(http)
    assert "expiring" not in app_parts["aengine"].engine.snapshot.pinned_programs
    assert after["agentrt:kv_pin_expired_total"] - before["agentrt:kv_pin_expired_total"] >= 1
    assert math.isfinite(after["agentrt:kv_pinned_blocks"])
