"""
What an audit finds: `AuditReport` and its `AuditOrphan` jobs, and what they cost.

The account's jobs that nothing in this process (or a given journal) claims, in a
window: made by `Reconciler.audit` (`PixelByte.audit`) and by every batch at its end.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import TYPE_CHECKING

import attrs

from ._models import JobStatus


if TYPE_CHECKING:
    from ._job import Job


__all__ = ["AuditOrphan", "AuditReport", "known_cost"]


def known_cost(orphans: Iterable[AuditOrphan]) -> int:
    """What *orphans* are known to cost (failed and cancelled ones are refunded)."""
    return sum(
        o.cost_micro_cents or 0
        for o in orphans
        if o.status not in {JobStatus.FAILED, JobStatus.CANCELLED}
    )


@attrs.frozen(kw_only=True)
class AuditOrphan:
    """
    A job of the account that nothing in this process (or the given journal) claims.

    Attributes:
        job: A handle on it: `Job.wait`, `Job.download` and `Job.cancel` work.
        status: Its status when the audit looked.
        created_at: When the API says it was created.
        cost_micro_cents: What it cost, when the API said so (else ``None``).

    """

    job: Job
    status: JobStatus
    created_at: datetime | None
    cost_micro_cents: int | None


@attrs.frozen(kw_only=True)
class AuditReport:
    """
    What `PixelByte.audit` found: the account's unclaimed jobs in a window.

    A job here was created by nobody this process knows of: another program using
    the same key, or a paid job whose submit answer was lost and never reconciled.
    Pending ones can still be cancelled for a refund (`cancel_pending`); the others
    can be adopted (wait for them and download them through `AuditOrphan.job`).

    .. versionadded:: 0.3.0
    """

    since: float
    until: float
    orphans: tuple[AuditOrphan, ...]

    @property
    def cost_micro_cents(self) -> int:
        """The known cost of the orphans (failed and cancelled ones are refunded)."""
        return known_cost(self.orphans)

    @property
    def unknown_cost(self) -> int:
        """How many orphans the API gave no cost for."""
        return sum(1 for o in self.orphans if o.cost_micro_cents is None)

    @property
    def pending(self) -> tuple[AuditOrphan, ...]:
        """The orphans that can still be cancelled (refunded)."""
        return tuple(o for o in self.orphans if o.status is JobStatus.PENDING)

    async def cancel_pending(self) -> int:
        """Cancel every pending orphan; return the micro-cents refunded."""
        refunded = 0
        for orphan in self.pending:
            refund = await orphan.job.cancel()
            refunded += refund or 0
        return refunded
