"""
`Tracker`: a client's tracked jobs, from before their submit to their last handler.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import logging
from collections.abc import Awaitable, Callable, Collection
from typing import TYPE_CHECKING, Any, Protocol, cast

import attrs

from pixelbyte_async._clock import Clock, sleep_or_until
from pixelbyte_async._errors import (
    AmbiguousSubmitError,
    JobError,
    PixelByteError,
    ValidationError,
    WaitTimeout,
)
from pixelbyte_async._inputs import check_text
from pixelbyte_async._ledger import (
    ACTIVE,
    TRACKED_STATES,
    TrackedRecord,
    TrackedState,
    TrackingLedger,
)
from pixelbyte_async._reconcile import owner_gone
from pixelbyte_async._telemetry import adopted


if TYPE_CHECKING:
    from pixelbyte_async._job import Job
    from pixelbyte_async._ledger import Attempt


__all__ = [
    "FinishedHandler",
    "LostHandler",
    "LostSubmit",
    "TrackedClient",
    "Tracker",
    "context_text",
]

log = logging.getLogger("pixelbyte_async")

#: What `PixelByte.on_finished` takes: called with each tracked job once it ended.
FinishedHandler = Callable[["Job"], Awaitable[None]]


@attrs.frozen(kw_only=True)
class LostSubmit:
    """
    A tracked submit that made no job: what `PixelByte.on_lost` handlers are given.

    Its answer was lost (or its process died while sending it), and once its
    settle horizon had passed no job of the account could be its: nothing runs,
    nothing is charged.  Tell the user, or submit again.

    Attributes:
        attempt: The submit's attempt nonce (its key in the ledger).
        model: The model it was for.
        context: Its ``context=``, as given (decoded from JSON after a restart).
        reason: Why it is known to have made no job, in words.

    .. versionadded:: 0.5.0
    """

    attempt: str
    model: str
    context: Any
    reason: str


#: What `PixelByte.on_lost` takes: called with each tracked submit that made no job.
LostHandler = Callable[[LostSubmit], Awaitable[None]]

_PARKED: tuple[TrackedState, ...] = ("parked",)
#: How many tracked jobs `Tracker.resume` re-attaches at once (one GET each).
_RESUMING = 16

#: The largest context, as JSON text (it lives in the ledger with the job).
MAX_CONTEXT_BYTES = 64 * 1024


class TrackedClient(Protocol):
    """What the tracker needs of the client."""

    @property
    def clock(self) -> Clock:
        """The client's clock."""
        ...

    async def get_job(self, job_id: str) -> Job:
        """`PixelByte.get_job`."""
        ...

    async def reconcile(self, error: AmbiguousSubmitError) -> Job | None:
        """`PixelByte.reconcile` (the settle horizon's full wait)."""
        ...

    async def ledger_attempt(self, attempt_id: str) -> Attempt | None:
        """The ledger's record of a submit attempt."""
        ...


def context_text(context: object) -> str:
    """
    *context* as the JSON text the ledger keeps; `ValidationError` if it cannot be.

    Anything `json.dumps` takes without help (dicts, lists, strings, numbers,
    booleans, ``None``), in valid UTF-8, at most 64 KiB.
    """
    try:
        text = json.dumps(context, ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError, RecursionError) as exc:
        raise ValidationError(
            f"context must be JSON-serialisable: {exc}", field="context"
        ) from exc
    check_text(text, "context")
    if len(text.encode()) > MAX_CONTEXT_BYTES:
        raise ValidationError(
            f"context is {len(text.encode())} bytes as JSON; at most "
            f"{MAX_CONTEXT_BYTES} are kept with a job (keep an id, not the data)",
            field="context",
        )
    return text


