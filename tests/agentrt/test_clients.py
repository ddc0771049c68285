"""Third-party agent clients, unmodified, against `agentrt serve` (real uvicorn on loopback, default model).

mini-swe-agent 2.4.6 (the `clients` extra) runs its own DefaultAgent, LocalEnvironment and
LitellmTextbasedModel on the SWE fixture's checkout, with only configuration: the model name
`openai/<served name>`, `api_base`, an API key, and who it is: agentrt's program hint as
`extra_body` fields (litellm merges them into the body), or only vLLM-router's `X-Session-ID` header
(`extra_headers`). It does not stream.

The server runs the `agentrt` preset's scheduling and retention policy, as `agentrt serve` does, on
an engine whose clock is a `VirtualClock`: a pin lasts until the program comes back however slow
the machine (whether a TTL is long enough is the predictor's business, tested apart), and the
start-up reload profile is skipped (the cost model reads the measured forward time instead).
"""

from __future__ import annotations

import importlib.util

import httpx
import pytest
import yaml

from agentrt.presets import get_preset
from agentrt.server import create_app
from agentrt.workloads.swe import checkout, load_instances
from engine import EngineConfig
from engine.engine import Engine
from engine.sim import VirtualClock
from tests.conftest import forced_outputs, recording_engine_class, serve
from tests.agentrt.test_swe import instances  # noqa: F401  (the fixture repository with a failing test)

API_KEY = "sk-clients"
MODEL = "SmolLM2-135M-Instruct"
RecordingEngine = recording_engine_class()


needs_mswea = pytest.mark.skipif(importlib.util.find_spec("minisweagent") is None, reason=(
    "mini-swe-agent is not installed (pip install -e '.[clients]'; make install does it)"))
MSWEA_ACTION = "THOUGHT: First I look at the files.\n\n```mswea_bash_command\nls\n```"  # its 2.x format


@pytest.fixture(scope="module")
def server(default_model_dir):
    preset = get_preset("agentrt")
    engine = RecordingEngine(Engine(EngineConfig(model=str(default_model_dir)), clock=VirtualClock(1000.0),
                                    **{**preset.engine_options(), "profile_reload": False}))
    with serve(create_app(engine, MODEL, api_key=API_KEY, retention=preset.retention())) as url:
        yield url, engine


def _metrics(url: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for line in httpx.get(f"{url}/metrics").text.splitlines():
        if line.startswith("agentrt:"):
            name = line.split("{")[0].split(" ")[0]
            out[name] = out.get(name, 0.0) + float(line.rsplit(" ", 1)[1])
    return out


def _mini_swe_agent(url, instances, tmp_path, monkeypatch, step_limit: int, **model_kwargs):  # noqa: F811
    """mini-swe-agent's own agent, environment and model on the fixture's checkout, configured only."""
    # offline and quiet: litellm's bundled cost map instead of a download, no cost for a local model
    monkeypatch.setenv("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    monkeypatch.setenv("MSWEA_COST_TRACKING", "ignore_errors")
    monkeypatch.setenv("MSWEA_SILENT_STARTUP", "1")
    monkeypatch.setenv("MSWEA_GLOBAL_CONFIG_DIR", str(tmp_path / "mswea-config"))
    import minisweagent
    from minisweagent.agents.default import DefaultAgent
    from minisweagent.environments.local import LocalEnvironment
    from minisweagent.models.litellm_textbased_model import LitellmTextbasedModel

    config = yaml.safe_load((minisweagent.package_dir / "config" / "mini_textbased.yaml").read_text())
    instance = load_instances(instances)[0]
    work = checkout(instance, tmp_path / "checkout")
    model = LitellmTextbasedModel(**{**config["model"], "model_name": f"openai/{MODEL}", "model_kwargs": {
        **config["model"].get("model_kwargs", {}), "api_base": f"{url}/v1", "api_key": API_KEY,
        "temperature": 0.0, "max_tokens": 48, **model_kwargs}})
    env = LocalEnvironment(cwd=str(work), **config["environment"])
    agent = DefaultAgent(model, env, **{**config["agent"], "step_limit": step_limit, "cost_limit": 0})
    return agent, instance


@pytest.mark.slow
@needs_mswea
def test_mini_swe_agent_runs_unmodified_against_the_server(server, instances, tmp_path, monkeypatch):  # noqa: F811
    url, engine = server
    agent, instance = _mini_swe_agent(url, instances, tmp_path, monkeypatch, 3, extra_body={
        "program_id": "mswea-calc-1", "tenant": "mini-swe-agent"})
    seen = len(engine.hints)
    result = agent.run(task=instance.problem_statement)

    assert result["exit_status"] in ("LimitsExceeded", "RepeatedFormatError", "Submitted")
    assert 1 <= agent.n_calls <= 3
    hints = engine.hints[seen:]
    assert len(hints) == agent.n_calls  # one request per model query, each with the program's hint
    assert all(h.program_id == "mswea-calc-1" and h.tenant == "mini-swe-agent" for h in hints)
    # every served reply reached the agent: as an action it ran, or as a reply it rejected (format error)
    answered = [m for m in agent.messages if m["role"] == "assistant"]
    malformed = [m for m in agent.messages if m.get("extra", {}).get("interrupt_type") == "FormatError"]
    assert len(answered) + len(malformed) == agent.n_calls
    assert all(m["content"] for m in answered) and all(m["extra"]["model_response"] for m in malformed)


@pytest.mark.slow
@needs_mswea
def test_mini_swe_agent_with_only_a_session_header_gets_pins_made_and_hit(server, instances, tmp_path,  # noqa: F811
                                                                         monkeypatch):
    """The server reads mini-swe-agent's own action format out of each reply, pins the program's KV
    while the agent runs it, and the agent's next query hits the pin. Replies are forced to an action
    (the 135M model seldom writes one); the agent runs `ls` for real in its checkout."""
    url, engine = server
    agent, instance = _mini_swe_agent(url, instances, tmp_path, monkeypatch, 3,
                                      extra_headers={"X-Session-ID": "mswea-session-7"})
    before = _metrics(url)
    with forced_outputs(engine.engine) as texts:
        texts["mswea-session-7"] = MSWEA_ACTION
        result = agent.run(task=instance.problem_statement)
    after = _metrics(url)

    assert result["exit_status"] == "LimitsExceeded" and agent.n_calls == 3
    actions = [m for m in agent.messages if m["role"] == "assistant"]
    assert [m["content"] for m in actions] == [MSWEA_ACTION] * 3  # each one ran (the agent took it as its action)
    assert [(h.program_id, h.turn) for h in engine.hints[-3:]] == [("mswea-session-7", t) for t in range(3)]
    moved = {k: after[k] - before.get(k, 0.0) for k in after}
    assert moved["agentrt:kv_pins_total"] == 3  # after every turn (the server cannot know the third was the last)
    assert moved["agentrt:kv_pin_hits_total"] == 2  # the 2nd and 3rd queries found the program's KV pinned
    assert moved["agentrt:tool_duration_abs_log_error_count"] == 2  # the gaps (the agent running `ls`) observed
