"""The embedded store's open shards and their turn-taking: qdrant-edge shards held under the store directory's
lease (services.index.lease), opened on first use and handed over when another process waits for them."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import qdrant_edge as qe

from services.errors import StoreError, StoreLockedError
from services.index.lease import StoreLease

_LOCKED_MARK = "WouldBlock"  # qdrant-edge: "failed to open WAL <dir>/wal: Can't init WAL: Kind(WouldBlock)"


class LeasedShards:
    """The shards a store object holds open under `root`'s StoreLease. After each call it hands them over if
    another process waits (or at once with `linger_s=0`), else closes them once idle for `linger_s`. A subclass
    opens its shards in `_shard` and works on them inside `_using` (one shard) or `_session` (several)."""

    def __init__(self, root: Path, *, wait_s: float, linger_s: float) -> None:
        self.root = Path(root)
        self._shards: dict[str, qe.EdgeShard] = {}
        self._dirty: set[str] = set()  # collections written since their last flush (a flush costs 0.1-0.4 s)
        self._lock = threading.RLock()
        self._lease = StoreLease(self.root, wait_s=wait_s)
        self._linger = float(linger_s)
        self._last_used = 0.0
        self._janitor: threading.Thread | None = None
        self._depth = 0  # nested _session()s

    def _shard(self, name: str) -> qe.EdgeShard:
        """The open shard for `name`, opening it (under the lease) on first use."""
        raise NotImplementedError

    def _released(self) -> None:
        """Called once the lease is given back: forget what another process may now change."""

    def _engine_error(self, exc: Exception, path: Path, doing: str) -> StoreError:
        if _LOCKED_MARK in str(exc):
            return StoreLockedError(
                f"the embedded store {path} is already open in another process (or by another store object in this one)"
            )
        return StoreError(f"cannot {doing} the embedded store {path}: {exc}")

    @contextmanager
    def _leased(self) -> Iterator[None]:
        """Take the lease for work that opens a shard. If that work fails while no shard is open, give the lease
        back at once: nothing else would until close()."""
        self._lease.acquire()
        try:
            yield
        except BaseException:
            if not self._shards:
                self._lease.release()
            raise

    @contextmanager
    def _session(self) -> Iterator[None]:
        """One call, which may open several shards: the lease is held throughout, and only when the outermost
        session ends is the store handed over if another process waits."""
        with self._lock:
            self._depth += 1
            try:
                self._lease.acquire()
                yield
            finally:
                self._depth -= 1
                if self._depth == 0:
                    self._last_used = time.monotonic()
                    self._after_call()

    @contextmanager
    def _using(self, name: str) -> Iterator[qe.EdgeShard]:
        """The open shard for one call; afterwards hand the store over if another process waits."""
        with self._session():
            yield self._shard(name)

    def _after_call(self) -> None:
        if self._linger <= 0 or self._lease.others_waiting():
            self._hand_over()
        elif self._janitor is None or not self._janitor.is_alive():
            self._janitor = threading.Thread(target=self._watch, name="cxr-store-lease", daemon=True)
            self._janitor.start()

    def _watch(self) -> None:
        """Close the shards once idle for `linger_s` or as soon as another process waits for them."""
        while True:
            time.sleep(0.05)
            with self._lock:
                if not self._lease.held:
                    return
                if self._lease.others_waiting() or time.monotonic() - self._last_used >= self._linger:
                    self._hand_over()
                    return

    def _hand_over(self) -> None:
        with self._lock:
            errors = []
            for name, shard in list(self._shards.items()):
                try:
                    if name in self._dirty:  # a clean shard has nothing to sync; close() alone costs enough
                        shard.flush()
                        self._dirty.discard(name)
                    shard.close()
                except Exception as exc:
                    errors.append(f"{name}: {exc}")
            self._shards.clear()
            self._lease.release()
            self._released()
        if errors:
            raise StoreError(f"closing the embedded store {self.root} failed for {'; '.join(errors)}")
