"""
The orphan audit: the account's unclaimed jobs in a window, split by what could have made them.

An *orphan* is a job that one of the ledger's submits of unknown fate may have
made: paid for, and most likely ours.  Everything else nothing claims is another
submitter's as far as this machine knows, reported once and never cancelled here.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterable
from datetime import datetime
from typing import TYPE_CHECKING

import attrs

from pixelbyte_async._audit_report import AuditOrphan, AuditReport, PriceBasis
from pixelbyte_async._errors import (
    AmbiguousSubmitError,
    PixelByteError,
    ValidationError,
)
from pixelbyte_async._inputs import PRICES
from pixelbyte_async._ledger import Attempt

from ._claims import (
    DEFAULT_CLOCK_SKEW,
    as_attempt,
    created_at,
    created_since,
    timestamp,
)
from ._windows import ATTEMPTS_BACK, CREATED_AT_SLACK


if TYPE_CHECKING:
    from pixelbyte_async._job import Job

    from ._reconciler import Reconciler


__all__ = ["audit"]


async def audit(
    reconciler: Reconciler,
    *,
    since: datetime | float,
    until: datetime | float | None,
    model: str | None,
    exclude: Iterable[str],
    lost: Iterable[AmbiguousSubmitError] = (),
    concurrency: int = 8,
) -> AuditReport:
    """See `PixelByte.audit`."""
    now = reconciler.client.clock.time()
    start = timestamp(since)
    end = now if until is None else timestamp(until)
    if end < start:
        raise ValidationError("until is before since", field="until")
    found = await _unclaimed(reconciler, start, end, model, set(exclude))
    ties = await _Ties.find(
        reconciler, found, start=start, end=end, model=model, lost=list(lost)
    )
    limiter = asyncio.Semaphore(concurrency)

    async def look(job: Job) -> AuditOrphan:
        async with limiter:
            # On failure the list's view is still worth reporting.
            with contextlib.suppress(PixelByteError):
                await job.refresh()
        return ties.orphan(job)

    orphans = await asyncio.gather(*(look(j) for j in found if ties.owners[j.id]))
    return AuditReport(
        since=start,
        until=end,
        orphans=tuple(orphans),
        others=tuple(_described(j) for j in found if not ties.owners[j.id]),
        checked_at=now,
    )


async def _unclaimed(
    reconciler: Reconciler,
    start: float,
    end: float,
    model: str | None,
    excluded: set[str],
) -> list[Job]:
    """The jobs created between *start* and *end* (our clock) that nothing claims."""
    low, high = reconciler.offset.bounds(DEFAULT_CLOCK_SKEW)
    first, last = start + low - CREATED_AT_SLACK, end + high
    found = [
        job
        for job in await created_since(reconciler.client, model=model, floor=first)
        if ((created := created_at(job)) is None or created <= last)
        and job.id not in excluded
        and not reconciler.claimed(job.id)
    ]
    claims = await reconciler.ledger.claims([j.id for j in found])
    return [j for j in found if j.id not in claims]


@attrs.define
class _Ties:
    """Which open attempts of the ledger could have made each unclaimed job."""

    horizon: float
    owners: dict[str, list[Attempt]]
    delivered: dict[str, str]
    #: Models with unclaimed jobs no attempt could have made (other submitters).
    foreign_models: set[str | None]
    #: How many unclaimed jobs each attempt's window holds.
    in_window: dict[str, int]

    @classmethod
    async def find(
        cls,
        reconciler: Reconciler,
        found: list[Job],
        *,
        start: float,
        end: float,
        model: str | None,
        lost: list[AmbiguousSubmitError],
    ) -> _Ties:
        horizon = reconciler.settle
        attempts = await reconciler.ledger.attempts(
            model=model,
            since=start - horizon - ATTEMPTS_BACK,
            until=end,
            open_only=True,
        )
        windows = {
            a.id: reconciler.window(a, horizon, DEFAULT_CLOCK_SKEW) for a in attempts
        }
        # Lost submits the caller knows that the ledger may not (a journal's,
        # from another machine or an earlier version).
        for error in lost:
            known = as_attempt(error)
            if known.id not in windows and model in {None, known.model}:
                attempts.append(known)
                windows[known.id] = reconciler.window(
                    known, horizon, DEFAULT_CLOCK_SKEW
                )
        source = reconciler.client.attempts
        owners: dict[str, list[Attempt]] = {}
        delivered: dict[str, str] = {}
        for job in found:
            at = created_at(job)
            mine = [
                a for a in attempts if a.model == job.model and windows[a.id].holds(at)
            ]
            named = None if source is None else await source.attempt_for(job.id)
            if named is not None:
                # A delivery names its attempt: that one's alone, or nobody's here.
                delivered[job.id] = named
                mine = [a for a in mine if a.id == named]
            owners[job.id] = mine
        in_window: dict[str, int] = {}
        for mine in owners.values():
            for a in mine:
                in_window[a.id] = in_window.get(a.id, 0) + 1
        return cls(
            horizon=horizon,
            owners=owners,
            delivered=delivered,
            foreign_models={j.model for j in found if not owners[j.id]},
            in_window=in_window,
        )

    def orphan(self, job: Job) -> AuditOrphan:
        """*job*, which a lost submit may have made, as an orphan."""
        mine = self.owners[job.id]
        one = mine[0] if len(mine) == 1 else None
        proven = one is not None and (
            self.delivered.get(job.id) == one.id
            or (self.in_window[one.id] == 1 and job.model not in self.foreign_models)
        )
        return _described(
            job,
            attempt=one,
            proven=proven,
            settles_at=max(a.started_at + self.horizon for a in mine),
        )


def _described(
    job: Job,
    *,
    attempt: Attempt | None = None,
    proven: bool = False,
    settles_at: float | None = None,
) -> AuditOrphan:
    """*job* as the audit reports it, priced (another submitter's: no *attempt*)."""
    price, basis = _price(job, attempt)
    return AuditOrphan(
        job=job,
        status=job.status,
        created_at=job.info.created_at,
        cost_micro_cents=job.cost_micro_cents,
        attempt=None if attempt is None else attempt.id,
        proven=proven,
        settles_at=settles_at,
        price_micro_cents=price,
        price_basis=basis,
    )


def _price(job: Job, attempt: Attempt | None) -> tuple[int | None, PriceBasis | None]:
    """What *job* cost: charged, else its lost submit's list price, else at most."""
    if job.cost_micro_cents is not None:
        return job.cost_micro_cents, "charged"
    if attempt is not None and attempt.list_price is not None:
        return attempt.list_price, "list"
    price = PRICES.get(job.model or "")
    highest = None if price is None else price.highest
    return (highest, "bound") if highest is not None else (None, None)
