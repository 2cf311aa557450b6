"""Giving the memory of large decodes back to the operating system once the request that made them has ended.

glibc's malloc keeps what a process frees for its next allocations: a decode of a 3,000 px DICOM frees hundreds of
MB, and much of it stays in the process (in the heap of the thread that decoded it, one of up to 8 per core), so a
server's resident size follows its largest decodes and never comes back down. `malloc_trim(0)` returns every free
page of every heap. It runs after a request (HeapTrimMiddleware, in a worker thread, when nothing of the request is
referenced any more) once decodes of at least CXR_API_TRIM_AFTER_MB have ended since the last trim. A trim takes
well under a millisecond to a few ms; off glibc (musl, macOS) there is none. benchmarks/serve_memory.py measures
the effect.
"""

from __future__ import annotations

import ctypes
import os
import threading
from collections.abc import Callable

from starlette.concurrency import run_in_threadpool
from starlette.types import ASGIApp, Receive, Scope, Send

from services.governance.metrics import API_HEAP_TRIMS


def glibc_malloc_trim() -> Callable[[], int] | None:
    """glibc's `malloc_trim(0)` (1 when memory was returned), or None off glibc."""
    try:
        if not os.confstr("CS_GNU_LIBC_VERSION"):  # e.g. "glibc 2.36"; musl and macOS have no such name
            return None
        fn = ctypes.CDLL("libc.so.6").malloc_trim
    except (AttributeError, OSError, ValueError):
        return None
    fn.argtypes, fn.restype = [ctypes.c_size_t], ctypes.c_int
    return lambda: fn(0)


class HeapTrimmer:
    """Counts the bytes of ended decodes (`note`) and trims the heap once they reach `after_bytes` (0: never)."""

    def __init__(self, after_bytes: int, trim: Callable[[], int] | None = None) -> None:
        self.after_bytes = after_bytes
        self._trim = trim if trim is not None else glibc_malloc_trim()
        self._lock = threading.Lock()
        self._pending = 0
        self.trims = 0

    @property
    def enabled(self) -> bool:
        return self.after_bytes > 0 and self._trim is not None

    def note(self, nbytes: int) -> None:
        """A decode of (an estimated) `nbytes` at its peak has ended."""
        if self.enabled:
            with self._lock:
                self._pending += nbytes

    @property
    def due(self) -> bool:
        return self.enabled and self._pending >= self.after_bytes

    def trim_if_due(self) -> bool:
        """Return the free heap to the OS if enough was decoded since the last time; True when it ran."""
        with self._lock:
            if not self.due:
                return False
            self._pending = 0
        assert self._trim is not None
        self._trim()
        with self._lock:
            self.trims += 1
        API_HEAP_TRIMS.inc()
        return True


class HeapTrimMiddleware:
    """After each HTTP request, trims the heap in a worker thread when large decodes have ended since the last
    trim (a request's own arrays are freed by then: its handler has returned)."""

    def __init__(self, app: ASGIApp, heap: HeapTrimmer) -> None:
        self.app, self.heap = app, heap

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.app(scope, receive, send)
        if scope["type"] == "http" and self.heap.due:
            await run_in_threadpool(self.heap.trim_if_due)
