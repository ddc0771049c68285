"""Third-party agent clients, unmodified, against `agentrt serve` (real uvicorn on loopback, default model).

mini-swe-agent 2.4.6 (the `clients` extra) runs its own DefaultAgent, LocalEnvironment and
LitellmTextbasedModel on the SWE fixture's checkout, with only configuration: the model name
`openai/<served name>`, `api_base`, an API key, and the program hint as `extra_body` fields (the
server reads hints from the request body; litellm merges `extra_body` into it). It does not stream.
"""

from __future__ import annotations

import importlib.util

import pytest
import yaml

from agentrt.server import create_app
from agentrt.workloads.swe import checkout, load_instances
from engine import EngineConfig
from tests.conftest import recording_engine_class, serve
from tests.agentrt.test_swe import instances  # noqa: F401  (the fixture repository with a failing test)

API_KEY = "sk-clients"
MODEL = "SmolLM2-135M-Instruct"
RecordingEngine = recording_engine_class()


@pytest.fixture(scope="module")
def server(default_model_dir):
    engine = RecordingEngine(EngineConfig(model=str(default_model_dir)))
    with serve(create_app(engine, MODEL, api_key=API_KEY)) as url:
        yield url, engine


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("minisweagent") is None,
                    reason="mini-swe-agent is not installed (pip install -e '.[clients]'; make install does it)")
def test_mini_swe_agent_runs_unmodified_against_the_server(server, instances, tmp_path, monkeypatch):  # noqa: F811
    url, engine = server
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
        "temperature": 0.0, "max_tokens": 48, "extra_body": {"program_id": "mswea-calc-1", "tenant": "mini-swe-agent"}}})
    env = LocalEnvironment(cwd=str(work), **config["environment"])
    agent = DefaultAgent(model, env, **{**config["agent"], "step_limit": 3, "cost_limit": 0})
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
