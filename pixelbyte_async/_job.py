"""
The `Job` handle: refresh, wait, watch, cancel, download.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import AsyncIterator
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import attrs

from ._clock import Clock, sleep_or_until
from ._config import ClientConfig
from ._errors import (
    JobCancelled,
    JobFailed,
    MissingOutputError,
    PixelByteError,
    WaitTimeout,
)
from ._inputs import PRICES
from ._models import JobErrorInfo, JobInfo, JobOutput, JobStatus
from ._polling import PollPolicy
from ._serde import decode_job, url_problem


if TYPE_CHECKING:
    from ._signing import WebhookEvent


__all__ = ["Job", "JobClient", "WebhookSource"]

log = logging.getLogger("pixelbyte_async")


class WebhookSource(Protocol):
    """
    Where a job's webhook delivery comes from: a `WebhookReceiver` (or a hub).

    One future per job id is shared by every waiter; `release` drops it when the
    last waiter stops waiting, so nothing is kept per finished job.
    """

    def future_for(self, job_id: str) -> asyncio.Future[WebhookEvent]:
        """A future resolved by *job_id*'s delivery (done if it came already)."""
        ...

    def release(self, job_id: str) -> None:
        """Stop waiting for *job_id* (one call per `future_for`)."""
        ...

    def event_for(self, job_id: str) -> WebhookEvent | None:
        """The delivery for *job_id*, if one arrived and is still remembered."""
        ...


class JobClient(Protocol):
    """
    Everything a `Job` needs from the client that made it, and nothing else.

    `PixelByte` builds one such object and hands it to every job it makes; a job
    never touches the client itself.  That keeps `Job` testable on its own and the
    client free to change everything behind these few members.
    """

    @property
    def clock(self) -> Clock:
        """The client's time source (deadlines, ETAs, pauses)."""
        ...

    @property
    def config(self) -> ClientConfig:
        """The client's configuration (``timeout``, ``poll``)."""
        ...

    @property
    def webhooks(self) -> WebhookSource | None:
        """Where deliveries come from, when the client uses webhooks (and can now)."""
        ...

    def outage(self) -> asyncio.Future[None] | None:
        """A future resolved when the webhook source stops delivering (a hub)."""
        ...

    def uniform(self, low: float, high: float) -> float:
        """A random number for polling jitter (injectable in tests)."""
        ...

    async def request(
        self, method: str, path: str, *, timeout: float | None = None
    ) -> tuple[Any, str | None]:
        """One API call under one deadline: ``(payload, request_id)``."""
        ...

    async def download(
        self, url: str, path: Path, *, timeout: float | None, overwrite: bool
    ) -> Path:
        """Stream *url* into *path* atomically."""
        ...

    def finished(self, job: Job) -> None:
        """Tell the client *job* has ended (its job slot is free)."""
        ...


