"""Peak memory of a process, from /proc: VmHWM (the resident high-water mark), which writing 5 to
/proc/<pid>/clear_refs resets to the current RSS, so a peak can be measured from a resting size."""

from __future__ import annotations

import contextlib
from pathlib import Path


def status_mb(pid: int, field: str) -> float:
    """A /proc/<pid>/status field given in kB (VmRSS, VmHWM), in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no {field} for process {pid}")


def reset_peak(pid: int) -> float:
    """Reset the process's VmHWM to its current RSS; return that RSS (MiB)."""
    Path(f"/proc/{pid}/clear_refs").write_text("5")
    return status_mb(pid, "VmRSS")


def descendants(pid: int) -> list[int]:
    """`pid` and every process below it (celery's pool children under `cxr worker`)."""
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        with contextlib.suppress(OSError):
            for task in Path(f"/proc/{current}/task").iterdir():
                todo.extend(int(c) for c in (task / "children").read_text().split())
    return found


def peaks_mb(pid: int) -> dict[int, float]:
    """VmHWM of `pid` and each of its descendants still alive."""
    out = {}
    for p in descendants(pid):
        with contextlib.suppress(OSError, AssertionError):
            out[p] = status_mb(p, "VmHWM")
    return out