class Tracker:
    """
    The tracked jobs of one client: recorded, leased, watched, handled.

    Args:
        ledger: Where tracked jobs are kept (the client's ledger).
        owner: This client's name in the ledger (``host:pid:client``).
        lease: Seconds a lease lasts unless renewed (renewed every third of it).
        park_after: Handler failures after which a job is parked.
        retry_initial: The first pause before a failed handler runs again (doubling,
            up to *retry_max*).
        retry_max: The longest such pause.
        group: The name of this program's tracked jobs where programs share a
            ledger: only the tracked jobs of its group are resumed and handled.

    """

    def __init__(
        self,
        ledger: TrackingLedger,
        *,
        owner: str,
        lease: float = 60.0,
        park_after: int = 5,
        retry_initial: float = 2.0,
        retry_max: float = 300.0,
        group: str = "default",
    ) -> None:
        self.ledger = ledger
        self.group = group
        self.owner = owner
        self.lease = lease
        self.park_after = park_after
        self.retry_initial = retry_initial
        self.retry_max = retry_max
        self.handlers: list[FinishedHandler] = []
        self.lost_handlers: list[LostHandler] = []
        self._client: TrackedClient | None = None
        #: attempt -> the task watching (then handling) its job.
        self._tasks: dict[str, asyncio.Task[None]] = {}
        #: attempt -> its job, once known (what `resume` returns for running ones).
        self._jobs: dict[str, Job] = {}
        #: Attempts of this client whose submit has not been answered yet: ours,
        #: never an orphan for `resume` to take over.
        self._sending: set[str] = set()
        self._heartbeat: asyncio.Task[None] | None = None
        self._scanner: asyncio.Task[None] | None = None
        self._closed = False

    def bind(self, client: TrackedClient) -> None:
        """Give the tracker its client (done once by `PixelByte`)."""
        self._client = client

    @property
    def client(self) -> TrackedClient:
        assert self._client is not None  # noqa: S101 -- bound by PixelByte
        return self._client

    @property
    def _now(self) -> float:
        return self.client.clock.time()

    def on_finished(self, handler: FinishedHandler) -> FinishedHandler:
        """Run *handler* for every tracked job once it has ended (see `PixelByte`)."""
        if not callable(handler):
            raise TypeError("on_finished takes an async function of one Job")
        self.handlers.append(handler)
        return handler

    def on_lost(self, handler: LostHandler) -> LostHandler:
        """Run *handler* for every tracked submit that made no job (see `PixelByte`)."""
        if not callable(handler):
            raise TypeError("on_lost takes an async function of one LostSubmit")
        self.lost_handlers.append(handler)
        return handler

    # -- submits -----------------------------------------------------------------------

    async def before_send(self, attempt: str, model: str, context: str) -> None:
        """Record a tracked job whose submit is about to be sent; this client holds it."""
        now = self._now
        self._sending.add(attempt)
        await self.ledger.track(
            TrackedRecord(
                attempt=attempt,
                model=model,
                context=context,
                owner=self.owner,
                lease_until=now + self.lease,
                created_at=now,
                updated_at=now,
                group=self.group,
            )
        )
        self._beat()

    async def submitted(self, job: Job, attempt: str, context: Any) -> None:
        """Its submit made *job*: tie them, and watch it."""
        self._sending.discard(attempt)
        await self._tie(attempt, job, context)
        self._start(attempt, self._watch(attempt, job))

    async def _tie(self, attempt: str, job: Job, context: Any) -> None:
        """*job* is *attempt*'s: give it its context, and tell the ledger."""
        job.context = context
        await self.ledger.tracked_job(attempt, job.id, at=self._now)
        self._jobs[attempt] = job

    async def refused(self, attempt: str) -> None:
        """Its submit was refused (no job): nothing to handle."""
        self._sending.discard(attempt)
        await self._finish(attempt, "none")

    def abandoned(self, attempt: str) -> None:
        """Its submit was cancelled mid-flight: `resume`'s scans reconcile it."""
        self._sending.discard(attempt)

    def lost(self, error: AmbiguousSubmitError, context: Any) -> None:
        """Its submit's fate is unknown: find its job (settle horizon), then watch it."""
        attempt = error.attempt
        if attempt is not None:
            self._sending.discard(attempt)
            self._start(attempt, self._reconciled(attempt, error, context))

    async def _finish(
        self,
        attempt: str,
        state: TrackedState,
        *,
        failures: int | None = None,
        error: str | None = None,
    ) -> bool:
        """`TrackingLedger.finish`, tried again while the ledger is away (a Redis outage)."""
        pause = self.retry_initial
        while True:
            try:
                return await self.ledger.finish(
                    attempt,
                    self.owner,
                    state=state,
                    at=self._now,
                    failures=failures,
                    error=error,
                )
            except PixelByteError as exc:
                log.warning(
                    "tracked submit %s: cannot record %s in the ledger (%s); again "
                    "in %.0f s",
                    attempt,
                    state,
                    exc,
                    pause,
                )
                await sleep_or_until(self.client.clock, pause)
                pause = min(pause * 2, self.retry_max)

    # -- watching and handling ------------------------------------------------------------

    def _start(self, attempt: str, work: Awaitable[None]) -> None:
        async def run() -> None:
            try:
                await work
            finally:
                # Handled, parked or left: nothing of it stays in this process.
                self._tasks.pop(attempt, None)
                self._jobs.pop(attempt, None)

        task = asyncio.ensure_future(run())
        if inspect.iscoroutine(work):
            # Cancelled before it started (the client closed at once), `run`
            # never awaits *work*: close it, or it is collected unawaited.
            task.add_done_callback(lambda _: work.close())
        self._tasks[attempt] = task
        self._beat()

    async def _reconciled(
        self, attempt: str, error: AmbiguousSubmitError, context: Any
    ) -> None:
        try:
            job = await self.client.reconcile(error)
        except PixelByteError as exc:
            # Left active (and leased until this client closes): a person, or a
            # later resume(), decides.
            log.warning("tracked submit %s: its job cannot be told: %s", attempt, exc)
            return
        if job is None:
            lost = LostSubmit(
                attempt=attempt,
                model=error.model,
                context=context,
                reason="its answer was lost, and no job was found for it once its "
                "settle horizon had passed",
            )
            await self._lost(lost)
            return
        await self._tie(attempt, job, context)
        await self._watch(attempt, job)

    async def _watch(self, attempt: str, job: Job, failures: int = 0) -> None:
        while not job.done:
            try:
                await job.wait()
            except (JobError, WaitTimeout):
                continue  # failed or cancelled: done; a long job: wait on
            except PixelByteError as exc:
                log.warning("tracked job %s: watching failed (%s); again", job.id, exc)
                await sleep_or_until(self.client.clock, self.retry_initial)
        await self._handle(attempt, job, failures)

    async def _handle(self, attempt: str, job: Job, failures: int = 0) -> None:
        if not self.handlers:
            log.warning(
                "tracked job %s ended, but no on_finished handler is registered: it "
                "stays tracked for a process that has one",
                job.id,
            )
            return

        async def run() -> None:
            for handler in self.handlers:
                await handler(job)

        await self._run_handlers(
            attempt,
            run,
            f"on_finished handler failed for tracked job {job.id}",
            done="handled",
            failures=failures,
        )

    async def _lost(self, lost: LostSubmit, failures: int = 0) -> None:
        """Its submit made no job: run the `on_lost` handlers, then it is ``none``."""
        if not self.lost_handlers:
            log.warning(
                "tracked submit %s made no job (%s); no on_lost handler is registered",
                lost.attempt,
                lost.reason,
            )
            await self._finish(lost.attempt, "none")
            return

        async def run() -> None:
            for handler in self.lost_handlers:
                await handler(lost)

        await self._run_handlers(
            lost.attempt,
            run,
            f"on_lost handler failed for tracked submit {lost.attempt}",
            done="none",
            failures=failures,
        )

    async def _run_handlers(
        self,
        attempt: str,
        run: Callable[[], Awaitable[None]],
        what: str,
        *,
        done: TrackedState,
        failures: int,
    ) -> None:
        """
        Run *run* (the handlers) until it returns, then record *attempt* as *done*.

        A failure is logged and run again with back-off; after `park_after`
        failures the record is parked (`failed_handlers`).  Recorded before and
        after, so a process that dies midway leaves it to the next `resume`:
        at least once.
        """
        pause = self.retry_initial
        while True:
            try:
                await run()
            except Exception as exc:  # a handler's failure: logged, tried again
                failures += 1
                parked = failures >= self.park_after
                log.exception(
                    "%s (%d of %d)%s",
                    what,
                    failures,
                    self.park_after,
                    "; parked (see failed_handlers())" if parked else "",
                )
                if not await self._finish(
                    attempt,
                    "parked" if parked else "active",
                    failures=failures,
                    error=repr(exc)[:1000],
                ):
                    return  # its lease went to another process meanwhile
                if parked:
                    return
                await sleep_or_until(self.client.clock, pause)
                pause = min(pause * 2, self.retry_max)
                continue
            if not await self._finish(attempt, done):
                log.warning(
                    "tracked submit %s was handled here after its lease had passed "
                    "to another process (it may be handled twice)",
                    attempt,
                )
            return

    # -- after a restart -------------------------------------------------------------------

    async def resume(self) -> list[Job]:
        """Take over every active tracked job nobody (alive) holds; see `PixelByte.resume`."""
        found: list[Job] = []
        # Only this group's: another program's handlers expect other contexts.
        records = await self.records(ACTIVE)
        gone = {
            r.owner
            for r in records
            if r.owner is not None and r.owner != self.owner and owner_gone(r.owner)
        }
        gate = asyncio.Semaphore(_RESUMING)

        async def take(record: TrackedRecord) -> None:
            async with gate:
                now = self._now
                leased = await self.ledger.lease(
                    record.attempt,
                    self.owner,
                    until=now + self.lease,
                    at=now,
                    gone=gone,
                )
                if leased is None:
                    return
                job = await self._reattach(leased)
                if job is not None:
                    found.append(job)

        ours = self._tasks.keys() | self._sending
        for record in records:
            if record.attempt in self._tasks:
                job = self._jobs.get(record.attempt)
                if job is not None:
                    found.append(job)
        await asyncio.gather(*(take(r) for r in records if r.attempt not in ours))
        self._beat()
        if self._scanner is None and not self._closed:
            self._scanner = asyncio.ensure_future(self._scan())
        return found

    async def _reattach(self, record: TrackedRecord) -> Job | None:
        context = json.loads(record.context)
        attempt = await self.client.ledger_attempt(record.attempt)
        job_id = record.job_id or (attempt.job_id if attempt is not None else None)
        if job_id is not None:
            job = await self.client.get_job(job_id)
            job.context = context
            self._traced(job, record, attempt)
            # Its submit named our webhook URL: its delivery ends the wait (the
            # client polls only as a safety net, where webhooks are set up).
            job.via_webhook = attempt is not None and attempt.tagged
            if record.job_id is None:
                await self.ledger.tracked_job(record.attempt, job_id, at=self._now)
            self._jobs[record.attempt] = job
            self._start(
                record.attempt, self._watch(record.attempt, job, record.failures)
            )
            return job
        if attempt is None or attempt.state == "none":
            reason = (
                "no submit of it was recorded: its process stopped before sending it"
                if attempt is None
                else "the ledger knows it made no job"
            )
            lost = LostSubmit(
                attempt=record.attempt,
                model=record.model,
                context=context,
                reason=reason,
            )
            self._start(record.attempt, self._lost(lost, record.failures))
            return None
        # Its submit's fate was unknown when its process died: reconcile it.
        error = AmbiguousSubmitError(
            f"tracked submit {record.attempt} of a stopped process",
            model=record.model,
            input={},
            webhook_url=None,
            started_at=attempt.started_at,
            attempt=record.attempt,
        )
        self._start(record.attempt, self._reconciled(record.attempt, error, context))
        return None

    def _traced(self, job: Job, record: TrackedRecord, attempt: Attempt | None) -> None:
        """
        Give a re-attached job its ``pixelbyte.job`` span, here and now.

        Its first process's span ended with that process: its end, cost and
        duration are recorded by this one.
        """
        if job._trace is not None:  # noqa: SLF001 -- the client's job
            return
        clock = self.client.clock
        started = clock.monotonic() - max(0.0, clock.time() - record.created_at)
        job._traced(  # noqa: SLF001 -- the client's job
            adopted(
                record.model,
                record.attempt,
                started=started,
                how="resumed",
                list_price=None if attempt is None else attempt.list_price,
            )
        )

    async def _scan(self) -> None:
        """After `resume`: take over, now and then, what other processes left."""
        while not self._closed:
            await sleep_or_until(self.client.clock, self.lease)
            try:
                await self.resume()
            except PixelByteError as exc:
                log.warning("tracked jobs: looking for orphans failed: %s", exc)

    # -- leases ----------------------------------------------------------------------------

    def _beat(self) -> None:
        if self._heartbeat is None and not self._closed:
            self._heartbeat = asyncio.ensure_future(self._renewing())

    async def _renewing(self) -> None:
        while not self._closed:
            await sleep_or_until(self.client.clock, self.lease / 3)
            now = self._now
            try:
                await self.ledger.renew(self.owner, until=now + self.lease, at=now)
            except PixelByteError as exc:
                log.warning("tracked jobs: renewing leases failed: %s", exc)

    async def records(self, states: Collection[str]) -> list[TrackedRecord]:
        """This group's tracked jobs in *states* (`ValidationError` for others)."""
        unknown = sorted(set(states) - set(TRACKED_STATES))
        if unknown:
            raise ValidationError(
                f"unknown tracked states {unknown}; they are {list(TRACKED_STATES)}",
                field="states",
            )
        wanted = cast("Collection[TrackedState]", states)
        found = await self.ledger.tracked(states=wanted)
        return [r for r in found if r.group == self.group]

    async def failed(self) -> list[TrackedRecord]:
        """The parked tracked jobs (their handlers kept failing)."""
        return await self.records(_PARKED)

    async def aclose(self) -> None:
        """Stop watching and handling; give the leases up so another process resumes."""
        if self._closed:
            return
        self._closed = True
        tasks = [*self._tasks.values(), self._heartbeat, self._scanner]
        running = [t for t in tasks if t is not None and not t.done()]
        for task in running:
            task.cancel()
        for task in running:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self._heartbeat is not None:  # this client held leases
            with contextlib.suppress(PixelByteError):
                await self.ledger.release(self.owner, at=self._now)
