"""The machine a benchmark ran on, for its result file: CPU model and flags, cores, GPU, versions."""

from __future__ import annotations

import os
import platform
import sys
from importlib import metadata

from kernels import cpu_features

_FLAGS_OF_INTEREST = ("avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx512_bf16", "avx512_fp16",
                      "amx_tile", "amx_bf16", "amx_int8")


def machine_info() -> dict:
    info = cpu_features.cpuinfo()
    flags = cpu_features.cpu_flags()
    out = {
        "cpu_model": info.get("model name", platform.processor() or platform.machine()),
        "cpu_flags": sorted(f for f in _FLAGS_OF_INTEREST if f in flags),
        "cpus": os.cpu_count(), "python": sys.version.split()[0], "platform": platform.platform(),
    }
    for package in ("torch", "agentrt"):
        try:
            out[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            pass
    torch = sys.modules.get("torch")
    if torch is not None:
        out["torch_cpu_capability"] = cpu_features.simd_level()  # the SIMD level torch dispatches to
    if torch is not None and torch.cuda.is_available():
        out["gpu"] = torch.cuda.get_device_name(0)
    return out
