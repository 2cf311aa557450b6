"""Does this CPU run bf16 natively? Answered from /proc/cpuinfo where there is one, so no torch import is needed.

It mirrors `bf16_supported("cpu")` (services.embedding.batch): oneDNN's bf16 path (AVX-512 BW/VL/DQ) plus native
bf16 arithmetic (AVX512-BF16 or AMX tiles). A test checks the two agree on the machine it runs on.
"""

from __future__ import annotations

from pathlib import Path

_CPUINFO = Path("/proc/cpuinfo")
_AVX512_CORE = {"avx512f", "avx512bw", "avx512vl", "avx512dq"}


def cpu_flags(cpuinfo: Path = _CPUINFO) -> set[str] | None:
    """The feature flags of the first CPU listed in `cpuinfo`; None where the file is missing (not Linux)."""
    try:
        text = cpuinfo.read_text(errors="replace")
    except OSError:
        return None
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return set(value.split())
    return set()


def native_bf16_cpu() -> bool:
    """True when the CPU has native bf16 (AVX512-BF16 or AMX); asks torch only where /proc/cpuinfo is missing."""
    flags = cpu_flags()
    if flags is None:
        from services.embedding.batch import bf16_supported

        return bf16_supported("cpu")
    return flags >= _AVX512_CORE and bool({"avx512_bf16", "amx_tile"} & flags)
