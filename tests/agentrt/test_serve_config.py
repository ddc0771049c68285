"""`agentrt serve`'s vLLM-named flags and `--config FILE`: what each sets, the file's keys under
the flags that win over them, errors that name the bad key, a chat template that replaces the
tokenizer's, and the whole path on a real `agentrt serve --config` process."""

from __future__ import annotations

import json
import subprocess
import sys

import httpx
import pytest

from agentrt.cli import build_parser, main
from agentrt.serve_config import SERVE_OPTIONS, load_chat_template, serve_kwargs_from_args
from agentrt.server import create_app, run_server
from engine import AsyncEngine, EngineConfig
from tests.conftest import free_port, serve, serve_process

TEMPLATE = ("{% for m in messages %}### {{ m['role'] | upper }}: {{ m['content'] }}\n{% endfor %}"
            "{% if add_generation_prompt %}### ASSISTANT:{% endif %}")
DEFAULTS = {"model": None, "host": "127.0.0.1", "port": 8000, "api_key": None, "served_model_name": None,
            "chat_template": None, "tool_call_parser": None, "log_requests": True, "program_idle_timeout_s": 600.0}


def kwargs(*argv: str) -> dict:
    return serve_kwargs_from_args(build_parser().parse_args(["serve", *argv]))


def test_no_flags_leave_everything_to_the_preset_and_the_engine():
    assert kwargs() == DEFAULTS  # no preset key: run_server's default preset; no engine option: the preset's


def test_vllm_named_flags_reach_run_server_as_engine_options():
    got = kwargs("--model", "m", "--served-model-name", "srv", "--api-key", "k", "--port", "9001", "--host",
                 "0.0.0.0", "--dtype", "half", "--max-model-len", "1024", "--max-num-seqs", "8",
                 "--max-num-batched-tokens", "512", "--no-enable-prefix-caching", "--kv-cache-tokens", "4096",
                 "--kv-reuse", "off", "--seed", "3", "--chat-template", "t.jinja", "--preset", "fcfs",
                 "--program-idle-timeout", "30", "--disable-log-requests", "--tool-call-parser", "llama3_json")
    assert got == {"model": "m", "host": "0.0.0.0", "port": 9001, "api_key": "k", "served_model_name": "srv",
                   "chat_template": "t.jinja", "tool_call_parser": "llama3_json", "log_requests": False, "program_idle_timeout_s": 30.0,
                   "preset": "fcfs", "dtype": "float16", "max_model_len": 1024, "max_num_seqs": 8,
                   "max_num_batched_tokens": 512, "enable_prefix_caching": False, "kv_cache_tokens": 4096,
                   "kv_reuse": "off", "seed": 3}
    assert kwargs("--enable-prefix-caching", "--dtype", "auto") == {**DEFAULTS, "enable_prefix_caching": True}
    assert kwargs("--dtype", "bfloat16", "--kv-reuse", "dhd")["dtype"] == "bfloat16"
    assert set(EngineConfig.__dataclass_fields__) >= {o.key for o in SERVE_OPTIONS if o.engine_field}


@pytest.mark.parametrize("suffix", [".yaml", ".json"])
def test_a_config_file_sets_the_same_keys_and_flags_win(tmp_path, suffix):
    options = {"model": "m", "served-model-name": "from-file", "max_model_len": 2048, "enable-prefix-caching": False,
               "port": 8100, "preset": "continuum", "dtype": "float32", "program-idle-timeout": 5}
    path = tmp_path / f"serve{suffix}"
    if suffix == ".yaml":
        import yaml

        path.write_text(yaml.safe_dump(options))
    else:
        path.write_text(json.dumps(options))
    got = kwargs("--config", str(path), "--port", "8200", "--preset", "fcfs")
    assert got == {**DEFAULTS, "model": "m", "served_model_name": "from-file", "max_model_len": 2048,
                   "enable_prefix_caching": False, "port": 8200, "preset": "fcfs", "dtype": "float32",
                   "program_idle_timeout_s": 5.0}
    assert kwargs("--config", str(path))["preset"] == "continuum"


@pytest.mark.parametrize(("text", "message"), [
    ("max-model-len: 4096\ngpu-memory-utilization: 0.9\n", "unknown option `gpu_memory_utilization`"),
    ("max-model-len: lots\n", "`max_model_len` must be int"),
    ("enable-prefix-caching: 'no'\n", "`enable_prefix_caching` must be bool"),
    ("dtype: float8\n", "`dtype` must be one of"),
    ("- port\n- 8000\n", "must hold a mapping"),
    ("port: [8000\n", "not valid YAML"),
])
def test_a_bad_config_file_is_an_error_naming_the_key(tmp_path, capsys, text, message):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ValueError, match=message.replace("[", r"\[")):
        kwargs("--config", str(path))
    assert main(["serve", "--config", str(path)]) == 2  # the CLI says so and exits, loading nothing
    assert message.split("`")[0] in capsys.readouterr().err
    assert main(["serve", "--config", str(tmp_path / "missing.yaml")]) == 2
    assert "cannot read the config file" in capsys.readouterr().err


