"""Features of one tool call: what kind of call it is, its argument shape, and its program's history.

A shell call (`args["command"]` text or `args["argv"]` list) is parsed with a small quote-aware
tokenizer into segments joined by `&&`, `||`, `;`, `|`, `&` or newlines. Setup segments (`cd X`,
`export`, `source`) and wrappers (`VAR=1`, `timeout 60`, `sudo`, `uv run`) are skipped; every other
segment is classified into a command bucket shaped like the SWE-agent buckets
(`bash::light::cat`, `bash::python::pytest_path`, `bash::pip::editable_local::no_build_iso`, ...),
and the call's bucket is that of its heaviest segment. Invariants: extraction never raises on any
input (unbalanced quotes, odd types, empty commands), and it is a pure function of (tool, args).
Durations are handled in log space everywhere (`log_duration`), floored at `MIN_DURATION_S`.
"""

from __future__ import annotations

import json
import math
import re
import shlex
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

MIN_DURATION_S = 1e-6  # floor for log space: some recorded durations are exactly 0
# The learned predictor and the evaluation work in log(duration + 1 ms): a 2 ms and a 4 ms `ls` differ
# by noise, not by a factor that should count as much as 0.5 s against 1 s.
LOG_OFFSET_S = 1e-3
HISTORY_WINDOW = 64  # only the latest calls of a program count, in training and in prediction alike
SHELL_TOOLS = frozenset({"bash", "sh", "zsh", "shell", "terminal", "execute_bash", "run_shell_command",
                         "run_command", "exec_command"})

_LIGHT_VERBS = frozenset("""
    ls cat head tail grep egrep fgrep rg ag sed awk wc echo printf cp mv rm mkdir rmdir touch diff sort
    uniq tr cut file stat du df which whereis pwd tree less more man ps kill pkill sleep chmod chown ln
    xxd od basename dirname realpath readlink date true false nl tee column whoami env type hostname
    uname id jq yes seq sha256sum md5sum cmp patch tar gzip unzip zip curl wget
""".split())
_SETUP_VERBS = frozenset({"cd", "pushd", "popd", "export", "source", ".", "set", "unset", "alias", ":",
                          "clear", "shopt", "ulimit", "umask"})
_GIT_SUBCOMMANDS = frozenset({"log", "diff", "status", "show", "checkout", "add", "commit", "grep", "blame",
                              "stash", "reset", "apply", "branch", "clone", "restore", "switch", "rev-parse"})
# Options of pytest that consume the next word (so it is not mistaken for a test target).
_PYTEST_VALUE_OPTS = frozenset({"-k", "-m", "-p", "-n", "-c", "-o", "-W", "--maxfail", "--tb", "--rootdir",
                                "--deselect", "--ignore", "--durations", "--timeout", "--junitxml",
                                "--log-level", "--basetemp", "--import-mode", "-r", "--cov", "--confcutdir"})
_PIP_VALUE_OPTS = frozenset({"-r", "--requirement", "-c", "--constraint", "-t", "--target", "--prefix",
                             "--root", "-i", "--index-url", "--extra-index-url", "-f", "--find-links",
                             "--python", "--config-settings", "-C", "--platform", "--python-version"})
_WRAPPERS = frozenset({"timeout", "nice", "stdbuf", "sudo", "nohup", "time", "command", "exec", "xvfb-run"})
_WRAPPER_VALUE = re.compile(r"^[\d.]+[smhd]?$")  # `timeout 60`, `nice -n 10`: numbers are the wrapper's
# Higher rank = the segment that dominates a chain's duration.
_RANK = {"light": 0, "other": 1, "find": 1, "git": 1, "python": 2, "pytest": 3, "unittest": 3,
         "pip": 4, "apt": 4, "conda": 4, "setup": 4}
_NUMBER = re.compile(r"\d+")
_PATHLIKE_EXT = re.compile(r"\.[A-Za-z0-9]{1,6}$")
_ENV_ASSIGN = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")
_SIMPLE_NAME = re.compile(r"^[\w.+-]{1,24}$")
_REPRO_NAME = re.compile(r"repro|reproduce|issue|bug|test|debug|check|verify", re.I)


