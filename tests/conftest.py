"""Shared fixtures and helpers: a tiny random Llama directory (fast tests), the real default model
(parity tests), the HF greedy reference, a real uvicorn server on loopback, and `agentrt serve` as a
real process."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator

import pytest
import torch

# Without a GPU the Triton kernels run on CPU tensors in Triton's interpreter, which triton picks when a
# kernel is decorated (its module's first import): set it before anything imports kernels/.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

from benchmarks.prompts import CHAT_PROMPTS as BENCH_CHAT_PROMPTS
from engine.tiny import make_tiny_model

CHAT_PROMPTS = BENCH_CHAT_PROMPTS[:10]


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    return make_tiny_model(tmp_path_factory.mktemp("models") / "tiny-llama")


@pytest.fixture(scope="session")
def deep_tiny_model_dir(tmp_path_factory):
    """A tiny random model with layers after KV reuse's check layer (1) to recompute selectively in
    (with 2 layers every layer is computed for every token) and to run DHD's probe through."""
    return make_tiny_model(tmp_path_factory.mktemp("models") / "tiny-llama-4", num_layers=4)


@pytest.fixture(scope="session")
def default_model_dir():
    from engine.loader import ensure_default_model

    return ensure_default_model()


@pytest.fixture(scope="session")
def hf_default(default_model_dir):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(default_model_dir), dtype=torch.float32).eval()


def hf_greedy(hf_model, prompt_ids: list[int], max_new_tokens: int) -> list[int]:
    """Hugging Face `generate` greedy continuation of one unpadded prompt (stops at EOS, which it
    includes): the reference for the token-exact tests."""
    with torch.inference_mode():
        out = hf_model.generate(torch.tensor([prompt_ids]), attention_mask=torch.ones(1, len(prompt_ids), dtype=torch.long),
                                max_new_tokens=max_new_tokens, do_sample=False)
    return out[0, len(prompt_ids):].tolist()


def recording_engine_class():
    """The real async engine, also recording the prompt (token ids) and program hint each request reached it with."""
    from engine import AsyncEngine

    class RecordingEngine(AsyncEngine):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.hints = []
            self.prompts: list[list[int]] = []

        def generate(self, prompt, params=None, *, hint=None, **kwargs):
            self.hints.append(hint)
            self.prompts.append(list(prompt))
            return super().generate(prompt, params, hint=hint, **kwargs)

    return RecordingEngine


@contextlib.contextmanager
def serve(app) -> Iterator[str]:
    """Runs `app` under uvicorn on a free loopback port in a background thread; yields its base URL."""
    import uvicorn

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, lifespan="on", log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the server did not start"
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def serve_process(*args: str, port: int, host: str = "127.0.0.1") -> Iterator[subprocess.Popen]:
    """Runs `agentrt serve ARGS --port PORT` as a real process until its /health answers (checked
    on `host`); stops it with SIGINT (as Ctrl-C would) and checks that it exits cleanly."""
    import httpx

    proc = subprocess.Popen([sys.executable, "-m", "agentrt", "serve", *args, "--port", str(port)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.time() + 60
        while time.time() < deadline:
            try:
                if httpx.get(f"http://{host}:{port}/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                assert proc.poll() is None, f"server exited: {proc.stderr.read().decode()[-2000:]}"
                time.sleep(0.2)
        else:
            raise AssertionError(f"server did not come up: {proc.stderr.read1().decode()[-2000:]}")
        yield proc
    finally:
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=30) == 0


def force_outputs(engine, texts: dict[str, str]) -> None:
    """Makes the engine's greedy requests of program `p` generate exactly `texts[p]`, then EOS
    (through `Engine.on_logits`), so replies hold what a test needs."""
    import torch

    tok = engine.tokenizer

    def on_logits(reqs, logits):
        with torch.inference_mode():
            for row, req in enumerate(reqs):
                if req.hint.program_id in texts:
                    ids = tok.encode(texts[req.hint.program_id], add_special_tokens=False)
                    k = req.num_output_tokens
                    logits[row].fill_(float("-inf"))
                    logits[row, ids[k] if k < len(ids) else tok.eos_token_id] = 0.0

    engine.on_logits = on_logits


@contextlib.contextmanager
def forced_outputs(engine) -> Iterator[dict[str, str]]:
    """`force_outputs` for the length of a block: yields the (initially empty) texts to fill in."""
    texts: dict[str, str] = {}
    force_outputs(engine, texts)
    try:
        yield texts
    finally:
        engine.on_logits = None
