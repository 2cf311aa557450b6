"""The spool: received DICOM instances, durable on disk before anyone is told they arrived.

An instance is written to a temp file under `.incoming/`, fsynced, renamed to `<SOPInstanceUID>.dcm`, and the
directory fsynced; only then may the receiver answer success. A crash at any point leaves either no file or a
whole one (a stale temp file is swept at start). The file name is the idempotency key: a first instance is linked
into place only if its name is free (`create`), so two writers of one UID cannot both win; a resent instance
replaces the same file (`write`) once the intake has found it to be the same image. Instances refused as UID
conflicts may be kept under `.conflicts/`, which nothing indexes.
"""

from __future__ import annotations

import errno
import os
import re
import shutil
import stat
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from services.durable import write_atomically
from services.errors import CxrError

_UID_RE = re.compile(r"[0-9]+(\.[0-9]+)*")
INCOMING = ".incoming"
CONFLICTS = ".conflicts"


class SpoolFullError(CxrError):
    """The spool is below its free-space watermark or cannot be written."""

    default_hint = "Free disk space under the spool (CXR_SPOOL_DIR) or lower CXR_SPOOL_MIN_FREE_MB."


def valid_uid(uid: str | None) -> bool:
    """A DICOM UID: digits and dots, at most 64 characters (so it is also a safe file name)."""
    return bool(uid) and len(uid) <= 64 and _UID_RE.fullmatch(uid) is not None  # type: ignore[arg-type]


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Spool:
    """A spool directory. `min_free_mb` is the watermark below which writes are refused."""

    def __init__(self, root: Path, *, min_free_mb: int = 512) -> None:
        self.root = Path(root)
        self.min_free_bytes = int(min_free_mb) * 1024 * 1024
        self.incoming = self.root / INCOMING

    def ensure(self) -> None:
        self.incoming.mkdir(parents=True, exist_ok=True)

    def path_for(self, sop_uid: str) -> Path:
        if not valid_uid(sop_uid):
            raise ValueError(f"not a DICOM UID: {sop_uid!r}")
        return self.root / f"{sop_uid}.dcm"

    def free_bytes(self) -> int:
        return shutil.disk_usage(self.root if self.root.exists() else self.root.parent).free

    def check_room(self, size: int = 0) -> None:
        """Raise SpoolFullError unless the spool is writable and stays above the watermark after `size` bytes."""
        try:
            self.ensure()
        except OSError as exc:
            raise SpoolFullError(f"the spool {self.root} cannot be created: {exc.strerror or exc}") from exc
        if not os.access(self.incoming, os.W_OK):
            raise SpoolFullError(f"the spool {self.root} is not writable")
        free = self.free_bytes()
        if free - size < self.min_free_bytes:
            raise SpoolFullError(
                f"the spool {self.root} has {free // 2**20} MiB free, below the {self.min_free_bytes // 2**20} MiB"
                " watermark"
            )

    def write(self, sop_uid: str, data: bytes) -> Path:
        """Durably store one instance under its SOP Instance UID; returns the final path."""
        final = self.path_for(sop_uid)
        self.check_room(len(data))
        try:
            write_atomically(final, data, tmp_dir=self.incoming, tmp_prefix=sop_uid + ".")
        except OSError as exc:
            raise SpoolFullError(f"cannot write to the spool {self.root}: {exc.strerror or exc}") from exc
        _fsync_dir(self.root)
        return final

    def create(self, sop_uid: str, data: bytes) -> Path | None:
        """Durably store a first instance under its SOP Instance UID; None, writing nothing, when the spool already
        holds that UID (the intake then decides: a resend or a conflict)."""
        final = self.path_for(sop_uid)
        if os.path.lexists(final):
            return None
        self.check_room(len(data))
        try:
            fd, tmp = tempfile.mkstemp(prefix=sop_uid + ".", suffix=".tmp", dir=self.incoming)
            try:
                with os.fdopen(fd, "wb") as fh:
                    fh.write(data)
                    fh.flush()
                    os.fsync(fh.fileno())
                try:
                    os.link(tmp, final)  # unlike a rename, fails when the name is taken
                except FileExistsError:
                    return None
                except OSError as exc:
                    if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP):
                        raise
                    if os.path.lexists(final):  # a file system without hard links: a check, then a rename
                        return None
                    os.replace(tmp, final)
            finally:
                Path(tmp).unlink(missing_ok=True)
        except OSError as exc:
            raise SpoolFullError(f"cannot write to the spool {self.root}: {exc.strerror or exc}") from exc
        _fsync_dir(self.root)
        return final

    def quarantine(self, sop_uid: str, tag: str, data: bytes) -> Path:
        """Durably keep a refused instance as `.conflicts/<UID>.<tag>.dcm` (never listed by `instances`)."""
        folder = self.root / CONFLICTS
        final = folder / f"{self.path_for(sop_uid).stem}.{tag}.dcm"
        self.check_room(len(data))
        try:
            folder.mkdir(exist_ok=True)
            write_atomically(final, data, tmp_dir=self.incoming, tmp_prefix=sop_uid + ".")
            _fsync_dir(folder)
        except OSError as exc:
            raise SpoolFullError(f"cannot write to the spool {self.root}: {exc.strerror or exc}") from exc
        return final

    def instances(self) -> Iterator[Path]:
        """Every complete instance in the spool (regular `*.dcm` files only; never opens a FIFO or socket)."""
        if not self.root.is_dir():
            return
        with os.scandir(self.root) as entries:
            for entry in entries:
                if not entry.name.endswith(".dcm"):
                    continue
                try:
                    if stat.S_ISREG(entry.stat(follow_symlinks=False).st_mode):
                        yield Path(entry.path)
                except FileNotFoundError:
                    continue  # removed while listing

    def sweep_incoming(self, older_than_s: float = 3600.0) -> int:
        """Delete temp files left by a crash mid-write (never acknowledged, so nothing is lost)."""
        if not self.incoming.is_dir():
            return 0
        removed, cutoff = 0, time.time() - older_than_s
        for tmp in self.incoming.glob("*.tmp"):
            try:
                if tmp.stat().st_mtime < cutoff:
                    tmp.unlink()
                    removed += 1
            except FileNotFoundError:
                continue
        return removed
