"""
`Reconciler`: a client's submits of unknown fate, recorded in its ledger, and settling them.

The API has no idempotency key, so a submit whose answer was lost (a read timeout,
a dropped connection, a 5xx) may or may not have created a paid job — and a slow
backend may create it *after* the client gave up.  "No job found" therefore only
means something once a **settle horizon** has passed since the attempt began.

A job is taken for an attempt's only with proof: a verified delivery carrying the
attempt's nonce (for a job made inside its window that nobody else has), or the
job list, when the ledger explains every other job of the model around the window
(nobody else submitting could have made it).  Where the account shows submitters
the ledger does not know, the job list proves nothing, and `ReconcileError` says so.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections.abc import Iterable, Iterator
from datetime import datetime
from typing import TYPE_CHECKING

import attrs

from pixelbyte_async._clock import ServerOffset, sleep_or_until
from pixelbyte_async._errors import (
    AmbiguousSubmitError,
    PixelByteError,
    ReconcileError,
    ReconcileTimeout,
    ValidationError,
)
from pixelbyte_async._inputs import local_cost
from pixelbyte_async._ledger import Attempt, SubmitLedger
from pixelbyte_async._telemetry import Operation, adopted, operation

from ._audit import audit
from ._claims import (
    DEFAULT_CLAIM_WINDOW,
    DEFAULT_CLOCK_SKEW,
    FIRST_LOOK_INTERVAL,
    MAX_LOOK_INTERVAL,
    Claims,
    ReconcileClient,
    SubmitInFlight,
    as_attempt,
    attempt_id,
    check_settle,
    created_at,
    created_since,
    iso,
    owner_gone,
)
from ._windows import ATTEMPTS_BACK, LOOKBACK, Sighting, Verdict, Window, classify


if TYPE_CHECKING:
    from pixelbyte_async._audit_report import AuditReport
    from pixelbyte_async._job import Job
    from pixelbyte_async._slots import JobSlots


__all__ = ["Reconciler"]

log = logging.getLogger("pixelbyte_async")

#: After its horizon, a lost submit tagged with a nonce keeps waiting for the
#: delivery that proves its job while a candidate runs, and this long after the
#: last one ended (the API sends the delivery when a job ends).
DELIVERY_GRACE = 60.0


@attrs.define
class _Survey:
    """What earlier looks of one reconcile learnt before its attempt's window."""

    looked: bool = False
    #: Unexplained jobs from before the window (re-checked at every look).
    before: dict[str, Job] = attrs.Factory(dict)


@attrs.define
class _Look:
    """One look at the account for one attempt: the jobs and what they say."""

    verdict: Verdict
    jobs: dict[str, Job]
    #: Our clock just before the job list was asked for: the list shows no job
    #: made after it (however late it arrived, or was sorted out).
    seen_at: float

    def candidates(self) -> list[Job]:
        return [self.jobs[i] for i in self.verdict.candidates]

    def foreign(self) -> list[Job]:
        return [self.jobs[i] for i in self.verdict.foreign]


