"""
A batch's closing audit: the account's jobs created during the run that no row claims.
"""

from __future__ import annotations

import logging

import attrs

from pixelbyte_async._audit_report import AuditOrphan
from pixelbyte_async._errors import PixelByteError
from pixelbyte_async._inputs import usd
from pixelbyte_async._journal import Journal
from pixelbyte_async._seams import BatchClient

from ._rows import Entry
from ._types import is_fatal


__all__ = ["Audit", "audit"]

log = logging.getLogger("pixelbyte_async")


@attrs.frozen
class Audit:
    """
    What the closing audit found, or why it could not run (*error*).

    *follow_up*: the rows whose lost submit no job is tied to (set aside, or
    still unknown), and until when they may still make one (*follow_up_until*).
    """

    orphans: tuple[AuditOrphan, ...] | None = ()
    others: tuple[AuditOrphan, ...] = ()
    error: str | None = None
    follow_up: tuple[str, ...] = ()
    follow_up_until: float | None = None


async def audit(
    pb: BatchClient,
    journal: Journal,
    entries: list[Entry],
    *,
    started: float,
    horizon: float,
) -> Audit:
    """
    List the account's unclaimed jobs of this batch's models in its window.

    The window opens when the run *started* (Unix time, measured against the
    API's clock by the client), or earlier: at the earliest attempt of unknown fate
    an earlier run left for this one to settle.  Orphans are the jobs a lost
    submit of this machine's ledger may have made; the others are reported once.

    Raises:
        PixelByteError: The errors that end the whole batch.

    """
    models = sorted({e.model for e in entries})
    # The audit window reaches back to the attempts this run settles.
    since = min(
        [
            started,
            *(
                e.row.started_at or started
                for e in entries
                if e.action == "reconcile" and e.row is not None
            ),
        ]
    )
    lost = await journal.lost_attempts()
    follow_up = tuple(dict.fromkeys(a.key for a in lost))
    until = max((a.started_at + horizon for a in lost), default=None)
    errors = [a.error(journal.path or "this batch") for a in lost]
    try:
        claimed = await journal.job_ids()
        orphans: list[AuditOrphan] = []
        others: list[AuditOrphan] = []
        for model in models:
            report = await pb.audit(
                since=since, model=model, exclude=claimed, lost=errors
            )
            orphans.extend(report.orphans)
            others.extend(report.others)
    except PixelByteError as exc:
        if is_fatal(exc):
            raise
        log.warning("batch: the closing audit failed: %s", exc)
        return Audit(
            orphans=None, error=str(exc), follow_up=follow_up, follow_up_until=until
        )
    for orphan in orphans:
        log.warning(
            "batch: job %s (%s, %s) may have been made by a lost submit of this "
            "machine (attempt %s) and no row claims it; %s",
            orphan.job.id,
            orphan.job.model,
            orphan.status.value,
            orphan.attempt or "one of several",
            price_words(orphan),
        )
    if others:
        log.info(
            "batch: %d job(s) of other submitters were created during the run "
            "(not ours as far as this machine knows)",
            len(others),
        )
    return Audit(
        orphans=tuple(orphans),
        others=tuple(others),
        follow_up=follow_up,
        follow_up_until=until,
    )


def price_words(orphan: AuditOrphan) -> str:
    """What *orphan* cost, in words: ``$0.25``, ``$0.25 at list price``, ``at most $0.50``."""
    price = orphan.price_micro_cents
    if price is None:
        return "cost unknown"
    if orphan.price_basis == "bound":
        return f"at most {usd(price)}"
    if orphan.price_basis == "list":
        return f"{usd(price)} at list price"
    return usd(price)
