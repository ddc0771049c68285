"""`agentrt serve`'s options: vLLM-named flags, a `--config FILE` (YAML or JSON) of the same keys,
and how they become `run_server`'s arguments.

    agentrt serve --config serve.yaml --port 8001      # the flag wins over the file's `port`

Invariants:
- One table (`SERVE_OPTIONS`) defines every option: its flag, its config-file key (the flag's name,
  with dashes or underscores), its type and which `EngineConfig` field it sets, if any.
- A flag given on the command line wins over the file; a file key that names no option, or a value
  of the wrong type, is a `ValueError` naming it, before anything is loaded.
- Imports no torch, no engine, no web framework: `agentrt serve --help` stays fast.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agentrt.toolcalls import TOOL_CALL_PARSERS

DTYPES = {"auto": None, "float32": "float32", "float": "float32", "bfloat16": "bfloat16", "float16": "float16",
          "half": "float16"}
KV_REUSE = ("off", "naive", "cacheblend", "dhd")
DEFAULT_HOST, DEFAULT_PORT = "127.0.0.1", 8000
DEFAULT_PROGRAM_IDLE_TIMEOUT_S = 600.0


@dataclass(slots=True, frozen=True)
class ServeOption:
    key: str  # the config-file key and (dashes for underscores) the flag
    type: type
    help: str
    engine_field: str | None = None  # the EngineConfig field it sets; None: a server option
    choices: tuple[str, ...] | None = None
    metavar: str | None = None

    @property
    def flag(self) -> str:
        return "--" + self.key.replace("_", "-")


SERVE_OPTIONS: tuple[ServeOption, ...] = (
    ServeOption("model", str, "model directory, .gguf file, name (default, qwen2.5-coder-0.5b-instruct) or "
                "Org/Model from the local Hugging Face cache (default: SmolLM2-135M-Instruct)", metavar="MODEL"),
    ServeOption("host", str, f"bind address (default: {DEFAULT_HOST})"),
    ServeOption("port", int, f"default: {DEFAULT_PORT}"),
    ServeOption("api_key", str, "require `Authorization: Bearer KEY` on every /v1/ route", metavar="KEY"),
    ServeOption("served_model_name", str, "the `model` clients send (default: a --model name as given, else "
                "the model directory's name)",
                metavar="NAME"),
    ServeOption("chat_template", str, "a Jinja chat template (a file, or the template itself) used instead of "
                "the tokenizer's", metavar="FILE"),
    ServeOption("tool_call_parser", str, "the format the model writes tool calls in (default: read from its chat "
                "template and vocabulary, else hermes)", choices=TOOL_CALL_PARSERS),
    ServeOption("dtype", str, "weights and KV precision; auto: bfloat16 on CUDA and on CPUs with "
                "bf16 matmul hardware (AVX512-BF16, AMX), else float32",
                engine_field="dtype", choices=tuple(DTYPES)),
    ServeOption("max_model_len", int, "context limit, prompt + output (default: the model's, capped by the KV pool)",
                engine_field="max_model_len", metavar="N"),
    ServeOption("max_num_seqs", int, "requests running at once (default: 128)", engine_field="max_num_seqs",
                metavar="N"),
    ServeOption("max_num_batched_tokens", int, "token budget of one step (default: 2048)",
                engine_field="max_num_batched_tokens", metavar="N"),
    ServeOption("enable_prefix_caching", bool, "hash-chained prefix cache over full KV blocks (default: on)",
                engine_field="enable_prefix_caching"),
    ServeOption("kv_cache_tokens", int, "KV pool size in tokens (default: what fits in 4 GB)",
                engine_field="kv_cache_tokens", metavar="N"),
    ServeOption("kv_reuse", str, "non-prefix KV reuse (KVShare; default: off)", engine_field="kv_reuse",
                choices=KV_REUSE),
    ServeOption("seed", int, "the engine's sampling seed (default: 0)", engine_field="seed", metavar="N"),
    ServeOption("program_idle_timeout", float, "seconds after which a program that sent nothing (and holds no "
                f"longer pin) ends (default: {DEFAULT_PROGRAM_IDLE_TIMEOUT_S:g})", metavar="S"),
    ServeOption("disable_log_requests", bool, "no log line per request"),
)
_BY_KEY = {o.key: o for o in SERVE_OPTIONS}
CONFIG_ONLY = ("preset",)  # set by flags defined elsewhere (agentrt.cli), also accepted in the file


def add_serve_arguments(ap: argparse.ArgumentParser) -> None:
    """The serve flags, all defaulting to None ("not given") so that a --config file can fill them."""
    ap.add_argument("--config", metavar="FILE", help="YAML (or JSON) file of these options, keys as the flags "
                    "without dashes (`max-model-len: 4096`); flags given here win")
    for o in SERVE_OPTIONS:
        kw: dict[str, Any] = {"dest": o.key, "default": None, "help": o.help}
        if o.type is bool:
            kw["action"] = argparse.BooleanOptionalAction if o.key == "enable_prefix_caching" else "store_const"
            if kw["action"] == "store_const":
                kw["const"] = True
        else:
            kw["type"] = o.type
            if o.choices:
                kw["choices"] = o.choices
            if o.metavar:
                kw["metavar"] = o.metavar
        ap.add_argument(o.flag, **kw)


def load_config_file(path: str | Path) -> dict[str, Any]:
    """The file's mapping with keys normalized to underscores. YAML (PyYAML) unless the file ends in
    .json or PyYAML is missing, then JSON."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise ValueError(f"cannot read the config file {path}: {exc.strerror}") from None
    try:
        if path.suffix == ".json":
            raise ImportError
        import yaml
    except ImportError:
        try:
            data = json.loads(text) if text.strip() else {}
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path} is not valid JSON: {exc}") from None
    else:
        try:
            data = yaml.safe_load(text) or {}
        except yaml.YAMLError as exc:
            raise ValueError(f"{path} is not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path} must hold a mapping of options, not {type(data).__name__}")
    return {str(k).replace("-", "_"): v for k, v in data.items()}


