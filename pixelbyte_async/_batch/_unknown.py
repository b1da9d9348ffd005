"""
A batch's submits of unknown fate: settling each, and the per-model gate they hold.
"""

from __future__ import annotations

import asyncio
import collections
import logging
from typing import TYPE_CHECKING, Literal

from pixelbyte_async._clock import sleep_or_until
from pixelbyte_async._errors import (
    AmbiguousSubmitError,
    PixelByteError,
    ReconcileError,
    ReconcileTimeout,
)
from pixelbyte_async._journal import Journal
from pixelbyte_async._reconcile import iso
from pixelbyte_async._seams import BatchClient

from ._budget import Budget
from ._outcomes import Outcomes
from ._rows import Entry
from ._types import BatchItemStatus, Settling, is_fatal


if TYPE_CHECKING:
    from pixelbyte_async._job import Job


__all__ = ["UnknownFates"]

log = logging.getLogger("pixelbyte_async")

#: How many lost submits of one model at once pause that model's new submits.
_PAUSING = 2
#: How often (seconds) a paused model says how long it may still wait.
_COUNTDOWN_EVERY = 60.0


def _duration(seconds: float) -> str:
    """``4m 05s`` or ``12s``."""
    minutes, rest = divmod(round(seconds), 60)
    return f"{minutes}m {rest:02d}s" if minutes else f"{rest}s"