@dataclass(slots=True)
class ToolCallRecord:
    """One finished tool call: the unit of training data and of a program's history."""

    tool: str
    args: dict[str, Any]
    duration_s: float
    program_id: str | None = None
    seq: int | None = None

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> ToolCallRecord:
        duration = float(obj["duration_s"])
        if not math.isfinite(duration) or duration < 0:
            raise ValueError(f"duration_s must be a finite number >= 0, got {obj['duration_s']!r}")
        args = obj.get("args") or {}
        if not isinstance(args, dict):
            raise ValueError(f"args must be a JSON object, got {type(args).__name__}")
        program = obj.get("program_id")
        seq = obj.get("seq")
        return cls(str(obj["tool"]), args, duration, None if program is None else str(program),
                   None if seq is None else int(seq))

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"tool": self.tool, "args": self.args, "duration_s": self.duration_s}
        if self.program_id is not None:
            out["program_id"] = self.program_id
        if self.seq is not None:
            out["seq"] = self.seq
        return out


def read_records(path: str | Path) -> list[ToolCallRecord]:
    """Records of a JSON-lines file, in file order (blank lines skipped; a bad line names its number)."""
    records = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                records.append(ToolCallRecord.from_json(json.loads(line)))
            except (KeyError, ValueError, TypeError) as exc:
                raise ValueError(f"{path}:{lineno}: bad tool-call record: {exc}") from exc
    return records


def log_duration(duration_s: float) -> float:
    return math.log(max(duration_s, MIN_DURATION_S))


def offset_log(duration_s: float) -> float:
    """log(duration + LOG_OFFSET_S): the space the learned predictor and the evaluation measure in."""
    return math.log(max(duration_s, 0.0) + LOG_OFFSET_S)


@dataclass(slots=True, frozen=True)
class CallFeatures:
    """What can be known about a call before it runs. Numeric fields are listed in NUMERIC_FIELDS."""

    tool: str
    bucket: str
    family: str  # the bucket's first two parts, e.g. "bash::python"; a coarser category
    verb: str
    command_key: str  # the normalized command text (or args JSON): exact repeats share it
    is_shell: int = 0
    n_segments: int = 0
    n_pipes: int = 0
    n_chain: int = 0
    has_cd: int = 0
    has_env_prefix: int = 0
    background: int = 0
    n_words: int = 0
    command_chars: int = 0
    n_flags: int = 0
    n_paths: int = 0
    path_depth_max: int = 0
    max_number_log: float = 0.0
    heredoc_chars: int = 0
    pytest_kind: int = 0  # 0 not pytest, 1 whole suite / directory, 2 file, 3 selected tests
    n_test_targets: int = 0
    has_k: int = 0
    has_x: int = 0
    has_q: int = 0
    has_v: int = 0
    has_node_id: int = 0
    recursive: int = 0
    has_name: int = 0
    has_exec: int = 0
    editable: int = 0
    no_build_isolation: int = 0
    no_deps: int = 0
    n_packages: int = 0
    args_chars: int = 0
    # The files and directories the call names (a pytest node id's file part; ".", ".." and "~" left
    # out): not a feature by itself, a key under which a predictor remembers how long calls on that
    # file took, so a big file or a slow test module is recognized when it comes back.
    paths: tuple[str, ...] = ()


NUMERIC_FIELDS: tuple[str, ...] = (
    "is_shell", "n_segments", "n_pipes", "n_chain", "has_cd", "has_env_prefix", "background", "n_words",
    "command_chars", "n_flags", "n_paths", "path_depth_max", "max_number_log", "heredoc_chars", "pytest_kind",
    "n_test_targets", "has_k", "has_x", "has_q", "has_v", "has_node_id", "recursive", "has_name", "has_exec",
    "editable", "no_build_isolation", "no_deps", "n_packages", "args_chars",
)
# Fields that describe the dominant segment, set by its classifier (the rest describe the whole command).
_SEGMENT_FIELDS = frozenset({"pytest_kind", "n_test_targets", "has_k", "has_x", "has_q", "has_v", "has_node_id",
                             "recursive", "has_name", "has_exec", "editable", "no_build_isolation", "no_deps",
                             "n_packages"})


@dataclass(slots=True)
class _Segment:
    words: list[str] = field(default_factory=list)
    op_after: str | None = None  # the operator that ends it: "&&", "||", ";", "|", "&" or None
    heredoc_chars: int = 0


