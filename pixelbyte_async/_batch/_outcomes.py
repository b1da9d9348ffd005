"""
A running batch's outcomes: what happened to each row, journaled, charged and reported.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import TYPE_CHECKING

from pixelbyte_async._journal import Journal

from ._budget import Budget
from ._rows import Entry
from ._types import BatchItem, BatchItemStatus


if TYPE_CHECKING:
    from pixelbyte_async._job import Job


__all__ = ["Outcomes"]


class Outcomes:
    """
    What happened to each row of a running batch, and why submitting stopped.

    A row's outcome is reported once, as a `BatchItem` on the queue the `Batch`
    iterates, with what the row costs as far as the `Budget` knows.  Jobs found
    for rows and rows set aside for a person are journaled here too.
    """

    def __init__(
        self, *, journal: Journal, budget: Budget, entries: list[Entry]
    ) -> None:
        self._journal = journal
        self._budget = budget
        self._entries = entries
        self._items: dict[str, BatchItem] = {}
        self._results: asyncio.Queue[BatchItem | None] = asyncio.Queue()
        #: Why submitting stopped early: ``"budget"``, ``"balance"``,
        #: ``"unavailable"``, or ``None``.
        self.stop_reason: str | None = None

    # -- what has been reported ------------------------------------------------------

    @property
    def finished(self) -> int:
        """How many rows have a result so far."""
        return len(self._items)

    def reported(self, key: str) -> bool:
        """Whether row *key* has a result."""
        return key in self._items

    def items(self) -> tuple[BatchItem, ...]:
        """Every result so far, in input order."""
        return tuple(sorted(self._items.values(), key=lambda i: i.index))

    async def next(self) -> BatchItem | None:
        """Wait for the next result; ``None`` once the run has ended (and after)."""
        item = await self._results.get()
        if item is None:
            self._results.put_nowait(None)  # stay exhausted
        return item

    def end(self) -> None:
        """Tell whoever iterates that no results follow."""
        self._results.put_nowait(None)

    def stop(self, reason: str) -> None:
        """Stop submitting for *reason*, unless it stopped already."""
        self.stop_reason = self.stop_reason or reason

    # -- reporting -------------------------------------------------------------------

    def emit(
        self,
        entry: Entry,
        status: BatchItemStatus,
        *,
        job_id: str | None = None,
        error: str | None = None,
        output_url: str | None = None,
        path: Path | None = None,
        skip_reason: str | None = None,
        candidates: tuple[str, ...] = (),
        resumed: bool | None = None,
        own_job: bool = True,
    ) -> None:
        """Report *entry*'s result (*own_job*: the job on record is the row's)."""
        if own_job and job_id is None and entry.job is not None:
            job_id = entry.job.id
        if own_job and job_id is None and entry.row is not None:
            job_id = entry.row.job_id
        cost = self._budget.charge_of(entry.key)
        item = BatchItem(
            key=entry.key,
            index=entry.index,
            input=entry.original,
            model=entry.model,
            status=status,
            job_id=job_id,
            error=error,
            cost_micro_cents=cost,
            estimated_cost_micro_cents=entry.estimate,
            output_url=output_url,
            path=path,
            skip_reason=skip_reason,
            resumed=entry.resumed if resumed is None else resumed,
            candidates=candidates,
            action=entry.action,
        )
        self._items[entry.key] = item
        self._results.put_nowait(item)

    def report_earlier(self, *, downloads: bool) -> None:
        """Report what earlier runs finished, without touching the API."""
        for entry in self._entries:
            row = entry.row
            if row is None:
                continue
            if entry.action == "done":
                path = Path(row.output_path) if row.output_path and downloads else None
                self.emit(
                    entry,
                    BatchItemStatus.COMPLETED,
                    job_id=row.job_id,
                    output_url=row.output_url,
                    path=path,
                    resumed=True,
                )
            elif entry.action in {"failed", "cancelled"}:
                status = (
                    BatchItemStatus.FAILED
                    if entry.action == "failed"
                    else BatchItemStatus.CANCELLED
                )
                hint = (
                    ""
                    if entry.action == "cancelled"
                    else " (retry_failed=True retries it)"
                )
                self.emit(
                    entry,
                    status,
                    job_id=row.job_id,
                    error=f"{row.error or entry.action} in an earlier run{hint}",
                    resumed=True,
                )
            elif entry.action == "needs_attention":
                self.emit(
                    entry,
                    BatchItemStatus.NEEDS_ATTENTION,
                    error=row.error,
                    candidates=row.candidates,
                    resumed=True,
                )
        for entry in self._entries:
            if entry.action == "over_budget":
                self.emit(entry, BatchItemStatus.SKIPPED, skip_reason="budget")
            elif entry.action == "changed":
                was = (
                    f" (job {row.job_id})" if (row := entry.row) and row.job_id else ""
                )
                self.emit(
                    entry,
                    BatchItemStatus.SKIPPED,
                    skip_reason="changed",
                    own_job=False,
                    error=f"its input changed since an earlier run made its job{was}; "
                    "that job's output is not handed back. Run with --rerun-changed "
                    "(rerun_changed=True) to submit it again",
                    resumed=False,
                )

    # -- journaling ------------------------------------------------------------------

    async def record(self, entry: Entry, job: Job, *, how: str) -> None:
        """Journal *entry*'s job and count its charge (the estimate if unknown)."""
        cost = job.cost_micro_cents
        known = cost is not None
        if cost is None:
            cost = entry.estimate
        elif entry.estimate and cost > entry.estimate:
            self._budget.reprice(
                entry.model,
                cost / entry.estimate,
                self._entries,
                reported=self._items,
            )
        self._budget.charge(
            entry.key, cost or 0, assumed=not known and entry.estimate_assumed
        )
        entry.job = job
        # Lands even if we are cancelled meanwhile (see `Journal` writes).
        await self._journal.submitted(
            entry.key,
            job_id=job.id,
            cost_micro_cents=cost,
            cost_known=known,
            status=job.status.value,
            how=how,
        )

    async def park(
        self, entry: Entry, reason: str, candidates: tuple[str, ...] = ()
    ) -> None:
        """Set *entry* aside for a person (never re-sent), journaled."""
        await self._journal.needs_attention(
            entry.key, reason=reason, candidates=candidates
        )
        self.emit(
            entry,
            BatchItemStatus.NEEDS_ATTENTION,
            error=reason,
            candidates=candidates,
            job_id=entry.job.id if entry.job else None,
        )
