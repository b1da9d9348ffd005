"""
`resolve_batch_row`: a person settles a row the batch set aside (``batch resolve``).

A row whose lost submit could not be tied to one job is parked (``needs_attention``)
with its candidate jobs and never re-sent.  Its owner decides: *adopt* one of the
candidates (claimed in the ledger for the row's attempt, journaled, and attached by
the next run), or *resend* (none of them is the row's; sent again by the next run,
never before the attempt's settle horizon has passed).
"""

from __future__ import annotations

import os

import anyio

from pixelbyte_async._errors import ValidationError
from pixelbyte_async._journal import Journal, JournalError, JournalRow
from pixelbyte_async._reconcile import iso
from pixelbyte_async._seams import BatchClient


__all__ = ["resolve_batch_row"]

#: The states a person may settle: set aside, or left unknown by a killed run.
_OPEN = frozenset({"needs_attention", "submitting"})


async def resolve_batch_row(
    pb: BatchClient,
    journal: str | os.PathLike[str],
    key: str,
    *,
    adopt: str | None = None,
    resend: bool = False,
    settle: float | None = None,
) -> None:
    """
    Settle row *key* of a batch *journal* that the batch could not settle itself.

    Exactly one of *adopt* and *resend*.  The journal must not be in use by a
    running batch; the decision is journaled, and the next run of the batch acts
    on it (attaches the adopted job, or sends the row again).

    Args:
        pb: The client (its ledger records the decision).
        journal: The batch's journal file.
        key: The row (its ``id``).
        adopt: One of the row's candidate jobs: this row's job.
        resend: None of the candidates is this row's: send it again.
        settle: The settle horizon (default: the client's): *resend* is refused
            before it has passed since the row's last attempt began.

    Raises:
        ValidationError: Not both or neither; no such row, or not one to settle;
            a job that is not a candidate, or claimed by another submit; a resend
            before the horizon.
        JournalError: The journal is missing or in use.

    .. versionadded:: 0.3.0
    """
    if (adopt is None) == (not resend):
        raise ValidationError("give either adopt=JOB or resend=True", field="adopt")
    if not await anyio.Path(journal).is_file():
        raise JournalError(f"no journal at {journal}; give the batch's --journal")
    opened = await Journal.open(journal)
    try:
        row = await opened.get(key)
        if row is None or row.state not in _OPEN:
            state = "not in the journal" if row is None else f"{row.state}"
            raise ValidationError(
                f"row {key} is {state}: only a row set aside (needs_attention) or "
                "left submitting can be resolved",
                field="key",
            )
        if adopt is not None:
            await _adopt(pb, opened, row, adopt)
        else:
            await _resend(pb, opened, row, settle)
    finally:
        await opened.aclose()


async def _adopt(
    pb: BatchClient, journal: Journal, row: JournalRow, job_id: str
) -> None:
    if row.candidates and job_id not in row.candidates:
        raise ValidationError(
            f"{job_id} is not a candidate of row {row.key} "
            f"({', '.join(row.candidates)}); nothing was changed",
            field="adopt",
        )
    job = await pb.get_job(job_id)  # it exists, and is this account's
    at = pb.clock.time()
    in_the_way = await pb.ledger.claim(job.id, how="person", at=at, attempt=row.attempt)
    if in_the_way is not None:
        owner = in_the_way.attempt or "a person"
        raise ValidationError(
            f"{job_id} is already claimed by another submit ({owner}, "
            f"{in_the_way.how}); nothing was changed",
            field="adopt",
        )
    await journal.submitted(
        row.key,
        job_id=job.id,
        cost_micro_cents=job.cost_micro_cents
        if job.cost_micro_cents is not None
        else row.cost_micro_cents,
        cost_known=job.cost_micro_cents is not None,
        status=job.status.value,
        how="resolved",
    )


async def _resend(
    pb: BatchClient, journal: Journal, row: JournalRow, settle: float | None
) -> None:
    horizon = pb.settle if settle is None else settle
    if row.started_at is not None and pb.clock.time() < row.started_at + horizon:
        raise ValidationError(
            f"row {row.key}'s lost submit may still make a job until "
            f"{iso(row.started_at + horizon)}; resend "
            "it after that (a job it makes before then would be paid twice)",
            field="resend",
        )
    if row.attempt is not None:
        await pb.ledger.mark(row.attempt, "none", at=pb.clock.time())
    await journal.unsubmitted(
        row.key,
        error="resolved by a person: none of its candidates was its job",
        outcome="resent",
    )