def shell_command_text(tool: str, args: Mapping[str, Any]) -> str | None:
    """The shell command of a call, or None when the call is not a shell command."""
    argv = args.get("argv")
    if isinstance(argv, (list, tuple)) and argv:
        words = [str(a) for a in argv]
        if len(words) >= 3 and Path(words[0]).name in ("bash", "sh", "zsh") and words[1] in ("-c", "-lc"):
            return words[2]
        return shlex.join(words)
    name = tool.lower()
    command = args.get("command", args.get("cmd"))
    if isinstance(command, str) and (name in SHELL_TOOLS or "bash" in name or "shell" in name):
        return command
    return None


def _tokenize(cmd: str) -> list[_Segment]:
    """Split shell text into segments of words; quotes, escapes, comments, redirections and here-docs
    are understood well enough to find command boundaries. Never raises."""
    segments: list[_Segment] = [_Segment()]
    word: list[str] = []
    in_word = False
    skip_next_word = False  # the target of a redirection is not an argument
    pending_heredoc: list[str] = []
    i, n = 0, len(cmd)

    def end_word() -> None:
        nonlocal in_word, skip_next_word
        if in_word:
            if skip_next_word:
                skip_next_word = False
            else:
                segments[-1].words.append("".join(word))
            word.clear()
            in_word = False

    def end_segment(op: str) -> None:
        end_word()
        if segments[-1].words:
            segments[-1].op_after = op
            segments.append(_Segment())
        elif op in ("|", "&&", "||") and len(segments) >= 2:
            segments[-2].op_after = op

    while i < n:
        c = cmd[i]
        if c == "'":
            j = cmd.find("'", i + 1)
            j = n if j < 0 else j
            word.append(cmd[i + 1:j])
            in_word = True
            i = j + 1
        elif c == '"':
            j = i + 1
            while j < n and cmd[j] != '"':
                j += 2 if cmd[j] == "\\" else 1
            word.append(cmd[i + 1:min(j, n)].replace('\\"', '"'))
            in_word = True
            i = j + 1
        elif c == "\\":
            if i + 1 < n and cmd[i + 1] != "\n":  # backslash-newline is a line continuation
                word.append(cmd[i + 1])
                in_word = True
            i += 2
        elif c in " \t\r":
            end_word()
            i += 1
        elif c == "\n":
            end_segment(";")
            i += 1
            if pending_heredoc:
                # The here-doc body runs until a line that is exactly a pending delimiter.
                body_start = i
                while i < n and pending_heredoc:
                    j = cmd.find("\n", i)
                    j = n if j < 0 else j
                    if cmd[i:j].strip() == pending_heredoc[0]:
                        pending_heredoc.pop(0)
                    i = j + 1
                segments[-2 if len(segments) >= 2 else -1].heredoc_chars += max(0, min(i, n) - body_start)
                pending_heredoc.clear()
        elif c == "#" and not in_word:
            j = cmd.find("\n", i)
            i = n if j < 0 else j
        elif c in "<>" or (c == "&" and i + 1 < n and cmd[i + 1] == ">"):
            if in_word and "".join(word).isdigit():  # "2>" : the digits are a file descriptor
                word.clear()
                in_word = False
            else:
                end_word()
            j = i
            while j < n and cmd[j] in "<>&-|":
                j += 1
            op = cmd[i:j]
            i = j
            if op.startswith("<<") and not op.startswith("<<<"):
                m = re.match(r"\s*['\"]?([\w.-]+)['\"]?", cmd[i:])
                if m:
                    pending_heredoc.append(m.group(1))
                    i += m.end()
                continue
            if op.endswith("&"):  # 2>&1, >&2: the target is a descriptor glued to the operator
                m = re.match(r"\d+", cmd[i:])
                if m:
                    i += m.end()
                    continue
            skip_next_word = True
        elif c in ";|&":
            two = cmd[i:i + 2]
            if two in ("&&", "||", ";;"):
                end_segment(two if two != ";;" else ";")
                i += 2
            elif two == "|&":
                end_segment("|")
                i += 2
            else:
                end_segment(c)
                i += 1
        elif c in "()" and not in_word:
            end_word()  # subshell parentheses only group; the commands inside still count
            i += 1
        elif c == "$" and cmd[i:i + 2] == "$(":
            depth, j = 0, i + 1
            while j < n:
                depth += cmd[j] == "("
                depth -= cmd[j] == ")"
                j += 1
                if depth == 0:
                    break
            word.append(cmd[i:j])
            in_word = True
            i = j
        else:
            word.append(c)
            in_word = True
            i += 1
    end_word()
    if not segments[-1].words and len(segments) > 1:
        heredoc = segments[-1].heredoc_chars
        segments.pop()
        segments[-1].heredoc_chars += heredoc
    return [s for s in segments if s.words]


