"""The engines' configuration follows the host's CPU (switchyard.devstack.host)."""

from __future__ import annotations

from switchyard.devstack.host import host_cpu, parse_cpuinfo

AVX2_ONLY = "processor\t: 0\nmodel name\t: AMD EPYC\nflags\t\t: fpu sse2 avx avx2 fma\n\nprocessor\t: 1\nmodel name\t: AMD EPYC\nflags\t\t: fpu sse2 avx avx2 fma\n"
SAPPHIRE = "model name\t: Intel(R) Xeon(R) Platinum 8480+\nflags\t\t: avx2 avx512f avx512_bf16 amx_bf16 amx_tile\n"


def test_avx2_only_host_gets_float32() -> None:
    cpu = parse_cpuinfo(AVX2_ONLY, 2)
    assert (cpu.model, cpu.native_bf16, cpu.vllm_dtype()) == ("AMD EPYC", False, "float32")
    assert "emulated" in cpu.vllm_dtype_reason()
    assert cpu.describe() == "AMD EPYC, 2 CPUs, flags avx2"


def test_bf16_host_keeps_bfloat16() -> None:
    cpu = parse_cpuinfo(SAPPHIRE, 8)
    assert (cpu.native_bf16, cpu.vllm_dtype()) == (True, "bfloat16")
    assert cpu.describe().endswith("flags avx2 avx512f avx512_bf16 amx_bf16 amx_tile")


def test_this_host_is_read() -> None:
    cpu = host_cpu()
    assert cpu.cpus >= 1 and cpu.model != "unknown" and cpu.flags  # Linux CI hosts have /proc/cpuinfo


def test_engine_threads_leave_the_platform_its_share() -> None:
    by_cpus = {n: parse_cpuinfo(SAPPHIRE, n) for n in (1, 2, 4, 8, 16, 64)}
    assert {n: c.llamacpp_threads() for n, c in by_cpus.items()} == {1: 1, 2: 1, 4: 1, 8: 2, 16: 4, 64: 8}
    assert {n: c.vllm_cpus() for n, c in by_cpus.items()} == {1: "0", 2: "0", 4: "2-3", 8: "4-7", 16: "8-15", 64: "32-39"}
