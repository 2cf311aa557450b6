"""Does this CPU run bf16 natively, and how many inference threads would torch use? Answered from /proc/cpuinfo
where there is one, so no torch import is needed.

`native_bf16_cpu` mirrors `bf16_supported("cpu")` (services.embedding.batch): oneDNN's bf16 path (AVX-512
BW/VL/DQ) plus native bf16 arithmetic (AVX512-BF16 or AMX tiles). `inference_threads` mirrors torch's default
intra-op thread count. Tests check both agree with torch on the machine they run on.
"""

from __future__ import annotations

import os
import sys
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


def inference_threads(cpuinfo: Path = _CPUINFO) -> int:
    """Inference threads when none are configured: torch's own count when torch is loaded (a caller may have set
    it), else the one torch would start with (MKL_NUM_THREADS, OMP_NUM_THREADS, else the physical cores), so a
    process that never loads torch runs, and keys its compiled model (openvino_cache), as one that does."""
    torch = sys.modules.get("torch")
    if torch is not None and hasattr(torch, "get_num_threads"):
        return int(torch.get_num_threads())
    for var in ("MKL_NUM_THREADS", "OMP_NUM_THREADS"):
        try:
            value = int(os.environ.get(var, ""))
        except ValueError:
            continue
        if value > 0:
            return value
    return physical_cores(cpuinfo) or os.cpu_count() or 1


def physical_cores(cpuinfo: Path = _CPUINFO) -> int | None:
    """Distinct (physical id, core id) pairs in `cpuinfo`; None where the file is missing or does not say."""
    try:
        text = cpuinfo.read_text(errors="replace")
    except OSError:
        return None
    cores: set[tuple[str, str]] = set()
    for block in text.split("\n\n"):
        fields = dict(line.split(":", 1) for line in block.splitlines() if ":" in line)
        fields = {k.strip(): v.strip() for k, v in fields.items()}
        if "core id" in fields:
            cores.add((fields.get("physical id", "0"), fields["core id"]))
    return len(cores) or None