def _normalize_verb(word: str) -> str:
    name = Path(word).name if "/" in word else word
    if re.fullmatch(r"python[\d.]*", name):
        return "python"
    if re.fullmatch(r"pip[\d.]*", name):
        return "pip"
    if name == "py.test":
        return "pytest"
    return name


def _strip_wrappers(words: list[str]) -> tuple[list[str], bool]:
    """Drop env assignments and wrapper commands in front of the real command."""
    env = False
    i = 0
    while i < len(words):
        w = words[i]
        if _ENV_ASSIGN.match(w):
            env = True
            i += 1
        elif w == "env":
            i += 1
            while i < len(words) and (words[i].startswith("-") or _ENV_ASSIGN.match(words[i])):
                env = env or bool(_ENV_ASSIGN.match(words[i]))
                i += 1
        elif w in _WRAPPERS:
            i += 1
            while i < len(words) and (words[i].startswith("-") or _WRAPPER_VALUE.match(words[i])):
                i += 1
        elif w in ("uv", "poetry", "pipenv", "hatch", "pdm") and i + 1 < len(words) and words[i + 1] == "run":
            i += 2
        elif w == "uv" and i + 1 < len(words) and words[i + 1] == "pip":
            i += 1  # `uv pip install` is a pip install
        else:
            break
    return words[i:], env


def _positional(args: Sequence[str], value_opts: frozenset[str]) -> tuple[list[str], list[str]]:
    """(positional words, flag words) of an argument list, skipping the values of options that take one."""
    positional, flags = [], []
    skip = False
    for a in args:
        if skip:
            skip = False
        elif a.startswith("-") and a != "-":
            flags.append(a)
            skip = a in value_opts
        else:
            positional.append(a)
    return positional, flags


def _has_short_flag(flags: Iterable[str], letter: str) -> bool:
    return any(f == f"-{letter}" or (len(f) > 1 and f[1] != "-" and letter in f[1:]) for f in flags)


def _is_pathlike(word: str) -> bool:
    if word.startswith("-") or "://" in word or "=" in word or len(word) > 300 or any(c.isspace() for c in word):
        return False
    return word in (".", "..", "~") or "/" in word or "::" in word or bool(_PATHLIKE_EXT.search(word))


def _path_depth(word: str) -> int:
    path = word.split("::", 1)[0]
    return sum(1 for part in path.split("/") if part not in ("", ".", "~"))


def _classify_pytest(args: list[str], out: dict[str, Any]) -> str:
    targets, flags = _positional(args, _PYTEST_VALUE_OPTS)
    out["n_test_targets"] = len(targets)
    out["has_k"] = int("-k" in flags or any(f.startswith("-k") and len(f) > 2 for f in flags))
    out["has_x"] = int(_has_short_flag(flags, "x") or "--exitfirst" in flags or
                       any(f.startswith("--maxfail") for f in flags))
    out["has_q"] = int(_has_short_flag(flags, "q") or "--quiet" in flags)
    out["has_v"] = int(_has_short_flag(flags, "v") or "--verbose" in flags)
    out["has_node_id"] = int(any("::" in t for t in targets))
    if out["has_node_id"] or out["has_k"]:
        out["pytest_kind"] = 3
        return "pytest_single_test"
    if any(t.split("::")[0].endswith(".py") for t in targets):
        out["pytest_kind"] = 2
        return "pytest_path"
    out["pytest_kind"] = 1
    return "pytest_full_discovery"


def _classify_pip(args: list[str], out: dict[str, Any]) -> str:
    positional, flags = _positional(args, _PIP_VALUE_OPTS | {"-e", "--editable"})
    sub = positional[0] if positional else ""
    if sub == "uninstall":
        return "pip::uninstall"
    if sub != "install":
        return "pip::other"
    editable_targets = [args[i + 1] for i, a in enumerate(args[:-1]) if a in ("-e", "--editable")]
    editable_targets += [a.split("=", 1)[1] for a in flags if a.startswith("--editable=")]
    targets = positional[1:] + editable_targets
    out["editable"] = int(bool(editable_targets))
    out["no_build_isolation"] = int("--no-build-isolation" in flags)
    out["no_deps"] = int("--no-deps" in flags)
    out["n_packages"] = len(targets)
    isolation = "no_build_iso" if out["no_build_isolation"] else "default"
    if editable_targets:
        kind = "editable_extras" if any("[" in t for t in editable_targets) else "editable_local"
        return f"pip::{kind}::{isolation}"
    if any(t.startswith((".", "/", "~")) or ("/" in t and "://" not in t) for t in targets):
        return f"pip::local_path::{isolation}"
    if any(f in ("-r", "--requirement") or f.startswith("--requirement=") for f in flags):
        return "pip::requirements"
    return "pip::pypi::single" if len(targets) <= 1 else "pip::pypi::multi_pkg"


