"""
`SqliteLedger`: the ledger every process of one machine shares, in one SQLite file.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sqlite3
import time
from collections.abc import Awaitable, Callable, Collection
from pathlib import Path
from typing import Any, TypeVar

import anyio
import anyio.to_thread
import attrs

from ._claiming import decide, overridden, state_after
from ._errors import LedgerError
from ._memory import MemoryLedger
from ._records import OPEN_STATES, STATES, Attempt, AttemptState, Claim, ClaimHow
from ._tracking import ACTIVE, DONE_STATES, TrackedRecord, TrackedState, lease_free


__all__ = ["SqliteLedger"]

log = logging.getLogger("pixelbyte_async")

_T = TypeVar("_T")

#: The schema this module reads and writes (``meta.schema_version``).
SCHEMA_VERSION = 1
#: How often old entries are deleted (seconds, by the writer's clock).
_PRUNE_EVERY = 60.0
#: How long a call waits for another process's write, at most.
_WAIT = 5.0
#: The first pause while another process writes (real seconds; it grows).
_BUSY_PAUSE = 0.002
#: How many writes between two checkpoints of the write-ahead log.
_CHECKPOINT_EVERY = 256

_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS meta (
    name  TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS attempts (
    account     TEXT NOT NULL,
    id          TEXT NOT NULL,
    model       TEXT NOT NULL,
    started_at  REAL NOT NULL,
    ends_by     REAL NOT NULL,
    state       TEXT NOT NULL CHECK (state IN ({", ".join(repr(s) for s in STATES)})),
    owner       TEXT NOT NULL,
    tagged      INTEGER NOT NULL,
    job_id      TEXT,
    list_price  INTEGER,
    offset_low  REAL,
    offset_high REAL,
    written_at  REAL NOT NULL,
    PRIMARY KEY (account, id)
);
CREATE INDEX IF NOT EXISTS attempts_by_model ON attempts (account, model, started_at);
CREATE TABLE IF NOT EXISTS claims (
    account TEXT NOT NULL,
    job_id  TEXT NOT NULL,
    attempt TEXT,
    how     TEXT NOT NULL,
    at      REAL NOT NULL,
    PRIMARY KEY (account, job_id)
);
CREATE UNIQUE INDEX IF NOT EXISTS claims_by_attempt ON claims (account, attempt)
    WHERE attempt IS NOT NULL;
CREATE TABLE IF NOT EXISTS tracked (
    account     TEXT NOT NULL,
    attempt     TEXT NOT NULL,
    model       TEXT NOT NULL,
    context     TEXT NOT NULL,
    state       TEXT NOT NULL,
    job_id      TEXT,
    owner       TEXT,
    lease_until REAL NOT NULL,
    failures    INTEGER NOT NULL,
    error       TEXT,
    created_at  REAL NOT NULL,
    updated_at  REAL NOT NULL,
    grp         TEXT NOT NULL DEFAULT 'default',
    PRIMARY KEY (account, attempt)
);
CREATE INDEX IF NOT EXISTS tracked_by_state ON tracked (account, state, created_at);
"""

_TRACKED_COLUMNS = (
    "attempt, model, context, state, job_id, owner, lease_until, failures, error, "
    "created_at, updated_at, grp"
)


def _tracked(row: tuple[Any, ...]) -> TrackedRecord:
    (
        attempt,
        model,
        context,
        state,
        job,
        owner,
        until,
        failures,
        error,
        made,
        at,
        grp,
    ) = row
    return TrackedRecord(
        attempt=attempt,
        model=model,
        context=context,
        state=state,
        job_id=job,
        owner=owner,
        lease_until=until,
        failures=failures,
        error=error,
        created_at=made,
        updated_at=at,
        group=grp,
    )


_ATTEMPT_COLUMNS = (
    "id, model, started_at, ends_by, state, owner, tagged, job_id, list_price, "
    "offset_low, offset_high"
)


