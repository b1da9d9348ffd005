"""
Which ledger a client uses: ``PixelByte(ledger=...)``, ``$PIXELBYTE_LEDGER``, or the default.
"""

from __future__ import annotations

import hashlib
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TypeAlias

from ._memory import MemoryLedger
from ._store import SubmitLedger


__all__ = [
    "DEFAULT_RETENTION",
    "LEDGER_ENV",
    "LedgerSpec",
    "account_id",
    "default_ledger_path",
    "ledger_for",
]

#: The environment variable naming the ledger file (``:memory:``: none shared).
LEDGER_ENV = "PIXELBYTE_LEDGER"
#: How long a ledger keeps what it records (seconds): a day, so that an audit
#: of the last hours sees every attempt of them.
DEFAULT_RETENTION = 86_400.0

#: What ``PixelByte(ledger=...)`` takes: a file, ``None`` (memory), or a ledger.
LedgerSpec: TypeAlias = str | os.PathLike[str] | SubmitLedger | None


def account_id(api_key: str | None) -> str:
    """A stable id of the account behind *api_key*: a hash, never the key."""
    if not api_key:
        return "anonymous"
    digest = hashlib.sha256(b"pixelbyte-async ledger\0" + api_key.encode())
    return digest.hexdigest()[:16]


def _state_home() -> Path:
    """The platform's directory for an application's state."""
    if sys.platform == "win32":  # pragma: no cover -- exercised on Windows only
        base = os.environ.get("LOCALAPPDATA") or str(Path.home() / "AppData" / "Local")
        return Path(base)
    if sys.platform == "darwin":  # pragma: no cover -- exercised on macOS only
        return Path.home() / "Library" / "Application Support"
    return Path(os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state")


def default_ledger_path(api_key: str | None) -> Path:
    """
    Where the ledger of *api_key*'s account is kept when nothing else is said.

    ``$XDG_STATE_HOME/pixelbyte-async/ledger-<account id>.sqlite3`` on Linux
    (``~/.local/state/...``), the user's Application Support folder on macOS and
    ``%LOCALAPPDATA%`` on Windows: one file per account, named by a hash of the
    key (never the key).
    """
    return _state_home() / "pixelbyte-async" / f"ledger-{account_id(api_key)}.sqlite3"


def ledger_for(
    spec: LedgerSpec,
    *,
    api_key: str | None,
    default: bool,
    memory_retention: float,
    shared: Callable[[str], SubmitLedger] | None = None,
) -> tuple[SubmitLedger, bool]:
    """
    The ledger a client with *api_key* uses, and whether the client owns it.

    Args:
        spec: ``PixelByte(ledger=...)``: a path, ``None`` (memory only), or a
            ledger object (shared, never closed by the client).
        api_key: The client's key (only its hash is used).
        default: Whether *spec* was left out: then ``$PIXELBYTE_LEDGER`` (a path,
            or ``:memory:``), else `default_ledger_path`.
        memory_retention: How long a ledger in memory keeps entries (the client's
            claim window: a long-running process must not grow).
        shared: The ledger of a hub the client uses, by account id: the default
            when *spec* was left out (every machine of the hub sees it).

    """
    if default and shared is not None:
        return shared(account_id(api_key)), False
    if default:
        spec = os.environ.get(LEDGER_ENV, "").strip() or default_ledger_path(api_key)
    if spec is None or (
        isinstance(spec, str | os.PathLike) and os.fspath(spec) == ":memory:"
    ):
        return MemoryLedger(retention=memory_retention), True
    if isinstance(spec, str | os.PathLike):
        from ._sqlite import SqliteLedger  # noqa: PLC0415 -- sqlite3 loads on first use

        ledger = SqliteLedger(
            Path(spec).expanduser(),
            account=account_id(api_key),
            retention=DEFAULT_RETENTION,
        )
        return ledger, True
    return spec, False
