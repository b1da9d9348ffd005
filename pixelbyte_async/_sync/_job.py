"""
`SyncJob`: a `Job` handle for synchronous code.

Reads go straight to the `Job` it wraps (its snapshot is replaced whole, so a read
from any thread sees one consistent state); calls run on the client's loop thread
through `SyncRuntime.call`.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pixelbyte_async._job import Job
from pixelbyte_async._models import JobErrorInfo, JobInfo, JobOutput, JobStatus
from pixelbyte_async._polling import PollPolicy


if TYPE_CHECKING:
    from ._client import SyncPixelByte


__all__ = ["SyncJob"]


class SyncJob:
    """
    A handle on one job, for synchronous code: `Job`'s reads and calls, blocking.

    You get one from `SyncPixelByte.submit`, `SyncPixelByte.run`,
    `SyncPixelByte.get_job` or `SyncPixelByte.list_jobs`.  Its properties read the
    latest snapshot; `wait`, `refresh`, `cancel`, `download` and `watch` run on the
    client's event loop and block the calling thread, with `Job`'s arguments,
    results and errors.

    The errors a job raises (`JobFailed`, `JobCancelled`, `WaitTimeout`) carry the
    async `Job` as ``.job``: read its properties (``exc.job.error``), or get a
    `SyncJob` again with ``pb.get_job(exc.job.id)``.

    A handle keeps its client alive; it may be used from any thread.

    .. versionadded:: 0.4.0
    """

    __slots__ = ("_client", "_job")

    def __init__(self, client: SyncPixelByte, job: Job) -> None:
        self._client = client
        self._job = job

    # -- the snapshot ----------------------------------------------------------------

    @property
    def info(self) -> JobInfo:
        """The latest snapshot."""
        return self._job.info

    @property
    def id(self) -> str:
        """The job id."""
        return self._job.id

    @property
    def status(self) -> JobStatus:
        """The status as last seen."""
        return self._job.status

    @property
    def model(self) -> str | None:
        """The model slug."""
        return self._job.model

    @property
    def progress(self) -> float | None:
        """The server's coarse progress (0, 50, 100)."""
        return self._job.progress

    @property
    def cost_micro_cents(self) -> int | None:
        """What the job was charged (1,000,000 = US$1), when known."""
        return self._job.cost_micro_cents

    @property
    def estimated_completion_time(self) -> datetime | None:
        """The server's ETA."""
        return self._job.estimated_completion_time

    @property
    def video_url(self) -> str | None:
        """The output URL (resolved from every documented output shape)."""
        return self._job.video_url

    @property
    def outputs(self) -> tuple[JobOutput, ...]:
        """All outputs."""
        return self._job.outputs

    @property
    def poster_url(self) -> str | None:
        """A still image of the output (``posterImage``, else ``thumbnail``)."""
        return self._job.poster_url

    @property
    def error(self) -> JobErrorInfo | None:
        """Why the job failed, when it did."""
        return self._job.error

    @property
    def done(self) -> bool:
        """Whether the job is in a terminal state."""
        return self._job.done

    @property
    def input(self) -> dict[str, Any] | None:
        """The input this client submitted (``None`` for jobs it found)."""
        return self._job.input

    @property
    def context(self) -> Any:
        """What it was submitted with as ``context=`` (a tracked job), else ``None``."""
        return self._job.context

    @property
    def via_webhook(self) -> bool:
        """Whether the job was submitted with this client's webhook URL."""
        return self._job.via_webhook

    def due(self) -> tuple[str, float, float] | None:
        """What the job's expected end rests on: see `Job.due`."""
        return self._job.due()

    def raise_for_status(self) -> SyncJob:
        """Raise `JobFailed` / `JobCancelled` if the job ended so; else return self."""
        self._job.raise_for_status()
        return self

    def __repr__(self) -> str:
        return f"Sync{self._job!r}"

    # -- calls -----------------------------------------------------------------------

    def refresh(self, *, timeout: float | None = None) -> SyncJob:
        """
        Fetch the job's current state and return this handle: `Job.refresh`.

        Raises:
            NotFound: The job does not exist (or is not yours).

        """
        job = self._job
        self._client._call(lambda: job.refresh(timeout=timeout), "refresh")  # noqa: SLF001 -- its client
        return self

    def wait(
        self,
        timeout: float | None = None,
        *,
        poll: PollPolicy | None = None,
        cancel_on_timeout: bool = False,
    ) -> SyncJob:
        """
        Block until the job succeeds and return this handle: `Job.wait`.

        The deadline is the async wait's own (default 30 minutes), on the client's
        clock.  Ctrl-C (or any exception in this thread) stops waiting and never
        cancels the paid job; the client stays usable.

        Args:
            timeout: Overall deadline in seconds.
            poll: Polling policy for this call; default the client's.
            cancel_on_timeout: On timeout, try to cancel the job and report on
                `WaitTimeout` whether it worked.

        Raises:
            JobFailed: The job failed (``.code``, ``.job.error``).
            JobCancelled: The job was cancelled.
            WaitTimeout: The deadline passed first.

        """
        job = self._job
        self._client._call(  # noqa: SLF001 -- its client
            lambda: job.wait(timeout, poll=poll, cancel_on_timeout=cancel_on_timeout),
            "wait",
        )
        return self

    def watch(
        self, *, timeout: float | None = None, poll: PollPolicy | None = None
    ) -> Iterator[JobInfo]:
        """
        Yield a snapshot now and at every status/progress change: `Job.watch`.

        Each step blocks until the next change.  Leaving the loop early (``break``,
        an exception) stops watching.

        Raises:
            WaitTimeout: The deadline passed before a terminal state.

        """
        steps = self._job.watch(timeout=timeout, poll=poll)
        while True:
            try:
                info = self._client._call(steps.__anext__, "watch")  # noqa: SLF001 -- its client
            except StopAsyncIteration:
                return
            try:
                yield info
            except BaseException:  # left early (break, close, an error): stop watching
                self._client._close_quietly(steps)  # noqa: SLF001 -- its client
                raise

    def cancel(self, *, timeout: float | None = None) -> int | None:
        """
        Cancel the job (only ``pending`` jobs can be) and return the refund.

        Raises:
            InvalidRequestError: ``JOB_CANNOT_BE_CANCELLED`` (already processing/done).

        """
        job = self._job
        return self._client._call(lambda: job.cancel(timeout=timeout), "cancel")  # noqa: SLF001 -- its client

    def download(
        self,
        path: str | os.PathLike[str],
        *,
        timeout: float | None = None,
        overwrite: bool = True,
    ) -> Path:
        """
        Stream the output to *path* (a temporary file, then a rename): `Job.download`.

        Raises:
            MissingOutputError: The job has no usable output URL.
            DownloadError: HTTP error, size mismatch, limit exceeded or path exists.

        """
        job = self._job
        return self._client._call(  # noqa: SLF001 -- its client
            lambda: job.download(path, timeout=timeout, overwrite=overwrite),
            "download",
        )

    def download_poster(
        self,
        path: str | os.PathLike[str],
        *,
        timeout: float | None = None,
        overwrite: bool = True,
    ) -> Path:
        """
        Download the output's poster image to *path*: `Job.download_poster`.

        Raises:
            MissingOutputError: The job has no usable poster or thumbnail URL.
            DownloadError: As for `download`.

        """
        job = self._job
        return self._client._call(  # noqa: SLF001 -- its client
            lambda: job.download_poster(path, timeout=timeout, overwrite=overwrite),
            "download",
        )