def _attempt(row: tuple[Any, ...]) -> Attempt:
    (aid, model, started, ends_by, state, owner, tagged, job, price, low, high) = row
    return Attempt(
        id=aid,
        model=model,
        started_at=started,
        ends_by=ends_by,
        state=state,
        owner=owner,
        tagged=bool(tagged),
        job_id=job,
        list_price=price,
        offset=None if low is None or high is None else (low, high),
    )


def _busy(exc: sqlite3.OperationalError) -> bool:
    """Whether *exc* means another connection holds the lock."""
    return "locked" in str(exc) or "busy" in str(exc)


def _wal(conn: sqlite3.Connection, wait: float) -> None:
    """
    Put *conn* in WAL mode, waiting up to *wait* seconds for other connections.

    SQLite answers this pragma "database is locked" at once, without its busy
    handler, while another connection of a fresh file holds a lock: two
    processes (or clients) opening the file together would fall back to memory.
    Called from a worker thread only (it sleeps).
    """
    deadline = time.monotonic() + wait
    pause = _BUSY_PAUSE
    while True:
        try:
            conn.execute("PRAGMA journal_mode = WAL")
        except sqlite3.OperationalError as exc:
            if not _busy(exc) or time.monotonic() + pause > deadline:
                raise
            time.sleep(pause)
            pause = min(pause * 2, 0.05)
        else:
            return


def _attempt_once(
    conn: sqlite3.Connection, fn: Callable[[sqlite3.Connection], _T]
) -> _T:
    """Run *fn*; on any error leave no transaction open behind it."""
    try:
        return fn(conn)
    except BaseException:
        if conn.in_transaction:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
        raise


def _claim(row: tuple[Any, ...]) -> Claim:
    job_id, attempt, how, at = row
    return Claim(job_id=job_id, attempt=attempt, how=how, at=at)


