"""
Job slots: the client's limit on jobs in flight (``max_concurrent_jobs``).
"""

from __future__ import annotations

import asyncio
import math
from typing import TYPE_CHECKING

from ._clock import Clock, sleep_or_until
from ._config import ClientConfig
from ._errors import RequestTimeout


if TYPE_CHECKING:
    from ._job import Job


__all__ = ["JobSlots"]


class JobSlots:
    """
    The client's limit on jobs in flight (submitted and not yet seen terminal).

    A slot is taken before a submit and freed when the client sees the job reach a
    terminal state, however it sees it (wait, watch, refresh, list, cancel).  A
    submitter kept waiting for a slot refreshes in-flight jobs that nobody is
    waiting on, so "submit everything, then wait for everything" cannot deadlock.
    """

    def __init__(self, limit: int | None) -> None:
        self.limit = limit
        self.used = 0
        self.jobs: dict[str, Job] = {}
        self._released: asyncio.Future[None] | None = None
        self._sweeping = False

    def _notify(self) -> None:
        released, self._released = self._released, None
        if released is not None and not released.done():
            released.set_result(None)

    def free(self) -> None:
        self.used -= 1
        self._notify()

    def bind(self, job: Job) -> None:
        self.jobs[job.id] = job

    def finished(self, job_id: str) -> None:
        if self.jobs.pop(job_id, None) is not None:
            self.free()

    def adopt(self, job: Job) -> None:
        if job.id not in self.jobs and not job.done:
            self.used += 1
            self.jobs[job.id] = job

    async def acquire(
        self, clock: Clock, config: ClientConfig, timeout: float | None
    ) -> None:
        if self.limit is None:
            self.used += 1
            return
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
