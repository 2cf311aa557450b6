"""Turn-taking between processes for one embedded store directory.

qdrant-edge lets one process open a shard at a time. So that a worker, the receiver, the API and a user's
`cxr search` can all use one embedded store, each holds the store only while it works and hands it over when
another process asks:

- `owner.lock`: an exclusive flock; whoever holds it may open shards.
- `want.lock`: a process waiting for the owner lock holds a shared flock on it. The owner probes it between
  operations (a non-blocking exclusive flock fails while anyone waits) and, if someone waits, closes its shards
  and lets go. An owner with nobody waiting keeps its shards open for `linger_s`, so a busy writer or API does
  not reload the shard (about 0.1 s at 100k points) for every call.

flock locks die with their process, so a SIGKILLed owner never leaves the store locked.
"""

from __future__ import annotations

import fcntl
import os
import time
from pathlib import Path

from services.errors import StoreLockedError

OWNER_FILE = ".cxr-owner.lock"
WANT_FILE = ".cxr-want.lock"


class StoreLease:
    """The right to open the shards under `root`, taken with `acquire()` and given back with `release()`."""

    def __init__(self, root: Path, *, wait_s: float = 30.0) -> None:
        self.root = Path(root)
        self.wait_s = float(wait_s)
        self._owner: int | None = None
        self._want: int | None = None
        self.acquired_at: float | None = None

    @property
    def held(self) -> bool:
        return self.acquired_at is not None

    def _open(self) -> None:
        if self._owner is None:
            self.root.mkdir(parents=True, exist_ok=True)
            self._owner = os.open(self.root / OWNER_FILE, os.O_RDWR | os.O_CREAT, 0o644)
            self._want = os.open(self.root / WANT_FILE, os.O_RDWR | os.O_CREAT, 0o644)

    def acquire(self) -> None:
        """Take the store, waiting up to `wait_s` for its owner to hand it over; StoreLockedError after that."""
        if self.held:
            return
        self._open()
        assert self._owner is not None and self._want is not None
        deadline = time.monotonic() + self.wait_s
        fcntl.flock(self._want, fcntl.LOCK_SH)  # tell the owner someone waits
        try:
            delay = 0.002
            while True:
                try:
                    fcntl.flock(self._owner, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() >= deadline:
                        raise StoreLockedError(
                            f"the embedded store {self.root} is held by another process, which did not hand it over"
                            f" within {self.wait_s:g} s (it may be building the index)"
                        ) from None
                    time.sleep(delay)
                    delay = min(delay * 2, 0.05)
        finally:
            fcntl.flock(self._want, fcntl.LOCK_UN)
        self.acquired_at = time.monotonic()

    def others_waiting(self) -> bool:
        """True while another process waits for this store (only meaningful for the holder)."""
        if self._want is None:
            return False
        try:
            fcntl.flock(self._want, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(self._want, fcntl.LOCK_UN)
        return False

    def release(self) -> None:
        if self.held and self._owner is not None:
            fcntl.flock(self._owner, fcntl.LOCK_UN)
        self.acquired_at = None

    def close(self) -> None:
        self.release()
        for fd in (self._owner, self._want):
            if fd is not None:
                os.close(fd)
        self._owner = self._want = None
