"""
What a client lends its parts: `JobLink` (the `JobClient` seam) and `ReconcileLink`.

Each is a small frozen object built from the client's parts, never from the client
itself: a `Job` and the `Reconciler` see exactly the members their Protocol lists,
and this module needs no import of `_client`.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import attrs

from ._models import JobStatus
from ._polling import EndWindow, EtaBias


if TYPE_CHECKING:
    from ._clock import Clock
    from ._config import ClientConfig
    from ._errors import AmbiguousSubmitError
    from ._files import Files
    from ._job import Job
    from ._job_state import JobState, WebhookSource
    from ._ledger import Attempt, SubmitLedger
    from ._pipeline import RequestPipeline
    from ._reconcile import AttemptSource
    from ._slots import JobSlots
    from ._wiring import WebhookWiring


__all__ = ["JobLink", "ReconcileLink", "TrackedLink"]

#: How many finished jobs' ids are remembered as learnt from.
_LEARNED = 1024


@attrs.frozen
class JobLink:
    """What a client lends its jobs: the `JobClient` seam, and nothing more."""

    clock: Clock
    config: ClientConfig
    _wiring: WebhookWiring
    _uniform: Callable[[float, float], float]
    _pipeline: RequestPipeline
    _files: Files
    _slots: JobSlots
    _bias: EtaBias = attrs.field(factory=EtaBias)
    # Jobs already learnt from (`finished` may be told of one job twice).
    _learned: dict[str, None] = attrs.field(factory=dict)

    @property
    def webhooks(self) -> WebhookSource | None:
        return self._wiring.source()

    def outage(self) -> asyncio.Future[None] | None:
        return self._wiring.outage()

    def uniform(self, low: float, high: float) -> float:
        return self._uniform(low, high)

    async def request(
        self, method: str, path: str, *, timeout: float | None = None
    ) -> tuple[Any, str | None]:
        return await self._pipeline.request(method, path, timeout=timeout)

    async def download(
        self, url: str, path: Path, *, timeout: float | None, overwrite: bool
    ) -> Path:
        return await self._files.download(
            url, path, timeout=timeout, overwrite=overwrite
        )

    def finished(self, job: JobState) -> None:
        self._slots.finished(job.id)
        info = job.info
        due = job.due()
        if (
            info.status is JobStatus.COMPLETED
            and due is not None
            and info.completed_at is not None
            and job.id not in self._learned
        ):
            self._learned[job.id] = None
            while len(self._learned) > _LEARNED:
                self._learned.pop(next(iter(self._learned)))
            basis, start, eta = due
            self._bias.learn(
                basis, created=start, eta=eta, ended=info.completed_at.timestamp()
            )

    def end_window(self, basis: str, *, start: float, eta: float) -> EndWindow:
        return self._bias.window(basis, start=start, eta=eta)

    def undelivered(self, job_id: str, late: float) -> None:
        self._wiring.undelivered(job_id, late)


@attrs.frozen
class ReconcileLink:
    """What a client lends its reconciler: the `ReconcileClient` seam."""

    clock: Clock
    _wiring: WebhookWiring
    _get_job: Callable[[str], Awaitable[Job]]
    _list_jobs: Callable[..., AsyncGenerator[Job, None]]

    @property
    def attempts(self) -> AttemptSource | None:
        return self._wiring.attempts()

    async def get_job(self, job_id: str) -> Job:
        return await self._get_job(job_id)

    def list_jobs(self, *, model: str | None = None) -> AsyncGenerator[Job, None]:
        return self._list_jobs(model=model)


@attrs.frozen
class TrackedLink:
    """What a client lends its tracker: the `TrackedClient` seam."""

    clock: Clock
    _get_job: Callable[[str], Awaitable[Job]]
    _reconcile: Callable[[AmbiguousSubmitError], Awaitable[Job | None]]
    _ledger: SubmitLedger

    async def get_job(self, job_id: str) -> Job:
        return await self._get_job(job_id)

    async def reconcile(self, error: AmbiguousSubmitError) -> Job | None:
        return await self._reconcile(error)

    async def ledger_attempt(self, attempt_id: str) -> Attempt | None:
        return await self._ledger.attempt(attempt_id)
