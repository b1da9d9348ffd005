"""
`JournalConnection`: one open journal, as a reader, a writer or in memory.

It proves the file is our journal of a version this SDK reads, makes a writer its
only owner (the lock file, then an exclusive SQLite lock; see the package
docstring), and runs every call in one worker thread, one at a time, until closed.
"""

from __future__ import annotations

import asyncio
import collections
import os
import sqlite3
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Self, TypeVar

import anyio
import anyio.to_thread

from pixelbyte_async._handoff import finish_anyway

from ._errors import JournalError, busy, in_use, not_ours, unusable
from ._file import connect, create, existing, lock, refuse_hard_links, unlock
from ._schema import SCHEMA_VERSION, write_schema


__all__ = ["JournalConnection"]

_T = TypeVar("_T")

#: Synced commits go to the worker thread for `_SLOW_FOR` seconds after one that
#: took longer than `_STALL` (a network file system), or when the median of the
#: last eight took longer than `_SLOW_SYNC` (a disk that spins); a rare slow
#: sync of a quick disk does neither.
_SLOW_SYNC = 0.002
_STALL = 0.02
_SLOW_FOR = 60.0


class JournalConnection:
    """
    An open journal: opened, proven ours, owned as a writer, closed; see `Journal`.

    Open with `open` and close with `aclose`; `_call` runs a function on the
    connection in the worker thread.
    """

    def __init__(
        self, conn: sqlite3.Connection, path: Path | None, lock_fd: int | None
    ) -> None:
        self._conn = conn
        self.path = path
        self._lock_fd = lock_fd
        self._limiter = anyio.CapacityLimiter(1)
        self._closed = False
        #: Rows waiting for the next synced commit of many (see `_synced`).
        self._queued: list[tuple[tuple[Any, ...], asyncio.Future[None]]] = []
        self._committing: asyncio.Future[None] | None = None
        #: Until when synced commits go to the worker thread (a slow disk).
        self._slow_until = 0.0
        #: How long the last synced commits on the loop took (seconds).
        self._sync_times: collections.deque[float] = collections.deque(maxlen=8)

    # -- lifecycle -------------------------------------------------------------------

    @classmethod
    async def open(
        cls, path: str | os.PathLike[str] | None, *, readonly: bool = False
    ) -> Self:
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
    def _open_sync(cls, path: Path | None, readonly: bool) -> Self:
        if path is None:
            return cls._in_memory(None)
        try:
            if readonly:
                return cls._open_reader(path)
            return cls._open_writer(path)
        except OSError as exc:
            raise unusable(path, exc) from exc

    @classmethod
    def _in_memory(cls, path: Path | None) -> Self:
        conn = sqlite3.connect(":memory:", check_same_thread=False)
        write_schema(conn)
        return cls(conn, path, None)

    @classmethod
    def _open_reader(cls, path: Path) -> Self:
        real = Path(os.path.realpath(path))
        found = existing(path, real)
        if found is None:
            return cls._in_memory(path)  # a dry run of a new journal: nothing yet
        refuse_hard_links(path, found)
        # A reader may wait out the moment a writer takes ownership.
        source = cls(connect(path, real, wait=5), path, None)
        source._set_up(writer=False)
        # Read a snapshot and let go of the file at once: while any connection has
        # it open, no run can take ownership of it (see _take_ownership).
        snapshot = sqlite3.connect(":memory:", check_same_thread=False)
        try:
            source._conn.backup(snapshot)
        except sqlite3.Error as exc:
            snapshot.close()
            raise unusable(path, exc) from exc
        finally:
            source._close_sync()
        return cls(snapshot, path, None)

    @classmethod
    def _open_writer(cls, path: Path) -> Self:
        real = Path(os.path.realpath(path))
        existing(path, real)  # a directory, an empty file: refuse before any change
        real.parent.mkdir(parents=True, exist_ok=True)
        lock_fd = lock(real.with_name(real.name + ".lock"), path)
        try:
            found = existing(path, real)
            if found is None:
                create(path, real)
            else:
                refuse_hard_links(path, found)
            # A writer never waits: the file being busy means someone else has it.
            journal = cls(connect(path, real, wait=0), path, lock_fd)
        except BaseException:
            unlock(lock_fd)
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
                # Commits survive the process being killed (the log is in the
                # page cache); the one that guards a paid request is synced to
                # the disk too (`Records.submitting`), so a power cut never loses
                # "a submit is on the wire".
                self._conn.execute("PRAGMA synchronous=NORMAL")
                write_schema(self._conn)  # tables a journal of this version lacks
            self._conn.execute("PRAGMA busy_timeout = 30000")
        except BaseException as exc:
            self._close_sync()
            if isinstance(exc, sqlite3.Error):
                raise unusable(self.path, exc) from exc
            raise

    def _check_version(self) -> None:
        """Refuse anything but a journal this SDK can read (read-only check)."""
        assert self.path is not None  # noqa: S101 -- only files are checked
        try:
            found = self._conn.execute(
                "SELECT value FROM meta WHERE name = 'schema_version'"
            ).fetchone()
        except sqlite3.DatabaseError as exc:
            if busy(exc):
                raise in_use(self.path, other_program=True) from exc
            raise not_ours(self.path, str(exc)) from exc
        if found is None or not str(found[0]).isdigit():
            raise not_ours(self.path, "no schema version")
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
            if busy(exc):
                raise in_use(self.path, other_program=True) from exc
            raise
        self._conn.execute("PRAGMA locking_mode=NORMAL")
        self._conn.commit()

    def _close_sync(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._conn.close()
        if self._lock_fd is not None:
            unlock(self._lock_fd)
            self._lock_fd = None

    async def aclose(self) -> None:
        """Close the database and release the lock.  Idempotent."""
        await self._call(self._close_sync, closing=True)

    async def _call(
        self, fn: Callable[..., _T], *args: Any, closing: bool = False
    ) -> _T:
        """Run *fn* in the journal's worker thread (one call at a time)."""
        if self._closed and not closing:
            raise JournalError("the journal is closed")
        # Not abandoned on cancellation: a write that started always finishes, so
        # the journal never disagrees with what this process believes it recorded.
        return await anyio.to_thread.run_sync(fn, *args, limiter=self._limiter)

    async def _synced(
        self,
        many: Callable[[list[tuple[Any, ...]]], None],
        args: tuple[Any, ...],
        *,
        alone: bool = False,
    ) -> None:
        """
        Commit *args* with `many` in a transaction synced to the disk.

        A group commit in the worker thread: calls that arrive while one commit
        runs are written together by the next, one transaction and one sync for
        all of them, while the loop goes on.  A call *alone* (nothing else can
        join it: a model's submits going one at a time) is committed on the
        loop at once instead while syncs are quick (a local SSD syncs in a
        fraction of a millisecond, where the hop to the thread and back costs
        two turns of a busy loop in the chain of those submits); where they are
        slow (see `_SLOW_SYNC`) it goes to the thread for a minute.  Each call
        returns once its own row is on the disk; a failed commit fails every
        call in it.
        """
        if self._closed:
            raise JournalError("the journal is closed")
        if alone and not self._queued and self._quick_syncs():
            began = time.monotonic()
            try:
                many([args])
            finally:
                self._timed_sync(time.monotonic() - began)
            return
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._queued.append((args, done))
        if self._committing is None or self._committing.done():
            self._committing = asyncio.ensure_future(self._commit_queued(many))
        await done

    def _quick_syncs(self) -> bool:
        """Whether a synced commit may run on the loop now."""
        return (
            (self._committing is None or self._committing.done())
            and not self._limiter.borrowed_tokens
            and time.monotonic() >= self._slow_until
        )

    def _timed_sync(self, took: float) -> None:
        """Send synced commits to the thread if this one stalled or most are slow."""
        recent = self._sync_times
        recent.append(took)
        slow = len(recent) == recent.maxlen and statistics.median(recent) > _SLOW_SYNC
        if took > _STALL or slow:
            self._slow_until = time.monotonic() + _SLOW_FOR
            recent.clear()

    async def _commit_queued(
        self, many: Callable[[list[tuple[Any, ...]]], None]
    ) -> None:
        while self._queued:
            group, self._queued = self._queued, []
            try:
                await self._call(many, [args for args, _ in group])
            except BaseException as exc:
                for _, done in group:
                    if not done.done():
                        done.set_exception(
                            JournalError(f"the journal write failed: {exc!r}")
                            if isinstance(exc, asyncio.CancelledError)
                            else exc
                        )
                if isinstance(exc, asyncio.CancelledError):
                    raise
            else:
                for _, done in group:
                    if not done.done():
                        done.set_result(None)

    async def _quick(self, fn: Callable[..., _T], *args: Any) -> _T:
        """
        Run *fn*, a statement or two on one row, on the loop.

        Tens of microseconds: the writer holds the file alone (no lock to wait
        for) and its commits are not synced to the disk (WAL, ``NORMAL``), where
        a hop to the worker thread and back costs more, and with a hundred rows
        at once a queue of them made the journal the batch's bottleneck.  The
        calls that sync the disk, or read every row, keep to the thread
        (`_call`).  It waits for those already queued there, so calls stay in
        order; a call that had to wait still runs if its caller is cancelled
        meanwhile, as a `_call` does.
        """
        if self._closed:
            raise JournalError("the journal is closed")
        if not self._limiter.borrowed_tokens:
            return fn(*args)  # nothing awaited: no task, no loop turn
        # Queued behind the thread's calls: the write still lands if the caller
        # is cancelled meanwhile (what it records was true when it was asked).
        return await finish_anyway(asyncio.ensure_future(self._after_queue(fn, *args)))

    async def _after_queue(self, fn: Callable[..., _T], *args: Any) -> _T:
        async with self._limiter:
            return fn(*args)
