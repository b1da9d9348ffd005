"""
The batch journal: a crash-safe record of every input of a batch, in SQLite.

One row per input, written *before* anything is paid for, so a run killed at any
moment (``kill -9`` included) can be resumed without paying twice::

    planned ──> submitting ──> submitted ──> completed ──> downloaded
       ^            │                   ├──> failed  (refunded; retried on request)
       └────────────┘                   └──> cancelled
     (no job was created)     needs_attention: a submit of unknown fate that could
                              not be matched to one job; never re-sent automatically

``submitting`` is written (with the attempt's start time) right before the submit
request is sent and ``submitted`` (with the job id and cost) as soon as it returns,
so a row left in ``submitting`` is exactly "fate unknown": the next run reconciles
it with the API instead of re-sending it.

The database uses WAL mode with ``synchronous=FULL`` (every commit is on disk
before the request it guards is sent).  All blocking calls run in a worker thread,
one at a time, never on the event loop.  A lock file (``<journal>.lock``) keeps a
second process from driving the same journal.  The journal never holds the API key.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import sqlite3
import sys
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, Literal, TypeAlias, TypeVar

import anyio
import anyio.to_thread
import attrs

from ._errors import PixelByteError


__all__ = ["SCHEMA_VERSION", "STATES", "Journal", "JournalError", "JournalRow"]

_T = TypeVar("_T")

#: The schema this module reads and writes (stored in ``meta.schema_version``).
SCHEMA_VERSION = 1

State: TypeAlias = Literal[
    "planned",
    "submitting",
    "submitted",
    "completed",
    "failed",
    "cancelled",
    "downloaded",
    "needs_attention",
]

#: Every row state, in lifecycle order.
STATES: tuple[State, ...] = (
    "planned",
    "submitting",
    "submitted",
    "completed",
    "failed",
    "cancelled",
    "downloaded",
    "needs_attention",
)

_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS meta (
    name  TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS items (
    key               TEXT PRIMARY KEY,
    position          INTEGER NOT NULL,
    model             TEXT NOT NULL,
    input_json        TEXT NOT NULL,
    state             TEXT NOT NULL CHECK (state IN ({", ".join(repr(s) for s in STATES)})),
    started_at        REAL,
    job_id            TEXT,
    cost_micro_cents  INTEGER,
    cost_known        INTEGER NOT NULL DEFAULT 0,
    job_status        TEXT,
    output_url        TEXT,
    output_path       TEXT,
    output_bytes      INTEGER,
    attempts          INTEGER NOT NULL DEFAULT 0,
    error             TEXT,
    candidates_json   TEXT,
    created_at        REAL NOT NULL,
    updated_at        REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS attempts (
    id               INTEGER PRIMARY KEY AUTOINCREMENT,
    key              TEXT NOT NULL REFERENCES items (key),
    started_at       REAL NOT NULL,
    sent_input_json  TEXT,
    job_id           TEXT,
    outcome          TEXT NOT NULL DEFAULT 'unknown'
);
CREATE INDEX IF NOT EXISTS attempts_by_key ON attempts (key);
"""


class JournalError(PixelByteError):
    """
    The batch journal cannot be used.

    Another process holds it, a newer version of this SDK wrote it, or it is not a
    journal at all.

    .. versionadded:: 0.2.0
    """


@attrs.frozen(kw_only=True)
class JournalRow:
    """
    One input of a batch as the journal last recorded it.

    Attributes:
        key: The input's stable key (its ``id``, or a hash of model and input).
        position: Its index in the batch when it was first planned.
        model: The model slug.
        input: The input as given (local frames as paths or ``sha256:`` digests).
        state: Where the row is in its lifecycle (see the module docstring).
        started_at: Unix time the latest submit attempt began, if any.
        job_id: The job, once known.
        cost_micro_cents: What the job was charged (or its estimate when the
            charge is unknown, see *cost_known*).
        cost_known: Whether *cost_micro_cents* came from the API.
        job_status: The job's status as last seen.
        output_url: The output URL, once completed.
        output_path: Where the output was written.
        output_bytes: Its size, to tell an intact file from a damaged one.
        attempts: How many submit attempts were made.
        error: The latest problem, in words.
        candidates: Job ids that could belong to a ``needs_attention`` row.

    """

    key: str
    position: int
    model: str
    input: dict[str, Any]
    state: State
    started_at: float | None = None
    job_id: str | None = None
    cost_micro_cents: int | None = None
    cost_known: bool = False
    job_status: str | None = None
    output_url: str | None = None
    output_path: str | None = None
    output_bytes: int | None = None
    attempts: int = 0
    error: str | None = None
    candidates: tuple[str, ...] = ()


