"""The host's CPU, read once: what the local engines are configured for, and what every benchmark
figure names (AVX-512 or not changes vLLM's speed about 3x; bf16 without hardware support is emulated).

On an AVX2-only host vLLM's CPU backend runs ``--dtype bfloat16`` by emulation: a TTFT of 1.40 s at
concurrency 1 against 0.45 s with ``float32`` (same machine, same minute; issue 14). So bfloat16 is
chosen only where the CPU computes it natively (AVX512-BF16 or AMX-BF16).

Threads: the local platform runs two llama.cpp servers, vLLM, the API, the workers, Nginx, Temporal
and Redis on the same cores, so no engine gets them all: each llama.cpp server a quarter (at least
one, at most eight: a small model's decode is memory-bound and stops gaining past that), vLLM's
OpenMP threads bound to the upper half of the cores (core 0 alone on a 2-core host), the rest left
to the platform.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import cache
from pathlib import Path

# Flags worth naming beside a figure (present ones only).
NOTABLE_FLAGS = ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16", "amx_tile", "avx_vnni")


@dataclass(frozen=True)
class HostCpu:
    model: str
    flags: frozenset[str]
    cpus: int

    @property
    def native_bf16(self) -> bool:
        return "avx512_bf16" in self.flags or "amx_bf16" in self.flags

    def vllm_dtype(self) -> str:
        return "bfloat16" if self.native_bf16 else "float32"

    def vllm_dtype_reason(self) -> str:
        if self.native_bf16:
            return "the CPU computes bfloat16 natively (AVX512-BF16/AMX)"
        return "no AVX512-BF16/AMX on this CPU: bfloat16 would be emulated (about 3x slower), so float32"

    def llamacpp_threads(self) -> int:
        return max(1, min(8, self.cpus // 4))

    def vllm_cpus(self) -> str:
        """``VLLM_CPU_OMP_THREADS_BIND``: the cores vLLM's OpenMP threads are pinned to (by index
        among the cores this process may use, which is what vLLM binds)."""
        if self.cpus <= 2:
            return "0"
        half = self.cpus // 2
        return f"{half}-{min(self.cpus, half + 8) - 1}"

    def describe(self) -> str:
        """e.g. ``AMD EPYC, 2 CPUs, flags avx2`` (the notable SIMD flags present)."""
        notable = [f for f in NOTABLE_FLAGS if f in self.flags]
        return f"{self.model}, {self.cpus} CPUs, flags {' '.join(notable) or 'none of ' + '/'.join(NOTABLE_FLAGS)}"


def parse_cpuinfo(text: str, cpus: int) -> HostCpu:
    model, flags = "unknown", frozenset[str]()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "model name" and model == "unknown":
            model = value.strip()
        elif key == "flags" and not flags:
            flags = frozenset(value.split())
    return HostCpu(model=model, flags=flags, cpus=cpus)


@cache
def host_cpu() -> HostCpu:
    path = Path("/proc/cpuinfo")
    return parse_cpuinfo(path.read_text() if path.exists() else "", len(os.sched_getaffinity(0)))
