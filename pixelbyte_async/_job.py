"""
The `Job` handle: refresh, wait, watch, cancel, download.
"""

from __future__ import annotations

import logging
import os
from collections.abc import AsyncIterator, Callable
from pathlib import Path, PurePosixPath
from urllib.parse import urlsplit

import anyio
import attrs

from ._clock import sleep_or_until
from ._errors import (
    JobCancelled,
    JobFailed,
    MissingOutputError,
    PixelByteError,
    WaitTimeout,
)
from ._job_state import JobClient, JobState, WebhookSource
from ._models import JobErrorInfo, JobInfo, JobStatus
from ._polling import PollPolicy
from ._serde import decode_job, url_problem


__all__ = ["Job", "JobClient", "WebhookSource"]

log = logging.getLogger("pixelbyte_async")

#: Seconds after a job's end by which its webhook delivery should have come.
_DELIVERY_LATE = 30.0


class Job(JobState):
    """
    A handle on one job: its latest snapshot plus the calls that act on it.

    You get one from `PixelByte.submit`, `PixelByte.get_job` or
    `PixelByte.list_jobs`.  The handle updates itself in place (`refresh`, `wait`,
    `watch`); `info` is the latest immutable `JobInfo` snapshot.

    .. versionadded:: 0.1.0
    """

    async def refresh(self, *, timeout: float | None = None) -> Job:
        """
        Fetch the job's current state (GET /v1/jobs/{id}) and return this handle.

        Raises:
            NotFound: The job does not exist (or is not yours).

        """
        trace = self._trace
        if trace is None:
            data, rid = await self._client.request(
                "GET", f"/v1/jobs/{self.id}", timeout=timeout
            )
        else:
            trace.event("pixelbyte.poll", {"pixelbyte.job.status": self.status.value})
            with trace.current():
                data, rid = await self._client.request(
                    "GET", f"/v1/jobs/{self.id}", timeout=timeout
                )
        self._observe_body(data, rid)
        return self

    def raise_for_status(self) -> Job:
        """
        Raise `JobFailed` / `JobCancelled` if the job ended so; else return self.
        """
        status = self._info.status
        raw = self._info.raw_status
        # A synonym ("expired", "canceled_by_user" ...) is worth telling the reader.
        said = (
            f" (status {raw[:40]!r})" if raw is not None and raw != status.value else ""
        )
        if status is JobStatus.FAILED:
            err = self._info.error or JobErrorInfo()
            code = err.code or "UNKNOWN"
            msg = f"job {self.id} failed{said}: {code}: {err.message or 'no message'}"
            raise JobFailed(msg, job=self, code=err.code)
        if status is JobStatus.CANCELLED:
            raise JobCancelled(
                f"job {self.id} was cancelled{said}", job=self, code=None
            )
        return self

    async def _poll_once(self, deadline: float) -> None:
        """Refresh within *deadline*; transient errors are logged, not raised."""
        clock = self._client.clock
        budget = min(self._client.config.timeout, deadline - clock.monotonic())
        if budget <= 0:
            return
        try:
            await self.refresh(timeout=budget)
        except PixelByteError as exc:
            if not exc.retryable:
                raise
            log.warning("polling job %s failed transiently: %s", self.id, exc)

    def _next_delay(self, policy: PollPolicy, previous: float | None) -> float:
        return self._delay_at(policy, self._client.clock.time(), previous)

    def _delay_at(
        self,
        policy: PollPolicy,
        now: float,
        previous: float | None,
        rng: Callable[[float, float], float] | None = None,
    ) -> float:
        window = self._window()
        if self.via_webhook and self._client.webhooks is not None:
            eta = None if window is None else window.expected
            return policy.safety_delay(now=now, eta=eta)
        return policy.next_delay(
            now=now,
            eta=None if window is None else window.expected,
            previous=previous,
            rng=rng or self._client.uniform,
            earliest=None if window is None else window.earliest,
            latest=None if window is None else window.latest,
        )

    def _sweep_due(self, policy: PollPolicy) -> float:
        """Wall time at which an unwatched job should be checked (slot sweeps)."""
        if self.via_webhook and self._client.webhooks is not None:
            window = self._window()
            later = self._last_checked + policy.webhook_interval
            if window is None:
                return later
            return max(window.expected + policy.webhook_grace, later)
        return self._last_checked + self._delay_at(
            policy, self._last_checked, None, rng=lambda low, _: low
        )

    async def _pause(self, seconds: float) -> None:
        """Sleep *seconds*, or less if this job's webhook delivery arrives."""
        clock = self._client.clock
        receiver = self._client.webhooks
        if receiver is None:
            await clock.sleep(seconds)
            return
        future = receiver.future_for(self.id)
        try:
            # A hub going down wakes us too: from then on, we poll.
            await sleep_or_until(clock, seconds, future, self._client.outage())
        finally:
            receiver.release(self.id)

    def _take_delivered(self) -> bool:
        receiver = self._client.webhooks
        if receiver is None:
            return False
        event = receiver.event_for(self.id)
        if event is None:
            return False
        if self._trace is not None and not self.done:
            self._trace.event(
                "pixelbyte.delivery", {"pixelbyte.job.status": event.job.status.value}
            )
        self._observe(event.job, from_webhook=True)
        return True

    async def _step(
        self, policy: PollPolicy, deadline: float, previous: float | None
    ) -> tuple[bool, float | None]:
        """Wait per *policy* for a delivery or the next GET.  Return (changed, delay)."""
        clock = self._client.clock
        before = (self._info.status, self._info.progress)
        if self._take_delivered():
            return before != (self._info.status, self._info.progress), previous
        delay = self._next_delay(policy, previous)
        remaining = deadline - clock.monotonic()
        await self._pause(min(delay, max(0.0, remaining)))
        if not self._take_delivered() and clock.monotonic() < deadline:
            await self._poll_once(deadline)
            self._check_delivery()
        return before != (self._info.status, self._info.progress), delay

    def _check_delivery(self) -> None:
        """A poll found this job ended long ago: was its delivery expected here?"""
        client = self._client
        done = self._info.completed_at
        if not (self.done and self.via_webhook and client.webhooks is not None):
            return
        if done is None:
            return
        late = client.clock.time() - done.timestamp()
        if late >= _DELIVERY_LATE:
            client.undelivered(self.id, late)

    async def _fetch_if_needed(self, deadline: float) -> None:
        if self._needs_fetch:
            self._needs_fetch = False
            await self._poll_once(max(deadline, self._client.clock.monotonic() + 1))

    async def wait(
        self,
        timeout: float | None = None,
        *,
        poll: PollPolicy | None = None,
        cancel_on_timeout: bool = False,
    ) -> Job:
        """
        Wait until the job succeeds and return this handle.

        Polling is adaptive (see `PollPolicy`): a 240 s Kling job costs about five
        GETs once the client has seen a few jobs of its model end (about twelve
        before), and its completion is noticed within ``unsure_interval`` seconds
        (within a second where the model's jobs end as expected).
        Cancelling the awaiting task stops polling; it never cancels the paid job.

        Args:
            timeout: Overall deadline in seconds; default the policy's
                ``default_timeout`` (30 minutes), so a wait is never unbounded.
            poll: Polling policy for this call; default the client's.
            cancel_on_timeout: On timeout, try to cancel the job (only pending jobs
                can be cancelled) and report on `WaitTimeout` whether it worked.

        Raises:
            JobFailed: The job failed (``.code``, ``.job.error``).
            JobCancelled: The job was cancelled.
            WaitTimeout: The deadline passed first (``.job`` is the last state).

        """
        policy = poll or self._client.config.poll
        clock = self._client.clock
        budget = policy.default_timeout if timeout is None else timeout
        deadline = clock.monotonic() + budget
        previous: float | None = None
        self._watchers += 1
        try:
            self._take_delivered()
            while not self.done:
                if clock.monotonic() >= deadline:
                    break
                _, previous = await self._step(policy, deadline, previous)
            await self._fetch_if_needed(deadline)
        finally:
            self._watchers -= 1
        if self.done:
            return self.raise_for_status()
        raise await self._timed_out(budget, cancel=cancel_on_timeout)

    async def _timed_out(self, budget: float, *, cancel: bool) -> WaitTimeout:
        msg = f"job {self.id} still {self.status.value} after {budget:g}s"
        if not cancel:
            return WaitTimeout(msg, job=self)
        try:
            refunded = await self.cancel()
        except PixelByteError as exc:
            log.info(
                "cancel_on_timeout: job %s could not be cancelled: %s", self.id, exc
            )
            return WaitTimeout(
                f"{msg}; cancelling failed ({exc})", job=self, cancel_attempted=True
            )
        return WaitTimeout(
            f"{msg}; cancelled, refunded {refunded} micro-cents",
            job=self,
            cancel_attempted=True,
            cancelled=True,
            refunded_micro_cents=refunded,
        )

    async def watch(
        self, *, timeout: float | None = None, poll: PollPolicy | None = None
    ) -> AsyncIterator[JobInfo]:
        """
        Yield a snapshot now and at every status/progress change until terminal.

        For progress displays.  A failed job is yielded, not raised; call
        `raise_for_status` (or `wait`) afterwards.

        Raises:
            WaitTimeout: The deadline passed before a terminal state.

        """
        policy = poll or self._client.config.poll
        clock = self._client.clock
        budget = policy.default_timeout if timeout is None else timeout
        deadline = clock.monotonic() + budget
        previous: float | None = None
        self._watchers += 1
        try:
            self._take_delivered()
            yield self._info
            while not self.done:
                if clock.monotonic() >= deadline:
                    raise await self._timed_out(budget, cancel=False)
                changed, previous = await self._step(policy, deadline, previous)
                if self._info.status.is_terminal:
                    await self._fetch_if_needed(deadline)
                if changed:
                    yield self._info
        finally:
            self._watchers -= 1

    async def cancel(self, *, timeout: float | None = None) -> int | None:
        """
        Cancel the job (only ``pending`` jobs can be) and return the refund.

        Returns:
            ``refundedMicroCents`` from the API (``None`` if it did not say).

        Raises:
            InvalidRequestError: ``JOB_CANNOT_BE_CANCELLED`` (already processing/done).

        """
        data, rid = await self._client.request(
            "POST", f"/v1/jobs/{self.id}/cancel", timeout=timeout
        )
        info = decode_job(data, rid)
        if info.status is JobStatus.UNKNOWN and info.raw_status is None:
            info = attrs.evolve(info, status=JobStatus.CANCELLED)
        self._observe(info)
        return info.refunded_micro_cents

    async def download(
        self,
        path: str | os.PathLike[str],
        *,
        timeout: float | None = None,
        overwrite: bool = True,
    ) -> Path:
        """
        Stream the output to *path*: a temporary file, then an atomic rename.

        If *path* is an existing folder, the file goes into it as ``<job id>.mp4``
        (the URL's extension, if it has one); the path written is returned.

        The API key is only sent to the API's own origin, never to the CDN.  The size
        is checked against ``Content-Length`` and the client's ``max_download_bytes``.

        Raises:
            MissingOutputError: The job has no usable output URL (not completed?, or
                one that is not an http(s) URL with a host and a valid port: the
                message names it); nothing was requested.
            DownloadError: HTTP error, size mismatch, limit exceeded, path exists, or
                the file could not be written (the message names the path).

        """
        url = self.video_url
        if url is None:
            raw = self._info.raw_output_url
            if raw is not None:
                raise MissingOutputError(
                    f"job {self.id} has no usable output URL: {_shown(raw)!r} "
                    f"({url_problem(raw) or 'unusable'})"
                )
            raise MissingOutputError(
                f"job {self.id} ({self.status.value}) has no output URL to download"
            )
        problem = url_problem(url)
        if problem is not None:
            raise MissingOutputError(
                f"job {self.id} has no usable output URL: {_shown(url)!r} ({problem})"
            )
        return await self._fetch(
            url, path, f"{self.id}{_extension(url, '.mp4')}", timeout, overwrite
        )

    async def download_poster(
        self,
        path: str | os.PathLike[str],
        *,
        timeout: float | None = None,
        overwrite: bool = True,
    ) -> Path:
        """
        Download the output's poster image (`poster_url`) to *path*, like `download`.

        If *path* is an existing folder, the file goes into it as
        ``<job id>.poster.jpg`` (the URL's extension, if it has one).

        Raises:
            MissingOutputError: The job has no usable poster or thumbnail URL.
            DownloadError: As for `download`.

        .. versionadded:: 0.5.0

        """
        url = self.poster_url
        if url is None:
            raise MissingOutputError(
                f"job {self.id} ({self.status.value}) has no poster image to download"
            )
        return await self._fetch(
            url, path, f"{self.id}.poster{_extension(url, '.jpg')}", timeout, overwrite
        )

    async def _fetch(
        self,
        url: str,
        path: str | os.PathLike[str],
        name: str,
        timeout: float | None,
        overwrite: bool,
    ) -> Path:
        """Download *url* to *path*, or to *path*/*name* when *path* is a folder."""
        target = Path(path)
        if await anyio.Path(target).is_dir():
            # A folder: the file is named after the job (as the CLI names it).
            target /= name
        return await self._client.download(
            url, target, timeout=timeout, overwrite=overwrite
        )


def _extension(url: str, default: str) -> str:
    """The extension of *url*'s path (``.mp4``), or *default* when it has none."""
    suffix = PurePosixPath(urlsplit(url).path).suffix
    return suffix if 1 < len(suffix) <= 5 else default  # noqa: PLR2004 -- an extension


def _shown(url: str) -> str:
    return url if len(url) <= 300 else url[:300] + "..."  # noqa: PLR2004 -- readable
