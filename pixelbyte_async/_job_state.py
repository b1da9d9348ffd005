"""
A job's state: `JobState` (the snapshot and its accessors), and what a job needs of its client.

`JobState` holds the latest `JobInfo` and takes new ones in (`_observe`: an end is
never undone by stale news; seeing the end tells the client, which frees the job's
slot).  `Job` builds on it with the calls that act on the job.  `JobClient` and
`WebhookSource` are the only things a job sees of the client that made it.
"""

from __future__ import annotations

import asyncio
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from ._clock import Clock
from ._config import ClientConfig
from ._inputs import PRICES
from ._models import JobErrorInfo, JobInfo, JobOutput, JobStatus
from ._polling import EndWindow
from ._serde import decode_job, url_problem


if TYPE_CHECKING:
    from ._signing import WebhookEvent
    from ._telemetry import JobTrace


__all__ = ["JobClient", "JobState", "WebhookSource"]


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

    def finished(self, job: JobState) -> None:
        """Tell the client *job* has ended (its job slot is free)."""
        ...

    def end_window(self, basis: str, *, start: float, eta: float) -> EndWindow:
        """When a job due at *eta* will end, after this client's jobs of *basis*."""
        ...

    def undelivered(self, job_id: str, late: float) -> None:
        """*job_id* ended *late* seconds ago and its webhook delivery never came."""
        ...


class JobState:
    """The latest snapshot of a job (`info`) and its accessors; see `Job`."""

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
        #: What it was submitted with as ``context=`` (a tracked job), else ``None``.
        self.context: Any = None
        self._needs_fetch = False
        self._last_body: Any = None
        #: Its ``pixelbyte.job`` span and metrics, when this process submitted it.
        self._trace: JobTrace | None = None

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
    def poster_url(self) -> str | None:
        """
        The output's still image for previews (``posterImage``, else ``thumbnail``).

        The first usable one among the outputs (see `video_url`), or ``None``.

        .. versionadded:: 0.5.0
        """
        for output in self._info.outputs:
            for url in (output.poster_image, output.thumbnail):
                if url is not None and url_problem(url) is None:
                    return url
        return None

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
        trace = self._trace
        if trace is not None and old.status is not self._info.status:
            trace.status(
                old.status.value,
                self._info.status.value,
                via="webhook" if from_webhook else "poll",
            )
        if self._info.status.is_terminal:
            self._end_trace()
            self._client.finished(self)
        return (old.status, old.progress) != (self._info.status, self._info.progress)

    def _traced(self, trace: JobTrace) -> None:
        """Record this job, just created by a submit, on *trace* until its end."""
        self._trace = trace
        trace.created(self.id, self._info.status.value, self._info.cost_micro_cents)
        if self.done:
            self._end_trace()

    def _end_trace(self) -> None:
        trace = self._trace
        if trace is None:
            return
        self._trace = None
        info = self._info
        trace.ended(
            info.status.value,
            cost=info.cost_micro_cents,
            charged=info.status is JobStatus.COMPLETED,
            now=self._client.clock.monotonic(),
        )

    def _observe_body(self, data: Any, request_id: str | None) -> None:
        """Take a GET body; one identical to the last is not decoded again."""
        last = self._last_body
        # The pipeline hands out the same payload for an unchanged body.
        if data is not None and (data is last or data == last):
            self._last_checked = self._client.clock.time()
            return
        self._observe(decode_job(data, request_id, fallback=self._info))
        self._last_body = data

    def due(self) -> tuple[str, float, float] | None:
        """
        What this job's expected end rests on: ``(basis, start, eta)``.

        The API's ETA (basis: the model), else the model's typical duration
        (basis: the model and ``" (typical)"``: a different yardstick).
        """
        info = self._info
        model = info.model or ""
        start = (
            info.created_at.timestamp()
            if info.created_at is not None
            else self._submitted_at
        )
        if info.estimated_completion_time is not None:
            return model, start, info.estimated_completion_time.timestamp()
        price = PRICES.get(model)
        if price is not None and price.typical_seconds is not None:
            return f"{model} (typical)", start, start + price.typical_seconds
        return None

    def _window(self) -> EndWindow | None:
        """When this job is expected to end, and the span it may end in."""
        due = self.due()
        if due is None:
            return None
        basis, start, eta = due
        return self._client.end_window(basis, start=start, eta=eta)
