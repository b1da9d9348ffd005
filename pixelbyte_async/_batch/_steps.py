"""
The steps one row of a batch goes through: its job, the wait, the output.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncGenerator
from typing import TYPE_CHECKING, cast

from pixelbyte_async._errors import NotFound, PixelByteError, WaitTimeout
from pixelbyte_async._journal import Journal
from pixelbyte_async._models import JobInfo, JobStatus
from pixelbyte_async._seams import BatchClient

from ._budget import Budget
from ._outcomes import Outcomes
from ._outputs import Outputs
from ._rows import Entry
from ._submits import Submits
from ._types import BatchItemStatus, is_fatal


if TYPE_CHECKING:
    from pixelbyte_async._job import Job


__all__ = ["Steps"]


class Steps:
    """
    What a batch's worker does with one row, from its job to its output.

    The job is submitted, found for a submit of unknown fate, or re-attached by
    the id an earlier run journaled; then it is waited for, its status journaled,
    and its output downloaded (with *out_dir*).
    """

    def __init__(
        self,
        pb: BatchClient,
        *,
        journal: Journal,
        outcomes: Outcomes,
        budget: Budget,
        submits: Submits,
        outputs: Outputs | None,
        wait_timeout: float | None,
    ) -> None:
        self._pb = pb
        self._journal = journal
        self._outcomes = outcomes
        self._budget = budget
        self._submits = submits
        self._outputs = outputs
        self._wait_timeout = wait_timeout

    async def process(self, entry: Entry) -> None:
        """Take *entry* as far as this run can; report how it ended."""
        try:
            if entry.action in {"submit", "retry", "reconcile"}:
                job = await (
                    self._submits.resume(entry)
                    if entry.action == "reconcile"
                    else self._submits.submit(entry)
                )
                if job is None:
                    return
            elif entry.job is not None:
                job = entry.job
            else:
                assert entry.row is not None  # noqa: S101 -- attach/download rows
                assert entry.row.job_id is not None  # noqa: S101
                try:
                    job = await self._pb.get_job(entry.row.job_id)
                except NotFound as exc:
                    await self._outcomes.park(
                        entry, f"job {entry.row.job_id} is gone: {exc}"
                    )
                    return
            await self._finish(entry, job)
        except PixelByteError as exc:
            if is_fatal(exc):
                raise
            self._outcomes.emit(
                entry,
                BatchItemStatus.UNFINISHED,
                job_id=entry.job.id if entry.job else None,
                error=f"{exc}; run the batch again to finish it",
            )

    async def _finish(self, entry: Entry, job: Job) -> None:
        """Wait for *job*, record what happens and download its output."""
        journal = self._journal
        entry.job = job
        if not job.done:
            last = job.status
            watch = cast(
                "AsyncGenerator[JobInfo, None]", job.watch(timeout=self._wait_timeout)
            )
            try:
                async with contextlib.aclosing(watch) as snapshots:
                    async for info in snapshots:
                        if info.status is not last and not info.status.is_terminal:
                            # The end is journaled once, below (with the output).
                            last = info.status
                            await journal.status(
                                entry.key,
                                status=info.status.value,
                                at=self._pb.clock.time(),
                            )
            except WaitTimeout as exc:
                self._outcomes.emit(
                    entry,
                    BatchItemStatus.UNFINISHED,
                    job_id=job.id,
                    error=f"{exc}; it keeps running: run the batch again to collect it",
                )
                return
        if job.status is JobStatus.COMPLETED and job.video_url is None:
            # Jobs found by reconcile come from the job list, which has no output.
            await job.refresh()
        info = job.info
        ended_at = self._pb.clock.time()
        if info.status is JobStatus.COMPLETED and self._outputs is not None:
            # Journaled with its file, one commit: a run killed before then
            # finds the row 'submitted' and downloads it by its job id.
            await self._outputs.download(entry, job, ended_at=ended_at)
            return
        error = _job_error(info)
        await journal.status(
            entry.key,
            status=info.status.value,
            output_url=info.video_url,
            error=error,
            at=ended_at,
        )
        if info.status is JobStatus.FAILED:
            self._budget.refund(entry.key)
            self._outcomes.emit(
                entry, BatchItemStatus.FAILED, job_id=job.id, error=error
            )
            return
        if info.status is JobStatus.CANCELLED:
            self._budget.refund(entry.key)
            self._outcomes.emit(
                entry, BatchItemStatus.CANCELLED, job_id=job.id, error=error
            )
            return
        self._outcomes.emit(
            entry, BatchItemStatus.COMPLETED, job_id=job.id, output_url=info.video_url
        )


def _job_error(info: JobInfo) -> str | None:
    if info.status is JobStatus.FAILED:
        err = info.error
        code = (err.code if err else None) or "UNKNOWN"
        return f"job failed: {code}: {(err.message if err else '') or 'no message'}"
    if info.status is JobStatus.CANCELLED:
        return "job was cancelled"
    return None