def _classify_python(args: list[str], seg: _Segment, background: bool, out: dict[str, Any]) -> tuple[str, str]:
    """(bucket tail, rank key) of `python ARGS`."""
    i = 0
    while i < len(args) and args[i].startswith("-") and args[i] not in ("-m", "-c", "-"):
        i += 2 if args[i] in ("-W", "-X") else 1
    rest = args[i:]
    if not rest:
        return "python::interactive_" + _size_class(seg.heredoc_chars), "python"
    head = rest[0]
    if head == "-m" and len(rest) >= 2:
        module, margs = rest[1], rest[2:]
        if module in ("pytest", "py.test"):
            return "python::" + _classify_pytest(margs, out), "pytest"
        if module == "unittest":
            specific = [a for a in margs if not a.startswith("-") and a != "discover"]
            return ("python::unittest_specific" if specific else "python::unittest_discover"), "unittest"
        if module == "pip":
            return _classify_pip(margs, out), "pip"
        if module == "mypy":
            return "python::module_mypy", "python"
        return "python::module_other", "python"
    if head == "-c":
        code = rest[1] if len(rest) >= 2 else ""
        return "python::interactive_" + _size_class(len(code)), "python"
    if head == "-":
        return "python::interactive_" + _size_class(seg.heredoc_chars), "python"
    script = Path(head).name
    if script == "setup.py":
        sub = rest[1] if len(rest) >= 2 else ""
        kind = "setup_install" if sub == "install" else "setup_dev_build"
        return "python::" + kind, "setup"
    if background:
        return "python::script_bg", "python"
    return ("python::script_repro" if _REPRO_NAME.search(script) else "python::script_other"), "python"


def _size_class(chars: int) -> str:
    return "short" if chars < 80 else "medium" if chars < 400 else "long"


def _classify_find(words: list[str], piped_to: list[str], out: dict[str, Any]) -> str:
    out["has_name"] = int(any(w in ("-name", "-iname", "-path", "-ipath", "-regex") for w in words))
    out["has_exec"] = int("-exec" in words or "-execdir" in words)
    if (out["has_exec"] and "grep" in words) or "xargs" in piped_to:
        return "find::exec_grep"
    if out["has_name"]:
        return "find::with_name_pipe" if piped_to else "find::with_name_basic"
    if "-type" in words and words[words.index("-type") + 1:words.index("-type") + 2] == ["d"]:
        return "find::dir_only"
    return "find::other"


def _classify_segment(words: list[str], seg: _Segment, piped_to: list[str], background: bool,
                      out: dict[str, Any]) -> tuple[str, int]:
    """(bucket without the "bash::" prefix, rank) of one segment's (wrapper-stripped) words."""
    verb = _normalize_verb(words[0])
    args = words[1:]
    out["verb"] = verb
    if verb in ("bash", "sh", "zsh") and len(args) >= 2 and args[0] in ("-c", "-lc"):
        inner = extract_features("bash", {"command": args[1]})
        out.update({k: getattr(inner, k) for k in ("verb", *_SEGMENT_FIELDS)})
        bucket = inner.bucket.removeprefix("bash::")
        return bucket, _RANK.get(bucket.split("::")[0], 1)
    if verb == "python":
        tail, rank_key = _classify_python(args, seg, background, out)
        return tail, _RANK[rank_key]
    if verb == "pytest":
        return "python::" + _classify_pytest(args, out), _RANK["pytest"]
    if verb == "pip":
        return _classify_pip(args, out), _RANK["pip"]
    if verb in ("apt", "apt-get"):
        sub = next((a for a in args if not a.startswith("-")), "")
        return f"apt::{sub if sub in ('install', 'update') else 'other'}", _RANK["apt"]
    if verb in ("conda", "mamba"):
        sub = next((a for a in args if not a.startswith("-")), "")
        return f"conda::{'install' if sub == 'install' else 'other'}", _RANK["conda"]
    if verb == "find":
        return _classify_find(words, piped_to, out), _RANK["find"]
    if verb == "git":
        if args[:1] == ["-C"]:
            return "git::-C", _RANK["git"]
        sub = next((a for a in args if not a.startswith("-")), "")
        return f"git::{sub if sub in _GIT_SUBCOMMANDS else 'other'}", _RANK["git"]
    if verb in _LIGHT_VERBS or verb in _SETUP_VERBS:
        flags = [a for a in args if a.startswith("-") and a != "-"]
        recursive = verb in ("rg", "ag") or _has_short_flag(flags, "r") or _has_short_flag(flags, "R") \
            or "--recursive" in flags
        out["recursive"] = int(recursive and verb != "ls")
        suffix = "::recursive" if out["recursive"] and verb in ("grep", "egrep", "fgrep") else ""
        return f"light::{verb}{suffix}", _RANK["light"]
    return (f"other::{verb}" if _SIMPLE_NAME.match(verb) else "other"), _RANK["other"]


