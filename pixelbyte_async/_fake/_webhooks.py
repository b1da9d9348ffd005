"""
Webhook delivery from the fake, signed exactly as the API contract (section 8) says.

Deliveries happen when asked (`FakePixelByte.deliver_webhooks`) or from one background
task (``auto_webhooks=True``, `WebhookSender.run`) that sleeps until the next delivery
is due, as the API sends each webhook when its job ends; job state stays lazy either
way.  Failed attempts are retried after 1, 4, 16, 64 and 256 *virtual* seconds, then
given up.
"""

from __future__ import annotations

import asyncio
import collections
import hashlib
import hmac
import json
import logging
import random
from typing import Any, Literal, TypeAlias

import aiohttp

from ._catalog import MODELS
from ._jobs import FakeJob, render_output
from ._records import WebhookDelivery
from ._state import FakeState
from ._util import iso


__all__ = ["RETRY_DELAYS", "WebhookFault", "WebhookOrder", "WebhookSender", "sign"]

#: What can go wrong with one delivery (see `FakePixelByte.inject_webhook`).
WebhookFault: TypeAlias = Literal[
    "duplicate", "drop", "bad_signature", "stale_status", "early"
]
#: In which order due deliveries go out.
WebhookOrder: TypeAlias = Literal["job", "reverse", "shuffle"]

#: Virtual seconds between attempts; one first attempt plus one retry per delay.
RETRY_DELAYS = (1.0, 4.0, 16.0, 64.0, 256.0)
_TIMEOUT = aiohttp.ClientTimeout(total=30)
_DELIVERABLE = frozenset({"completed", "failed"})
_log = logging.getLogger("pixelbyte_async.testing")


def sign(secret: str, timestamp: str, body: bytes) -> str:
    """
    Return the ``X-PixelByte-Signature`` value for *body* sent at *timestamp*.

    Args:
        secret: The webhook secret.
        timestamp: The ``X-PixelByte-Timestamp`` value (Unix seconds as a string).
        body: The exact request body.

    """
    message = timestamp.encode() + b"." + body
    return "sha256=" + hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()


