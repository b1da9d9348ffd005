"""
Job slots: the client's limit on jobs in flight (``max_concurrent_jobs``).

In one process, a counter.  With a hub (`PixelByte(hub=...)`), the limit is the
account's, shared by every process through the hub's leased slots; this process
still tracks its own jobs (to free their slots and to sweep them).
"""

from __future__ import annotations

import asyncio
import math
from typing import TYPE_CHECKING, Protocol

import anyio

from ._clock import Clock, sleep_or_until
from ._config import ClientConfig
from ._errors import RequestTimeout


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
    terminal state, however it sees it (wait, watch, refresh, list, cancel).  A
    submitter kept waiting for a slot refreshes in-flight jobs that nobody is
    waiting on, so "submit everything, then wait for everything" cannot deadlock.
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
        self._released: asyncio.Future[None] | None = None
        self._sweeping = False

    def _notify(self) -> None:
        released, self._released = self._released, None
        if released is not None and not released.done():
            released.set_result(None)

    def free(self, lease: str | None) -> None:
        """Give back a slot (and its hub *lease*) whose submit made no job we know."""
        self.used -= 1
        if lease is not None and self.shared is not None:
            self.shared.release_soon(lease)
        self._notify()

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
            self.used -= 1
            if self.shared is not None:
                self.shared.release_job(job_id)
            self._notify()

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
            return await self._acquire_shared(self.shared, clock, config, timeout)
        if self.limit is None:
            self.used += 1
            return None
        deadline = clock.monotonic() + (timeout if timeout is not None else math.inf)
        while self.used >= self.limit:
            remaining = deadline - clock.monotonic()
            if remaining <= 0:
                raise RequestTimeout(
                    f"no job slot freed within slot_timeout={timeout}s "
                    f"({self.used} jobs in flight, max_concurrent_jobs={self.limit})"
                )
            await self._sweep(clock, config, deadline)
            if self.used < self.limit:
                break
            if self._released is None:
                self._released = asyncio.get_running_loop().create_future()
            # A freed slot wakes us at once; the pause only paces the sweeps.
            pause = min(remaining, config.poll.near_interval)
            await sleep_or_until(clock, pause, self._released)
        self.used += 1
        return None

    async def _acquire_shared(
        self,
        shared: SharedSlots,
        clock: Clock,
        config: ClientConfig,
        timeout: float | None,
    ) -> str:
        """
        Wait in the hub's queue; meanwhile sweep our own unwatched jobs.

        Our own finished-but-unnoticed jobs may be what holds the account's
        slots, so the sweep runs beside the wait, as with a local limit.
        """
        deadline = clock.monotonic() + (timeout if timeout is not None else math.inf)

        async def sweep() -> None:
            while True:
                await clock.sleep(config.poll.near_interval)
                await self._sweep(clock, config, deadline)

        async with anyio.create_task_group() as tasks:
            tasks.start_soon(sweep)
            try:
                lease = await shared.acquire(timeout)
            finally:
                tasks.cancel_scope.cancel()
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