def _tool_features(tool: str, args: Mapping[str, Any]) -> CallFeatures:
    """A non-shell tool: its bucket is the tool name plus a short operation name when it has one
    (e.g. an editor's `command: "view"`), its sizes those of its JSON arguments."""
    op = next((v for k in ("command", "action", "op", "operation") if isinstance(v := args.get(k), str)
               and _SIMPLE_NAME.match(v)), None)
    try:
        text = json.dumps(args, sort_keys=True, default=str)
    except (TypeError, ValueError):
        text = repr(args)
    paths = [v for v in args.values() if isinstance(v, str) and _is_pathlike(v)]
    return CallFeatures(
        tool=tool, bucket=f"{tool}::{op}" if op else tool, family=tool, verb=op or tool,
        command_key=f"{tool}:{text}", args_chars=len(text), n_words=len(args),
        n_paths=len(paths), path_depth_max=max((_path_depth(p) for p in paths), default=0),
        paths=_path_keys(paths))


def _path_keys(paths: Iterable[str]) -> tuple[str, ...]:
    keys = []
    for p in paths:
        key = p.split("::", 1)[0].removeprefix("./").rstrip("/")
        if key and key not in (".", "..", "~") and key not in keys:
            keys.append(key)
    return tuple(keys)


def family_of(bucket: str) -> str:
    """The family of a bucket: a shell bucket's first two parts (`bash::python::pytest_path` ->
    `bash::python`), another tool's name (`str_replace_editor::view` -> `str_replace_editor`)."""
    parts = bucket.split("::", 2)
    return "::".join(parts[:2]) if parts[0] == "bash" and len(parts) > 1 else parts[0]


class FeatureCache:
    """`extract_features` memoized on (tool, command text) for shell calls, the latest `max_entries`
    kept: a live predictor sees each command at least twice (predict, then update) and its program's
    history again at every later call. Results are immutable, so sharing them is safe."""

    __slots__ = ("max_entries", "_entries")

    def __init__(self, max_entries: int = 4096):
        self.max_entries = max_entries
        self._entries: dict[tuple[str, str], CallFeatures] = {}

    def __call__(self, tool: str, args: Mapping[str, Any] | None) -> CallFeatures:
        command = shell_command_text(str(tool), args) if isinstance(args, Mapping) else None
        if command is None:
            return extract_features(tool, args)
        key = (str(tool), command)
        found = self._entries.get(key)
        if found is None:
            found = extract_features(tool, args)
            if len(self._entries) >= self.max_entries:
                del self._entries[next(iter(self._entries))]  # oldest inserted first
            self._entries[key] = found
        return found

    def __getstate__(self) -> dict[str, Any]:
        return {"max_entries": self.max_entries}  # a cache: not worth pickling

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.max_entries = state["max_entries"]
        self._entries = {}