def _check_value(key: str, value: Any, source: str) -> Any:
    """A config-file value of the option's type (YAML has already typed it)."""
    if key in CONFIG_ONLY:
        if not isinstance(value, str):
            raise ValueError(f"{source}: `{key}` must be a string, got {value!r}")
        return value
    o = _BY_KEY.get(key)
    if o is None:
        known = ", ".join(sorted([*_BY_KEY, *CONFIG_ONLY]))
        raise ValueError(f"{source}: unknown option `{key}`; the options are: {known}")
    if value is None:
        return None
    ok = (isinstance(value, bool) if o.type is bool
          else isinstance(value, (int, float)) and not isinstance(value, bool) if o.type is float
          else isinstance(value, int) and not isinstance(value, bool) if o.type is int
          else isinstance(value, str))
    if not ok:
        raise ValueError(f"{source}: `{key}` must be {o.type.__name__}, got {value!r}")
    if o.choices and value not in o.choices:
        raise ValueError(f"{source}: `{key}` must be one of {', '.join(o.choices)}, got {value!r}")
    return float(value) if o.type is float else value


def merge_options(given: Mapping[str, Any], config_file: str | Path | None = None) -> dict[str, Any]:
    """The serve options in force: the file's, overridden by the flags given (None: not given)."""
    merged: dict[str, Any] = {}
    if config_file is not None:
        for key, value in load_config_file(config_file).items():
            merged[key] = _check_value(key, value, str(config_file))
    merged.update({k: v for k, v in given.items() if v is not None})
    return merged


def run_server_kwargs(options: Mapping[str, Any]) -> dict[str, Any]:
    """`run_server`'s keyword arguments for the options in force."""
    out: dict[str, Any] = {"model": options.get("model"), "host": options.get("host") or DEFAULT_HOST,
                           "port": DEFAULT_PORT if options.get("port") is None else options["port"],
                           "api_key": options.get("api_key"), "served_model_name": options.get("served_model_name"),
                           "chat_template": options.get("chat_template"),
                           "tool_call_parser": options.get("tool_call_parser"),
                           "log_requests": not options.get("disable_log_requests", False)}
    if options.get("preset") is not None:
        out["preset"] = options["preset"]
    timeout = options.get("program_idle_timeout")
    out["program_idle_timeout_s"] = DEFAULT_PROGRAM_IDLE_TIMEOUT_S if timeout is None else timeout
    if not out["program_idle_timeout_s"] > 0:
        raise ValueError(f"program_idle_timeout must be positive, got {timeout}")
    for o in SERVE_OPTIONS:
        if o.engine_field is not None and options.get(o.key) is not None:
            value = options[o.key]
            out[o.engine_field] = DTYPES[value] if o.key == "dtype" else value
    if "dtype" in out and out["dtype"] is None:
        del out["dtype"]  # auto: the engine's own choice
    return out


def serve_kwargs_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """From `agentrt serve`'s parsed flags (and their --config file) to `run_server`'s arguments."""
    given = {o.key: getattr(args, o.key, None) for o in SERVE_OPTIONS}
    given["preset"] = getattr(args, "preset", None)
    return run_server_kwargs(merge_options(given, getattr(args, "config", None)))


def load_chat_template(value: str) -> str:
    """A chat template from a file, or given inline (vLLM's --chat-template takes both); checked to
    parse as Jinja."""
    path = Path(value)
    try:
        is_file = path.is_file()
    except OSError:  # a template too long to be a path
        is_file = False
    if is_file:
        text = path.read_text()
    elif "{{" in value or "{%" in value:
        text = value
    else:
        raise ValueError(f"no chat template file at {value}")
    import jinja2

    try:
        jinja2.Environment().parse(text)
    except jinja2.TemplateSyntaxError as exc:
        raise ValueError(f"the chat template {value if is_file else '(inline)'} is not valid Jinja: {exc}") from None
    return text
