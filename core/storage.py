"""Checks on local directories the proxy writes to, for one clear line at start-up.

Used by gunicorn.conf.py (in the master, before any worker starts) and by the
write-ahead buffer when a worker opens it. Standard library only: the master must
not import what the gevent workers patch later.
"""

from __future__ import annotations

import errno
import os
import secrets
from pathlib import Path

from core.settings import ConfigError

#: A directory with less free space than this cannot take even one request: refuse to start.
MIN_FREE_BYTES = 1 << 20


class DiskFull(ConfigError):
    """check_writable_dir's error when the directory is usable but its disk is full: a
    worker can wait for space (and refuse meanwhile) where the master refuses to start."""


def write_atomically(path: Path, data: bytes | bytearray) -> None:
    """Write `data` to a temporary name beside `path`, fsync it, rename it into place: a
    reader sees the whole file or none of it. Raises OSError (the temporary file removed)."""
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except OSError:
        tmp.unlink(missing_ok=True)
        raise


def free_bytes(path: str | Path) -> int:
    """Free bytes for an unprivileged writer on the file system holding `path` (or its
    nearest existing parent)."""
    probe = Path(path).absolute()
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    stats = os.statvfs(probe)
    return stats.f_bavail * stats.f_frsize


def check_writable_dir(path: str, variable: str, min_free: int = MIN_FREE_BYTES) -> None:
    """Create `path` if missing and prove it takes `min_free` bytes (written, fsynced and
    removed). Raises ConfigError with one line naming `variable` when the directory is
    read-only, not a directory, or its disk is full (DiskFull, a ConfigError)."""
    where = f"{variable.upper()}={path!r}"
    probe = Path(path) / f".probe-{os.getpid()}"
    try:
        Path(path).mkdir(parents=True, exist_ok=True)
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            _reserve(fd, min_free)
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError as exc:
        error = DiskFull if is_disk_full(exc) else ConfigError
        raise error(f"{where} cannot be used: {_reason(exc)}") from None
    finally:
        try:
            probe.unlink()
        except OSError:
            pass


def _reserve(fd: int, size: int) -> None:
    """Allocate real blocks (a sparse write would not notice a full disk)."""
    try:
        os.posix_fallocate(fd, 0, size)
        return
    except AttributeError:  # pragma: no cover - macOS
        pass
    except OSError as exc:
        if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL):
            raise
    os.write(fd, b"\0" * size)


def is_disk_full(exc: OSError) -> bool:
    return exc.errno in (errno.ENOSPC, errno.EDQUOT)


def _reason(exc: OSError) -> str:
    if is_disk_full(exc):
        return "the disk is full (no space left on device)"
    if exc.errno == errno.EROFS:
        return "the file system is read-only"
    if exc.errno in (errno.EACCES, errno.EPERM):
        return "permission denied"
    if exc.errno in (errno.ENOTDIR, errno.EEXIST):
        return "it is not a directory"
    return exc.strerror or str(exc)
