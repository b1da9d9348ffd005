"""
``audit``: the account's paid jobs in a window that nothing on this machine claims.

The journals given with ``--journal`` are read (`_journal_job_ids`) and their jobs
excluded; what is left is printed with its cost: the orphans (a lost submit of this
machine's ledger may have made them) one per line, other submitters' jobs as one
count.  ``--cancel-pending`` cancels only orphans proven ours; any other job is
cancelled only when named with ``--cancel JOB``.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TextIO

import anyio

from pixelbyte_async._audit_report import AuditReport
from pixelbyte_async._cmdline import EXIT_CODES, _CLIError
from pixelbyte_async._errors import AmbiguousSubmitError
from pixelbyte_async._journal import Journal, JournalError

from ._connection import _client
from ._output import (
    _orphan_json,
    _print_json,
    _print_orphans,
    _print_others,
    _usd,
)


async def _audit(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    claimed: set[str] = set()
    lost: list[AmbiguousSubmitError] = []
    for path in args.journal:
        ids, attempts = await _journal_claims(Path(path))
        claimed.update(ids)
        lost.extend(attempts)
    since = args.since
    if since is None:  # --journal without --since: from its earliest lost submit
        if not lost:
            print(
                "No lost submit in the journal(s) to follow up; give --since to look "
                "at a window.",
                file=out,
            )
            return EXIT_CODES["ok"]
        since = min(e.started_at for e in lost)
    async with _client(args) as pb:
        report = await pb.audit(
            since=since, until=args.until, model=args.model, exclude=claimed, lost=lost
        )
        listed = {o.job.id: o for o in (*report.orphans, *report.others)}
        unknown = [j for j in args.cancel if j not in listed]
        if unknown:
            raise _CLIError(
                f"--cancel {unknown[0]}: not a job this audit found unclaimed in the "
                "window; nothing was cancelled",
                family="validation",
            )
        refunded = await report.cancel_pending() if args.cancel_pending else None
        for job_id in args.cancel:  # each one named by the user: their decision
            refunded = (refunded or 0) + (await listed[job_id].job.cancel() or 0)
    if args.json:
        _print_json(
            {
                "since": report.since,
                "until": report.until,
                "orphans": [_orphan_json(o) for o in report.orphans],
                "otherSubmittersJobs": [_orphan_json(o) for o in report.others],
                "costMicroCents": report.cost_micro_cents,
                "costIsEstimate": report.cost_is_estimate,
                "refundedMicroCents": refunded,
            },
            out,
        )
    else:
        _print_report(report, out, refunded=refunded)
    del err
    return EXIT_CODES["needs_attention"] if report.orphans else EXIT_CODES["ok"]


def _print_report(report: AuditReport, out: TextIO, *, refunded: int | None) -> None:
    if not report.orphans:
        print(
            "No job of this machine's lost submits is unclaimed in the window.",
            file=out,
        )
    else:
        _print_orphans(report.orphans, out)
        cost = _usd(report.cost_micro_cents)
        print(
            f"{len(report.orphans)} orphan(s), "
            + (f"at most {cost}" if report.cost_is_estimate else cost)
            + (
                f", {report.unknown_cost} of unknown cost"
                if report.unknown_cost
                else ""
            )
            + (f"; {_usd(refunded)} refunded" if refunded else "")
            + ".",
            file=out,
        )
    left = [o for o in report.pending if o not in report.cancellable]
    if left and refunded is not None:
        print(
            f"Not cancelled: {len(left)} pending orphan(s) not proven this machine's "
            "or still settling; cancel one with --cancel JOB once you know it is "
            "yours.",
            file=out,
        )
    _print_others(report.others, out)


async def _journal_claims(path: Path) -> tuple[set[str], list[AmbiguousSubmitError]]:
    """Every job id a journal knows, and its lost submits (read-only)."""
    if not await anyio.Path(path).is_file():
        # A mistyped journal would claim nothing, and its jobs would look orphaned
        # (and pending ones be cancelled with --cancel-pending).
        raise JournalError(
            f"no journal at {path}; give the path of an existing batch journal"
        )
    journal = await Journal.open(path, readonly=True)
    try:
        ids = await journal.job_ids()
        lost = [a.error(path) for a in await journal.lost_attempts()]
    finally:
        await journal.aclose()
    return ids, lost
