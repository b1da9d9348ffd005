"""
Tracked jobs in the ledger: jobs submitted with a context, until a handler has run.

A tracked job is recorded *before* its submit is sent (keyed by the submit's
attempt), so a process that dies with the request on the wire leaves a record the
next process reconciles.  Its *owner* holds a lease on it (the process watching it
and running its handlers), renewed while it lives; a lease that runs out, or whose
process is gone, is taken over.  `TrackingLedger` is what every ledger adds to
`SubmitLedger` for them (in memory, SQLite, a hub's Redis).
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Literal, Protocol, TypeAlias, get_args

import attrs


__all__ = [
    "ACTIVE",
    "DONE_STATES",
    "TRACKED_STATES",
    "TrackedRecord",
    "TrackedState",
    "TrackingLedger",
    "lease_free",
]

#: Where a tracked job stands:
#:
#: * ``active``: its job runs, or has ended and its handlers have not all returned;
#: * ``handled``: every handler returned (kept for the retention, then forgotten);
#: * ``parked``: its handlers kept failing; a person decides (`failed_handlers`);
#: * ``none``: its submit made no job (reconciled after its settle horizon).
TrackedState: TypeAlias = Literal["active", "handled", "parked", "none"]
TRACKED_STATES: tuple[TrackedState, ...] = get_args(TrackedState)
#: The default of `TrackingLedger.tracked`: the jobs still to handle.
ACTIVE: tuple[TrackedState, ...] = ("active",)
#: The states nothing more happens in: forgotten after the ledger's retention.
DONE_STATES: frozenset[TrackedState] = frozenset({"handled", "parked", "none"})


@attrs.frozen(kw_only=True)
class TrackedRecord:
    """
    One tracked job as the ledger keeps it.

    Times are the writing process's wall clock (Unix seconds).

    Attributes:
        attempt: The submit's attempt id (the record's key; known before sending).
        model: The model slug.
        context: The caller's context, as JSON text.
        state: ``active``, ``handled``, ``parked`` or ``none`` (see the module).
        job_id: The job, once known.
        owner: The process responsible for it (``host:pid:client``), if any.
        lease_until: When the owner's lease runs out unless renewed.
        failures: How many times its handlers raised.
        error: The last handler error, as text.
        created_at: When it was recorded (just before its submit was sent).
        updated_at: Its last change.
        group: The program it belongs to (``PixelByte(tracked_group=...)``):
            only clients of that group resume it and run their handlers for it,
            where programs share a ledger.

    """

    attempt: str
    model: str
    context: str
    state: TrackedState = "active"
    job_id: str | None = None
    owner: str | None = None
    lease_until: float = 0.0
    failures: int = 0
    error: str | None = None
    created_at: float
    updated_at: float
    group: str = "default"


def lease_free(
    record: TrackedRecord, owner: str, *, at: float, gone: Collection[str] = ()
) -> bool:
    """Whether *owner* may take *record*'s lease at *at* (the rule every store applies)."""
    return record.state == "active" and (
        record.owner is None
        or record.owner == owner
        or record.lease_until < at
        or record.owner in gone
    )


class TrackingLedger(Protocol):
    """
    The tracked jobs of one account, shared by the processes that share its ledger.

    `lease` is atomic in every implementation (across processes where the store is
    shared): one owner at a time runs a tracked job's handlers.

    .. versionadded:: 0.4.0
    """

    async def track(self, record: TrackedRecord) -> None:
        """Record a tracked job about to be submitted (its owner holds the lease)."""
        ...

    async def tracked_job(self, attempt: str, job_id: str, *, at: float) -> None:
        """Tie the tracked job of *attempt* to its job."""
        ...

    async def tracked(
        self, *, states: Collection[TrackedState] = ACTIVE
    ) -> list[TrackedRecord]:
        """The tracked jobs in *states*, oldest first."""
        ...

    async def lease(
        self,
        attempt: str,
        owner: str,
        *,
        until: float,
        at: float,
        gone: Collection[str] = (),
    ) -> TrackedRecord | None:
        """
        Take (or renew) the lease on an active tracked job for *owner*.

        Taken when nobody holds it, *owner* does, it ran out before *at*, or its
        holder is one of *gone* (processes known dead).  Returns the record as
        leased, or ``None`` if another owner holds it (or it is not active).
        """
        ...

    async def renew(self, owner: str, *, until: float, at: float) -> None:
        """Extend every lease *owner* holds on active tracked jobs to *until*."""
        ...

    async def release(self, owner: str, *, at: float) -> None:
        """Give up *owner*'s leases on active tracked jobs (a client closing): others take over."""
        ...

    async def finish(
        self,
        attempt: str,
        owner: str,
        *,
        state: TrackedState,
        at: float,
        failures: int | None = None,
        error: str | None = None,
    ) -> bool:
        """
        Move a tracked job *owner* holds the lease on to *state* (with its failures).

        ``False`` if the lease is no longer *owner*'s (nothing changed).
        """
        ...
