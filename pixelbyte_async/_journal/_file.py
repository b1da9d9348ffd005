"""
The journal file on disk: its lock file, what is found at its path, connecting, creating.

A new journal is built under a temporary name and moved into place (then the
directory is synced), so the journal path either does not exist or holds a complete
journal; hard links and a left-over ``-wal`` without its database are refused here.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import stat
import sys
from pathlib import Path

from ._errors import JournalError, in_use, unusable
from ._schema import write_schema


__all__ = ["connect", "create", "existing", "lock", "refuse_hard_links", "unlock"]


def lock(path: Path, shown: Path) -> int:
    """Take an exclusive, non-blocking lock on the file *path*; return its descriptor."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        if sys.platform == "win32":  # pragma: no cover -- exercised on Windows only
            import msvcrt  # noqa: PLC0415 -- platform-specific

            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
        else:
            import fcntl  # noqa: PLC0415 -- platform-specific

            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        try:
            holder = os.read(fd, 32).decode("ascii", "replace").strip()
        finally:
            os.close(fd)
        raise in_use(shown, pid=holder) from None
    os.ftruncate(fd, 0)
    os.write(fd, str(os.getpid()).encode())
    return fd


def unlock(fd: int) -> None:
    """Release the lock taken by `lock`."""
    # Closing the descriptor releases the lock (and kill -9 does the same).
    os.close(fd)


def existing(path: Path, real: Path) -> os.stat_result | None:
    """Stat the journal file; ``None`` if it does not exist.  Refuse a directory."""
    try:
        found = real.stat()
    except FileNotFoundError:
        return None
    if stat.S_ISDIR(found.st_mode):
        raise JournalError(
            f"journal {path} is a directory; pass a --journal path to a file"
        )
    if found.st_size == 0:
        raise JournalError(
            f"journal {path} is empty (0 bytes), so its record of what earlier runs "
            "submitted and paid for is lost; move it away or pass another --journal "
            "to start fresh"
        )
    return found


def refuse_hard_links(path: Path, found: os.stat_result) -> None:
    """Refuse a journal with more than one name (see the package docstring)."""
    if found.st_nlink > 1:
        raise JournalError(
            f"journal {path} has {found.st_nlink} hard links, and SQLite finds a "
            "journal's -wal file by name, so the names can disagree; remove the "
            "other links (or use a copy) and run again"
        )


def connect(path: Path, real: Path, *, wait: float) -> sqlite3.Connection:
    """Connect to *real* (shown as *path*), waiting *wait* seconds for locks."""
    try:
        return sqlite3.connect(real, check_same_thread=False, timeout=wait)
    except sqlite3.Error as exc:
        raise unusable(path, exc) from exc


def _remove_database(path: Path) -> None:
    for suffix in ("", "-wal", "-shm", "-journal"):
        path.with_name(path.name + suffix).unlink(missing_ok=True)


def _sync_directory(directory: Path) -> None:
    """Make a rename in *directory* durable, where the platform allows it."""
    if sys.platform == "win32":  # pragma: no cover -- no directory fsync on Windows
        return
    with contextlib.suppress(OSError):  # some file systems refuse it; best effort
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def create(path: Path, real: Path) -> None:
    """
    Create a complete, empty journal at *real* (shown as *path*).

    It is built under a temporary name and renamed into place, so a crash never
    leaves a half-made (or empty) journal behind that the next run must refuse.
    """
    wal = real.with_name(real.name + "-wal")
    if wal.exists() and wal.stat().st_size > 0:
        raise JournalError(
            f"journal {path} does not exist but its write-ahead log {wal} does (it "
            "may hold an earlier run's record); put the journal back, or move the "
            "-wal file away to start fresh"
        )
    temporary = real.with_name(f".{real.name}.{os.getpid()}.new")
    _remove_database(temporary)  # left by a crashed process with the same pid
    try:
        conn = sqlite3.connect(temporary)
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")
            write_schema(conn)
        finally:
            conn.close()  # checkpoints: the database is complete in one file
        temporary.replace(real)
    except sqlite3.Error as exc:
        raise unusable(path, exc) from exc
    finally:
        _remove_database(temporary)
    _sync_directory(real.parent)
