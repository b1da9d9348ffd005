"""
What an audit finds: `AuditReport` and its `AuditOrphan` jobs, and what they cost.

Made by `PixelByte.audit` and by every batch at its end: the account's jobs in a
window that nothing claims, split into *orphans* (jobs one of the ledger's lost
submits may have made: paid for, most likely ours) and *others* (jobs no recorded
submit could have made: other submitters', as far as this machine knows).
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import TYPE_CHECKING, Literal, TypeAlias

import attrs

from ._models import JobStatus


if TYPE_CHECKING:
    from ._job import Job


__all__ = ["AuditOrphan", "AuditReport", "PriceBasis", "known_cost"]

#: Where an orphan's price comes from: what the API ``charged``, the ``list``
#: price of the lost submit's input, or the model's highest list price (``bound``:
#: the job cost at most that).
PriceBasis: TypeAlias = Literal["charged", "list", "bound"]

_REFUNDED = frozenset({JobStatus.FAILED, JobStatus.CANCELLED})


def known_cost(orphans: Iterable[AuditOrphan]) -> int:
    """What *orphans* cost as far as known (failed and cancelled ones are refunded)."""
    return sum(o.price_micro_cents or 0 for o in orphans if o.status not in _REFUNDED)


@attrs.frozen(kw_only=True)
class AuditOrphan:
    """
    A job of the account that nothing in this process, its ledger or a journal claims.

    Attributes:
        job: A handle on it: `Job.wait`, `Job.download` and `Job.cancel` work.
        status: Its status when the audit looked.
        created_at: When the API says it was created.
        cost_micro_cents: What it cost, when the API said so (else ``None``).
        attempt: The lost submit (ledger attempt id) that may have made it, when
            exactly one could have; ``None`` for several, or for other submitters'.
        proven: Whether it is that attempt's beyond doubt: a verified delivery
            named the attempt, or nothing else could have made it (no other
            unexplained job of the model in sight).  Only proven orphans are
            cancelled by `AuditReport.cancel_pending`.
        settles_at: Until when its lost submit may still be being reconciled (by
            its own process); ``None`` for other submitters' jobs.
        price_micro_cents: What it cost, or (if the API did not say) what it
            would at list price, or at most (see *price_basis*); ``None``: no idea.
        price_basis: Where *price_micro_cents* comes from: what the API
            ``"charged"``, the ``"list"`` price of the lost submit's input, or the
            model's highest list price (``"bound"``: it cost at most that).

    .. versionchanged:: 0.3.0 *attempt*, *proven*, *settles_at*, *price_micro_cents*
       and *price_basis*.
    """

    job: Job
    status: JobStatus
    created_at: datetime | None
    cost_micro_cents: int | None
    attempt: str | None = None
    proven: bool = False
    settles_at: float | None = None
    price_micro_cents: int | None = None
    price_basis: PriceBasis | None = None


@attrs.frozen(kw_only=True)
class AuditReport:
    """
    What `PixelByte.audit` found: the account's unclaimed jobs in a window.

    *orphans* are jobs a lost submit recorded in the ledger may have made (paid,
    and most likely ours): pending ones that are proven ours can be cancelled for
    a refund (`cancel_pending`), the others adopted (wait for and download them
    through `AuditOrphan.job`).  *others* are jobs nothing recorded could have made:
    another program, machine or person using the key.  They are reported, never
    cancelled here; cancelling one is a decision for a person, job by job.

    .. versionadded:: 0.3.0
    .. versionchanged:: 0.3.0 *others* and *checked_at*; orphans are only jobs
       the ledger's lost submits may have made.
    """

    since: float
    until: float
    orphans: tuple[AuditOrphan, ...]
    others: tuple[AuditOrphan, ...] = ()
    checked_at: float = 0.0

    @property
    def cost_micro_cents(self) -> int:
        """What the orphans cost, at most (failed and cancelled ones are refunded)."""
        return known_cost(self.orphans)

    @property
    def cost_is_estimate(self) -> bool:
        """Whether some orphan's price is a list price or a bound, not a charge."""
        return any(
            o.price_basis not in {None, "charged"}
            for o in self.orphans
            if o.status not in _REFUNDED
        )

    @property
    def unknown_cost(self) -> int:
        """How many orphans have no price at all (unknown model, no cost given)."""
        return sum(1 for o in self.orphans if o.price_micro_cents is None)

    @property
    def pending(self) -> tuple[AuditOrphan, ...]:
        """The orphans still pending (they could be cancelled for a refund)."""
        return tuple(o for o in self.orphans if o.status is JobStatus.PENDING)

    @property
    def cancellable(self) -> tuple[AuditOrphan, ...]:
        """
        The pending orphans `cancel_pending` cancels.

        Proven to be a lost submit's of this ledger, whose settle horizon has
        passed (before it, the submit's own process may still be adopting it).
        """
        return tuple(
            o
            for o in self.pending
            if o.proven and (o.settles_at is None or o.settles_at <= self.checked_at)
        )

    async def cancel_pending(self) -> int:
        """Cancel every `cancellable` orphan; return the micro-cents refunded."""
        refunded = 0
        for orphan in self.cancellable:
            refund = await orphan.job.cancel()
            refunded += refund or 0
        return refunded
