"""Real tools: a shell in a working directory (timeouts, output caps, exit codes), Python callables, HTTP."""

from __future__ import annotations

import http.server
import json
import threading
import time

import anyio
import pytest

from agentrt import FunctionTool, HttpTool, ShellTool, ToolBox, ToolCall, tool


def run(coro_fn, *args):
    return anyio.run(coro_fn, *args)


def test_shell_runs_in_its_workdir_and_returns_nonzero_exits(tmp_path):
    (tmp_path / "hello.txt").write_text("hi there\n")
    sh = ShellTool(tmp_path)
    r = run(sh.run, ToolCall("bash", {"command": "cat hello.txt && pwd"}))
    assert r.ok and r.exit_code == 0 and "hi there" in r.output and str(tmp_path) in r.output
    r = run(sh.run, ToolCall("bash", {"command": "echo oops >&2; exit 3"}))
    assert not r.ok and r.exit_code == 3 and "oops" in r.output  # stderr is captured, exit is data
    r = run(sh.run, ToolCall("bash", {"argv": ["ls", "-1"]}))
    assert r.output.strip() == "hello.txt"
    assert r.finished_at >= r.started_at > 0


def test_shell_timeout_kills_the_whole_process_group(tmp_path):
    sh = ShellTool(tmp_path, timeout_s=0.5)
    t0 = time.time()
    r = run(sh.run, ToolCall("bash", {"command": "sleep 30 & sleep 30; echo never"}))
    assert time.time() - t0 < 5
    assert not r.ok and "timed out" in r.output and r.exit_code is None
    assert 0.4 < r.duration_s < 5


def test_shell_output_is_capped(tmp_path):
    sh = ShellTool(tmp_path, max_output_bytes=1000)
    r = run(sh.run, ToolCall("bash", {"command": "yes x | tr -d '\\n' | head -c 1000000; echo"}))
    assert r.ok and r.output.startswith("x" * 1000) and "truncated to 1000 bytes" in r.output
    assert len(r.output) < 1100


def test_function_tools_sync_async_and_errors():
    @tool
    def add(a: int, b: int = 2) -> int:
        """Adds two numbers."""
        return a + b

    async def shout(text: str) -> str:
        return text.upper()

    box = ToolBox([add, shout])
    spec = add.spec()["function"]
    assert spec["description"] == "Adds two numbers."
    assert spec["parameters"]["properties"] == {"a": {"type": "integer"}, "b": {"type": "integer"}}
    assert spec["parameters"]["required"] == ["a"]
    assert run(box.run, ToolCall("add", {"a": 1, "b": 5})).output == "6"
    assert run(box.run, ToolCall("shout", {"text": "hi"})).output == "HI"
    bad = run(box.run, ToolCall("add", {"c": 1}))
    assert not bad.ok and bad.error == "bad_arguments" and "bad arguments" in bad.output
    unknown = run(box.run, ToolCall("rm_rf", {}))
    assert not unknown.ok and unknown.error == "unknown_tool" and "add, shout" in unknown.output

    def boom():
        raise RuntimeError("disk on fire")

    r = run(FunctionTool(boom).run, ToolCall("boom", {}))
    assert not r.ok and r.error == "exception" and "disk on fire" in r.output


@pytest.fixture()
def http_server():
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            body = json.dumps({"path": self.path}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(body)

        def do_POST(self):
            data = self.rfile.read(int(self.headers["Content-Length"]))
            self.send_response(201 if json.loads(data).get("ok") else 400)
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args):
            pass

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{srv.server_address[1]}"
    srv.shutdown()


def test_http_tool_over_loopback(http_server):
    get = HttpTool("lookup", f"{http_server}/items")
    r = run(get.run, ToolCall("lookup", {"q": "x"}))
    assert r.ok and r.exit_code == 200 and json.loads(r.output) == {"path": "/items?q=x"}
    post = HttpTool("create", f"{http_server}/items", method="POST")
    assert run(post.run, ToolCall("create", {"ok": True})).exit_code == 201
    failed = run(post.run, ToolCall("create", {"ok": False}))
    assert not failed.ok and failed.exit_code == 400
    down = HttpTool("down", "http://127.0.0.1:9/nothing", timeout_s=2)
    r = run(down.run, ToolCall("down", {}))
    assert not r.ok and "HTTP request failed" in r.output
