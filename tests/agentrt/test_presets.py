"""Presets as product objects (agentrt/presets.py): what each one sets, and that one word reaches the
engine and the runtime's retention policy through every entry point."""

from __future__ import annotations

import subprocess
import sys

import pytest

from agentrt import Runtime, ToolCall
from agentrt.backends.embedded import EmbeddedBackend
from agentrt.presets import DEFAULT_PRESET, PRESETS, default_prior, get_preset
from agentrt.retention import Retention


def test_each_preset_sets_the_engine_options_and_ttl_policy_it_names():
    assert list(PRESETS) == ["fcfs", "program", "continuum-fixed", "continuum", "agentrt", "agentrt-fixed"]
    assert DEFAULT_PRESET == "agentrt"
    fcfs = get_preset("fcfs")
    assert fcfs.engine_options() == {"scheduling_policy": "fcfs", "profile_reload": False,
                                     "protect_earlier_pins": False}
    assert fcfs.retention() is None and get_preset("program").retention() is None
    assert get_preset("program").engine_options()["scheduling_policy"] == "program"
    assert get_preset("continuum-fixed").engine_options() == {"scheduling_policy": "program", "profile_reload": True,
                                                              "protect_earlier_pins": False}
    # the ablation differs from continuum-fixed only by the rule agentrt adds
    fixed, ablation = get_preset("continuum-fixed"), get_preset("agentrt-fixed")
    assert ablation.engine_options() == {**fixed.engine_options(), "protect_earlier_pins": True}
    assert ablation.ttl_policy == fixed.ttl_policy == "fixed" and not ablation.pressure_aware
    ours = get_preset("agentrt")
    assert ours.ttl_policy == "learned" and ours.pressure_aware and ours.protect_earlier_pins
    assert get_preset("continuum").ttl_policy == "cost-model" and not get_preset("continuum").pressure_aware
    assert get_preset(ours) is ours


def test_an_unknown_preset_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown preset 'vllm'; choose one of fcfs, program"):
        get_preset("vllm")


def test_a_presets_retention_learns_from_its_prior():
    prior = default_prior()
    assert len(prior) > 1000 and all(r.duration_s >= 0 for r in prior)
    ret = get_preset("agentrt").retention()
    assert isinstance(ret, Retention) and ret.policy_name == "learned" and ret.pressure_aware
    assert get_preset("continuum-fixed").retention([]).policy_name == "fixed"


def test_embedded_backend_and_runtime_take_the_preset(tiny_model_dir):
    backend = EmbeddedBackend(model=str(tiny_model_dir), preset="agentrt-fixed", kv_cache_tokens=2048)
    cfg = backend.aengine.engine.config
    assert (cfg.scheduling_policy, cfg.protect_earlier_pins, cfg.profile_reload) == ("program", True, True)
    assert backend.aengine.engine.reload_model is not None
    rt = Runtime(backend)
    assert rt.retention is not None and rt.retention.policy_name == "fixed"

    async def agent(ctx, task):
        ctx.user("hi")
        await ctx.chat(max_tokens=4, ignore_eos=True, next_tool_call=ToolCall("bash", {"command": "ls"}, "c0"))
        await ctx.chat(max_tokens=4, ignore_eos=True, last_turn=True)

    rt.run(agent, [None])
    snap = backend.aengine.engine.snapshot
    assert snap.num_pins == 1 and snap.num_pin_hits == 1  # the fixed policy pinned `ls`, the next turn hit it
    # engine options given beside the preset override it; a ready engine takes neither
    override = EmbeddedBackend(model=str(tiny_model_dir), preset="agentrt", protect_earlier_pins=False,
                               kv_cache_tokens=2048)
    assert override.aengine.engine.config.protect_earlier_pins is False
    with pytest.raises(ValueError, match="only when the backend builds its own engine"):
        EmbeddedBackend(backend.aengine, preset="fcfs")
    assert Runtime(EmbeddedBackend(backend.aengine)).retention is None


@pytest.mark.parametrize("command", ["run", "serve"])
def test_cli_help_shows_preset_without_importing_torch(command):
    code = ("import sys; from agentrt.cli import build_parser; p = build_parser(); "
            "assert 'torch' not in sys.modules, 'torch imported'; "
            f"p.parse_args(['{command}', '--help'])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "--preset" in out.stdout and "agentrt-fixed" in out.stdout


def test_import_agentrt_does_not_import_torch():
    code = "import sys, agentrt; assert 'torch' not in sys.modules; agentrt.EmbeddedBackend; assert 'torch' in sys.modules"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr


def test_a_reply_is_parsed_once_when_the_retention_callback_read_it(tiny_model_dir, monkeypatch):
    from agentrt import ShellTool, toolcalls

    calls = []
    real_parse = toolcalls.parse

    def counting_parse(fmt, text):
        calls.append(text)
        return real_parse(fmt, text)

    monkeypatch.setattr(toolcalls, "parse", counting_parse)
    backend = EmbeddedBackend(model=str(tiny_model_dir), preset="continuum-fixed", kv_cache_tokens=2048)
    replies = []

    async def agent(ctx, task):
        ctx.user("list the files")
        replies.append(await ctx.chat(tools=[ShellTool(".")], tool_format="bash", max_tokens=6, ignore_eos=True,
                                      prefill="```bash\nls\n```"))
        replies.append(await ctx.chat(tools=[ShellTool(".")], tool_format="bash", max_tokens=2, last_turn=True))

    Runtime(backend).run(agent, [None])
    # turn 0: once, in the engine thread, by the retention callback; the last turn has no callback
    assert len(calls) == 2 and calls[0] == replies[0].text
    assert [c.name for c in replies[0].tool_calls] == ["bash"] and replies[0].tool_calls[0].arguments["command"] == "ls"
    assert backend.aengine.engine.snapshot.num_pins == 1
