"""Compile-and-load for the C kernels in kernels/csrc/ (CPU only).

A source is compiled on first use with the system C compiler (`cc -O3 -march=native -fopenmp`,
under a second) into `$AGENTRT_CACHE/kernels/`, keyed by the source, the flags and the CPU, under a
file lock (several processes may start at once). `load` returns None where no compiler works, and
the kernel modules fall back to their torch references.
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
from functools import cache
from pathlib import Path

CSRC = Path(__file__).with_name("csrc")
FLAGS = ["-O3", "-march=native", "-ffast-math", "-fopenmp", "-shared", "-fPIC"]


def _cpu_id() -> str:
    try:
        info = Path("/proc/cpuinfo").read_text()
        return next((line for line in info.splitlines() if line.startswith("flags")), platform.processor())
    except OSError:
        return platform.processor()


def load(name: str, function: str, argtypes: list) -> ctypes.CDLL | None:
    """The shared library built from `csrc/<name>.c`, with `function` (returning void) declared to
    take `argtypes`; None when it cannot be built here."""
    so = _build(name)
    if so is not None:
        fn = getattr(so, function)
        fn.restype = None
        fn.argtypes = argtypes
    return so


@cache
def _build(name: str) -> ctypes.CDLL | None:
    compiler = shutil.which(os.environ.get("CC", "cc")) or shutil.which("gcc")
    if compiler is None or platform.system() != "Linux":
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
                proc = subprocess.run([compiler, *FLAGS, "-o", tmp, str(source), "-lm"], capture_output=True, text=True)
                if proc.returncode != 0:
                    os.unlink(tmp)
                    return None
                os.replace(tmp, lib)
    return ctypes.CDLL(str(lib))
