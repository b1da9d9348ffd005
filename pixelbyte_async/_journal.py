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
one at a time, never on the event loop.  The journal never holds the API key.

One writer per journal file, however it is named, held until the writer closes it or
dies (``kill -9`` included):

* a lock file next to the *resolved* path (``<real path>.lock``), so a symlink or a
  ``x/../`` spelling finds the same lock;
* in the database itself: the writer opens with an exclusive SQLite lock, which only
  succeeds while no other connection has the file open, and then keeps its shared
  lock (WAL mode) for as long as it is open.  This holds even if the lock file is
  deleted or the directory is reached through another mount.  Readers (dry runs)
  still get in; they copy the journal into memory and let go of the file at once.
* hard-linked journals are refused: SQLite finds the ``-wal`` file by name, so two
  names of one database can each see a different log.

Only our own journals are used: an existing file must be an SQLite database with
our ``meta`` table.  An empty file (a truncated journal), a foreign database, or a
left-over ``-wal`` without its database is refused, never taken for a fresh
journal.  A new journal is built under a temporary name and moved into place, so
the journal path either does not exist or holds a complete journal.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import sqlite3
import stat
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
    outcome          TEXT NOT NULL DEFAULT 'unknown',
    nonce            TEXT
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
        attempt: The nonce of the latest submit attempt (the ``pb_attempt`` of its
            ``webhookUrl``), journaled before it was sent.

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
    attempt: str | None = None


_COLUMNS = (
    "key, position, model, input_json, state, started_at, job_id, cost_micro_cents, "
    "cost_known, job_status, output_url, output_path, output_bytes, attempts, error, "
    "candidates_json, {nonce}"
)
_LATEST_NONCE = (
    "(SELECT nonce FROM attempts WHERE attempts.key = items.key "
    "ORDER BY attempts.id DESC LIMIT 1)"
)


def _columns(conn: sqlite3.Connection) -> str:
    """The row columns; journals written before attempt nonces read them as NULL."""
    names = {r[1] for r in conn.execute("PRAGMA table_info(attempts)")}
    return _COLUMNS.format(nonce=_LATEST_NONCE if "nonce" in names else "NULL")


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
        nonce,
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
        attempt=nonce,
    )


