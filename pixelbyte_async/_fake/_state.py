"""
The fake's whole state, free of HTTP: jobs, uploads, money, records and faults.

`FakePixelByte` owns one `FakeState`; the API and CDN handlers read and change it.
"""

from __future__ import annotations

import collections
import math
import random
from collections.abc import Callable
from typing import Any, Literal, TypeAlias

import attrs

from pixelbyte_async._clock import VirtualClock

from ._catalog import ModelSpec
from ._faults import FaultQueue
from ._jobs import TERMINAL, FakeJob, FakeUpload, JobScript
from ._records import CdnRequest, LedgerEntry, RecordedRequest, WebhookDelivery
from ._util import floor_ms


__all__ = ["Envelope", "FakeState"]

Envelope: TypeAlias = Literal["mixed", "flat", "wrapped"]


@attrs.define(kw_only=True)
class FakeState:
    """Everything the fake knows; see `FakePixelByte` for the meaning of the knobs."""

    clock: VirtualClock
    api_key: str
    envelope: Envelope = "mixed"
    require_auth: bool = True
    allow_http_webhooks: bool = False
    concurrent_job_limit: int | None = None
    concurrency_retry_after: int = 30
    #: The most jobs pending or processing at once, seen at accepted submits
    #: (counted while *concurrent_job_limit* is set).
    peak_active: int = 0
    initial_balance: int | None = None
    webhook_secret: str = "whsec_test_sandbox"  # noqa: S105 -- a public sandbox value
    cdn_url: str = ""
    jobs: dict[str, FakeJob] = attrs.field(factory=dict)
    #: The jobs not yet seen in a terminal state: `active_jobs` looks at these
    #: only, so a submit costs the same after 10,000 finished jobs as after 10.
    live: dict[str, FakeJob] = attrs.field(factory=dict)
    #: The jobs with a webhook URL whose delivery is not finished (the webhook
    #: sender looks at these only).
    awaiting_webhook: dict[str, FakeJob] = attrs.field(factory=dict)
    #: Told when a job in `awaiting_webhook` is created or made to end now (the
    #: webhook sender, so it can wake sooner than it planned).
    on_webhook_due: Callable[[FakeJob], None] | None = attrs.field(
        default=None, repr=False, eq=False
    )
    uploads: dict[str, FakeUpload] = attrs.field(factory=dict)
    ledger_entries: list[LedgerEntry] = attrs.field(factory=list)
    unsettled_failures: set[str] = attrs.field(factory=set)
    requests: list[RecordedRequest] = attrs.field(factory=list)
    cdn_requests: list[CdnRequest] = attrs.field(factory=list)
    webhook_deliveries: list[WebhookDelivery] = attrs.field(factory=list)
    faults: FaultQueue = attrs.field(factory=FaultQueue)
    default_script: JobScript = attrs.field(factory=JobScript)
    scripted: collections.deque[JobScript] = attrs.field(factory=collections.deque)
    #: Submits left whose job ends at once and whose webhook goes out before the
    #: submit response (the "early delivery" race).
    early_webhooks: int = 0
    early_pending: list[str] = attrs.field(factory=list)
    #: Jobs accepted by a "late creation" submit, created (and charged) later.
    deferred: list[FakeJob] = attrs.field(factory=list)
    #: While set, `create_job` creates the job this many virtual seconds later.
    creation_delay: float = 0.0
    #: The account's price relative to list price (1.1: it pays 10 % more).
    price_factor: float = 1.0
    #: Jobs run this many times faster than their scripts say (the sandbox
    #: process: real-time timestamps, shorter jobs).
    speedup: float = 1.0
    #: How far the server's clock is ahead of `clock` (seconds; negative: behind).
    clock_offset: float = 0.0
    #: Whether answers say what a job cost (``costMicroCents``, ``cost``).
    report_costs: bool = True
    #: The share of jobs not scripted by `scripted` that fail (drawn from `chance`).
    fail_rate: float = 0.0
    #: The draws of `fail_rate`, one per unscripted job (seeded: the same jobs fail).
    chance: random.Random = attrs.field(factory=random.Random, repr=False, eq=False)
    #: How far off the ETA announced is, as a share of the job's duration
    #: (-0.5: half as long as the job takes), for scripts that name no ETA.
    eta_error: float = 0.0

    def time(self) -> float:
        """Return the server's wall-clock time (`FakeJob.status` reads it)."""
        return self.clock.time() + self.clock_offset

    def retry_after(self) -> int:
        """
        ``details.retryAfter`` of ``CONCURRENT_JOBS_EXCEEDED``, as this fake says it.

        `concurrency_retry_after` is what the real API says; jobs *speedup* times
        shorter free their slots as much sooner, so the wait is shortened alike
        (rounded up to whole seconds, at least 1).
        """
        wait = self.concurrency_retry_after
        if self.speedup == 1.0 or wait <= 0:
            return wait
        return max(1, math.ceil(wait / self.speedup))

    def price(self, model: ModelSpec, value: dict[str, Any]) -> int:
        """What this account pays for *model* with *value*."""
        return round(model.cost(value) * self.price_factor)

    def now(self) -> float:
        """Return the server's virtual wall-clock time (`clock`, plus its offset)."""
        return self.clock.time() + self.clock_offset

    def settle(self) -> None:
        """
        Bring the state up to now.

        Create the deferred jobs whose time has come, and enter the refunds of jobs
        that have failed by now but are not refunded yet.
        """
        if self.deferred:
            self._create_deferred()
        if not self.unsettled_failures:
            return
        now = self.now()
        for job_id in sorted(self.unsettled_failures):
            job = self.jobs[job_id]
            if job.status_at(now) == "failed":
                self.unsettled_failures.discard(job_id)
                self._refund(job, at=job.finished_at, reason="failed")

    def net_charged(self) -> int:
        """Return charges minus refunds, after settling."""
        self.settle()
        return sum(
            e.micro_cents if e.kind == "charge" else -e.micro_cents
            for e in self.ledger_entries
        )

    def balance(self) -> int | None:
        """Return the remaining balance, or `None` when balance is not modelled."""
        if self.initial_balance is None:
            return None
        return self.initial_balance - self.net_charged()

    def active_jobs(self) -> int:
        """Return how many jobs are pending or processing now."""
        now = self.now()
        live = self.live
        # A job never leaves a terminal state: forget it once seen there.
        for job_id in [i for i, j in live.items() if j.status_at(now) in TERMINAL]:
            del live[job_id]
        return len(live)

    def create_job(
        self,
        *,
        model: ModelSpec,
        version: str,
        input: dict[str, Any],  # noqa: A002 -- the API's field name
        webhook_url: str | None,
        request_id: str,
        job_id: str,
    ) -> FakeJob:
        """Create a job with the next script and charge for it."""
        script = self.scripted.popleft() if self.scripted else self._unscripted()
        if script.processing_seconds is None:
            script = attrs.evolve(script, processing_seconds=model.typical_seconds)
        if self.eta_error and script.eta_seconds is None:
            lasts = script.queue_seconds + (script.processing_seconds or 0.0)
            script = attrs.evolve(script, eta_seconds=lasts * (1.0 + self.eta_error))
        if self.speedup != 1.0:
            script = attrs.evolve(
                script,
                queue_seconds=script.queue_seconds / self.speedup,
                processing_seconds=(script.processing_seconds or 0.0) / self.speedup,
                eta_seconds=None
                if script.eta_seconds is None
                else script.eta_seconds / self.speedup,
            )
        job = FakeJob(
            id=job_id,
            model=model.slug,
            version=version,
            input=input,
            webhook_url=webhook_url,
            created_at=floor_ms(self.now() + self.creation_delay),
            script=script,
            cost=self.price(model, input),
            request_id=request_id,
            clock=self,
        )
        if self.creation_delay > 0:
            self.deferred.append(job)
            return job
        self._register(job)
        return job

    def _unscripted(self) -> JobScript:
        """The default script, failed for a `fail_rate` share of the jobs."""
        script = self.default_script
        if self.fail_rate > 0 and self.chance.random() < self.fail_rate:
            script = attrs.evolve(script, outcome="failed")
        return script

    def _create_deferred(self) -> None:
        now = self.now()
        due = [job for job in self.deferred if job.created_at <= now]
        if due:
            self.deferred = [job for job in self.deferred if job.created_at > now]
            for job in sorted(due, key=lambda j: j.created_at):
                self._register(job)

    def _register(self, job: FakeJob) -> None:
        self.jobs[job.id] = job
        self.live[job.id] = job
        if job.webhook_url is not None:
            self.awaiting_webhook[job.id] = job
            self._webhook_due(job)
        self.ledger_entries.append(
            LedgerEntry(
                job_id=job.id,
                kind="charge",
                micro_cents=job.cost,
                input_fingerprint=job.fingerprint,
                time=job.created_at,
                reason="submit",
            )
        )
        if job.script.outcome == "failed":
            self.unsettled_failures.add(job.id)

    def cancel(self, job: FakeJob) -> int:
        """Cancel a pending *job* now and refund it; return the refund."""
        job.cancelled_at = self.now()
        self.awaiting_webhook.pop(job.id, None)  # cancellation sends no webhook
        self.unsettled_failures.discard(job.id)
        self._refund(job, at=job.cancelled_at, reason="cancelled")
        return job.cost

    def force_terminal(
        self,
        job_id: str,
        outcome: Literal["completed", "failed"],
        *,
        code: str | None = None,
        message: str | None = None,
    ) -> FakeJob:
        """Make a running job end now with *outcome*."""
        job = self.jobs[job_id]
        now = self.now()
        status = job.status_at(now)
        if status in TERMINAL:
            raise ValueError(f"job {job_id} is already {status}")
        elapsed = max(0.0, now - job.created_at)
        queue = min(job.script.queue_seconds, elapsed)
        changes: dict[str, Any] = {
            "queue_seconds": queue,
            "processing_seconds": elapsed - queue,
            "outcome": outcome,
        }
        if code is not None:
            changes["error_code"] = code
        if message is not None:
            changes["error_message"] = message
        job.script = attrs.evolve(job.script, **changes)
        if job.id in self.awaiting_webhook:
            self._webhook_due(job)
        if outcome == "failed":
            self.unsettled_failures.add(job_id)
        else:
            self.unsettled_failures.discard(job_id)
        self.settle()
        return job

    def _webhook_due(self, job: FakeJob) -> None:
        if self.on_webhook_due is not None:
            self.on_webhook_due(job)

    def _refund(self, job: FakeJob, *, at: float, reason: str) -> None:
        self.ledger_entries.append(
            LedgerEntry(
                job_id=job.id,
                kind="refund",
                micro_cents=job.cost,
                input_fingerprint=job.fingerprint,
                time=at,
                reason=reason,
            )
        )
