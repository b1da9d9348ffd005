"""
A batch's plan: what this run does with each input, and what that may cost.
"""

from __future__ import annotations

from collections.abc import Mapping

from pixelbyte_async._errors import AmbiguousSubmitError
from pixelbyte_async._journal import JournalRow

from ._budget import Budget
from ._outputs import Outputs
from ._rows import Entry
from ._types import SPENDING, BatchPlan, PlannedItem
from ._unknown import UnknownFates


__all__ = ["Planner", "changed"]


def changed(entry: Entry) -> bool:
    """Whether *entry*'s input is not the one its journal row's job was made for."""
    row = entry.row
    return (
        row is not None
        and row.state != "planned"
        and (row.model != entry.model or row.input != entry.document)
    )


class Planner:
    """
    Decides each input's action from its journal row, then prices the spending ones.

    A row an earlier run left in 'submitting' becomes a submit of unknown fate to
    settle (`UnknownFates`) before anything of its model is sent.
    """

    def __init__(
        self,
        *,
        budget: Budget,
        unknown: UnknownFates,
        outputs: Outputs | None,
        retry_failed: bool,
        fit: bool,
        rerun_changed: bool = False,
    ) -> None:
        self._budget = budget
        self._unknown = unknown
        self._outputs = outputs
        self._retry_failed = retry_failed
        self._fit = fit
        self._rerun_changed = rerun_changed

    async def plan(
        self,
        entries: list[Entry],
        rows: Mapping[str, JournalRow],
        *,
        concurrency: int,
    ) -> BatchPlan:
        """Plan *entries* given their journal *rows*, estimating at *concurrency*."""
        for entry in entries:
            entry.row = rows.get(entry.key)
            await self._classify(entry)
            if entry.action == "reconcile" and entry.row is not None:
                row = entry.row
                self._unknown.add(
                    entry.key,
                    AmbiguousSubmitError(
                        f"an earlier run was submitting {entry.key} when it stopped",
                        model=entry.model,
                        input=row.input,
                        webhook_url=None,
                        started_at=row.started_at or 0.0,
                        attempt=row.attempt,
                    ),
                )
                self._unknown.hold(entry)
        source, note = await self._budget.estimate(
            [e for e in entries if e.action in SPENDING], concurrency=concurrency
        )
        if self._fit:
            self._budget.fit(entries)
        plan = BatchPlan(
            items=tuple(
                PlannedItem(
                    key=e.key,
                    index=e.index,
                    model=e.model,
                    action=e.action,
                    estimated_cost_micro_cents=e.estimate
                    if e.action in SPENDING
                    else None,
                    job_id=e.row.job_id if e.row else None,
                )
                for e in entries
            ),
            estimated_cost_micro_cents=sum(
                e.estimate or 0 for e in entries if e.action in SPENDING
            ),
            charged_micro_cents=self._budget.charged,
            max_cost_micro_cents=self._budget.limit,
            estimate_source=source,
            estimate_note=note,
        )
        for entry in entries:
            if entry.action == "needs_attention":
                # Its job may exist (and be charged): count it against the budget.
                self._budget.charge(
                    entry.key, entry.estimate or 0, assumed=entry.estimate_assumed
                )
        return plan

    async def _classify(self, entry: Entry) -> None:
        """Decide what to do with *entry* from its journal row."""
        row = entry.row
        if row is None or row.state == "planned":
            entry.action = "submit"
            return
        if changed(entry):
            # Not what its job was made for: never hand that job's output back.
            entry.action = "submit" if self._rerun_changed else "changed"
            return
        entry.resumed = True
        if row.job_id is not None and row.state not in {"failed", "cancelled"}:
            self._budget.charge(
                entry.key, row.cost_micro_cents or 0, assumed=not row.cost_known
            )
        await self._resume(entry, row)

    async def _resume(self, entry: Entry, row: JournalRow) -> None:
        """What an earlier run's row still needs, by its state."""
        state = row.state
        if state == "submitting":
            entry.action = "reconcile"
        elif state == "submitted":
            entry.action = "attach"
        elif state == "completed":
            entry.action = "download" if self._outputs is not None else "done"
        elif state == "downloaded":
            entry.action = "done"
            if self._outputs is not None and not await self._outputs.intact(entry, row):
                entry.action = "download"
        elif state == "failed":
            entry.action = "retry" if self._retry_failed else "failed"
            self._budget.refund(entry.key)
        elif state == "cancelled":
            entry.action = "cancelled"
            self._budget.refund(entry.key)
        else:
            entry.action = "needs_attention"