def _dumps(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def _in_use(path: Path, *, pid: str = "", other_program: bool = False) -> JournalError:
    who = f" (pid {pid})" if pid else ""
    also = " (or open in another program)" if other_program else ""
    return JournalError(
        f"journal {path} is in use by another run{who}{also}; wait for that run to "
        "end (or stop it), or pass another --journal to run a separate batch"
    )


def _not_ours(path: Path, what: str) -> JournalError:
    return JournalError(
        f"{path} is not a batch journal ({what}); move it away or pass another "
        "--journal to start fresh"
    )


def _unusable(path: Path, exc: OSError | sqlite3.Error) -> JournalError:
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


def _busy(exc: sqlite3.Error) -> bool:
    """Whether *exc* says another connection holds a conflicting lock."""
    code = getattr(exc, "sqlite_errorcode", 0) & 0xFF
    return code in {sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED}


def _lock(path: Path, shown: Path) -> int:
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
        raise _in_use(shown, pid=holder) from None
    os.ftruncate(fd, 0)
    os.write(fd, str(os.getpid()).encode())
    return fd


def _unlock(fd: int) -> None:
    # Closing the descriptor releases the lock (and kill -9 does the same).
    os.close(fd)


def _existing(path: Path, real: Path) -> os.stat_result | None:
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


def _refuse_hard_links(path: Path, found: os.stat_result) -> None:
    if found.st_nlink > 1:
        raise JournalError(
            f"journal {path} has {found.st_nlink} hard links, and SQLite finds a "
            "journal's -wal file by name, so the names can disagree; remove the "
            "other links (or use a copy) and run again"
        )


def _connect(path: Path, real: Path, *, wait: float) -> sqlite3.Connection:
    try:
        return sqlite3.connect(real, check_same_thread=False, timeout=wait)
    except sqlite3.Error as exc:
        raise _unusable(path, exc) from exc


def _write_schema(conn: sqlite3.Connection) -> None:
    with conn:
        conn.executescript(_SCHEMA)
        if "nonce" not in {r[1] for r in conn.execute("PRAGMA table_info(attempts)")}:
            # A journal from before attempt nonces: add the column, keep the rows.
            conn.execute("ALTER TABLE attempts ADD COLUMN nonce TEXT")
        conn.execute(
            "INSERT OR IGNORE INTO meta (name, value) VALUES (?, ?), (?, ?)",
            ("schema_version", str(SCHEMA_VERSION), "created_at", str(time.time())),
        )


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


def _create(path: Path, real: Path) -> None:
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
            _write_schema(conn)
        finally:
            conn.close()  # checkpoints: the database is complete in one file
        temporary.replace(real)
    except sqlite3.Error as exc:
        raise _unusable(path, exc) from exc
    finally:
        _remove_database(temporary)
    _sync_directory(real.parent)


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
            readonly: Only read (for dry runs): no lock, no file created, no writes;
                the file is read into memory at once and not held open.

        Raises:
            JournalError: In use by another run, newer schema, not a journal (an
                empty file included), or the place cannot hold a journal.

        """
        target = None if path is None else Path(path)
        return await anyio.to_thread.run_sync(cls._open_sync, target, readonly)

    @classmethod
    def _open_sync(cls, path: Path | None, readonly: bool) -> Journal:
        if path is None:
            return cls._in_memory(None)
        try:
            if readonly:
                return cls._open_reader(path)
            return cls._open_writer(path)
        except OSError as exc:
            raise _unusable(path, exc) from exc

    @classmethod
    def _in_memory(cls, path: Path | None) -> Journal:
        conn = sqlite3.connect(":memory:", check_same_thread=False)
        _write_schema(conn)
        return cls(conn, path, None)

    @classmethod
    def _open_reader(cls, path: Path) -> Journal:
        real = Path(os.path.realpath(path))
        found = _existing(path, real)
        if found is None:
            return cls._in_memory(path)  # a dry run of a new journal: nothing yet
        _refuse_hard_links(path, found)
        # A reader may wait out the moment a writer takes ownership.
        source = cls(_connect(path, real, wait=5), path, None)
        source._set_up(writer=False)
        # Read a snapshot and let go of the file at once: while any connection has
        # it open, no run can take ownership of it (see _take_ownership).
        snapshot = sqlite3.connect(":memory:", check_same_thread=False)
        try:
            source._conn.backup(snapshot)
        except sqlite3.Error as exc:
            snapshot.close()
            raise _unusable(path, exc) from exc
        finally:
            source._close_sync()
        return cls(snapshot, path, None)

    @classmethod
    def _open_writer(cls, path: Path) -> Journal:
        real = Path(os.path.realpath(path))
        _existing(path, real)  # a directory, an empty file: refuse before any change
        real.parent.mkdir(parents=True, exist_ok=True)
        lock_fd = _lock(real.with_name(real.name + ".lock"), path)
        try:
            found = _existing(path, real)
            if found is None:
                _create(path, real)
            else:
                _refuse_hard_links(path, found)
            # A writer never waits: the file being busy means someone else has it.
            journal = cls(_connect(path, real, wait=0), path, lock_fd)
        except BaseException:
            _unlock(lock_fd)
            raise
        journal._set_up(writer=True)
        return journal

    def _set_up(self, *, writer: bool) -> None:
        """Check a newly connected file is our journal; as *writer*, own it."""
        assert self.path is not None  # noqa: S101 -- only files are set up
        try:
            self._check_version()
            if writer:
                self._take_ownership()
                self._conn.execute("PRAGMA journal_mode=WAL")
                self._conn.execute("PRAGMA synchronous=FULL")
                _write_schema(self._conn)  # tables a journal of this version lacks
            self._conn.execute("PRAGMA busy_timeout = 30000")
        except BaseException as exc:
            self._close_sync()
            if isinstance(exc, sqlite3.Error):
                raise _unusable(self.path, exc) from exc
            raise

    def _check_version(self) -> None:
        """Refuse anything but a journal this SDK can read (read-only check)."""
        assert self.path is not None  # noqa: S101 -- only files are checked
        try:
            found = self._conn.execute(
                "SELECT value FROM meta WHERE name = 'schema_version'"
            ).fetchone()
        except sqlite3.DatabaseError as exc:
            if _busy(exc):
                raise _in_use(self.path, other_program=True) from exc
            raise _not_ours(self.path, str(exc)) from exc
        if found is None or not str(found[0]).isdigit():
            raise _not_ours(self.path, "no schema version")
        if int(found[0]) > SCHEMA_VERSION:
            raise JournalError(
                f"journal {self.path} has schema version {found[0]}; this SDK reads "
                f"version {SCHEMA_VERSION} (upgrade pixelbyte-async or use a new journal)"
            )

    def _take_ownership(self) -> None:
        """
        Prove no other connection has the database open, and stay its writer.

        An exclusive lock is granted only while no other connection (of any
        process, under any name) holds the file; dropping back to normal locking
        leaves this connection holding its shared lock in WAL mode until it
        closes, so every later writer's exclusive attempt fails.
        """
        assert self.path is not None  # noqa: S101 -- only files are owned
        self._conn.execute("PRAGMA locking_mode=EXCLUSIVE")
        try:
            self._conn.execute("BEGIN EXCLUSIVE")
        except sqlite3.OperationalError as exc:
            if _busy(exc):
                raise _in_use(self.path, other_program=True) from exc
            raise
        self._conn.execute("PRAGMA locking_mode=NORMAL")
        self._conn.commit()

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
        cursor = self._conn.execute(
            f"SELECT {_columns(self._conn)} FROM items ORDER BY position"  # noqa: S608 -- a constant column list
        )
        return {row.key: row for row in map(_row, cursor.fetchall())}

    async def get(self, key: str) -> JournalRow | None:
        """Return the row of *key*, if it exists."""
        return await self._call(self._get_sync, key)

    def _get_sync(self, key: str) -> JournalRow | None:
        found = self._conn.execute(
            f"SELECT {_columns(self._conn)} FROM items WHERE key = ?",  # noqa: S608 -- a constant column list
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
        self,
        key: str,
        *,
        started_at: float,
        sent_input: Mapping[str, Any] | None,
        attempt: str | None = None,
    ) -> None:
        """
        Record that a submit of *key* is about to be sent (its fate is unknown now).

        Args:
            key: The row.
            started_at: Unix time (the client's clock) the attempt began; the
                settle horizon of a submit of unknown fate counts from it.
            sent_input: The exact input about to be sent (uploaded frames as URLs).
            attempt: The attempt's nonce (``pb_attempt``), if webhooks tag it.

        """
        sent = None if sent_input is None else _dumps(dict(sent_input))
        await self._call(self._submitting_sync, key, started_at, sent, attempt)

    def _submitting_sync(
        self, key: str, started_at: float, sent: str | None, attempt: str | None
    ) -> None:
        with self._conn:
            self._conn.execute(
                "UPDATE items SET state = 'submitting', started_at = ?, job_id = NULL, "
                "cost_micro_cents = NULL, cost_known = 0, job_status = NULL, "
                "output_url = NULL, output_path = NULL, output_bytes = NULL, "
                "error = NULL, attempts = attempts + 1, updated_at = ? WHERE key = ?",
                (started_at, time.time(), key),
            )
            self._conn.execute(
                "INSERT INTO attempts (key, started_at, sent_input_json, nonce) "
                "VALUES (?, ?, ?, ?)",
                (key, started_at, sent, attempt),
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
            cursor = conn.execute(
                f"SELECT {_columns(conn)} FROM items ORDER BY position"  # noqa: S608 -- a constant column list
            )
        except sqlite3.DatabaseError as exc:
            raise JournalError(f"{path} is not a batch journal: {exc}") from exc
        return {row.key: row for row in map(_row, cursor.fetchall())}
