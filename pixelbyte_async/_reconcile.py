"""
Submits of unknown fate: in-flight tracking, claims, reconcile and the orphan audit.

The API has no idempotency key, so a submit whose answer was lost (a read timeout, a
dropped connection, a 5xx) may or may not have created a paid job — and a slow backend
may create it *after* the client gave up.  "No job found" therefore only means
something once a **settle horizon** has passed since the attempt began: `reconcile`
keeps looking until then, and returns ``None`` ("re-sending is safe") only after it.

What this process claims (jobs it submitted, adopted or reconciled) is remembered
for a window tied to the settle horizon, pruned by time, so nothing grows with the
number of jobs a long-running process has seen.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections.abc import AsyncGenerator, Iterable, Iterator
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Protocol

from ._audit_report import AuditOrphan, AuditReport
from ._clock import Clock, sleep_or_until
from ._errors import (
    AmbiguousSubmitError,
    PixelByteError,
    ReconcileError,
    ReconcileTimeout,
    ValidationError,
)


if TYPE_CHECKING:
    from ._job import Job
    from ._slots import JobSlots


__all__ = [
    "DEFAULT_CLAIM_WINDOW",
    "DEFAULT_CLOCK_SKEW",
    "DEFAULT_SETTLE",
    "AttemptSource",
    "Claims",
    "ReconcileClient",
    "Reconciler",
    "check_settle",
]

#: How long after an ambiguous submit began "no job found" is taken as proof that
#: none was created (seconds).  See docs/concepts.md, "What 'never charged twice'
#: means": five minutes covers the request timeouts of the gateways and serverless
#: platforms an API like this runs behind (60-100 s for load balancers and CDNs,
#: 300 s by default for Google Cloud Run, whose Pub/Sub the API's
#: ``PUBSUB_PUBLISH_FAILED`` names), after which a request still unanswered has been
#: killed server-side.
DEFAULT_SETTLE = 300.0
#: How far the server's ``createdAt`` may disagree with our clock.
DEFAULT_CLOCK_SKEW = 120.0
#: How long this process remembers the jobs it claims (for reconcile and the audit).
DEFAULT_CLAIM_WINDOW = 3600.0
#: The first and the longest pause between two looks at the job list.
FIRST_LOOK_INTERVAL = 2.0
MAX_LOOK_INTERVAL = 30.0


def check_settle(value: float) -> float:
    """Return *value*, a settle horizon in seconds, or raise `ValidationError`."""
    if not 0 <= value < math.inf:
        raise ValidationError("settle must be a finite number >= 0", field="settle")
    return value


def timestamp(value: datetime | float) -> float:
    """Unix seconds from a datetime (naive means UTC) or a number."""
    if isinstance(value, datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        return value.timestamp()
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValidationError("expected a datetime or Unix seconds", field="since")
    return float(value)


class Claims:
    """
    Job ids this process claims, each remembered for *retention* seconds.

    Reconcile and the audit skip claimed jobs.  Entries are pruned by age on every
    `add` (amortised O(1)), so the set is bounded by the window, not by how many
    jobs the process has ever run.
    """

    __slots__ = ("_clock", "_ids", "retention")

    def __init__(self, clock: Clock, retention: float) -> None:
        self._clock = clock
        self.retention = retention
        self._ids: dict[str, float] = {}

    def add(self, job_id: str) -> None:
        """Claim *job_id* now (refreshing an earlier claim)."""
        now = self._clock.time()
        self._ids.pop(job_id, None)
        self._ids[job_id] = now
        self.prune(now)

    def prune(self, now: float | None = None) -> None:
        """Forget claims older than the retention window."""
        if now is None:
            now = self._clock.time()
        horizon = now - self.retention
        ids = self._ids
        while ids:
            oldest = next(iter(ids))
            if ids[oldest] >= horizon:
                break
            del ids[oldest]

    def __contains__(self, job_id: object) -> bool:
        return job_id in self._ids

    def __len__(self) -> int:
        return len(self._ids)


class SubmitInFlight:
    """A submit request on the wire (reconcile waits for those of its model)."""

    __slots__ = ("done", "model")

    def __init__(self, model: str) -> None:
        self.model = model
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def finish(self) -> None:
        """Mark the submit as answered (or failed)."""
        if not self.done.done():
            self.done.set_result(None)


class AttemptSource(Protocol):
    """
    What webhook deliveries proved: which attempt created which job.

    Asynchronous, because with a hub the answer may come from deliveries another
    process received (read from the hub's store).
    """

    async def job_for_attempt(self, attempt: str) -> str | None:
        """The job the first verified delivery tagged with *attempt* named."""
        ...

    async def attempt_for(self, job_id: str) -> str | None:
        """The attempt nonce a delivery for *job_id* carried, if one did."""
        ...


class ReconcileClient(Protocol):
    """
    What `Reconciler` needs of its client, and nothing more.

    Its clock, the two read endpoints, and the webhook deliveries seen (``None``
    without webhooks).  `PixelByte` lends a small adapter that satisfies this, so
    this module never imports the client.
    """

    @property
    def clock(self) -> Clock:
        """The client's clock."""
        ...

    @property
    def attempts(self) -> AttemptSource | None:
        """Attempt → job attribution from webhook deliveries, if webhooks are on."""
        ...

    async def get_job(self, job_id: str) -> Job:
        """`PixelByte.get_job`."""
        ...

    def list_jobs(self, *, model: str | None = None) -> AsyncGenerator[Job, None]:
        """`PixelByte.list_jobs`, newest first."""
        ...


class Reconciler:
    """
    The client's memory of submits of unknown fate, and the code that settles them.

    One per `PixelByte`.  Everything here is pruned by time: claims after
    *retention*, unresolved ambiguous submits once their horizon and the retention
    window have passed.
    """

    def __init__(
        self,
        client: ReconcileClient,
        slots: JobSlots,
        *,
        settle: float,
        retention: float | None = None,
    ) -> None:
        self._client = client
        self._slots = slots
        self.settle = check_settle(settle)
        shortest = 2 * settle + DEFAULT_CLOCK_SKEW
        if retention is None:
            retention = max(DEFAULT_CLAIM_WINDOW, shortest)
        if not retention >= shortest:
            raise ValidationError(
                "claim_window must be at least twice the settle horizon plus "
                f"{DEFAULT_CLOCK_SKEW:.0f} s of clock skew",
                field="claim_window",
            )
        self.claims = Claims(client.clock, retention)
        self.in_flight: set[SubmitInFlight] = set()
        self.unresolved: list[AmbiguousSubmitError] = []

    # -- bookkeeping ---------------------------------------------------------------

    @contextlib.contextmanager
    def submitting(self, model: str) -> Iterator[SubmitInFlight]:
        """Track one submit request of *model* while it is on the wire."""
        tracker = SubmitInFlight(model)
        self.in_flight.add(tracker)
        try:
            yield tracker
        finally:
            self.in_flight.discard(tracker)
            tracker.finish()

    def ambiguous(self, error: AmbiguousSubmitError) -> None:
        """Remember an ambiguous submit until it is reconciled (or ages out)."""
        self._prune_unresolved()
        self.unresolved.append(error)

    def _resolve(self, error: AmbiguousSubmitError) -> None:
        self.unresolved = [e for e in self.unresolved if e is not error]

    def _prune_unresolved(self) -> None:
        horizon = self._client.clock.time() - self.settle - self.claims.retention
        if self.unresolved and self.unresolved[0].started_at < horizon:
            self.unresolved = [e for e in self.unresolved if e.started_at >= horizon]

    def claimed(self, job_id: str) -> bool:
        """Whether this process claims *job_id* (submitted, adopted, in flight)."""
        return job_id in self.claims or job_id in self._slots.jobs

    # -- reconcile -----------------------------------------------------------------

    async def reconcile(
        self,
        error: AmbiguousSubmitError,
        *,
        settle: float | None,
        timeout: float | None,
        clock_skew: float,
        exclude: Iterable[str],
        competing: Iterable[AmbiguousSubmitError] = (),
    ) -> Job | None:
        """See `PixelByte.reconcile`."""
        horizon = self.settle if settle is None else check_settle(settle)
        clock = self._client.clock
        settle_at = error.started_at + horizon
        deadline = math.inf if timeout is None else clock.monotonic() + timeout
        excluded = set(exclude)
        others = [e for e in competing if e is not error]
        if not any(e is error for e in self.unresolved):
            # Concurrent reconciles of one model must see each other as competing.
            self.unresolved.append(error)
        interval = FIRST_LOOK_INTERVAL
        while True:
            job = await self._attributed(error)
            if job is not None:
                return self._claim(error, job)
            candidates = await self._candidates(error, horizon, clock_skew, excluded)
            if candidates:
                rivals = self._competing(error, others, candidates, horizon, clock_skew)
                if len(candidates) == 1 and not rivals:
                    return self._claim(error, candidates[0])
                if not (self._attributable(error, rivals) and clock.time() < settle_at):
                    raise ReconcileError(
                        f"{len(candidates)} unknown {error.model} job(s) created "
                        f"since the ambiguous submit, {len(rivals)} other "
                        "ambiguous submit(s) that could own them; the SDK will not "
                        "guess which is whose",
                        candidates=candidates,
                        competing=rivals,
                    )
            elif clock.time() >= settle_at:
                self._resolve(error)
                return None
            left = deadline - clock.monotonic()
            if left <= 0:
                raise ReconcileTimeout(
                    f"reconcile's timeout ended before the settle horizon: the submit "
                    f"to {error.model} may still create a job until "
                    f"{_iso(settle_at)}; do not re-send it before then (call "
                    "reconcile again)",
                    settle_at=settle_at,
                )
            pause = min(interval, settle_at - clock.time(), left)
            await sleep_or_until(clock, max(pause, 0.0))
            interval = min(interval * 2, MAX_LOOK_INTERVAL)

    async def _attributed(self, error: AmbiguousSubmitError) -> Job | None:
        """The job a webhook delivery proved this attempt created, if any."""
        attempts = self._client.attempts
        if error.attempt is None or attempts is None:
            return None
        job_id = await attempts.job_for_attempt(error.attempt)
        if job_id is None:
            return None
        return await self._client.get_job(job_id)

    async def _owner_attempt(self, job_id: str) -> str | None:
        attempts = self._client.attempts
        return None if attempts is None else await attempts.attempt_for(job_id)

    def _attributable(
        self, error: AmbiguousSubmitError, competing: list[AmbiguousSubmitError]
    ) -> bool:
        """Whether webhook deliveries can still tell these attempts' jobs apart."""
        if self._client.attempts is None:
            return False
        return error.attempt is not None and all(
            e.attempt is not None for e in competing
        )

    async def _candidates(
        self,
        error: AmbiguousSubmitError,
        horizon: float,
        clock_skew: float,
        excluded: set[str],
    ) -> list[Job]:
        """Unclaimed jobs of the model created in the attempt's window (± skew)."""
        since, until = _window(error, horizon, clock_skew)
        found: list[Job] = []
        async with contextlib.aclosing(
            self._client.list_jobs(model=error.model)
        ) as jobs:
            async for job in jobs:
                created = job.info.created_at
                if created is not None:
                    if created.timestamp() < since:
                        break
                    if created.timestamp() > until:
                        continue
                found.append(job)
        # Submits of this model on the wire during the listing may own some of
        # these jobs: let them finish (each within its own deadline) so theirs
        # become claimed (or become competing ambiguous submits).
        pending = [f.done for f in self.in_flight if f.model == error.model]
        if pending:
            await asyncio.wait(pending)
        return [
            job
            for job in found
            if job.id not in excluded
            and not self.claimed(job.id)
            and await self._owner_attempt(job.id) in {None, error.attempt}
        ]

    def _competing(
        self,
        error: AmbiguousSubmitError,
        others: list[AmbiguousSubmitError],
        candidates: list[Job],
        horizon: float,
        clock_skew: float,
    ) -> list[AmbiguousSubmitError]:
        """Other attempts of unknown fate whose window holds one of *candidates*."""
        rivals: list[AmbiguousSubmitError] = []
        for other in [*self.unresolved, *others]:
            if other is error or other.model != error.model:
                continue
            if any(other is r for r in rivals):
                continue
            since, until = _window(other, horizon, clock_skew)
            if any(
                c.info.created_at is None
                or since <= c.info.created_at.timestamp() <= until
                for c in candidates
            ):
                rivals.append(other)
        return rivals

    def _claim(self, error: AmbiguousSubmitError, job: Job) -> Job:
        self._resolve(error)
        job.input = dict(error.input)
        self.claims.add(job.id)
        self._slots.adopt(job)
        return job

    # -- audit -----------------------------------------------------------------------

    async def audit(
        self,
        *,
        since: datetime | float,
        until: datetime | float | None,
        model: str | None,
        exclude: Iterable[str],
        concurrency: int = 8,
    ) -> AuditReport:
        """See `PixelByte.audit`."""
        start = timestamp(since)
        end = self._client.clock.time() if until is None else timestamp(until)
        if end < start:
            raise ValidationError("until is before since", field="until")
        excluded = set(exclude)
        found: list[Job] = []
        async with contextlib.aclosing(self._client.list_jobs(model=model)) as jobs:
            async for job in jobs:
                created = job.info.created_at
                if created is not None:
                    at = created.timestamp()
                    if at < start:
                        break
                    if at > end:
                        continue
                if job.id in excluded or self.claimed(job.id):
                    continue
                found.append(job)
        limiter = asyncio.Semaphore(concurrency)

        async def look(job: Job) -> AuditOrphan:
            async with limiter:
                # On failure the list's view is still worth reporting.
                with contextlib.suppress(PixelByteError):
                    await job.refresh()
            return AuditOrphan(
                job=job,
                status=job.status,
                created_at=job.info.created_at,
                cost_micro_cents=job.cost_micro_cents,
            )

        orphans = await asyncio.gather(*(look(job) for job in found))
        return AuditReport(since=start, until=end, orphans=tuple(orphans))


def _window(
    error: AmbiguousSubmitError, horizon: float, clock_skew: float
) -> tuple[float, float]:
    """When a job created by *error*'s attempt can have been created (Unix time)."""
    return (
        error.started_at - clock_skew,
        error.started_at + horizon + clock_skew,
    )


def _iso(unix: float) -> str:
    return (
        datetime.fromtimestamp(unix, UTC)
        .replace(microsecond=0)
        .isoformat()
        .replace("+00:00", "Z")
    )