class Reconciler:
    """
    The client's memory of submits, its ledger, and the code that settles lost ones.

    One per `PixelByte`.  Everything kept here is pruned by time: claims after
    *retention*, unresolved ambiguous submits once their horizon and the retention
    window have passed; the ledger keeps its own retention.
    """

    def __init__(
        self,
        client: ReconcileClient,
        slots: JobSlots,
        *,
        settle: float,
        ledger: SubmitLedger,
        owner: str,
        offset: ServerOffset,
        retention: float | None = None,
    ) -> None:
        self._client = client
        self._slots = slots
        self.settle = check_settle(settle)
        self.ledger = ledger
        self.owner = owner
        self.offset = offset
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
        self._rejected: set[tuple[str, str]] = set()

    # -- the submit path -------------------------------------------------------------

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

    async def sending(
        self,
        attempt: str,
        model: str,
        *,
        started_at: float,
        ends_by: float,
        tagged: bool,
        list_price: int | None,
    ) -> None:
        """
        Record an attempt about to be sent, in the ledger (before it is sent).

        Raises:
            LedgerError: The ledger cannot be used; nothing was sent.

        """
        await self.ledger.begin(
            Attempt(
                id=attempt,
                model=model,
                started_at=started_at,
                ends_by=ends_by,
                state="sending",
                owner=self.owner,
                tagged=tagged,
                list_price=list_price,
                offset=self._measured(),
            )
        )

    async def created(self, attempt: str, job_id: str) -> None:
        """The submit of *attempt* answered with *job_id*: it is ours (in the ledger)."""
        try:
            await self.ledger.claim(
                job_id,
                how="submitted",
                at=self._client.clock.time(),
                attempt=attempt,
            )
        except PixelByteError as exc:  # the job exists whatever the ledger says
            log.error("ledger: could not record job %s: %s", job_id, exc)  # noqa: TRY400 -- one line, the job is fine

    async def ended(self, attempt: str, *, lost: AmbiguousSubmitError | None) -> None:
        """
        The submit of *attempt* failed: its fate is unknown (*lost*) or no job.

        A lost submit's window starts when its last try went out (*lost*'s
        ``started_at``): the ledger's record moves there, for every process.
        """
        if lost is not None:
            self.ambiguous(lost)
        try:
            recorded = None if lost is None else await self.ledger.attempt(attempt)
            if lost is not None and recorded is not None:
                await self.ledger.begin(
                    attrs.evolve(
                        recorded,
                        state="unknown",
                        started_at=lost.started_at,
                        ends_by=max(recorded.ends_by, lost.started_at),
                    )
                )
            else:
                await self.ledger.mark(
                    attempt,
                    "unknown" if lost is not None else "none",
                    at=self._client.clock.time(),
                )
        except PixelByteError as exc:
            log.error("ledger: could not record attempt %s: %s", attempt, exc)  # noqa: TRY400 -- one line

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

    @property
    def client(self) -> ReconcileClient:
        """What the client lends this reconciler."""
        return self._client

    def claimed(self, job_id: str) -> bool:
        """Whether this process claims *job_id* (submitted, adopted, in flight)."""
        return job_id in self.claims or job_id in self._slots.jobs

    def _measured(self) -> tuple[float, float] | None:
        return (self.offset.low, self.offset.high) if self.offset.known else None

    def offset_of(
        self, attempt: Attempt | None, fallback: float
    ) -> tuple[float, float]:
        """The clock offset bounds for *attempt*'s times: its sender's, else ours."""
        if attempt is not None and attempt.offset is not None:
            return attempt.offset
        return self.offset.bounds(fallback)

    # -- the audit -----------------------------------------------------------------

    async def audit(
        self,
        *,
        since: datetime | float,
        until: datetime | float | None,
        model: str | None,
        exclude: Iterable[str],
        lost: Iterable[AmbiguousSubmitError] = (),
    ) -> AuditReport:
        """See `PixelByte.audit`."""
        return await audit(
            self, since=since, until=until, model=model, exclude=exclude, lost=lost
        )

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
        with operation(
            "pixelbyte.reconcile",
            {"pixelbyte.model": error.model, "pixelbyte.attempt": attempt_id(error)},
        ) as op:
            job = await self._reconcile(
                error,
                settle=settle,
                timeout=timeout,
                clock_skew=clock_skew,
                exclude=exclude,
                competing=competing,
                op=op,
            )
            op.set("pixelbyte.reconcile.outcome", "none" if job is None else "found")
            if job is not None:
                op.set("pixelbyte.job.id", job.id)
            return job

    async def _reconcile(
        self,
        error: AmbiguousSubmitError,
        *,
        settle: float | None,
        timeout: float | None,
        clock_skew: float,
        exclude: Iterable[str],
        competing: Iterable[AmbiguousSubmitError],
        op: Operation,
    ) -> Job | None:
        horizon = self.settle if settle is None else check_settle(settle)
        clock = self._client.clock
        settle_at = error.started_at + horizon
        deadline = math.inf if timeout is None else clock.monotonic() + timeout
        excluded = set(exclude)
        me = await self._recorded(error)
        rivals = [e for e in competing if e is not error]
        if not any(e is error for e in self.unresolved):
            # Concurrent reconciles of one model must see each other as competing.
            self.unresolved.append(error)
        interval = FIRST_LOOK_INTERVAL
        survey = _Survey()
        while True:
            job = await self._proven(error, me, horizon, clock_skew)
            if job is not None:
                return job
            look = await self._look(
                error,
                me,
                horizon=horizon,
                clock_skew=clock_skew,
                excluded=excluded,
                competing=rivals,
                survey=survey,
            )
            now = clock.time()
            # Settled only by a list asked for after the horizon: one asked for
            # before it misses a job made since, even if it came back after it.
            settled = look.seen_at >= settle_at
            op.event(
                "pixelbyte.reconcile.look",
                {
                    "candidates": len(look.verdict.candidates),
                    "settled": settled,
                    "waiting": bool(look.verdict.waiting),
                },
            )
            if settled and not look.verdict.waiting:
                # The whole window has been seen: if the ledger explains every
                # other job around it, its one job is the attempt's.
                sole = look.verdict.sole
                if sole is not None:
                    job = await self._take(error, me, look.jobs[sole], how="list")
                    if job is not None:
                        return job
                    continue  # claimed elsewhere meanwhile: look again at once
                if not look.verdict.candidates:
                    await self._none(error, me)
                    return None
                if not self._may_still_prove(error, look, now):
                    raise await self._cannot_tell(error, me, look, settle_at)
            left = deadline - clock.monotonic()
            if left <= 0:
                raise _timed_out(error, now, settle_at)
            # (A list asked for before the horizon that has passed since: look
            # again at once.)
            pause = interval if settled else min(interval, settle_at - now)
            await sleep_or_until(clock, max(min(pause, left), 0.0))
            interval = min(interval * 2, MAX_LOOK_INTERVAL)

    async def _recorded(self, error: AmbiguousSubmitError) -> Attempt:
        """*error*'s attempt as the ledger has it; recorded now if it is not there."""
        found = await self.ledger.attempt(attempt_id(error))
        if found is not None:
            return found
        # Built by hand for an earlier process's attempt: from now on other
        # processes (and the audit) know it too.
        made = attrs.evolve(as_attempt(error), owner=self.owner)
        await self.ledger.begin(made)
        return made

    def window(self, attempt: Attempt, horizon: float, clock_skew: float) -> Window:
        """
        Where *attempt*'s job can appear (server time), with *horizon* to make it.

        From its start to its horizon; for one with no word from its sender, to
        the horizon after its deadline (a try may go out until then, after 429s).
        """
        until = attempt.started_at + horizon
        if attempt.state == "sending":
            until = max(until, attempt.ends_by + horizon)
        return Window.of(attempt.started_at, until, self.offset_of(attempt, clock_skew))

    async def _given_up(self, attempt: Attempt, now: float) -> Attempt:
        """
        *attempt*, with its deadline brought to *now* if its sender is dead.

        A process of this machine that was killed mid-submit sends nothing more:
        its attempt is on the wire no longer (nobody waits for its answer until
        its deadline, up to `submit_timeout` away), though the tries it sent may
        still make a job within the horizon.  Recorded, for every process.
        """
        if not attempt.in_flight(now) or not owner_gone(attempt.owner):
            return attempt
        given_up = attrs.evolve(attempt, ends_by=now)
        with contextlib.suppress(PixelByteError):
            await self.ledger.begin(given_up)
        return given_up

    async def _proven(
        self,
        error: AmbiguousSubmitError,
        me: Attempt,
        horizon: float,
        clock_skew: float,
    ) -> Job | None:
        """The job a delivery (here or in the ledger) proved this attempt made."""
        known = await self.ledger.attempt(me.id)
        if known is not None and known.job_id is not None and not known.open:
            return self._claim(error, await self._client.get_job(known.job_id))
        source = self._client.attempts
        if not error.tagged or source is None:
            return None
        job_id = await source.job_for_attempt(me.id)
        if job_id is None or (me.id, job_id) in self._rejected:
            return None
        why = None
        if self.claimed(job_id):
            why = "this process's own submit made it"
        else:
            job = await self._client.get_job(job_id)
            if not self.window(me, horizon, clock_skew).holds(created_at(job)):
                why = "it was created outside the attempt's window"
            else:
                taken = await self._take(error, me, job, how="delivery")
                if taken is not None:
                    return taken
                why = "another attempt or submit owns it"
        self._rejected.add((me.id, job_id))
        log.warning(
            "a delivery names attempt %s for job %s, but %s; not taken as proof",
            me.id,
            job_id,
            why,
        )
        return None

    async def _look(
        self,
        error: AmbiguousSubmitError,
        me: Attempt,
        *,
        horizon: float,
        clock_skew: float,
        excluded: set[str],
        competing: list[AmbiguousSubmitError],
        survey: _Survey,
    ) -> _Look:
        """List the model's jobs around the window and sort out the unclaimed ones."""
        clock = self._client.clock
        # The first look reaches back before the window, for other submitters;
        # later ones list the window and re-check what the first found.
        floor = self.window(me, horizon, clock_skew).low
        if not survey.looked:
            floor -= LOOKBACK
        seen_at = clock.time()
        jobs = await created_since(self._client, model=error.model, floor=floor)
        listed = {**survey.before, **{job.id: job for job in jobs}}
        # Sorted by the window as measured now: the listing's own answers may
        # have just measured the API's clock (never before a lost first submit).
        mine = self.window(me, horizon, clock_skew)
        # Submits of this model on the wire here: let them finish (each within its
        # own deadline) so theirs become claimed (or competing ambiguous submits).
        pending = [f.done for f in self.in_flight if f.model == error.model]
        if pending:
            await asyncio.wait(pending)
        now = clock.time()
        attempts = {
            a.id: await self._given_up(a, now)
            for a in await self.ledger.attempts(
                model=error.model,
                since=floor - ATTEMPTS_BACK,
                until=now,
                open_only=True,
            )
        }
        # Lost submits this process knows of (and the caller's) that the ledger
        # may not have: a user-built error, an earlier run's journal.
        for other in (*competing, *self.unresolved):
            if other is not error and other.model == error.model:
                attempts.setdefault(attempt_id(other), as_attempt(other))
        maybe = [
            job
            for job in listed.values()
            if job.id not in excluded and not self.claimed(job.id)
        ]
        claims = await self.ledger.claims([job.id for job in maybe])
        source = self._client.attempts
        unclaimed: list[Sighting] = []
        for job in maybe:
            if job.id in claims:
                continue
            if source is not None and await source.attempt_for(job.id) not in {
                None,
                me.id,
            }:
                continue  # a delivery says another attempt made it
            unclaimed.append(Sighting(job.id, created_at(job)))
        verdict = classify(
            unclaimed,
            mine=mine,
            me=me.id,
            attempts=attempts.values(),
            window_of=lambda a: self.window(a, horizon, clock_skew),
            now=now,
        )
        survey.looked = True
        # Jobs before the window cannot change: later looks re-check them only.
        survey.before = {
            i: job
            for i, job in listed.items()
            if (created := created_at(job)) is not None and created < mine.low
        }
        return _Look(verdict, listed, seen_at)

    def _may_still_prove(
        self, error: AmbiguousSubmitError, look: _Look, now: float
    ) -> bool:
        """Whether a delivery may still prove which candidate is the attempt's."""
        if not error.tagged or self._client.attempts is None:
            return False
        ended: list[float] = []
        for job in look.candidates():
            if not job.status.is_terminal:
                return True
            done = job.info.completed_at
            ended.append(now if done is None else done.timestamp())
        return bool(ended) and now < max(ended) + DELIVERY_GRACE

    async def _take(
        self, error: AmbiguousSubmitError, me: Attempt, job: Job, *, how: str
    ) -> Job | None:
        """Claim *job* for *me* in the ledger; the job, or ``None`` if it is taken."""
        in_the_way = await self.ledger.claim(
            job.id,
            how="delivery" if how == "delivery" else "list",
            at=self._client.clock.time(),
            attempt=me.id,
        )
        if in_the_way is not None:
            return None
        if how == "list":
            # The list shows no outputs: the handle is made from the job itself.
            # (Should this fail, the ledger has the claim: reconcile again.)
            job = await self._client.get_job(job.id)
        return self._claim(error, job)

    def _claim(self, error: AmbiguousSubmitError, job: Job) -> Job:
        self._resolve(error)
        job.input = dict(error.input)
        self.claims.add(job.id)
        self._slots.adopt(job)
        if job._trace is None:  # noqa: SLF001 -- same package
            # Its submit's span ended with its answer lost: the job gets one now,
            # so its end, its cost and its duration (from the submit) are recorded.
            clock = self._client.clock
            started = clock.monotonic() - (clock.time() - error.started_at)
            job._traced(  # noqa: SLF001 -- same package
                adopted(
                    error.model,
                    attempt_id(error),
                    started=started,
                    list_price=local_cost(error.model, error.input),
                )
            )
        return job

    async def _none(self, error: AmbiguousSubmitError, me: Attempt) -> None:
        self._resolve(error)
        await self.ledger.mark(me.id, "none", at=self._client.clock.time())

    async def _cannot_tell(
        self,
        error: AmbiguousSubmitError,
        me: Attempt,
        look: _Look,
        settle_at: float,
    ) -> ReconcileError:
        """The error for candidates no proof can tie to the attempt (it is parked)."""
        verdict = look.verdict
        candidates = look.candidates()
        rivals = [_as_error(a) for a in verdict.rivals]
        parts = [
            (
                f"{len(candidates)} {error.model} job(s) appeared in the window of "
                "the lost submit"
            )
        ]
        if rivals:
            parts.append(
                f"{len(rivals)} other submit(s) of unknown fate could own them"
            )
        if verdict.foreign:
            parts.append(
                "this account has other submitters the ledger does not know "
                f"({len(verdict.foreign)} other {error.model} job(s) it cannot "
                "explain)"
            )
        elif not rivals:
            parts.append("only one of them can be its own")
        await self.ledger.mark(me.id, "parked", at=self._client.clock.time())
        return ReconcileError(
            "; ".join(parts)
            + ": the SDK will not guess which is yours. Webhooks prove it (each "
            "delivery names the submit that made its job), as does one ledger shared "
            "by every submitter (the same file on one machine, a hub across "
            "machines).",
            candidates=candidates,
            competing=rivals,
            foreign=look.foreign(),
            settle_at=settle_at,
        )


def _timed_out(
    error: AmbiguousSubmitError, now: float, settle_at: float
) -> ReconcileTimeout:
    """The error of a reconcile whose *timeout* ended before the fate was settled."""
    if now < settle_at:
        why = (
            f"the submit to {error.model} may still create a job until "
            f"{iso(settle_at)}; do not re-send it before then"
        )
    else:
        why = (
            f"a job of {error.model} in its window is still to be proven (a "
            "delivery or a submit on the wire may settle it)"
        )
    return ReconcileTimeout(
        "reconcile's timeout ended before the submit's fate was settled: "
        f"{why} (call reconcile again)",
        settle_at=settle_at,
    )


def _as_error(attempt: Attempt) -> AmbiguousSubmitError:
    """A rival attempt as an `AmbiguousSubmitError` (another process's: no input)."""
    return AmbiguousSubmitError(
        f"a submit to {attempt.model} of unknown fate (attempt {attempt.id}, "
        f"{'this process' if attempt.owner == '' else attempt.owner})",
        model=attempt.model,
        input={},
        webhook_url=None,
        started_at=attempt.started_at,
        attempt=attempt.id,
    )