class WebhookSender:
    """Delivers due webhooks for one `FakeState`, with the documented retries."""

    def __init__(self, state: FakeState) -> None:
        self.state = state
        self.attempts: dict[str, int] = {}
        self.next_at: dict[str, float] = {}
        self._session: aiohttp.ClientSession | None = None
        self._lock = asyncio.Lock()
        self.faults: collections.deque[WebhookFault] = collections.deque()
        self.order: WebhookOrder = "job"
        self._rng = random.Random(0)  # noqa: S311 -- test ordering, not security
        #: While `run` sleeps: the future that wakes it, and the virtual time it
        #: plans to wake at (a job due sooner wakes it through `notice`).
        self._nudge: asyncio.Future[None] | None = None
        self._wake_at = 0.0
        state.on_webhook_due = self.notice

    def payload(self, job: FakeJob, status: str) -> dict[str, Any]:
        """Return the webhook body of a terminal *job*."""
        body: dict[str, Any] = {
            "jobId": job.id,
            "requestId": job.request_id,
            "status": status,
        }
        if status == "completed":
            output, outputs = render_output(job, MODELS[job.model], self.state.cdn_url)
            body["output"] = output
            if outputs is not None:
                body["outputs"] = outputs
        else:
            body["error"] = {
                "code": job.script.error_code,
                "message": job.script.error_message,
            }
        body["completedAt"] = iso(job.finished_at)
        return body

    def _finish(self, job: FakeJob) -> None:
        """*job*'s delivery is over (delivered, dropped or given up)."""
        self.state.awaiting_webhook.pop(job.id, None)

    def due(self) -> list[FakeJob]:
        """Return the jobs whose next webhook attempt is due now."""
        return self._scan()[0]

    def _scan(self) -> tuple[list[FakeJob], float | None]:
        """Return the jobs due now, and when (virtual time) the next other one is."""
        self.state.settle()
        now = self.state.now()
        due: list[FakeJob] = []
        soonest: float | None = None
        for job in self.state.awaiting_webhook.values():
            at = self.next_at.get(job.id, job.finished_at)
            if now >= at and job.status_at(now) in _DELIVERABLE:
                due.append(job)
            elif soonest is None or at < soonest:
                soonest = at
        return due, soonest

    async def deliver_due(self) -> list[WebhookDelivery]:
        """Attempt every due delivery once, in `order`; return the attempts."""
        return (await self._deliver_due())[0]

    async def _deliver_due(self) -> tuple[list[WebhookDelivery], float | None]:
        """`deliver_due`, and when the next delivery will be due (virtual time)."""
        async with self._lock:
            jobs, soonest = self._scan()
            if self.order == "reverse":
                jobs.reverse()
            elif self.order == "shuffle":
                self._rng.shuffle(jobs)
            made: list[WebhookDelivery] = []
            for job in jobs:
                made.extend(await self._attempt(job))
                retry_at = self.next_at.get(job.id)
                if job.id in self.state.awaiting_webhook and retry_at is not None:
                    soonest = retry_at if soonest is None else min(soonest, retry_at)
            return made, soonest

    async def run(self, poll: float) -> None:
        """
        Deliver each webhook when it falls due, until cancelled.

        With a running clock (``time_scale > 0``) the task sleeps until the next
        delivery is due, *poll* real seconds at most; a job that becomes due sooner
        (created, or ended by `FakePixelByte.complete_now`) wakes it.  With a frozen
        clock only `advance` moves time, so it looks every *poll* seconds.
        """
        loop = asyncio.get_running_loop()
        while True:
            soonest: float | None = None
            try:
                soonest = (await self._deliver_due())[1]
            except Exception:  # noqa: BLE001 -- the background sender must outlive any one failure
                _log.exception("webhook delivery failed")
            now, scale = self.state.now(), self.state.clock.time_scale
            delay = poll
            if soonest is not None and scale > 0:
                delay = min(poll, max(0.0, (soonest - now) / scale))
            self._wake_at = now + delay * scale
            self._nudge = nudge = loop.create_future()
            timer = loop.call_later(delay, _wake, nudge)
            try:
                await nudge
            finally:
                timer.cancel()
                self._nudge = None

    def notice(self, job: FakeJob) -> None:
        """*job*'s delivery may be due before `run` planned to wake: wake it."""
        nudge = self._nudge
        if nudge is not None and job.finished_at < self._wake_at:
            _wake(nudge)

    async def deliver_now(self, job_id: str) -> list[WebhookDelivery]:
        """Deliver *job_id*'s webhook at once (the ``early`` fault)."""
        async with self._lock:
            job = self.state.jobs[job_id]
            if job.id not in self.state.awaiting_webhook:  # none, or it is over
                return []
            return await self._attempt(job)

    def _signed(
        self, body: bytes, now: float, *, forged: bool = False
    ) -> dict[str, str]:
        timestamp = str(int(now))
        secret = self.state.webhook_secret + ("-forged" if forged else "")
        return {
            "Content-Type": "application/json",
            "User-Agent": "PixelByte-Webhooks/1.0 (FakePixelByte)",
            "X-PixelByte-Timestamp": timestamp,
            "X-PixelByte-Signature": sign(secret, timestamp, body),
        }

    async def _post(
        self,
        job: FakeJob,
        body: bytes,
        headers: dict[str, str],
        *,
        attempt: int,
        now: float,
        note: str | None = None,
    ) -> WebhookDelivery:
        assert job.webhook_url is not None  # noqa: S101 -- only jobs with a webhook get here
        http_status: int | None = None
        error: str | None = note
        if note != "dropped (injected)":
            if self._session is None:
                self._session = aiohttp.ClientSession(timeout=_TIMEOUT)
            try:
                async with self._session.post(
                    job.webhook_url, data=body, headers=headers
                ) as response:
                    http_status = response.status
                    await response.read()
            except (aiohttp.ClientError, TimeoutError) as exc:
                error = f"{type(exc).__name__}: {exc}"
        delivery = WebhookDelivery(
            job_id=job.id,
            url=job.webhook_url,
            attempt=attempt,
            time=now,
            headers=headers,
            body=body,
            status=http_status,
            error=error,
        )
        self.state.webhook_deliveries.append(delivery)
        return delivery

    def _encode(self, job: FakeJob, status: str) -> bytes:
        payload = self.payload(job, status)
        return json.dumps(payload, separators=(",", ":")).encode()

    async def _attempt(self, job: FakeJob) -> list[WebhookDelivery]:
        now = self.state.now()
        status = job.status_at(now)
        body = self._encode(job, status)
        attempt = self.attempts.get(job.id, 0) + 1
        self.attempts[job.id] = attempt
        fault = self.faults.popleft() if self.faults else None
        made: list[WebhookDelivery] = []
        if fault == "drop":
            # Lost on the way: the API believes it was delivered and never retries.
            made.append(
                await self._post(
                    job,
                    body,
                    self._signed(body, now),
                    attempt=attempt,
                    now=now,
                    note="dropped (injected)",
                )
            )
            self._finish(job)
            return made
        if fault == "bad_signature":
            made.append(
                await self._post(
                    job,
                    body,
                    self._signed(body, now, forged=True),
                    attempt=attempt,
                    now=now,
                )
            )
        genuine = await self._post(
            job, body, self._signed(body, now), attempt=attempt, now=now
        )
        made.append(genuine)
        if fault == "duplicate":
            made.append(
                await self._post(
                    job, body, self._signed(body, now), attempt=attempt, now=now
                )
            )
        elif fault == "stale_status":
            stale = json.dumps(
                {"jobId": job.id, "requestId": job.request_id, "status": "processing"},
                separators=(",", ":"),
            ).encode()
            made.append(
                await self._post(
                    job, stale, self._signed(stale, now), attempt=attempt, now=now
                )
            )
        if genuine.ok or attempt > len(RETRY_DELAYS):
            self._finish(job)
        else:
            self.next_at[job.id] = now + RETRY_DELAYS[attempt - 1]
        return made

    async def close(self) -> None:
        """Close the HTTP session, if one was opened."""
        self.state.on_webhook_due = None
        if self._session is not None:
            await self._session.close()
            self._session = None


def _wake(nudge: asyncio.Future[None]) -> None:
    if not nudge.done():
        nudge.set_result(None)
