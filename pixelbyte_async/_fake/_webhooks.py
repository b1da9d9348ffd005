"""
Webhook delivery from the fake, signed exactly as the API contract (section 8) says.

Deliveries happen when asked (`FakePixelByte.deliver_webhooks`) or from one background
task (``auto_webhooks=True``, `WebhookSender.run`) that sleeps until the next delivery
is due, as the API sends each webhook when its job ends; job state stays lazy either
way.  Each attempt is a task of its own, at most `MAX_IN_FLIGHT` at once, so a slow
receiver holds up no other job's deliveries.  An attempt fails unless the receiver
answers 2xx within 30 seconds (redirects are not followed); a failed attempt is
retried 1, 4, 16, 64 and 256 *virtual* seconds after it *ended*, then given up.

Timeouts are measured on the fake's clock when that clock runs by itself
(``time_scale > 0``: 30 virtual seconds, yet never under `REAL_TIMEOUT_FLOOR` of real
time, so a busy event loop is not taken for a slow receiver) or only moves when told
(``autojump=False``: 30 seconds of `advance`).  An autojump clock leaps whenever
anybody sleeps, a delivery on the wire included, so there the cut is 30 real seconds.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import hashlib
import hmac
import json
import logging
import math
import random
from typing import Any, Literal, TypeAlias

import aiohttp

from pixelbyte_async._clock import Timer, VirtualClock

from ._catalog import MODELS
from ._jobs import FakeJob, render_output
from ._records import WebhookDelivery
from ._state import FakeState
from ._util import iso


__all__ = [
    "ATTEMPT_TIMEOUT",
    "MAX_IN_FLIGHT",
    "REAL_TIMEOUT_FLOOR",
    "RETRY_DELAYS",
    "WebhookFault",
    "WebhookOrder",
    "WebhookSender",
    "sign",
]

#: What can go wrong with one delivery (see `FakePixelByte.inject_webhook`).
WebhookFault: TypeAlias = Literal[
    "duplicate", "drop", "bad_signature", "stale_status", "early"
]
#: In which order due deliveries go out.
WebhookOrder: TypeAlias = Literal["job", "reverse", "shuffle"]

#: Virtual seconds between attempts; one first attempt plus one retry per delay.
RETRY_DELAYS = (1.0, 4.0, 16.0, 64.0, 256.0)
#: How long the API waits for a receiver's answer (virtual seconds; see above).
ATTEMPT_TIMEOUT = 30.0
#: The shortest real time an attempt is given on a fast-running clock.
REAL_TIMEOUT_FLOOR = 0.5
#: How many deliveries may be on the wire at once (all jobs together).
MAX_IN_FLIGHT = 32
#: The attempts set their own timeouts (`ATTEMPT_TIMEOUT`).
_NO_TIMEOUT = aiohttp.ClientTimeout(total=None)
_DELIVERABLE = frozenset({"completed", "failed"})
_log = logging.getLogger("pixelbyte_async.testing")
#: Each delivery attempt and its outcome (the sandbox's ``--log deliveries``).
DELIVERY_LOG = logging.getLogger("pixelbyte_async.testing.deliveries")


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
        #: The attempt under way for each job (one at a time per job).
        self._in_flight: dict[str, asyncio.Task[list[WebhookDelivery]]] = {}
        self._slots = asyncio.Semaphore(MAX_IN_FLIGHT)
        self.faults: collections.deque[WebhookFault] = collections.deque()
        self.order: WebhookOrder = "job"
        self._rng = random.Random(0)  # noqa: S311 -- test ordering, not security
        #: While `run` sleeps: the future that wakes it, and the virtual time it
        #: plans to wake at (a delivery due sooner wakes it through `_wake_for`).
        self._nudge: asyncio.Future[None] | None = None
        self._wake_at = 0.0
        #: `run`'s timer on the clock itself, and the virtual time it is set for.
        self._clock_timer: Timer | None = None
        self._clock_timer_at: float | None = None
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
        """Return the jobs whose next webhook attempt is due now (none under way)."""
        return self._scan()[0]

    def _scan(self) -> tuple[list[FakeJob], float | None]:
        """Return the jobs due now, and when (virtual time) the next other one is."""
        self.state.settle()
        now = self.state.now()
        due: list[FakeJob] = []
        soonest: float | None = None
        for job in self.state.awaiting_webhook.values():
            if job.id in self._in_flight:
                continue  # its attempt schedules the next one when it ends
            at = self.next_at.get(job.id, job.finished_at)
            if now >= at and job.status_at(now) in _DELIVERABLE:
                due.append(job)
            elif soonest is None or at < soonest:
                soonest = at
        return due, soonest

    def _start_due(
        self,
    ) -> tuple[list[asyncio.Task[list[WebhookDelivery]]], float | None]:
        """Start an attempt for each due job, in `order`; return them, and the next due time."""
        jobs, soonest = self._scan()
        if self.order == "reverse":
            jobs.reverse()
        elif self.order == "shuffle":
            self._rng.shuffle(jobs)
        return [self._start(job) for job in jobs], soonest

    def _start(self, job: FakeJob) -> asyncio.Task[list[WebhookDelivery]]:
        task = asyncio.create_task(self._attempt_task(job))
        self._in_flight[job.id] = task
        return task

    async def deliver_due(self) -> list[WebhookDelivery]:
        """
        Attempt every due delivery once, side by side; return the attempts.

        Returns once they have ended, and those already under way (the auto
        sender's) with them.
        """
        under_way = list(self._in_flight.values())
        started, _ = self._start_due()
        if started or under_way:
            # asyncio.wait: cancelling the caller leaves the attempts running.
            await asyncio.wait([*under_way, *started])
        return [d for task in started for d in task.result()]

    async def run(self, poll: float) -> None:
        """
        Deliver each webhook when it falls due, until cancelled.

        The task sleeps until the next delivery is due, *poll* real seconds at
        most: a clock that runs (``time_scale > 0``) or only moves when told
        (``autojump=False``) wakes it when that time comes, and a delivery due
        sooner (a job created or ended by `FakePixelByte.complete_now`, an
        attempt that failed) wakes it at once.  On an autojump clock it looks
        every *poll* seconds.
        """
        loop = asyncio.get_running_loop()
        clock = self.state.clock
        try:
            while True:
                soonest: float | None = None
                try:
                    soonest = self._start_due()[1]
                except Exception:  # noqa: BLE001 -- the background sender must outlive any one failure
                    _log.exception("webhook delivery failed")
                now = self.state.now()
                if not _steady(clock):
                    self._wake_at = now  # an autojump clock: found at the next look
                else:
                    self._wake_at = math.inf if soonest is None else soonest
                    if clock.time_scale > 0:
                        self._wake_at = min(
                            self._wake_at, now + poll * clock.time_scale
                        )
                    if soonest is not None:
                        self._set_clock_timer(soonest, now)
                self._nudge = nudge = loop.create_future()
                timer = loop.call_later(poll, _wake, nudge)
                try:
                    await nudge
                finally:
                    timer.cancel()
                    self._nudge = None
        finally:
            self._set_clock_timer(None, 0.0)

    def _set_clock_timer(self, at: float | None, now: float) -> None:
        """Have the clock wake `run` at virtual time *at* (one timer while *at* holds)."""
        if at == self._clock_timer_at and self._clock_timer is not None:
            return
        if self._clock_timer is not None:
            self._clock_timer.cancel()
        self._clock_timer, self._clock_timer_at = None, at
        if at is not None:
            self._clock_timer = self.state.clock.call_later(
                max(0.0, at - now), self._clock_rang
            )

    def _clock_rang(self) -> None:
        self._clock_timer = self._clock_timer_at = None
        if self._nudge is not None:
            _wake(self._nudge)

    def notice(self, job: FakeJob) -> None:
        """*job*'s delivery may be due before `run` planned to wake: wake it."""
        self._wake_for(job.finished_at)

    def _wake_for(self, at: float) -> None:
        nudge = self._nudge
        if nudge is not None and at < self._wake_at:
            _wake(nudge)

    async def deliver_now(self, job_id: str) -> list[WebhookDelivery]:
        """Deliver *job_id*'s webhook at once (the ``early`` fault)."""
        job = self.state.jobs[job_id]
        if job.id not in self.state.awaiting_webhook or job.id in self._in_flight:
            return []  # none, it is over, or it is on its way
        task = self._start(job)
        await asyncio.wait([task])
        return task.result()

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
        ended = now
        if note != "dropped (injected)":
            http_status, error, ended = await self._send(job.webhook_url, body, headers)
        delivery = WebhookDelivery(
            job_id=job.id,
            url=job.webhook_url,
            attempt=attempt,
            time=now,
            headers=headers,
            body=body,
            status=http_status,
            error=error,
            ended_at=ended,
        )
        self.state.webhook_deliveries.append(delivery)
        if DELIVERY_LOG.isEnabledFor(logging.INFO):
            DELIVERY_LOG.info(
                "webhook %s attempt %d -> %s %s",
                job.id,
                attempt,
                http_status if http_status is not None else "no answer",
                job.webhook_url if error is None else f"{job.webhook_url} ({error})",
            )
        return delivery

    async def _send(
        self, url: str, body: bytes, headers: dict[str, str]
    ) -> tuple[int | None, str | None, float]:
        """POST once: ``(status, error, end)``, *end* in virtual time (see above)."""
        loop = asyncio.get_running_loop()
        clock = self.state.clock
        began = self.state.now()
        # The virtual time the API stops waiting at, once it has.
        cut: asyncio.Future[float] = loop.create_future()
        timers: list[Timer] = []
        if clock.time_scale > 0:
            real = max(ATTEMPT_TIMEOUT / clock.time_scale, REAL_TIMEOUT_FLOOR)
            timers.append(loop.call_later(real, self._cut_now, cut))
        else:
            # A frozen clock: a real-time backstop, so no receiver hangs a test.
            timers.append(loop.call_later(ATTEMPT_TIMEOUT, self._cut_now, cut))
            if not clock.autojump:
                timers.append(
                    clock.call_later(
                        ATTEMPT_TIMEOUT,
                        functools.partial(_settle, cut, began + ATTEMPT_TIMEOUT),
                    )
                )
        exchange = asyncio.ensure_future(self._exchange(url, body, headers))
        try:
            either: list[asyncio.Future[Any]] = [exchange, cut]
            await asyncio.wait(either, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for timer in timers:
                timer.cancel()
            if not exchange.done():
                exchange.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await exchange
        if not exchange.cancelled():
            status, error = exchange.result()
            return status, error, self.state.now()
        seconds = f"{ATTEMPT_TIMEOUT:g}"
        return None, f"TimeoutError: no answer within {seconds} s", cut.result()

    def _cut_now(self, cut: asyncio.Future[float]) -> None:
        _settle(cut, self.state.now())

    async def _exchange(
        self, url: str, body: bytes, headers: dict[str, str]
    ) -> tuple[int | None, str | None]:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=_NO_TIMEOUT)
        try:
            async with self._session.post(
                url, data=body, headers=headers, allow_redirects=False
            ) as response:
                await response.read()
                return response.status, None
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            return None, f"{type(exc).__name__}: {exc}"

    def _encode(self, job: FakeJob, status: str) -> bytes:
        payload = self.payload(job, status)
        return json.dumps(payload, separators=(",", ":")).encode()

    async def _attempt_task(self, job: FakeJob) -> list[WebhookDelivery]:
        """One attempt of *job*'s delivery, in a slot; then its retry is scheduled."""
        try:
            async with self._slots:
                return await self._attempt(job)
        except Exception:  # noqa: BLE001 -- one delivery's bug must not stop the others
            _log.exception("webhook delivery of %s failed", job.id)
            self._schedule(job, ok=False, ended=self.state.now())
            return []
        finally:
            # Before `run` can look again: a due retry must not seem under way.
            self._in_flight.pop(job.id, None)
            if job.id in self.state.awaiting_webhook:
                self._wake_for(self.next_at.get(job.id, job.finished_at))

    def _schedule(self, job: FakeJob, *, ok: bool, ended: float) -> None:
        """After an attempt that ended at *ended*: done, or the next one's time."""
        attempt = self.attempts.get(job.id, 1)
        if ok or attempt > len(RETRY_DELAYS):
            self._finish(job)
        else:
            self.next_at[job.id] = ended + RETRY_DELAYS[attempt - 1]

    async def _attempt(self, job: FakeJob) -> list[WebhookDelivery]:
        attempt = self.attempts.get(job.id, 0) + 1
        self.attempts[job.id] = attempt  # first: a failure below still counts
        now = self.state.now()
        status = job.status_at(now)
        body = self._encode(job, status)
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
        self._schedule(job, ok=genuine.ok, ended=genuine.ended_at or now)
        return made

    async def close(self) -> None:
        """Stop the attempts under way and close the HTTP session, if one was opened."""
        self.state.on_webhook_due = None
        self._set_clock_timer(None, 0.0)
        under_way = list(self._in_flight.values())
        for task in under_way:
            task.cancel()
        if under_way:
            await asyncio.wait(under_way)
        if self._session is not None:
            await self._session.close()
            self._session = None


def _steady(clock: VirtualClock) -> bool:
    """Whether *clock*'s timers fire when their time comes, without moving time."""
    return clock.time_scale > 0 or not clock.autojump


def _settle(future: asyncio.Future[float], value: float) -> None:
    if not future.done():
        future.set_result(value)


def _wake(nudge: asyncio.Future[None]) -> None:
    if not nudge.done():
        nudge.set_result(None)