_COLUMNS = (
    "key, position, model, input_json, state, started_at, job_id, cost_micro_cents, "
    "cost_known, job_status, output_url, output_path, output_bytes, attempts, error, "
    "candidates_json"
)


def _row(values: tuple[Any, ...]) -> JournalRow:
    (
        key,
        position,
        model,
        input_json,
        state,
        started_at,
        job_id,
        cost,
        cost_known,
        job_status,
        output_url,
        output_path,
        output_bytes,
        attempts,
        error,
        candidates_json,
    ) = values
    return JournalRow(
        key=key,
        position=position,
        model=model,
        input=json.loads(input_json),
        state=state,
        started_at=started_at,
        job_id=job_id,
        cost_micro_cents=cost,
        cost_known=bool(cost_known),
        job_status=job_status,
        output_url=output_url,
        output_path=output_path,
        output_bytes=output_bytes,
        attempts=attempts,
        error=error,
        candidates=tuple(json.loads(candidates_json)) if candidates_json else (),
    )


def _dumps(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def _lock(path: Path) -> int:
    """Take an exclusive, non-blocking lock on *path*; return its descriptor."""
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
        who = f" (pid {holder})" if holder else ""
        raise JournalError(
            f"journal {path.with_suffix('')} is in use by another process{who}; "
            "one batch run per journal at a time"
        ) from None
    os.ftruncate(fd, 0)
    os.write(fd, str(os.getpid()).encode())
    return fd


def _unlock(fd: int) -> None:
    # Closing the descriptor releases the lock (and kill -9 does the same).
    os.close(fd)


class Journal:
    """
    A batch's durable record (see the module docstring); internal to `run_batch`.

    Open with `Journal.open` and close with `aclose`.  Every method runs its SQL
    in a worker thread, one call at a time, each in its own transaction.
    """

    def __init__(
        self, conn: sqlite3.Connection, path: Path | None, lock_fd: int | None
    ) -> None:
        self._conn = conn
        self.path = path
        self._lock_fd = lock_fd
        self._limiter = anyio.CapacityLimiter(1)
        self._closed = False

    # -- lifecycle -------------------------------------------------------------------

    @classmethod
    async def open(
        cls, path: str | os.PathLike[str] | None, *, readonly: bool = False
    ) -> Journal:
        """
        Open (or create) the journal at *path*; ``None`` keeps it in memory.

        Args:
            path: The SQLite file.  ``None``: an in-memory journal (nothing survives).
            readonly: Only read (for dry runs): no lock, no file created, no writes.

        Raises:
            JournalError: In use by another process, newer schema, or not a journal.

        """
        target = None if path is None else Path(path)
        return await anyio.to_thread.run_sync(cls._open_sync, target, readonly)

    @classmethod
    def _open_sync(cls, path: Path | None, readonly: bool) -> Journal:
        if path is None or (readonly and not path.exists()):
            conn = sqlite3.connect(":memory:", check_same_thread=False)
            journal = cls(conn, path, None)
            journal._init_schema()
            return journal
        lock_fd = None
        if not readonly:
            path.parent.mkdir(parents=True, exist_ok=True)
            lock_fd = _lock(path.with_name(path.name + ".lock"))
        try:
            conn = sqlite3.connect(path, check_same_thread=False, timeout=30)
        except sqlite3.Error as exc:
            if lock_fd is not None:
                _unlock(lock_fd)
            raise JournalError(f"cannot open journal {path}: {exc}") from exc
        journal = cls(conn, path, lock_fd)
        try:
            if not readonly:
                conn.execute("PRAGMA journal_mode=WAL")
                conn.execute("PRAGMA synchronous=FULL")
                journal._init_schema()
            else:
                journal._check_version()
        except sqlite3.DatabaseError as exc:
            journal._close_sync()
            raise JournalError(f"{path} is not a batch journal: {exc}") from exc
        except BaseException:
            journal._close_sync()
            raise
        return journal

    def _init_schema(self) -> None:
        with self._conn:
            self._conn.executescript(_SCHEMA)
            self._conn.execute(
                "INSERT OR IGNORE INTO meta (name, value) VALUES (?, ?), (?, ?)",
                ("schema_version", str(SCHEMA_VERSION), "created_at", str(time.time())),
            )
        self._check_version()

    def _check_version(self) -> None:
        found = self._conn.execute(
            "SELECT value FROM meta WHERE name = 'schema_version'"
        ).fetchone()
        if found is None or int(found[0]) > SCHEMA_VERSION:
            self._close_sync()
            version = "none" if found is None else found[0]
            raise JournalError(
                f"journal {self.path} has schema version {version}; this SDK reads "
                f"version {SCHEMA_VERSION} (upgrade pixelbyte-async or use a new journal)"
            )

    def _close_sync(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._conn.close()
        if self._lock_fd is not None:
            _unlock(self._lock_fd)
            self._lock_fd = None

    async def aclose(self) -> None:
        """Close the database and release the lock.  Idempotent."""
        await self._call(self._close_sync, closing=True)

    async def _call(
        self, fn: Callable[..., _T], *args: Any, closing: bool = False
    ) -> _T:
        if self._closed and not closing:
            raise JournalError("the journal is closed")
        # Not abandoned on cancellation: a write that started always finishes, so
        # the journal never disagrees with what this process believes it recorded.
        return await anyio.to_thread.run_sync(fn, *args, limiter=self._limiter)

    # -- reads -------------------------------------------------------------------------

    async def rows(self) -> dict[str, JournalRow]:
        """Return every row by key, in planning order."""
        return await self._call(self._rows_sync)

    def _rows_sync(self) -> dict[str, JournalRow]:
        cursor = self._conn.execute(f"SELECT {_COLUMNS} FROM items ORDER BY position")  # noqa: S608 -- a constant column list
        return {row.key: row for row in map(_row, cursor.fetchall())}

    async def get(self, key: str) -> JournalRow | None:
        """Return the row of *key*, if it exists."""
        return await self._call(self._get_sync, key)

    def _get_sync(self, key: str) -> JournalRow | None:
        found = self._conn.execute(
            f"SELECT {_COLUMNS} FROM items WHERE key = ?",  # noqa: S608 -- a constant column list
            (key,),
        ).fetchone()
        return None if found is None else _row(found)

    async def job_ids(self) -> set[str]:
        """Return every job id the journal knows, from every row and every attempt."""
        return await self._call(self._job_ids_sync)

    def _job_ids_sync(self) -> set[str]:
        ids = {
            r[0]
            for r in self._conn.execute(
                "SELECT job_id FROM items WHERE job_id IS NOT NULL "
                "UNION SELECT job_id FROM attempts WHERE job_id IS NOT NULL"
            )
        }
        for (candidates,) in self._conn.execute(
            "SELECT candidates_json FROM items WHERE candidates_json IS NOT NULL"
        ):
            ids.update(json.loads(candidates))
        return ids

    # -- writes --------------------------------------------------------------------------

    async def plan(
        self, entries: Iterable[tuple[str, str, Mapping[str, Any]]]
    ) -> dict[str, JournalRow]:
        """
        Add a ``planned`` row for every ``(key, model, input)`` not yet in the journal.

        Rows that exist are left alone (a ``planned`` row takes the new input).

        Returns:
            Every row by key, after the change.

        """
        items = [(key, model, _dumps(dict(value))) for key, model, value in entries]
        return await self._call(self._plan_sync, items)

    def _plan_sync(self, items: list[tuple[str, str, str]]) -> dict[str, JournalRow]:
        now = time.time()
        with self._conn:
            (start,) = self._conn.execute(
                "SELECT COALESCE(MAX(position) + 1, 0) FROM items"
            ).fetchone()
            self._conn.executemany(
                "INSERT INTO items (key, position, model, input_json, state, "
                "created_at, updated_at) VALUES (?, ?, ?, ?, 'planned', ?, ?) "
                "ON CONFLICT (key) DO UPDATE SET model = excluded.model, "
                "input_json = excluded.input_json, updated_at = excluded.updated_at "
                "WHERE items.state = 'planned' AND items.input_json != excluded.input_json",
                [
                    (key, start + n, model, value, now, now)
                    for n, (key, model, value) in enumerate(items)
                ],
            )
        return self._rows_sync()

    async def submitting(
        self, key: str, *, started_at: float, sent_input: Mapping[str, Any] | None
    ) -> None:
        """
        Record that a submit of *key* is about to be sent (its fate is unknown now).

        Args:
            key: The row.
            started_at: Unix time (the client's clock) the attempt began.
            sent_input: The exact input about to be sent (uploaded frames as URLs).

        """
        sent = None if sent_input is None else _dumps(dict(sent_input))
        await self._call(self._submitting_sync, key, started_at, sent)

    def _submitting_sync(self, key: str, started_at: float, sent: str | None) -> None:
        with self._conn:
            self._conn.execute(
                "UPDATE items SET state = 'submitting', started_at = ?, job_id = NULL, "
                "cost_micro_cents = NULL, cost_known = 0, job_status = NULL, "
                "output_url = NULL, output_path = NULL, output_bytes = NULL, "
                "error = NULL, attempts = attempts + 1, updated_at = ? WHERE key = ?",
                (started_at, time.time(), key),
            )
            self._conn.execute(
                "INSERT INTO attempts (key, started_at, sent_input_json) "
                "VALUES (?, ?, ?)",
                (key, started_at, sent),
            )

    async def submitted(
        self,
        key: str,
        *,
        job_id: str,
        cost_micro_cents: int | None,
        cost_known: bool,
        status: str,
        how: str = "submitted",
    ) -> None:
        """
        Record the job a submit created (or that reconciling found) for *key*.

        Args:
            key: The row.
            job_id: The job.
            cost_micro_cents: Its charge (or an estimate, see *cost_known*).
            cost_known: Whether the API said what it charged.
            status: The job's status.
            how: ``"submitted"``, ``"reconciled"`` (found by reconcile) or
                ``"resolved"`` (chosen by the user); kept in the attempt's history.

        """
        await self._call(
            functools.partial(
                self._submitted_sync,
                key,
                job_id=job_id,
                cost=cost_micro_cents,
                cost_known=cost_known,
                status=status,
                how=how,
            )
        )

    def _submitted_sync(
        self,
        key: str,
        *,
        job_id: str,
        cost: int | None,
        cost_known: bool,
        status: str,
        how: str,
    ) -> None:
        with self._conn:
            self._conn.execute(
                "UPDATE items SET state = 'submitted', job_id = ?, "
                "cost_micro_cents = ?, cost_known = ?, job_status = ?, error = NULL, "
                "candidates_json = NULL, updated_at = ? WHERE key = ?",
                (job_id, cost, int(cost_known), status, time.time(), key),
            )
            self._set_latest_attempt(key, job_id=job_id, outcome=how)

    def _set_latest_attempt(
        self, key: str, *, job_id: str | None, outcome: str
    ) -> None:
        self._conn.execute(
            "UPDATE attempts SET job_id = COALESCE(?, job_id), outcome = ? "
            "WHERE id = (SELECT MAX(id) FROM attempts WHERE key = ?)",
            (job_id, outcome, key),
        )

    async def unsubmitted(self, key: str, *, error: str | None) -> None:
        """Record that no job was created for *key* (back to ``planned``)."""
        await self._call(self._unsubmitted_sync, key, error)

    def _unsubmitted_sync(self, key: str, error: str | None) -> None:
        with self._conn:
            self._conn.execute(
                "UPDATE items SET state = 'planned', job_id = NULL, "
                "cost_micro_cents = NULL, cost_known = 0, job_status = NULL, "
                "error = ?, candidates_json = NULL, updated_at = ? WHERE key = ?",
                (error, time.time(), key),
            )
            self._set_latest_attempt(key, job_id=None, outcome="no_job")

    async def status(
        self,
        key: str,
        *,
        status: str,
        output_url: str | None = None,
        error: str | None = None,
    ) -> None:
        """
        Record the job's latest *status* (terminal ones move the row's state).

        Args:
            key: The row.
            status: ``pending``, ``processing``, ``completed``, ``failed`` …
            output_url: The output URL, once completed.
            error: Why the job failed, in words.

        """
        await self._call(self._status_sync, key, status, output_url, error)

    def _status_sync(
        self, key: str, status: str, output_url: str | None, error: str | None
    ) -> None:
        state = status if status in {"completed", "failed", "cancelled"} else None
        with self._conn:
            self._conn.execute(
                "UPDATE items SET job_status = ?, "
                "state = CASE WHEN ? IS NULL OR state = 'downloaded' THEN state "
                "ELSE ? END, "
                "output_url = COALESCE(?, output_url), error = ?, updated_at = ? "
                "WHERE key = ?",
                (status, state, state, output_url, error, time.time(), key),
            )

    async def downloaded(self, key: str, *, path: str, size: int) -> None:
        """Record that the output of *key* was written to *path* (*size* bytes)."""
        await self._call(self._downloaded_sync, key, path, size)

    def _downloaded_sync(self, key: str, path: str, size: int) -> None:
        with self._conn:
            self._conn.execute(
                "UPDATE items SET state = 'downloaded', output_path = ?, "
                "output_bytes = ?, error = NULL, updated_at = ? WHERE key = ?",
                (path, size, time.time(), key),
            )

    async def needs_attention(
        self, key: str, *, reason: str, candidates: Iterable[str] = ()
    ) -> None:
        """
        Park *key*: a submit of unknown fate that could not be matched safely.

        The row is never re-sent automatically; *candidates* (job ids that may be
        its job) are kept so no paid job is lost track of.
        """
        await self._call(self._attention_sync, key, reason, _dumps(sorted(candidates)))

    def _attention_sync(self, key: str, reason: str, candidates: str) -> None:
        with self._conn:
            self._conn.execute(
                "UPDATE items SET state = 'needs_attention', error = ?, "
                "candidates_json = ?, updated_at = ? WHERE key = ?",
                (reason, candidates, time.time(), key),
            )
            self._set_latest_attempt(key, job_id=None, outcome="needs_attention")

    async def set_state(self, key: str, state: State, *, error: str | None) -> None:
        """Move *key* to *state* directly (repairs and tests)."""
        await self._call(self._set_state_sync, key, state, error)

    def _set_state_sync(self, key: str, state: State, error: str | None) -> None:
        with self._conn:
            self._conn.execute(
                "UPDATE items SET state = ?, error = ?, updated_at = ? WHERE key = ?",
                (state, error, time.time(), key),
            )


def read_rows(path: str | os.PathLike[str]) -> dict[str, JournalRow]:
    """
    Read a journal file synchronously (for inspection and tests); no lock taken.

    Raises:
        JournalError: *path* is not a journal.

    """
    with contextlib.closing(sqlite3.connect(path)) as conn:
        try:
            cursor = conn.execute(f"SELECT {_COLUMNS} FROM items ORDER BY position")  # noqa: S608 -- a constant column list
        except sqlite3.DatabaseError as exc:
            raise JournalError(f"{path} is not a batch journal: {exc}") from exc
        return {row.key: row for row in map(_row, cursor.fetchall())}
