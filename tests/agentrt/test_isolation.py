"""Isolation: model text reaches a shell only through a shell tool, a tool's working directory stays in
its sandbox, the environment does not leak, and `agentrt serve` binds loopback and enforces its key.

All real: bash and coreutils processes in temp directories, `agentrt serve` as a process on loopback."""

from __future__ import annotations

import socket
from pathlib import Path

import anyio
import httpx
import pytest

from agentrt import ShellTool, ToolCall
from tests.conftest import free_port, serve_process

# each would run a command, redirect, expand or split if a shell saw it
HOSTILE = ["$(touch pwned1)", "`touch pwned2`", "x; touch pwned3", "a b  c", "*", "> pwned4", "-n", "--help",
           "' \" \\", "$HOME", "ok\nnewline"]


def run(t: ShellTool, **arguments):
    return anyio.run(t.run, ToolCall(t.name, arguments))


def test_a_program_tool_passes_model_text_as_single_arguments(tmp_path):
    echo = ShellTool(tmp_path, program=["printf", "[%s]\\n"])
    assert echo.name == "printf" and echo.spec()["function"]["parameters"]["required"] == ["args"]
    r = run(echo, args=HOSTILE)
    assert r.ok and r.output == "".join(f"[{a}]\n" for a in HOSTILE)
    lone = run(echo, args="a b; touch pwned5")  # a string is one argument, not a command line
    assert lone.ok and lone.output == "[a b; touch pwned5]\n"
    refused = run(echo, command="touch pwned6")
    assert not refused.ok and refused.error == "bad_arguments" and "not a shell" in refused.output
    bad = run(echo, args=[1, 2])
    assert not bad.ok and bad.error == "bad_arguments"
    assert not list(tmp_path.iterdir()), "something ran through a shell"


def test_a_shell_tool_runs_argv_without_a_shell(tmp_path):
    sh = ShellTool(tmp_path)
    r = run(sh, argv=["printf", "[%s]\\n", *HOSTILE])
    assert r.ok and r.output == "".join(f"[{a}]\n" for a in HOSTILE)
    for argv in ("ls -la", [], ["ls", 3]):  # a string would otherwise become one argv per character
        bad = run(sh, argv=argv)
        assert not bad.ok and bad.error == "bad_arguments"
    assert not list(tmp_path.iterdir())
    assert run(sh, command="touch made-by-the-shell").ok  # the shell tool is a shell, explicitly
    assert (tmp_path / "made-by-the-shell").exists()


def test_the_working_directory_stays_in_the_sandbox(tmp_path):
    sandbox, outside = tmp_path / "sandbox", tmp_path / "outside"
    (sandbox / "src" / "pkg").mkdir(parents=True)
    outside.mkdir()
    (sandbox / "escape").symlink_to(outside)
    (sandbox / "src" / "up").symlink_to(sandbox)  # a link that stays inside is fine
    sh = ShellTool(sandbox)
    assert run(sh, command="pwd").output.strip() == str(sandbox)
    assert run(sh, command="pwd", cwd="src/pkg").output.strip() == str(sandbox / "src" / "pkg")
    assert run(sh, command="pwd", cwd=str(sandbox / "src")).output.strip() == str(sandbox / "src")
    assert run(sh, command="pwd", cwd="src/up/src").output.strip() == str(sandbox / "src")
    for cwd in ("..", "/", str(outside), "src/../../outside", "escape", "escape/", "missing", 7):
        r = run(sh, command="touch marker", cwd=cwd)
        assert not r.ok and r.error == "bad_arguments", cwd
    assert not list(outside.iterdir()) and not list(sandbox.rglob("marker"))
    # a shell can `cd ..` inside one command (it is not a jail), but every call starts in the sandbox
    assert run(sh, command="cd .. && pwd").output.strip() == str(tmp_path)
    assert run(sh, command="pwd").output.strip() == str(sandbox)
    tool = ShellTool(sandbox, program=["ls"])
    assert run(tool, args=[], cwd="src").output.split() == ["pkg", "up"]
    assert run(tool, args=["-a"], cwd="../outside").error == "bad_arguments"


def test_the_environment_does_not_leak_into_commands(tmp_path, monkeypatch):
    monkeypatch.setenv("AGENTRT_TEST_SECRET", "s3cret-token")
    env = run(ShellTool(tmp_path, env={"TASK": "demo"}), command="env").output
    assert "s3cret-token" not in env and "AGENTRT_TEST_SECRET" not in env
    assert f"HOME={tmp_path.resolve()}" in env.splitlines() and "TASK=demo" in env.splitlines()


def _listeners(port: int) -> set[str]:
    """Local addresses listening (TCP state 0A) on `port`, from the kernel's socket tables."""
    found = set()
    for table, family in (("/proc/net/tcp", socket.AF_INET), ("/proc/net/tcp6", socket.AF_INET6)):
        if not Path(table).exists():
            continue
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            addr_hex, port_hex = local.split(":")
            if state == "0A" and int(port_hex, 16) == port:
                raw = bytes.fromhex(addr_hex)
                # the kernel prints each 32-bit word in host (little-endian) order
                raw = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))
                found.add(socket.inet_ntop(family, raw))
    return found


@pytest.mark.skipif(not Path("/proc/net/tcp").exists(), reason="reads listening sockets from Linux's /proc/net")
def test_serve_binds_loopback_by_default_and_enforces_its_api_key(tiny_model_dir):
    port = free_port()
    args = ("--model", str(tiny_model_dir), "--served-model-name", "tiny", "--kv-cache-tokens", "1024")
    with serve_process(*args, "--api-key", "k-123", port=port):
        assert _listeners(port) == {"127.0.0.1"}
        url = f"http://127.0.0.1:{port}"
        body = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "k-123"},
                        {"Authorization": "Bearer k-1234"}, {"X-Api-Key": "k-123"}):
            for method, path in (("POST", "/v1/chat/completions"), ("POST", "/v1/completions"), ("GET", "/v1/models")):
                r = httpx.request(method, url + path, headers=headers, json=body, timeout=30)
                assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key", (headers, path)
        ok = httpx.post(f"{url}/v1/chat/completions", headers={"Authorization": "Bearer k-123"}, json=body, timeout=30)
        assert ok.status_code == 200 and ok.json()["usage"]["completion_tokens"] <= 2
        assert httpx.get(f"{url}/health").status_code == 200  # liveness stays open for probes
    port = free_port()
    with serve_process(*args, "--host", "127.0.0.2", port=port, host="127.0.0.2"):  # told otherwise
        assert _listeners(port) == {"127.0.0.2"}
