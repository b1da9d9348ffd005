"""
``audit``: the account's paid jobs in a window that no batch journal claims.

The journals given with ``--journal`` are read (`_journal_job_ids`) and their jobs
excluded; what is left is printed with its cost, and pending ones can be cancelled.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TextIO

import anyio

from pixelbyte_async._cmdline import EXIT_CODES
from pixelbyte_async._journal import Journal, JournalError

from ._connection import _client
from ._output import _orphan_json, _print_json, _print_orphans, _usd


async def _audit(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    claimed: set[str] = set()
    for path in args.journal:
        claimed.update(await _journal_job_ids(Path(path)))
    async with _client(args) as pb:
        report = await pb.audit(
            since=args.since, until=args.until, model=args.model, exclude=claimed
        )
        refunded = await report.cancel_pending() if args.cancel_pending else None
    if args.json:
        _print_json(
            {
                "since": report.since,
                "until": report.until,
                "orphans": [_orphan_json(o) for o in report.orphans],
                "costMicroCents": report.cost_micro_cents,
                "refundedMicroCents": refunded,
            },
            out,
        )
    elif not report.orphans:
        print("No unclaimed jobs in the window.", file=out)
    else:
        _print_orphans(report.orphans, out)
        print(
            f"{len(report.orphans)} unclaimed job(s), "
            f"{_usd(report.cost_micro_cents)} known cost"
            + (
                f", {report.unknown_cost} of unknown cost"
                if report.unknown_cost
                else ""
            )
            + (f"; {_usd(refunded)} refunded" if refunded else "")
            + ".",
            file=out,
        )
    del err
    return EXIT_CODES["needs_attention"] if report.orphans else EXIT_CODES["ok"]


async def _journal_job_ids(path: Path) -> set[str]:
    """Every job id a journal knows (read-only; the journal may be in use)."""
    if not await anyio.Path(path).is_file():
        # A mistyped journal would claim nothing, and its jobs would look orphaned
        # (and pending ones be cancelled with --cancel-pending).
        raise JournalError(
            f"no journal at {path}; give the path of an existing batch journal"
        )
    journal = await Journal.open(path, readonly=True)
    try:
        return await journal.job_ids()
    finally:
        await journal.aclose()
