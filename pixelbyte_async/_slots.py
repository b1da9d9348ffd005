"""
Job slots: the client's limit on jobs in flight (``max_concurrent_jobs``).

In one process, a counter.  With a hub (`PixelByte(hub=...)`), the limit is the
account's, shared by every process through the hub's leased slots; this process
still tracks its own jobs (to free their slots and to sweep them).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import math
from collections.abc import Iterator
from typing import TYPE_CHECKING, Protocol

from ._clock import Clock, sleep_or_until
from ._config import ClientConfig
from ._errors import RequestTimeout
from ._telemetry import slot_wait


if TYPE_CHECKING:
    from ._job import Job
    from ._sharing import SharedSlots


__all__ = ["JobSlots", "JobTracker"]


class JobTracker(Protocol):
    """Told when the client starts and stops tracking a job (a hub routes by it)."""

    def track(self, job_id: str) -> None:
        """*job_id* is in flight here: its delivery must reach this process."""
        ...

    def untrack(self, job_id: str) -> None:
        """*job_id* is no longer tracked here."""
        ...


class JobSlots:
    """
    The client's limit on jobs in flight (submitted and not yet seen terminal).

    A slot is taken before a submit and freed when the client sees the job reach a
    terminal state, however it sees it (wait, watch, refresh, list, cancel).
    Submitters wait in line: a freed slot is handed to the first of them, and to
    it alone (as `asyncio.Semaphore` does), so a release costs the same with ten
    waiters as with ten thousand.  While anyone waits, one task refreshes the
    in-flight jobs that nobody is waiting on, so "submit everything, then wait for
    everything" cannot deadlock.
    """

    def __init__(
        self,
        limit: int | None,
        shared: SharedSlots | None = None,
        tracker: JobTracker | None = None,
    ) -> None:
        self.limit = limit
        #: The hub's account-wide slots (then *limit* is the account's).
        self.shared = shared
        self._tracker = tracker
        self.used = 0
        self.jobs: dict[str, Job] = {}
        # Submitters waiting for a local slot, first first: each one's future is
        # resolved when a slot is handed to it.
        self._line: collections.deque[asyncio.Future[None]] = collections.deque()
        self._waiting = 0  # submitters waiting (locally or in the hub's queue)
        self._sweeper: asyncio.Task[None] | None = None
        self._sweeping = False

    def _release(self) -> None:
        """A slot is free: hand it to the first in line, else count it free."""
        line = self._line
        while line:
            turn = line.popleft()
            if not turn.done():
                turn.set_result(None)  # `used` unchanged: the slot changes hands
                return
        self.used -= 1

    def free(self, lease: str | None) -> None:
        """Give back a slot (and its hub *lease*) whose submit made no job we know."""
        if lease is not None and self.shared is not None:
            self.used -= 1
            self.shared.release_soon(lease)
        else:
            self._release()

    def bind(self, job: Job, lease: str | None) -> None:
        """Track *job*, created by the submit that took the slot of hub *lease*."""
        self.jobs[job.id] = job
        if self._tracker is not None:
            self._tracker.track(job.id)
        if lease is not None and self.shared is not None:
            self.shared.bind(lease, job.id)

    def finished(self, job_id: str) -> None:
        """*job_id* has ended: free its slot (here and account-wide)."""
        if self.jobs.pop(job_id, None) is not None:
            if self._tracker is not None:
                self._tracker.untrack(job_id)
            if self.shared is not None:
                self.used -= 1
                self.shared.release_job(job_id)
            else:
                self._release()

    def adopt(self, job: Job) -> None:
        """Count a job found in flight (reconciled) as one of ours."""
        if job.id not in self.jobs and not job.done:
            self.used += 1
            self.jobs[job.id] = job
            if self._tracker is not None:
                self._tracker.track(job.id)
            if self.shared is not None:
                self.shared.adopt(job.id)

    async def acquire(
        self, clock: Clock, config: ClientConfig, timeout: float | None
    ) -> str | None:
        """
        Wait for a slot (at most *timeout* seconds) and take it.

        Returns its lease in the hub's account-wide slots, or None without a hub.
        """
        if self.shared is not None:
            with slot_wait():
                return await self._acquire_shared(self.shared, clock, config, timeout)
        if self.limit is None or (self.used < self.limit and not self._line):
            self.used += 1
            return None
        turn: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._line.append(turn)
        with self._sweeps(clock, config), slot_wait():
            try:
                if timeout is None:
                    await turn
                else:
                    await sleep_or_until(clock, timeout, turn)
            except BaseException:
                self._leave(turn)
                raise
        if not turn.done():
            self._leave(turn)
            raise RequestTimeout(
                f"no job slot freed within slot_timeout={timeout}s "
                f"({self.used} jobs in flight, max_concurrent_jobs={self.limit})"
            )
        return None

    def _leave(self, turn: asyncio.Future[None]) -> None:
        """A waiter gives up: out of the line, and a slot handed to it goes on."""
        if turn.done() and not turn.cancelled():
            self._release()
        else:
            turn.cancel()
            with contextlib.suppress(ValueError):
                self._line.remove(turn)

    @contextlib.contextmanager
    def _sweeps(self, clock: Clock, config: ClientConfig) -> Iterator[None]:
        """While anyone waits for a slot, one task sweeps the unwatched jobs."""
        self._waiting += 1
        if self._sweeper is None or self._sweeper.done():
            self._sweeper = asyncio.get_running_loop().create_task(
                self._sweep_while_waited(clock, config),
                name="pixelbyte-slot-sweeper",
            )
        try:
            yield
        finally:
            self._waiting -= 1
            if not self._waiting and self._sweeper is not None:
                self._sweeper.cancel()
                self._sweeper = None

    async def _sweep_while_waited(self, clock: Clock, config: ClientConfig) -> None:
        while True:
            # It serves every waiter: no one waiter's deadline bounds it (each
            # GET has the client's timeout, `_sweep` sees to it).
            await self._sweep(clock, config, math.inf)
            # A freed slot goes to a waiter at once; the pause only paces sweeps.
            await clock.sleep(config.poll.near_interval)

    async def _acquire_shared(
        self,
        shared: SharedSlots,
        clock: Clock,
        config: ClientConfig,
        timeout: float | None,
    ) -> str:
        """
        Wait in the hub's queue; meanwhile our own unwatched jobs are swept.

        Our own finished-but-unnoticed jobs may be what holds the account's
        slots, so the sweep runs beside the wait, as with a local limit.
        """
        with self._sweeps(clock, config):
            lease = await shared.acquire(timeout)
        self.used += 1
        return lease

    async def _sweep(self, clock: Clock, config: ClientConfig, deadline: float) -> None:
        """
        Refresh unwatched in-flight jobs that are due, to notice finished ones.

        One sweep at a time: the other queued submitters wait for its result
        instead of polling the same jobs again.
        """
        if self._sweeping:
            return
        self._sweeping = True
        try:
            deadline = min(deadline, clock.monotonic() + config.timeout)
            policy = config.poll
            for job in list(self.jobs.values()):
                if job._watchers or job.done:  # noqa: SLF001 -- slots and jobs cooperate
                    continue
                if clock.time() < job._sweep_due(policy):  # noqa: SLF001
                    continue
                await job._poll_once(deadline)  # noqa: SLF001
        finally:
            self._sweeping = False