def extract_features(tool: str, args: Mapping[str, Any] | None) -> CallFeatures:
    """Features of a call from its tool name and arguments alone. Never raises."""
    tool = str(tool)
    args = args if isinstance(args, Mapping) else {}
    command = shell_command_text(tool, args)
    if command is None:
        return _tool_features(tool, args)
    segments = _tokenize(command)
    out: dict[str, Any] = {}
    best: tuple[int, int, str, list[str]] | None = None  # (rank, -index, bucket, words)
    has_cd = env_prefix = False
    work_segments = 0
    for idx, seg in enumerate(segments):
        words, env = _strip_wrappers(seg.words)
        env_prefix = env_prefix or env
        if not words:
            continue
        verb = _normalize_verb(words[0])
        has_cd = has_cd or verb in ("cd", "pushd")
        if verb in _SETUP_VERBS:
            continue
        work_segments += 1
        piped_to: list[str] = []
        j = idx
        while segments[j].op_after == "|" and j + 1 < len(segments):
            j += 1
            piped_to.append(_normalize_verb(segments[j].words[0]))
        seg_out: dict[str, Any] = {}
        bucket, rank = _classify_segment(words, seg, piped_to, seg.op_after == "&", seg_out)
        if best is None or rank > best[0]:
            best = (rank, -idx, bucket, words)
            out = seg_out
    if best is None:  # only setup commands (`cd x`), or nothing at all
        first = _strip_wrappers(segments[0].words)[0] if segments else []
        verb = _normalize_verb(first[0]) if first else ""
        bucket, words = (f"light::{verb}" if verb else "empty"), first
    else:
        _, _, bucket, words = best
        if work_segments > 1 and bucket.startswith("light::"):
            bucket += "::chained"
    flags = [w for w in words[1:] if w.startswith("-") and w != "-"]
    paths = [w for w in words[1:] if _is_pathlike(w)]
    numbers = [int(m) for w in words[1:] if len(w) < 40 for m in _NUMBER.findall(w)]
    full_bucket = f"bash::{bucket}"
    numeric = {k: v for k, v in out.items() if k in _SEGMENT_FIELDS}
    return CallFeatures(
        tool=tool, bucket=full_bucket, family=family_of(full_bucket),
        verb=out.get("verb", _normalize_verb(words[0]) if words else ""),
        command_key=" ".join(command.split()),
        is_shell=1,
        n_segments=len(segments),
        n_pipes=sum(s.op_after == "|" for s in segments),
        n_chain=sum(s.op_after in ("&&", "||", ";") for s in segments),
        has_cd=int(has_cd), has_env_prefix=int(env_prefix),
        background=int(any(s.op_after == "&" for s in segments)),
        n_words=len(words), command_chars=len(command), n_flags=len(flags), n_paths=len(paths),
        path_depth_max=max((_path_depth(p) for p in paths), default=0),
        max_number_log=math.log1p(min(max(numbers, default=0), 10**9)),
        heredoc_chars=sum(s.heredoc_chars for s in segments),
        args_chars=len(command),
        paths=_path_keys(paths),
        **numeric,
    )


@dataclass(slots=True, frozen=True)
class HistoryItem:
    """What prediction needs of one earlier call of the same program."""

    tool: str
    bucket: str
    command_key: str
    log_duration: float

    @property
    def family(self) -> str:
        return family_of(self.bucket)

    @classmethod
    def of(cls, record: ToolCallRecord, features: CallFeatures | None = None) -> HistoryItem:
        f = features or extract_features(record.tool, record.args)
        return cls(f.tool, f.bucket, f.command_key, log_duration(record.duration_s))


HISTORY_FIELDS: tuple[str, ...] = (
    "prog_calls", "same_bucket_n", "same_bucket_mean", "same_bucket_last", "same_tool_n", "same_tool_mean",
    "same_tool_last", "same_command_last", "prog_last",
)


def history_features(features: CallFeatures, history: Sequence[HistoryItem]) -> list[float]:
    """The program's own history as numbers (HISTORY_FIELDS order); NaN where there is nothing to say,
    which the regressor treats as missing. Only the latest HISTORY_WINDOW calls count."""
    recent = list(history)[-HISTORY_WINDOW:]
    nan = math.nan
    bucket = [h.log_duration for h in recent if h.bucket == features.bucket]
    tool = [h.log_duration for h in recent if h.tool == features.tool]
    same = [h.log_duration for h in recent if h.command_key == features.command_key]
    return [
        math.log1p(len(recent)),
        math.log1p(len(bucket)), sum(bucket) / len(bucket) if bucket else nan, bucket[-1] if bucket else nan,
        math.log1p(len(tool)), sum(tool) / len(tool) if tool else nan, tool[-1] if tool else nan,
        same[-1] if same else nan,
        recent[-1].log_duration if recent else nan,
    ]
