"""
A batch's submits of unknown fate: settling each, and the per-model gate they hold.
"""

from __future__ import annotations

import asyncio
import collections
import logging
from typing import TYPE_CHECKING, Literal

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
from ._ledger import Ledger
from ._rows import Entry
from ._types import BatchItemStatus, is_fatal


if TYPE_CHECKING:
    from pixelbyte_async._job import Job


__all__ = ["UnknownFates"]

log = logging.getLogger("pixelbyte_async")


class UnknownFates:
    """
    A batch's submits of unknown fate, each kept until it is settled.

    Settled means its job was found (and journaled), or its settle horizon passed
    with none (sending again is safe).  Meanwhile every such attempt, earlier
    runs' included, competes for the jobs reconcile finds; and unless a webhook
    nonce attributes it, new submits of its model wait (`until_attributable`).
    """

    def __init__(
        self,
        pb: BatchClient,
        *,
        journal: Journal,
        ledger: Ledger,
        budget: Budget,
        settle: float | None,
    ) -> None:
        self._pb = pb
        self._journal = journal
        self._ledger = ledger
        self._budget = budget
        self._settle = settle
        #: Attempts of unknown fate not settled yet, by row: they compete for the
        #: jobs reconcile finds (leftovers of earlier runs included).
        self._attempts: dict[str, AmbiguousSubmitError] = {}
        #: Per model, rows being settled whose jobs only the job list can identify:
        #: new submits of that model wait for them, so attribution stays possible.
        self._settling: collections.Counter[str] = collections.Counter()
        self._gated: set[str] = set()
        self._settled = asyncio.Condition()

    # -- the attempts ----------------------------------------------------------------

    def add(self, key: str, attempt: AmbiguousSubmitError) -> None:
        """Record row *key*'s *attempt* of unknown fate until it is settled."""
        self._attempts[key] = attempt

    def attempt(self, key: str) -> AmbiguousSubmitError:
        """Row *key*'s attempt of unknown fate."""
        return self._attempts[key]

    # -- the per-model gate ----------------------------------------------------------

    def hold(self, entry: Entry) -> None:
        """Hold new submits of *entry*'s model until its unknown fate is settled."""
        if entry.key not in self._gated:
            self._gated.add(entry.key)
            self._settling[entry.model] += 1

    def holds(self, model: str) -> bool:
        """Whether new submits of *model* must wait."""
        return bool(self._settling[model])

    async def until_attributable(self, model: str) -> None:
        """
        Wait while a submit of *model* of unknown fate is being settled.

        Without an idempotency key, the job list cannot tell apart the jobs of two
        lost submits of one model made at the same time; so a new submit of that
        model waits until the earlier one is found (usually within seconds) or its
        horizon has passed.  Rows of other models, and waiting for and downloading
        running jobs, go on meanwhile.  Attempts tagged with a webhook nonce do
        not hold anything up: their deliveries attribute them.
        """
        async with self._settled:
            await self._settled.wait_for(lambda: not self._settling[model])

    async def _release(self, entry: Entry) -> None:
        if entry.key in self._gated:
            self._gated.discard(entry.key)
            self._settling[entry.model] -= 1
            async with self._settled:
                self._settled.notify_all()

    # -- settling --------------------------------------------------------------------

    async def reconcile_now(
        self, entry: Entry, exc: AmbiguousSubmitError
    ) -> Job | Literal[False] | None:
        """Settle *entry*'s attempt of unknown fate, then let its model go on."""
        try:
            return await self._settle_unknown(entry, exc)
        finally:
            await self._release(entry)

    def _parked(self, entry: Entry, error: ReconcileError, ids: tuple[str, ...]) -> str:
        """Why *entry* is set aside, and the command that settles it."""
        where = self._journal.path
        journal = f" --journal {where}" if where is not None else ""
        command = f"pixelbyte-async batch resolve {entry.key}{journal}"
        resend = (
            "" if error.settle_at is None else f" (not before {iso(error.settle_at)})"
        )
        return (
            f"submit outcome unknown, not re-sent: {error} Candidates: "
            f"{', '.join(ids)}. Settle it with '{command} --adopt JOB' (one of "
            f"them is this row's) or '{command} --resend' (none is){resend}."
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
        self._budget.charge(entry.key, entry.estimate or 0)
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
            await self._ledger.park(entry, self._parked(entry, rexc, ids), ids)
            return False
        except PixelByteError as rexc:
            if is_fatal(rexc):
                raise
            # The row stays 'submitting': the next run reconciles it.
            self._ledger.stop("unavailable")
            self._ledger.emit(
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
            )
            self._budget.forget(entry.key)
            return None
        log.info("batch: %s: found its job %s", entry.key, job.id)
        await self._ledger.record(entry, job, how="reconciled")
        return job