class Job:
    """
    A handle on one job: its latest snapshot plus the calls that act on it.

    You get one from `PixelByte.submit`, `PixelByte.get_job` or
    `PixelByte.list_jobs`.  The handle updates itself in place (`refresh`, `wait`,
    `watch`); `info` is the latest immutable `JobInfo` snapshot.

    .. versionadded:: 0.1.0
    """

    def __init__(
        self,
        client: JobClient,
        info: JobInfo,
        *,
        input: dict[str, Any] | None = None,  # noqa: A002 -- the API's field name
        submitted_at: float | None = None,
    ) -> None:
        self._client = client
        self._info = info
        self.input = input
        self._submitted_at = (
            submitted_at if submitted_at is not None else client.clock.time()
        )
        self._watchers = 0
        self._last_checked = client.clock.time()
        # Submitted with this client's webhook URL, so wait for the delivery.
        self.via_webhook = False
        self._needs_fetch = False
        self._last_body: Any = None

    # -- snapshot accessors ------------------------------------------------------

    @property
    def info(self) -> JobInfo:
        """The latest snapshot."""
        return self._info

    @property
    def id(self) -> str:
        """The job id."""
        return self._info.id

    @property
    def status(self) -> JobStatus:
        """The status as last seen."""
        return self._info.status

    @property
    def model(self) -> str | None:
        """The model slug."""
        return self._info.model

    @property
    def progress(self) -> float | None:
        """The server's coarse progress (0, 50, 100)."""
        return self._info.progress

    @property
    def cost_micro_cents(self) -> int | None:
        """What the job was charged (1,000,000 = US$1), when known."""
        return self._info.cost_micro_cents

    @property
    def estimated_completion_time(self) -> datetime | None:
        """The server's ETA."""
        return self._info.estimated_completion_time

    @property
    def video_url(self) -> str | None:
        """The output URL (resolved from every documented output shape)."""
        return self._info.video_url

    @property
    def outputs(self) -> tuple[JobOutput, ...]:
        """All outputs."""
        return self._info.outputs

    @property
    def error(self) -> JobErrorInfo | None:
        """Why the job failed, when it did."""
        return self._info.error

    @property
    def done(self) -> bool:
        """Whether the job is in a terminal state."""
        return self._info.status.is_terminal

    def __repr__(self) -> str:
        return (
            f"Job(id={self.id!r}, status={self.status.value!r}, "
            f"model={self.model!r}, cost_micro_cents={self.cost_micro_cents!r})"
        )

    # -- updates -----------------------------------------------------------------

    def _observe(self, info: JobInfo, *, from_webhook: bool = False) -> bool:
        """Take a new snapshot; return whether the status or progress changed."""
        old = self._info
        if old.status.is_terminal and not info.status.is_terminal:
            # Out-of-order news (a stale poll after a delivery) never undoes an end.
            return False
        self._info = info.merged_over(old)
        if not from_webhook:
            self._last_checked = self._client.clock.time()
        # A completed delivery without a usable URL: fetch the job once.  (The
        # decoder only picks usable URLs, but a snapshot may be built by hand.)
        self._needs_fetch = (
            from_webhook
            and self._info.status is JobStatus.COMPLETED
            and (
                self._info.video_url is None
                or url_problem(self._info.video_url) is not None
            )
        )
        if self._info.status.is_terminal:
            self._client.finished(self)
        return (old.status, old.progress) != (self._info.status, self._info.progress)

    async def refresh(self, *, timeout: float | None = None) -> Job:
        """
        Fetch the job's current state (GET /v1/jobs/{id}) and return this handle.

        Raises:
            NotFound: The job does not exist (or is not yours).

        """
        data, rid = await self._client.request(
            "GET", f"/v1/jobs/{self.id}", timeout=timeout
        )
        self._observe_body(data, rid)
        return self

    def _observe_body(self, data: Any, request_id: str | None) -> None:
        """Take a GET body; one identical to the last is not decoded again."""
        if data is not None and data == self._last_body:
            self._last_checked = self._client.clock.time()
            return
        self._observe(decode_job(data, request_id, fallback=self._info))
        self._last_body = data

    def _eta(self) -> float | None:
        info = self._info
        if info.estimated_completion_time is not None:
            return info.estimated_completion_time.timestamp()
        price = PRICES.get(info.model or "")
        if price is not None and price.typical_seconds is not None:
            start = (
                info.created_at.timestamp()
                if info.created_at is not None
                else self._submitted_at
            )
            return start + price.typical_seconds
        return None

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
        clock = self._client.clock
        if self.via_webhook and self._client.webhooks is not None:
            return policy.safety_delay(now=clock.time(), eta=self._eta())
        return policy.next_delay(
            now=clock.time(),
            eta=self._eta(),
            previous=previous,
            rng=self._client.uniform,
        )

    def _sweep_due(self, policy: PollPolicy) -> float:
        """Wall time at which an unwatched job should be checked (slot sweeps)."""
        eta = self._eta()
        if self.via_webhook and self._client.webhooks is not None:
            later = self._last_checked + policy.webhook_interval
            return later if eta is None else max(eta + policy.webhook_grace, later)
        return self._last_checked + policy.next_delay(
            now=self._last_checked, eta=eta, previous=None, rng=lambda low, _: low
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
        return before != (self._info.status, self._info.progress), delay

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

        Polling is adaptive (see `PollPolicy`): a 240 s Kling job costs about six
        GETs and its completion is noticed within ``near_interval`` seconds.
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

        The API key is only sent to the API's own origin, never to the CDN.  The size
        is checked against ``Content-Length`` and the client's ``max_download_bytes``.

        Raises:
            MissingOutputError: The job has no usable output URL (not completed?, or
                one that is not an http(s) URL with a host and a valid port: the
                message names it); nothing was requested.
            DownloadError: HTTP error, size mismatch, limit exceeded or path exists.

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
        return await self._client.download(
            url, Path(path), timeout=timeout, overwrite=overwrite
        )


def _shown(url: str) -> str:
    return url if len(url) <= 300 else url[:300] + "..."  # noqa: PLR2004 -- readable