class SqliteLedger:
    """
    A `SubmitLedger` in an SQLite file that every process of this machine can share.

    The file is opened (and made, with its directory) on first use, in a worker
    thread, in WAL mode so several processes read and write it at once; a claim
    is one ``BEGIN IMMEDIATE`` transaction, so one job goes to one attempt across
    processes.  Commits use ``synchronous=NORMAL``: they survive the process being
    killed (``kill -9``), not a power cut.

    Each call is a few statements on a local file, tens of microseconds: it runs
    on the event loop, where a worker thread would cost far more under load (each
    of its statements waits for the interpreter lock the busy loop holds, and a
    transaction in a thread could hold the file's lock meanwhile).  It never
    blocks there: a database another process is writing (``SQLITE_BUSY``) is
    tried again after short pauses, and the write-ahead log is checkpointed (the
    one step that syncs the disk) in a worker thread.

    One file may hold several accounts' entries (each row carries the *account*
    id, a hash of the key, never the key).  Where the file cannot be opened or
    written (a read-only disk, a serverless platform), the ledger logs one
    WARNING and goes on in memory for this process.

    Args:
        path: The SQLite file (created, with its directory, if missing).
        account: The account's id (a hash of the API key, never the key).
        retention: Seconds entries are kept (by the clock of the writers' times).

    .. versionadded:: 0.3.0
    """

    #: Its writes run on the event loop; the one wait (a pause while another
    #: process holds the file) is tied to no task (see `SubmitLedger`).
    writes_on_loop = True

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        account: str,
        retention: float = 86_400.0,
    ) -> None:
        self.path = Path(path)
        self.account = account
        self.retention = retention
        #: The connection used on the event loop (never waits for a lock).
        self._fast: sqlite3.Connection | None = None
        #: The connection used in a worker thread (it makes the tables, checkpoints).
        self._slow: sqlite3.Connection | None = None
        self._fallback: MemoryLedger | None = None
        self._opening: asyncio.Future[None] | None = None
        self._checkpoint: asyncio.Future[None] | None = None
        self._limiter = anyio.CapacityLimiter(1)
        self._pruned_at = 0.0
        self._writes = 0
        self._closed = False

    @property
    def where(self) -> str:
        """The file's path (or ``memory`` after falling back)."""
        return "memory" if self._fallback is not None else str(self.path)

    def __repr__(self) -> str:
        return f"SqliteLedger({str(self.path)!r})"

    # -- the file ------------------------------------------------------------------

    def _connect(self, *, wait: float, checked: bool = False) -> sqlite3.Connection:
        """
        Open the file (made if missing), proven a ledger of a schema we read.

        *checked*: another connection has just proven it (and made its tables).
        """
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fresh = not self.path.exists()
        if fresh:
            # Owner-only from the start: it names the account's jobs.
            os.close(os.open(self.path, os.O_CREAT | os.O_WRONLY, 0o600))
        conn = sqlite3.connect(
            self.path, timeout=wait, isolation_level=None, check_same_thread=False
        )
        try:
            conn.execute(f"PRAGMA busy_timeout = {int(wait * 1000)}")
            if not fresh and not checked:
                try:
                    self._check(conn)
                except sqlite3.OperationalError:
                    raise  # locked, read-only ...: a place we cannot use
                except sqlite3.DatabaseError as exc:
                    raise LedgerError(
                        f"{self.path} is not a pixelbyte-async ledger ({exc}); pass "
                        "another ledger path or remove the file"
                    ) from exc
            _wal(conn, wait)
            conn.execute("PRAGMA synchronous = NORMAL")
        except BaseException:
            conn.close()
            raise
        return conn

    def _check(self, conn: sqlite3.Connection) -> None:
        """Refuse a file that is not a ledger, or one of a newer schema."""
        tables = {
            name
            for (name,) in conn.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table'"
            )
        }
        if not tables:
            return  # an empty database: made ours below
        if "meta" not in tables or "attempts" not in tables:
            raise LedgerError(
                f"{self.path} is not a pixelbyte-async ledger (it has other "
                "tables); pass another ledger path or remove the file"
            )
        found = conn.execute(
            "SELECT value FROM meta WHERE name = 'schema_version'"
        ).fetchone()
        if found is None or not str(found[0]).isdigit():
            raise LedgerError(f"{self.path} is not a pixelbyte-async ledger")
        if int(found[0]) > SCHEMA_VERSION:
            raise LedgerError(
                f"ledger {self.path} has schema version {found[0]}; this SDK reads "
                f"version {SCHEMA_VERSION} (upgrade pixelbyte-async)"
            )

    def _open_sync(self) -> None:
        if self._fast is not None or self._fallback is not None:
            return
        try:
            slow = self._connect(wait=_WAIT)
            try:
                # One transaction: a process opening the file at the same moment
                # sees no tables or all of them, with their schema version.
                slow.execute("BEGIN IMMEDIATE")
                for statement in _SCHEMA.split(";"):
                    if statement.strip():
                        slow.execute(statement)  # all IF NOT EXISTS
                columns = {row[1] for row in slow.execute("PRAGMA table_info(tracked)")}
                if "grp" not in columns:  # a file made before tracked groups
                    slow.execute(
                        "ALTER TABLE tracked ADD COLUMN grp TEXT NOT NULL "
                        "DEFAULT 'default'"
                    )
                slow.execute(
                    "INSERT OR IGNORE INTO meta (name, value) VALUES (?, ?), (?, ?)",
                    (
                        "schema_version",
                        str(SCHEMA_VERSION),
                        "created_at",
                        str(time.time()),
                    ),
                )
                slow.execute("COMMIT")
                # Opened waiting like the slow one (its pragmas may meet another
                # process's transaction), then made never to wait on the loop.
                fast = self._connect(wait=_WAIT, checked=True)
                fast.execute("PRAGMA busy_timeout = 0")
            except BaseException:
                slow.close()
                raise
            # Checkpoints sync the disk: the worker thread runs them (`_written`).
            fast.execute("PRAGMA wal_autocheckpoint = 0")
        except LedgerError:
            raise
        except (OSError, sqlite3.Error) as exc:
            self._fall_back(exc)
            return
        self._slow, self._fast = slow, fast

    async def ready(self) -> None:
        """Open the file now, in a worker thread (every call opens it if need be)."""
        if self._closed:
            raise LedgerError("the ledger is closed")
        if self._fast is None and self._fallback is None:
            await self._open()

    async def _open(self) -> None:
        """Open the file in a worker thread, once: concurrent first calls share it."""
        opening = self._opening
        if opening is None or opening.get_loop() is not asyncio.get_running_loop():
            opening = self._opening = asyncio.ensure_future(
                anyio.to_thread.run_sync(self._open_sync, limiter=self._limiter)
            )
        await asyncio.shield(opening)

    def _fall_back(self, exc: BaseException) -> None:
        log.warning(
            "ledger: cannot use %s (%s); this process keeps its submits in memory "
            "only, so other processes on this machine will not see them (set "
            "PIXELBYTE_LEDGER to a writable file to share them)",
            self.path,
            exc,
        )
        self._fallback = MemoryLedger(retention=self.retention)
        self._close_sync()

    def _close_sync(self) -> None:
        for conn in (self._fast, self._slow):
            if conn is not None:
                with contextlib.suppress(sqlite3.Error):
                    conn.close()
        self._fast = self._slow = None

    async def _run(
        self,
        fn: Callable[[sqlite3.Connection], _T],
        memory: Callable[[MemoryLedger], Awaitable[_T]],
        *,
        writes: bool = False,
    ) -> _T:
        """
        Run *fn* on the file, on the loop (after pauses while another has its lock).

        After a fallback, *memory* runs on the memory ledger instead.
        """
        await self.ready()
        fast = self._fast
        if fast is None:
            return await self._in_memory(memory)
        waited = 0.0
        while True:
            try:
                value = _attempt_once(fast, fn)
            except sqlite3.OperationalError as exc:
                if not _busy(exc):
                    self._fall_back(exc)
                    return await self._in_memory(memory)
                # Another process holds the write lock.  Waiting for it here, in
                # short real pauses, keeps every transaction on the event loop:
                # one in a worker thread could hold the lock while it waits for
                # the interpreter lock the busy loop holds.
                if waited >= _WAIT:
                    raise LedgerError(
                        f"ledger {self.path} stayed locked by another process for "
                        f"{_WAIT:.0f} s; try again"
                    ) from exc
                pause = min(_BUSY_PAUSE * (1 + waited * 10), 0.1)
                await asyncio.sleep(pause)
                waited += pause
                continue
            except sqlite3.Error as exc:
                self._fall_back(exc)
                return await self._in_memory(memory)
            break
        if writes:
            self._written()
        return value

    async def _in_memory(self, memory: Callable[[MemoryLedger], Awaitable[_T]]) -> _T:
        assert self._fallback is not None  # noqa: S101 -- set by _fall_back
        return await memory(self._fallback)

    def _written(self) -> None:
        """Every few hundred writes, checkpoint the log in the background."""
        self._writes += 1
        running = self._checkpoint
        if self._writes % _CHECKPOINT_EVERY or (running and not running.done()):
            return

        def checkpoint() -> None:
            if self._slow is not None:
                with contextlib.suppress(sqlite3.Error):
                    self._slow.execute("PRAGMA wal_checkpoint(PASSIVE)")

        # Not awaited: a write never waits for the disk's sync (aclose does).
        self._checkpoint = asyncio.ensure_future(
            anyio.to_thread.run_sync(checkpoint, limiter=self._limiter)
        )

    # -- writes ----------------------------------------------------------------------

    def _write(self, conn: sqlite3.Connection, at: float, sql: str, *args: Any) -> int:
        """Run one write statement (its own transaction); return the rows it changed."""
        changed = conn.execute(sql, args).rowcount
        if self._prune_due(at):
            conn.execute("BEGIN IMMEDIATE")
            self._prune(conn, at)
            conn.execute("COMMIT")
        return changed

    def _prune_due(self, now: float) -> bool:
        """Whether a minute has passed (by the writers' clock) since the last prune."""
        return abs(now - self._pruned_at) >= _PRUNE_EVERY

    def _prune(self, conn: sqlite3.Connection, now: float) -> None:
        """Delete what is older than the retention (in the caller's transaction)."""
        self._pruned_at = now
        horizon = now - self.retention
        conn.execute("DELETE FROM attempts WHERE written_at < ?", (horizon,))
        conn.execute("DELETE FROM claims WHERE at < ?", (horizon,))
        conn.execute(
            "DELETE FROM tracked WHERE updated_at < ? AND state IN "  # noqa: S608 -- constant states
            f"({', '.join(repr(s) for s in sorted(DONE_STATES))})",
            (horizon,),
        )

    async def begin(self, attempt: Attempt) -> None:
        """See `SubmitLedger.begin`."""
        low, high = attempt.offset or (None, None)
        await self._run(
            lambda conn: self._write(
                conn,
                attempt.started_at,
                "INSERT OR REPLACE INTO attempts (account, id, model, started_at, "
                "ends_by, state, owner, tagged, job_id, list_price, offset_low, "
                "offset_high, written_at) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
                self.account,
                attempt.id,
                attempt.model,
                attempt.started_at,
                attempt.ends_by,
                attempt.state,
                attempt.owner,
                int(attempt.tagged),
                attempt.job_id,
                attempt.list_price,
                low,
                high,
                attempt.started_at,
            ),
            lambda memory: memory.begin(attempt),
            writes=True,
        )

    async def mark(self, attempt_id: str, state: AttemptState, *, at: float) -> None:
        """See `SubmitLedger.mark`."""
        await self._run(
            lambda conn: self._write(
                conn,
                at,
                "UPDATE attempts SET state = ?, written_at = ? "
                "WHERE account = ? AND id = ?",
                state,
                at,
                self.account,
                attempt_id,
            ),
            lambda memory: memory.mark(attempt_id, state, at=at),
            writes=True,
        )

    async def claim(
        self, job_id: str, *, how: ClaimHow, at: float, attempt: str | None = None
    ) -> Claim | None:
        """See `SubmitLedger.claim`."""
        return await self._run(
            lambda conn: self._claim_sync(conn, job_id, how, at, attempt),
            lambda memory: memory.claim(job_id, how=how, at=at, attempt=attempt),
            writes=True,
        )

    def _claim_sync(
        self,
        conn: sqlite3.Connection,
        job_id: str,
        how: ClaimHow,
        at: float,
        attempt: str | None,
    ) -> Claim | None:
        select = "SELECT job_id, attempt, how, at FROM claims WHERE account = ? AND "
        conn.execute("BEGIN IMMEDIATE")
        row = conn.execute(select + "job_id = ?", (self.account, job_id)).fetchone()
        on_job = None if row is None else _claim(row)
        on_attempt = None
        if attempt is not None:
            row = conn.execute(
                select + "attempt = ?", (self.account, attempt)
            ).fetchone()
            on_attempt = None if row is None else _claim(row)
        verdict, other = decide(
            job_id, attempt, how, on_job=on_job, on_attempt=on_attempt
        )
        if verdict in {"conflict", "same"}:
            conn.execute("COMMIT")
            return other if verdict == "conflict" else None
        if verdict == "override" and other is not None:
            overridden(job_id, other, attempt)
            conn.execute(
                "UPDATE attempts SET state = 'unknown', job_id = NULL, written_at = ? "
                "WHERE account = ? AND id = ?",
                (at, self.account, other.attempt),
            )
        conn.execute(
            "INSERT OR REPLACE INTO claims (account, job_id, attempt, how, at) "
            "VALUES (?, ?, ?, ?, ?)",
            (self.account, job_id, attempt, how, at),
        )
        if self._prune_due(at):
            self._prune(conn, at)
        if attempt is not None:
            conn.execute(
                "UPDATE attempts SET state = ?, job_id = ?, written_at = ? "
                "WHERE account = ? AND id = ?",
                (state_after(how), job_id, at, self.account, attempt),
            )
        conn.execute("COMMIT")
        return None

    # -- reads -----------------------------------------------------------------------

    async def attempt(self, attempt_id: str) -> Attempt | None:
        """See `SubmitLedger.attempt`."""

        def read(conn: sqlite3.Connection) -> Attempt | None:
            row = conn.execute(
                f"SELECT {_ATTEMPT_COLUMNS} FROM attempts "  # noqa: S608 -- constant columns
                "WHERE account = ? AND id = ?",
                (self.account, attempt_id),
            ).fetchone()
            return None if row is None else _attempt(row)

        return await self._run(read, lambda memory: memory.attempt(attempt_id))

    async def attempts(
        self, *, model: str | None, since: float, until: float, open_only: bool = False
    ) -> list[Attempt]:
        """See `SubmitLedger.attempts`."""

        def read(conn: sqlite3.Connection) -> list[Attempt]:
            sql = (
                f"SELECT {_ATTEMPT_COLUMNS} FROM attempts WHERE account = ? "  # noqa: S608 -- constant columns
                "AND started_at BETWEEN ? AND ?"
            )
            args: tuple[Any, ...] = (self.account, since, until)
            if model is not None:
                sql += " AND model = ?"
                args = (*args, model)
            if open_only:
                sql += (
                    f" AND state IN ({', '.join(repr(s) for s in sorted(OPEN_STATES))})"
                )
            return [
                _attempt(r) for r in conn.execute(sql + " ORDER BY started_at", args)
            ]

        return await self._run(
            read,
            lambda memory: memory.attempts(
                model=model, since=since, until=until, open_only=open_only
            ),
        )

    async def claims(self, job_ids: Collection[str]) -> dict[str, Claim]:
        """See `SubmitLedger.claims`."""
        wanted = list(dict.fromkeys(job_ids))

        def read(conn: sqlite3.Connection) -> dict[str, Claim]:
            found: dict[str, Claim] = {}
            for start in range(0, len(wanted), 500):
                chunk = wanted[start : start + 500]
                marks = ", ".join("?" * len(chunk))
                for row in conn.execute(
                    "SELECT job_id, attempt, how, at FROM claims "  # noqa: S608 -- placeholders only
                    f"WHERE account = ? AND job_id IN ({marks})",
                    (self.account, *chunk),
                ):
                    found[row[0]] = _claim(row)
            return found

        if not wanted:
            return {}
        return await self._run(read, lambda memory: memory.claims(wanted))

    # -- tracked jobs ----------------------------------------------------------------

    async def track(self, record: TrackedRecord) -> None:
        """See `TrackingLedger.track`."""
        await self._run(
            lambda conn: self._write(
                conn,
                record.created_at,
                f"INSERT OR REPLACE INTO tracked (account, {_TRACKED_COLUMNS}) "  # noqa: S608 -- constant columns
                "VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
                self.account,
                record.attempt,
                record.model,
                record.context,
                record.state,
                record.job_id,
                record.owner,
                record.lease_until,
                record.failures,
                record.error,
                record.created_at,
                record.updated_at,
                record.group,
            ),
            lambda memory: memory.track(record),
            writes=True,
        )

    async def tracked_job(self, attempt: str, job_id: str, *, at: float) -> None:
        """See `TrackingLedger.tracked_job`."""
        await self._run(
            lambda conn: self._write(
                conn,
                at,
                "UPDATE tracked SET job_id = ?, updated_at = ? "
                "WHERE account = ? AND attempt = ?",
                job_id,
                at,
                self.account,
                attempt,
            ),
            lambda memory: memory.tracked_job(attempt, job_id, at=at),
            writes=True,
        )

    async def tracked(
        self, *, states: Collection[TrackedState] = ACTIVE
    ) -> list[TrackedRecord]:
        """See `TrackingLedger.tracked`."""
        wanted = sorted(set(states))

        def read(conn: sqlite3.Connection) -> list[TrackedRecord]:
            marks = ", ".join("?" * len(wanted))
            return [
                _tracked(row)
                for row in conn.execute(
                    f"SELECT {_TRACKED_COLUMNS} FROM tracked WHERE account = ? "  # noqa: S608 -- placeholders only
                    f"AND state IN ({marks}) ORDER BY created_at",
                    (self.account, *wanted),
                )
            ]

        if not wanted:
            return []
        return await self._run(read, lambda memory: memory.tracked(states=wanted))

    async def lease(
        self,
        attempt: str,
        owner: str,
        *,
        until: float,
        at: float,
        gone: Collection[str] = (),
    ) -> TrackedRecord | None:
        """See `TrackingLedger.lease`."""

        def take(conn: sqlite3.Connection) -> TrackedRecord | None:
            conn.execute("BEGIN IMMEDIATE")
            row = conn.execute(
                f"SELECT {_TRACKED_COLUMNS} FROM tracked "  # noqa: S608 -- constant columns
                "WHERE account = ? AND attempt = ?",
                (self.account, attempt),
            ).fetchone()
            found = None if row is None else _tracked(row)
            if found is None or not lease_free(found, owner, at=at, gone=gone):
                conn.execute("COMMIT")
                return None
            conn.execute(
                "UPDATE tracked SET owner = ?, lease_until = ?, updated_at = ? "
                "WHERE account = ? AND attempt = ?",
                (owner, until, at, self.account, attempt),
            )
            conn.execute("COMMIT")
            return attrs.evolve(found, owner=owner, lease_until=until, updated_at=at)

        return await self._run(
            take,
            lambda memory: memory.lease(attempt, owner, until=until, at=at, gone=gone),
            writes=True,
        )

    async def renew(self, owner: str, *, until: float, at: float) -> None:
        """See `TrackingLedger.renew`."""
        await self._run(
            lambda conn: self._write(
                conn,
                at,
                "UPDATE tracked SET lease_until = ? "
                "WHERE account = ? AND owner = ? AND state = 'active'",
                until,
                self.account,
                owner,
            ),
            lambda memory: memory.renew(owner, until=until, at=at),
            writes=True,
        )

    async def release(self, owner: str, *, at: float) -> None:
        """See `TrackingLedger.release`."""
        await self._run(
            lambda conn: self._write(
                conn,
                at,
                "UPDATE tracked SET owner = NULL, lease_until = 0, updated_at = ? "
                "WHERE account = ? AND owner = ? AND state = 'active'",
                at,
                self.account,
                owner,
            ),
            lambda memory: memory.release(owner, at=at),
            writes=True,
        )

    async def finish(
        self,
        attempt: str,
        owner: str,
        *,
        state: TrackedState,
        at: float,
        failures: int | None = None,
        error: str | None = None,
    ) -> bool:
        """See `TrackingLedger.finish`."""

        def write(conn: sqlite3.Connection) -> bool:
            changed = self._write(
                conn,
                at,
                "UPDATE tracked SET state = ?, failures = COALESCE(?, failures), "
                "error = COALESCE(?, error), updated_at = ? "
                "WHERE account = ? AND attempt = ? AND owner = ? AND state = 'active'",
                state,
                failures,
                error,
                at,
                self.account,
                attempt,
                owner,
            )
            return changed == 1

        return await self._run(
            write,
            lambda memory: memory.finish(
                attempt, owner, state=state, at=at, failures=failures, error=error
            ),
            writes=True,
        )

    async def aclose(self) -> None:
        """Close the file (idempotent)."""
        if self._closed:
            return
        self._closed = True
        if self._checkpoint is not None:
            await asyncio.wait({self._checkpoint})
        await anyio.to_thread.run_sync(self._close_sync, limiter=self._limiter)