def test_help_lists_the_vllm_flags_without_importing_torch():
    code = ("import sys; from agentrt.cli import build_parser; p = build_parser(); "
            "assert 'torch' not in sys.modules, 'torch imported'; p.parse_args(['serve', '--help'])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    for flag in ("--dtype", "--max-model-len", "--max-num-seqs", "--max-num-batched-tokens", "--enable-prefix-caching",
                 "--no-enable-prefix-caching", "--served-model-name", "--api-key", "--chat-template",
                 "--tool-call-parser", "--kv-cache-tokens", "--kv-reuse", "--config"):
        assert flag in out.stdout, flag


def test_chat_templates_from_a_file_or_inline_checked_as_jinja(tmp_path):
    path = tmp_path / "t.jinja"
    path.write_text(TEMPLATE)
    assert load_chat_template(str(path)) == TEMPLATE == load_chat_template(TEMPLATE)
    with pytest.raises(ValueError, match="no chat template file"):
        load_chat_template(str(tmp_path / "missing.jinja"))
    path.write_text("{% for m in messages %}")
    with pytest.raises(ValueError, match="not valid Jinja"):
        load_chat_template(str(path))
    with pytest.raises(ValueError, match="no chat template file"):  # before any model is loaded
        run_server(model="/nonexistent-model", chat_template=str(tmp_path / "missing.jinja"))


def test_the_chat_template_replaces_the_tokenizers(tiny_model_dir):
    class Prompts(AsyncEngine):
        prompts: list = []

        def generate(self, prompt, params=None, **kw):
            self.prompts.append(prompt)
            return super().generate(prompt, params, **kw)

    aengine = Prompts(EngineConfig(model=str(tiny_model_dir)), kv_cache_tokens=1024)
    body = {"model": "tiny", "messages": [{"role": "system", "content": "Be brief."},
                                          {"role": "user", "content": "hi"}], "max_tokens": 1}
    for template, expected in ((TEMPLATE, "### SYSTEM: Be brief.\n### USER: hi\n### ASSISTANT:"),
                               (None, "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n"
                                      "<|im_start|>assistant\n")):
        with serve(create_app(aengine, "tiny", chat_template=template)) as url:
            assert httpx.post(f"{url}/v1/chat/completions", json=body, timeout=60).status_code == 200
        assert aengine.tokenizer.decode(aengine.prompts[-1]) == expected


def test_agentrt_serve_with_a_config_file(tmp_path, tiny_model_dir):
    (tmp_path / "t.jinja").write_text(TEMPLATE)
    import yaml

    (tmp_path / "serve.yaml").write_text(yaml.safe_dump({
        "model": str(tiny_model_dir), "served-model-name": "from-config", "api-key": "sekrit", "preset": "fcfs",
        "max-model-len": 256, "kv-cache-tokens": 2048, "max-num-seqs": 4, "dtype": "float32",
        "chat-template": str(tmp_path / "t.jinja"), "port": 1}))  # the flag's port wins
    port = free_port()
    auth = {"Authorization": "Bearer sekrit"}
    with serve_process("--config", str(tmp_path / "serve.yaml"), port=port) as proc:
        base = f"http://127.0.0.1:{port}"
        assert httpx.get(f"{base}/v1/models", timeout=30).status_code == 401
        assert [m["id"] for m in httpx.get(f"{base}/v1/models", headers=auth, timeout=30).json()["data"]] == [
            "from-config"]
        r = httpx.post(f"{base}/v1/completions", headers=auth, timeout=30,
                       json={"model": "from-config", "prompt": [5] * 300, "max_tokens": 1})
        assert r.status_code == 400 and r.json()["error"]["code"] == "context_length_exceeded"  # max-model-len
        r = httpx.post(f"{base}/v1/chat/completions", headers=auth, timeout=30, json={
            "model": "from-config", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2,
            "session_id": "cfg"})
        assert r.status_code == 200, r.text
        metrics = httpx.get(f"{base}/metrics", timeout=30).text
        assert 'vllm:request_success_total{finished_reason="length",model_name="from-config"}' in metrics \
            or 'vllm:request_success_total{finished_reason="stop",model_name="from-config"}' in metrics
    log = proc.stderr.read().decode()
    assert f"{r.json()['id']}: finish=" in log and "program=cfg turn=0" in log