class UnknownFates:
    """
    A batch's submits of unknown fate, each kept until it is settled.

    Settled means its job was found (and journaled), or its settle horizon passed
    with none (sending again is safe).  Meanwhile every such attempt, earlier
    runs' included, competes for the jobs reconcile finds.

    A submit of this run whose answer was lost (`lost`) lets rows of its model go
    on being sent: their jobs are theirs by their submits' answers.  Only while
    two such lost submits of one model that no webhook nonce attributes overlap
    do new submits of that model wait (`until_attributable`): a third could not be
    told apart from them either.

    A submit an earlier run left in flight (`hold`: it stopped, killed perhaps,
    with the request on the wire) holds its model until it is settled.  A run
    that stops like that may stop again: a submit of the model on the wire then
    would be a second lost submit beside it, and the job list cannot tell their
    jobs apart (the dead sender's window reaches to when the next run found it
    gone, plus the horizon), so the next run would have to set both aside.
    """

    def __init__(
        self,
        pb: BatchClient,
        *,
        journal: Journal,
        outcomes: Outcomes,
        budget: Budget,
        settle: float | None,
    ) -> None:
        self._pb = pb
        self._journal = journal
        self._outcomes = outcomes
        self._budget = budget
        self._settle = settle
        #: Attempts of unknown fate not settled yet, by row: they compete for the
        #: jobs reconcile finds (leftovers of earlier runs included).
        self._attempts: dict[str, AmbiguousSubmitError] = {}
        #: Per model, the rows being settled that only the job list can
        #: attribute, with when their horizon ends.
        self._listed: dict[str, dict[str, float]] = collections.defaultdict(dict)
        #: Per model, those of them an earlier run left in flight: each one
        #: holds its model alone.
        self._left: dict[str, set[str]] = collections.defaultdict(set)
        #: Per model, how many rows wait for those to settle, and the future that
        #: wakes them when one is settled.
        self._waiting: collections.Counter[str] = collections.Counter()
        self._released: dict[str, asyncio.Future[None]] = {}
        #: The rows being reconciled now.
        self._active: set[str] = set()

    @property
    def horizon(self) -> float:
        """The settle horizon in seconds (the batch's, else the client's)."""
        return self._pb.settle if self._settle is None else self._settle

    # -- the attempts ----------------------------------------------------------------

    def add(self, key: str, attempt: AmbiguousSubmitError) -> None:
        """Record row *key*'s *attempt* of unknown fate until it is settled."""
        self._attempts[key] = attempt

    def attempt(self, key: str) -> AmbiguousSubmitError:
        """Row *key*'s attempt of unknown fate."""
        return self._attempts[key]

    # -- the per-model gate ----------------------------------------------------------

    def hold(self, entry: Entry) -> None:
        """
        Hold *entry*'s model for its submit an earlier run left in flight.

        Its attempt (`add`) is settled before any new submit of its model goes
        out: see the class docstring.
        """
        listed = self._list(entry)
        self._left[entry.model].add(entry.key)
        log.warning(
            "batch: %s: an earlier run stopped while submitting %s; new submits of "
            "this model wait until it is settled (at the latest %s), since another "
            "submit lost meanwhile could not be told apart from it",
            entry.model,
            entry.key,
            iso(listed[entry.key]),
        )

    def lost(self, entry: Entry, attempt: AmbiguousSubmitError) -> None:
        """Record this run's submit of *entry* that lost its answer (*attempt*)."""
        self.add(entry.key, attempt)
        if attempt.tagged:
            return  # its webhook delivery will name it
        listed = self._list(entry)
        if len(listed) == _PAUSING:
            log.warning(
                "batch: %s: rows %s lost their submits at once; new submits of this "
                "model pause until one is settled (at the latest %s), since a third "
                "could not be told apart from them either",
                entry.model,
                " and ".join(sorted(listed)),
                iso(min(listed.values())),
            )

    def _list(self, entry: Entry) -> dict[str, float]:
        """Count *entry*'s lost submit as one only the job list can attribute."""
        listed = self._listed[entry.model]
        listed[entry.key] = self._attempts[entry.key].started_at + self.horizon
        return listed

    def holds(self, model: str) -> bool:
        """Whether new submits of *model* must wait."""
        return bool(self._left.get(model)) or (
            len(self._listed.get(model, ())) >= _PAUSING
        )

    def settling(self) -> tuple[Settling, ...]:
        """The rows being settled now, soonest first."""
        rows = [
            Settling(
                key=key,
                model=attempt.model,
                settle_at=attempt.started_at + self.horizon,
                holding=self.holds(attempt.model)
                and key in self._listed[attempt.model],
                waiting=self._waiting[attempt.model],
            )
            for key, attempt in self._attempts.items()
            if key in self._active
        ]
        return tuple(sorted(rows, key=lambda s: (s.settle_at, s.key)))

    async def until_attributable(self, model: str) -> None:
        """
        Wait while two lost submits of *model*, or one an earlier run left, settle.

        Without an idempotency key, the job list cannot tell apart the jobs of lost
        submits of one model made at the same time; a third one would make it
        worse, so a new submit waits until one of them is settled (its job found,
        or its horizon passed).  A submit an earlier run left in flight is settled
        before any new one goes out (see the class docstring).  The wait is logged
        once a minute with how long it may last and how many rows wait.  Rows of
        other models, and waiting for and downloading running jobs, go on
        meanwhile.
        """
        if not self.holds(model):
            return
        self._waiting[model] += 1
        clock = self._pb.clock
        try:
            while self.holds(model):
                released = self._released.get(model)
                if released is None or released.done():
                    released = asyncio.get_running_loop().create_future()
                    self._released[model] = released
                await sleep_or_until(clock, _COUNTDOWN_EVERY, released)
                if self.holds(model) and not released.done():
                    left = min(self._listed[model].values()) - clock.time()
                    log.info(
                        "batch: %s: submits paused, at most %s left (%d rows waiting)",
                        model,
                        _duration(max(left, 0.0)),
                        self._waiting[model],
                    )
        finally:
            self._waiting[model] -= 1

    def _release(self, entry: Entry) -> None:
        left = self._left.get(entry.model)
        if left is not None:
            left.discard(entry.key)
        listed = self._listed.get(entry.model)
        if listed is not None and listed.pop(entry.key, None) is not None:
            released = self._released.pop(entry.model, None)
            if released is not None and not released.done():
                released.set_result(None)

    # -- settling --------------------------------------------------------------------

    async def reconcile_now(
        self, entry: Entry, exc: AmbiguousSubmitError
    ) -> Job | Literal[False] | None:
        """Settle *entry*'s attempt of unknown fate, then let its model go on."""
        self._active.add(entry.key)
        try:
            return await self._settle_unknown(entry, exc)
        finally:
            self._active.discard(entry.key)
            self._release(entry)

    def _parked(self, entry: Entry, error: ReconcileError, ids: tuple[str, ...]) -> str:
        """Why *entry* is set aside, and the command that settles it."""
        where = self._journal.path
        journal = f" --journal {where}" if where is not None else ""
        command = f"pixelbyte-async batch resolve {entry.key}{journal}"
        return (
            f"submit outcome unknown, not re-sent: {error} Candidates: "
            f"{', '.join(ids)}. Settle it with '{command} --adopt JOB' (one of "
            f"them is this row's) or '{command} --resend' (none is)."
        )

    async def _settle_unknown(
        self, entry: Entry, exc: AmbiguousSubmitError
    ) -> Job | Literal[False] | None:
        """
        Find the job an attempt of unknown fate of *entry* created.

        Waits up to the settle horizon, counted from the attempt's journaled start.

        Returns:
            The job (journaled); ``None`` when the horizon passed with no job found
            (sending again is safe; the row is back to 'planned'); ``False`` when
            the entry ended (needs attention, or unknown for now).

        """
        self._budget.charge(
            entry.key, entry.estimate or 0, assumed=entry.estimate_assumed
        )
        log.warning(
            "batch: %s: the submit may have created a job (%s); looking for it "
            "until the settle horizon passes; it is not re-sent before then",
            entry.key,
            exc.__cause__ or exc,
        )
        try:
            job = await self._pb.reconcile(
                exc,
                exclude=await self._journal.job_ids(),
                settle=self._settle,
                competing=list(self._attempts.values()),
            )
        except ReconcileError as rexc:
            if isinstance(rexc, ReconcileTimeout):
                raise  # not raised without a timeout; a bug if it is
            ids = tuple(sorted(job.id for job in rexc.candidates))
            await self._outcomes.park(entry, self._parked(entry, rexc, ids), ids)
            return False
        except PixelByteError as rexc:
            if is_fatal(rexc):
                raise
            # The row stays 'submitting': the next run reconciles it.
            self._outcomes.stop("unavailable")
            self._outcomes.emit(
                entry,
                BatchItemStatus.UNFINISHED,
                error=f"submit outcome unknown and reconciling failed ({rexc}); "
                "run the batch again to reconcile it",
            )
            return False
        # Settled either way (a row set aside for a person keeps competing).
        self._attempts.pop(entry.key, None)
        if job is None:
            await self._journal.unsubmitted(
                entry.key,
                error="no job appeared within the settle horizon of an ambiguous "
                "submit",
                outcome="lapsed",
            )
            self._budget.forget(entry.key)
            return None
        log.info("batch: %s: found its job %s", entry.key, job.id)
        await self._outcomes.record(entry, job, how="reconciled")
        return job
