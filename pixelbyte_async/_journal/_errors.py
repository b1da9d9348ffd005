"""
`JournalError` and the words of every refusal: in use, not a journal, unusable place.

Each helper returns (never raises) the error, so the caller's ``raise ... from`` keeps
the cause it chose.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from pixelbyte_async._errors import PixelByteError


__all__ = ["JournalError", "busy", "in_use", "not_ours", "unusable"]


class JournalError(PixelByteError):
    """
    The batch journal cannot be used.

    Another process holds it, a newer version of this SDK wrote it, or it is not a
    journal at all.

    .. versionadded:: 0.2.0
    """


def in_use(path: Path, *, pid: str = "", other_program: bool = False) -> JournalError:
    """Another run (process *pid*, or another program) holds the journal."""
    who = f" (pid {pid})" if pid else ""
    also = " (or open in another program)" if other_program else ""
    return JournalError(
        f"journal {path} is in use by another run{who}{also}; wait for that run to "
        "end (or stop it), or pass another --journal to run a separate batch"
    )


def not_ours(path: Path, what: str) -> JournalError:
    """*path* is not one of our journals (*what* says why)."""
    return JournalError(
        f"{path} is not a batch journal ({what}); move it away or pass another "
        "--journal to start fresh"
    )


def unusable(path: Path, exc: OSError | sqlite3.Error) -> JournalError:
    """The place of *path* cannot hold a journal (*exc* says why)."""
    if isinstance(exc, OSError):
        reason = exc.strerror or str(exc)
        if exc.filename is not None and str(exc.filename) != str(path):
            reason += f": {exc.filename}"
    else:
        reason = str(exc)
    return JournalError(
        f"cannot use journal {path} ({reason}); pass a --journal path in a "
        "writable directory"
    )


def busy(exc: sqlite3.Error) -> bool:
    """Whether *exc* says another connection holds a conflicting lock."""
    code = getattr(exc, "sqlite_errorcode", 0) & 0xFF
    return code in {sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED}
