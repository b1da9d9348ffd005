"""
The one rule of claiming a job, shared by every store: one job ↔ one attempt.
"""

from __future__ import annotations

import logging
from typing import Literal, TypeAlias

from ._records import AttemptState, Claim, ClaimHow


__all__ = ["Verdict", "decide", "overridden", "state_after"]

log = logging.getLogger("pixelbyte_async")

#: What a claim does: ``new`` (record it), ``same`` (already so: nothing to do),
#: ``conflict`` (someone else's: nothing changes) or ``override`` (a submit's own
#: answer displaces an inferred claim).
Verdict: TypeAlias = Literal["new", "same", "conflict", "override"]


def decide(
    job_id: str,
    attempt: str | None,
    how: ClaimHow,
    *,
    on_job: Claim | None,
    on_attempt: Claim | None,
) -> tuple[Verdict, Claim | None]:
    """
    Decide a claim of *job_id* for *attempt*, given the claims already there.

    *on_job* is the claim on the job, *on_attempt* the claim the attempt already
    holds.  Returns the verdict and, for ``conflict``, the claim in the way (for
    ``override``, the claim displaced).
    """
    if on_job is not None and on_job.attempt == attempt:
        return "same", None
    if on_attempt is not None and on_attempt.job_id != job_id:
        # The attempt already has another job: a submit makes one job at most.
        return "conflict", on_attempt
    if on_job is None:
        return "new", None
    if how == "submitted" and on_job.how != "submitted":
        return "override", on_job
    return "conflict", on_job


def state_after(how: ClaimHow) -> AttemptState:
    """The state of the attempt that claimed its job *how*."""
    return "created" if how == "submitted" else "found"


def overridden(job_id: str, displaced: Claim, attempt: str | None) -> None:
    """Say that a submit's own answer took *job_id* back from *displaced*."""
    log.warning(
        "ledger: job %s was taken for attempt %s (%s); its own submit's answer "
        "says it is %s's",
        job_id,
        displaced.attempt,
        displaced.how,
        attempt,
    )
