"""`python -m benchmarks.jct --served NAME=URL --no-embedded`: the JCT replay against a running
`agentrt serve` app (tiny model, continuum-fixed retention) through the `openai` backend, figures
under "served" by name; the server followed the programs the backend named (their turns, their end)
and pinned for the tool that vllm-continuum's `this_func_call` names."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import httpx
import pytest

from agentrt.presets import get_preset
from agentrt.server import create_app
from benchmarks import jct
from engine import AsyncEngine, EngineConfig
from tests.conftest import serve

TRACES = Path(__file__).parents[1] / "data" / "agent-traces-sample"


def jct_args(*argv: str) -> argparse.Namespace:
    ap = argparse.ArgumentParser()
    jct.add_arguments(ap)
    return ap.parse_args(["--traces", str(TRACES), *argv])


def samples(url: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for line in httpx.get(f"{url}/metrics", timeout=30).text.splitlines():
        if line and not line.startswith("#"):
            name = line.split("{")[0].split()[0]
            out[name] = out.get(name, 0.0) + float(line.rsplit(" ", 1)[1])
    return out


def test_served_targets_are_named_and_checked():
    assert jct.served_targets(jct_args("--served", "a=http://x/v1", "--served", "b=http://y/v1")) == {
        "a": "http://x/v1", "b": "http://y/v1"}
    assert jct.served_targets(jct_args("--base-url", "http://z/v1")) == {"served": "http://z/v1"}
    for bad in (["--served", "no-url"], ["--served", "a=u", "--served", "a=v"], ["--no-embedded"]):
        with pytest.raises(SystemExit):
            jct.served_targets(jct_args(*bad))


def test_jct_replays_against_a_served_agentrt(tiny_model_dir, tmp_path):
    aengine = AsyncEngine(EngineConfig(model=str(tiny_model_dir)), kv_cache_tokens=8192)
    out_file = tmp_path / "jct.json"
    with serve(create_app(aengine, "tiny", retention=get_preset("continuum-fixed").retention())) as url:
        out = jct.main(jct_args("--no-embedded", "--served", f"agentrt={url}/v1", "--model", str(tiny_model_dir),
                                "--programs", "2", "--rate", "100", "--max-turns", "3", "--max-output-tokens", "4",
                                "--tool-time-scale", "0.001", "--json", str(out_file)))
        metrics = samples(url)
    assert out["presets"] == {} and list(out["served"]) == ["agentrt"]
    figures = out["served"]["agentrt"]
    assert figures["programs"] == figures["finished"] == 2 and figures["failed"] == []
    assert figures["mean_jct_s"] > 0 and figures["makespan_s"] > 0
    assert json.loads(out_file.read_text())["served"]["agentrt"]["finished"] == 2
    assert metrics["agentrt:requests_total"] == out["turns"] == 6
    # every program ended at its last turn; their second turns named bash (the openai backend's
    # this_func_call), which continuum-fixed pins for
    assert metrics["agentrt:programs_active"] == 0 and metrics["agentrt:program_jct_seconds_count"] == 2
    assert metrics["agentrt:kv_pins_total"] >= 2
