"""
A batch's closing audit: the account's jobs created during the run that no row claims.
"""

from __future__ import annotations

import logging

from pixelbyte_async._audit_report import AuditOrphan
from pixelbyte_async._errors import PixelByteError
from pixelbyte_async._journal import Journal
from pixelbyte_async._reconcile import DEFAULT_CLOCK_SKEW
from pixelbyte_async._seams import BatchClient

from ._budget import usd
from ._rows import Entry
from ._types import is_fatal


__all__ = ["audit"]

log = logging.getLogger("pixelbyte_async")


async def audit(
    pb: BatchClient, journal: Journal, entries: list[Entry], *, started: float
) -> tuple[tuple[AuditOrphan, ...] | None, str | None]:
    """
    List the account's unclaimed jobs of this batch's models in its window.

    The window opens when the run *started* (Unix time), or earlier: at the
    earliest attempt of unknown fate an earlier run left for this one to settle.

    Returns:
        ``(orphans, None)``, or ``(None, why)`` if the audit could not run.

    Raises:
        PixelByteError: The errors that end the whole batch.

    """
    models = sorted({e.model for e in entries})
    # The audit window reaches back to the attempts this run settles.
    window_start = min(
        [
            started,
            *(
                e.row.started_at or 0.0
                for e in entries
                if e.action == "reconcile" and e.row is not None
            ),
        ]
    )
    since = window_start - DEFAULT_CLOCK_SKEW
    try:
        claimed = await journal.job_ids()
        orphans: list[AuditOrphan] = []
        for model in models:
            report = await pb.audit(since=since, model=model, exclude=claimed)
            orphans.extend(report.orphans)
    except PixelByteError as exc:
        if is_fatal(exc):
            raise
        log.warning("batch: the closing audit failed: %s", exc)
        return None, str(exc)
    for orphan in orphans:
        log.warning(
            "batch: job %s (%s, %s) was created during the run but no row "
            "claims it; cost %s",
            orphan.job.id,
            orphan.job.model,
            orphan.status.value,
            "unknown"
            if orphan.cost_micro_cents is None
            else usd(orphan.cost_micro_cents),
        )
    return tuple(orphans), None
