"""Compile-and-load for the C kernels in kernels/csrc/ (CPU only).

A source is compiled on first use with the system C compiler (`$CC`, else `cc`, else `gcc`;
`-O3 -march=native -fopenmp`, under a second) into `$AGENTRT_CACHE/kernels/`, keyed by the source,
the flags and the CPU, under a file lock (several processes may start at once).

Invariants: `load` returns None only where there is no compiler to try (none on PATH, or not
Linux), and the kernel modules then fall back to their torch references. Where a compiler exists,
a build or load that fails raises `KernelBuildError` with the command and the compiler's output: a
broken build is a bug to see, never a silent switch to the slow path. A failure is remembered per
process, so the compiler is not rerun on every call.
"""

from __future__ import annotations

import ctypes
import fcntl
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path

from kernels import cpu_features

CSRC = Path(__file__).with_name("csrc")
FLAGS = ["-O3", "-march=native", "-ffast-math", "-fopenmp", "-shared", "-fPIC"]


class KernelBuildError(RuntimeError):
    """A C compiler exists here but a kernel did not build or load; the message holds the command and
    what the compiler printed (fix the toolchain, e.g. install libgomp / a newer gcc, or set CC)."""

    def __init__(self, name: str, command: list[str], output: str):
        self.name, self.command, self.output = name, command, output
        super().__init__(f"building the C kernel {name!r} failed: {' '.join(command)}\n{output.strip()[-4000:]}")


def compiler() -> str | None:
    """The C compiler that `load` uses, or None where the C kernels are not built (no `$CC`/`cc`/`gcc`
    on PATH, or not Linux)."""
    if platform.system() != "Linux":
        return None
    return shutil.which(os.environ.get("CC", "cc")) or shutil.which("gcc")


def _cpu_id() -> str:
    return " ".join(sorted(cpu_features.cpu_flags())) or platform.processor()


def load(name: str, function: str, argtypes: list) -> ctypes.CDLL | None:
    """The shared library built from `csrc/<name>.c`, with `function` (returning void) declared to
    take `argtypes`; None when there is no compiler here. Raises `KernelBuildError` when a compiler
    exists but the build (or loading the result) fails."""
    so = _build(name)
    if so is not None:
        fn = getattr(so, function)
        fn.restype = None
        fn.argtypes = argtypes
    return so


_built: dict[str, ctypes.CDLL | None] = {}
_failed: dict[str, KernelBuildError] = {}


def _build(name: str) -> ctypes.CDLL | None:
    if name in _failed:
        raise _failed[name]
    if name not in _built:
        try:
            _built[name] = _compile_and_load(name)
        except KernelBuildError as exc:
            _failed[name] = exc
            raise
    return _built[name]


def _compile_and_load(name: str) -> ctypes.CDLL | None:
    cc = compiler()
    if cc is None:
        return None
    source = CSRC / f"{name}.c"
    key = hashlib.sha256(source.read_bytes() + " ".join(FLAGS).encode() + _cpu_id().encode()).hexdigest()[:16]
    root = Path(os.environ.get("AGENTRT_CACHE", Path.home() / ".cache" / "agentrt")).expanduser() / "kernels"
    lib = root / f"{name}-{key}.so"
    if not lib.exists():
        root.mkdir(parents=True, exist_ok=True)
        with open(root / ".build.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if not lib.exists():
                fd, tmp = tempfile.mkstemp(dir=root, suffix=".so")
                os.close(fd)
                command = [cc, *FLAGS, "-o", tmp, str(source), "-lm"]
                try:
                    proc = subprocess.run(command, capture_output=True, text=True)
                except OSError as exc:  # found on PATH but cannot run
                    os.unlink(tmp)
                    raise KernelBuildError(name, command, f"{type(exc).__name__}: {exc}") from exc
                if proc.returncode != 0:
                    os.unlink(tmp)
                    raise KernelBuildError(name, command, f"exit status {proc.returncode}\n{proc.stdout}{proc.stderr}")
                os.replace(tmp, lib)
    try:
        return ctypes.CDLL(str(lib))
    except OSError as exc:  # built, but the loader refuses it (e.g. libgomp missing at run time)
        raise KernelBuildError(name, ["dlopen", str(lib)], str(exc)) from exc
