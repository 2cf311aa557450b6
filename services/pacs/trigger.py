"""A background thread that calls the dispatcher after stores (debounced) and on a timer.

The receiver's C-STORE handler never talks to the broker: it only pokes this trigger. The dispatcher (injected by
the shell, `workers.dispatch` in `cxr dicom-listen`) sends what the ledger holds to the queue; when Redis is down it
fails here, in this thread, and the timer tries again later while C-STOREs keep succeeding.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

log = logging.getLogger("cxr.pacs")

Dispatch = Callable[[], int]


class DispatchTrigger:
    """Calls `dispatch` at most once per `debounce_s` while pokes arrive, and every `interval_s` regardless."""

    def __init__(self, dispatch: Dispatch | None, *, debounce_s: float = 0.5, interval_s: float = 10.0) -> None:
        self.dispatch = dispatch
        self.debounce_s, self.interval_s = debounce_s, interval_s
        self._poked = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.calls = 0
        self.failures = 0
        self.sent = 0

    def poke(self) -> None:
        """Something landed in the ledger (cheap; safe from any thread)."""
        self._poked.set()

    def start(self) -> DispatchTrigger:
        if self.dispatch is not None and self._thread is None:
            self._thread = threading.Thread(target=self._run, name="cxr-dispatch", daemon=True)
            self._thread.start()
        return self

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        self._poked.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def _run(self) -> None:
        while not self._stop.is_set():
            poked = self._poked.wait(self.interval_s)
            if self._stop.is_set():
                break
            if poked:  # let a burst of stores land, then send them in one go
                self._stop.wait(self.debounce_s)
            self._poked.clear()
            self.fire()
        self.fire()  # a last send on shutdown; what fails stays 'received' in the ledger for the sweep

    def fire(self) -> int:
        """Run the dispatcher once now; returns what it sent (0 on failure, which is logged and retried later)."""
        if self.dispatch is None:
            return 0
        self.calls += 1
        t0 = time.perf_counter()
        try:
            n = int(self.dispatch() or 0)
        except Exception as exc:  # noqa: BLE001 - a broker outage must never reach the receiver
            self.failures += 1
            log.warning("dispatch failed (%s); items stay in the ledger and are sent later", type(exc).__name__)
            return 0
        self.sent += n
        if n:
            log.info("dispatched %d item(s) in %.0f ms", n, 1000 * (time.perf_counter() - t0))
        return n
