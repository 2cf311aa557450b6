"""Reading an image file safely: only regular files are ever opened for reading, and never in a way that blocks.

A folder from a hospital export can hold anything: a named pipe (opening it for reading blocks until a writer
comes, which may be never), a socket, a device node, a symlink to nothing, a file deleted while we walk. Each of
these gets a short reason instead of a hang. Walkers call `not_regular_reason` (stat only, nothing opened);
readers call `read_regular_file`, which also survives a file swapped for a FIFO between the walk and the read.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

from services.config import DEFAULT_MAX_PIXELS
from services.errors import DecodeError
from services.imaging.reasons import DecodeReason

# O_NONBLOCK: opening a FIFO for reading returns at once instead of waiting for a writer. O_NOCTTY: a terminal
# device never becomes our controlling terminal. Both are no-ops for the regular files we actually read.
_OPEN_FLAGS = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0) | getattr(os, "O_CLOEXEC", 0)
_CHUNK = 1 << 20


def kind_reason(mode: int) -> str | None:
    """Why a file of this st_mode is not read ("named pipe (FIFO)", "socket", "device", ...); None if regular."""
    if stat.S_ISREG(mode):
        return None
    if stat.S_ISFIFO(mode):
        return "named pipe (FIFO)"
    if stat.S_ISSOCK(mode):
        return "socket"
    if stat.S_ISBLK(mode) or stat.S_ISCHR(mode):
        return "device"
    if stat.S_ISDIR(mode):
        return "is a directory, not a file"
    return "not a regular file"


def _os_reason(exc: OSError, path: str | Path) -> str:
    if isinstance(exc, FileNotFoundError):
        return "broken symlink" if os.path.islink(path) else "file not found"
    if isinstance(exc, PermissionError):
        return "permission denied"
    if exc.errno == errno.ELOOP:
        return "symlink loop"
    if exc.errno == errno.ENXIO:  # opening a unix socket
        return "socket"
    return f"cannot read the file ({exc.strerror or exc})"


def not_regular_reason(path: str | Path) -> str | None:
    """Why `path` cannot be read as an image file, from stat alone (nothing is opened); None when it is a
    readable regular file (symlinks to regular files count)."""
    try:
        info = os.stat(path)
    except OSError as exc:
        return _os_reason(exc, path)
    except ValueError:  # an embedded NUL byte
        return "invalid path"
    reason = kind_reason(info.st_mode)
    if reason is None and not os.access(path, os.R_OK):
        return "permission denied"
    return reason


def _open_nonblocking(path: str | Path) -> int:
    return os.open(path, _OPEN_FLAGS)


def read_regular_file(path: str | Path, max_bytes: int | None = None) -> bytes:
    """All bytes of the regular file at `path`, or DecodeError(path, reason) without blocking.

    Opens with O_NONBLOCK and checks fstat on the open descriptor, so a FIFO, socket or device (even one that
    replaced the file after a walk) is refused, never read. `max_bytes` refuses larger files before reading
    them (and stops a file that grows past it while being read).
    """
    name = str(path)
    try:
        fd = _open_nonblocking(path)
    except OSError as exc:
        raise DecodeError(name, code=DecodeReason.UNREADABLE, reason=_os_reason(exc, path)) from None
    except ValueError:
        raise DecodeError(name, code=DecodeReason.UNREADABLE, reason="invalid path") from None
    try:
        info = os.fstat(fd)
        reason = kind_reason(info.st_mode)
        if reason is not None:
            raise DecodeError(name, code=DecodeReason.UNREADABLE, reason=reason)
        if max_bytes is not None and info.st_size > max_bytes:
            raise DecodeError(
                name,
                f"file too large ({info.st_size / 2**20:,.0f} MiB, limit {max_bytes / 2**20:,.0f})",
                code=DecodeReason.TOO_LARGE,
            )
        chunks: list[bytes] = []
        total, want = 0, info.st_size + 1  # one read for a file that does not change under us
        while chunk := os.read(fd, want):
            want = _CHUNK
            chunks.append(chunk)
            total += len(chunk)
            if max_bytes is not None and total > max_bytes:
                raise DecodeError(
                    name,
                    f"file too large (grew past {max_bytes / 2**20:,.0f} MiB while read)",
                    code=DecodeReason.TOO_LARGE,
                )
        return b"".join(chunks)
    except OSError as exc:
        raise DecodeError(name, code=DecodeReason.UNREADABLE, reason=_os_reason(exc, path)) from None
    finally:
        os.close(fd)


_BYTES_PER_PIXEL = 8
_HEADER_ALLOWANCE = 64 * 1024 * 1024


def max_file_bytes(max_pixels: int = DEFAULT_MAX_PIXELS) -> int:
    """The largest file read for an image of at most `max_pixels` pixels (headers and compression included)."""
    return max_pixels * _BYTES_PER_PIXEL + _HEADER_ALLOWANCE
