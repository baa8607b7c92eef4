"""This machine, named for caches of what was measured on it (kernel routes, forward costs): its CPU
model, torch's thread count and version. Imports nothing of specviz."""
from __future__ import annotations

import hashlib
import platform


def cpu_model() -> str:
    cpu = platform.processor()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    return cpu or "unknown CPU"


def cpu_flags() -> set[str]:
    """The CPU's feature flags as /proc/cpuinfo lists them (empty where it cannot be read)."""
    try:
        with open("/proc/cpuinfo") as f:
            return set(next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), []))
    except OSError:
        return set()


def native_bf16() -> bool:
    """Whether the CPU multiplies bfloat16 in hardware (AVX512_BF16 or AMX); elsewhere bf16 is emulated
    and slower than float32."""
    return bool({"avx512_bf16", "amx_bf16"} & cpu_flags())


def machine() -> str:
    """A short stable name: host, CPU model, torch threads and version, hashed."""
    import torch

    key = f"{platform.node()}|{cpu_model()}|{torch.get_num_threads()}|{torch.__version__}"
    return f"{platform.node() or 'machine'}-{hashlib.sha256(key.encode()).hexdigest()[:10]}"
