"""The engine's dtype rule (EngineConfig.resolve_dtype): a named dtype is taken as given; `auto` (or
None) is bfloat16 on CUDA and on a CPU with bfloat16 matmul hardware, float32 on other CPUs. The
start-up line (ModelRunner.describe) says which dtype and kernels an engine chose."""

from __future__ import annotations

import pytest
import torch

from engine import Engine, EngineConfig
from kernels import cpu_features

CPU, CUDA = torch.device("cpu"), torch.device("cuda")


@pytest.mark.parametrize("auto", ["auto", None])
@pytest.mark.parametrize("native", [False, True])
def test_auto_is_bfloat16_only_on_cpus_with_bf16_matmul_hardware(monkeypatch, auto, native):
    monkeypatch.setattr(cpu_features, "native_bf16", lambda: native)
    want = torch.bfloat16 if native else torch.float32
    assert EngineConfig(dtype=auto).resolve_dtype(CPU) == want
    assert EngineConfig(dtype=auto).resolve_dtype(CUDA) == torch.bfloat16


@pytest.mark.parametrize("name", ["float32", "bfloat16", "float16"])
def test_a_named_dtype_wins_on_every_device(monkeypatch, name):
    monkeypatch.setattr(cpu_features, "native_bf16", lambda: name != "float32")
    for device in (CPU, CUDA):
        assert EngineConfig(dtype=name).resolve_dtype(device) == getattr(torch, name)


def test_the_default_is_auto():
    assert EngineConfig().dtype == "auto"


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_the_engine_runs_and_announces_the_dtype_it_chose(tiny_model_dir, dtype):
    engine = Engine(EngineConfig(model=str(tiny_model_dir), device="cpu", dtype=dtype, kv_cache_tokens=256))
    assert engine.dtype == getattr(torch, dtype)
    assert engine.runner.k_cache.dtype == engine.dtype
    line = engine.runner.describe()
    assert f"dtype {dtype}" in line and "matmul " in line and "attention " in line
