"""
This process's own memory of submits: claims, submits on the wire, and the seams reconcile uses.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import math
import os
import secrets
import socket
from collections.abc import AsyncGenerator
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Protocol

from pixelbyte_async._clock import Clock
from pixelbyte_async._errors import AmbiguousSubmitError, ValidationError
from pixelbyte_async._ledger import Attempt


if TYPE_CHECKING:
    from pixelbyte_async._job import Job


__all__ = [
    "DEFAULT_CLAIM_WINDOW",
    "DEFAULT_CLOCK_SKEW",
    "DEFAULT_SETTLE",
    "FIRST_LOOK_INTERVAL",
    "MAX_LOOK_INTERVAL",
    "AttemptSource",
    "Claims",
    "ReconcileClient",
    "SubmitInFlight",
    "as_attempt",
    "attempt_id",
    "check_settle",
    "created_at",
    "created_since",
    "iso",
    "timestamp",
]

#: How long after an ambiguous submit began "no job found" is taken as proof that
#: none was created (seconds).  See docs/concepts.md, "What 'never charged twice'
#: means": five minutes covers the request timeouts of the gateways and serverless
#: platforms an API like this runs behind (60-100 s for load balancers and CDNs,
#: 300 s by default for Google Cloud Run, whose Pub/Sub the API's
#: ``PUBSUB_PUBLISH_FAILED`` names), after which a request still unanswered has been
#: killed server-side.
DEFAULT_SETTLE = 300.0
#: How far the server's ``createdAt`` may disagree with our clock before any
#: answer's ``Date`` has measured it.
DEFAULT_CLOCK_SKEW = 120.0
#: How long this process remembers the jobs it claims (for reconcile and the audit).
DEFAULT_CLAIM_WINDOW = 3600.0
#: The first and the longest pause between two looks at the job list.
FIRST_LOOK_INTERVAL = 2.0
MAX_LOOK_INTERVAL = 30.0


def check_settle(value: float) -> float:
    """Return *value*, a settle horizon in seconds, or raise `ValidationError`."""
    if not 0 <= value < math.inf:
        raise ValidationError("settle must be a finite number >= 0", field="settle")
    return value


def timestamp(value: datetime | float) -> float:
    """Unix seconds from a datetime (naive means UTC) or a number."""
    if isinstance(value, datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        return value.timestamp()
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValidationError("expected a datetime or Unix seconds", field="since")
    return float(value)


def iso(unix: float) -> str:
    """*unix* as an ISO 8601 UTC time to the second (``...Z``)."""
    return (
        datetime.fromtimestamp(unix, UTC)
        .replace(microsecond=0)
        .isoformat()
        .replace("+00:00", "Z")
    )


def attempt_id(error: AmbiguousSubmitError) -> str:
    """
    The ledger id of *error*'s attempt: its nonce, or one derived from what it sent.

    An `AmbiguousSubmitError` built by hand for an earlier process's attempt may
    carry no nonce; the same model, start and input always give the same id.
    """
    if error.attempt is not None:
        return error.attempt
    sent = json.dumps(
        [error.model, error.started_at, dict(error.input)],
        sort_keys=True,
        default=str,
    )
    return "u" + hashlib.sha256(sent.encode()).hexdigest()[:15]


def as_attempt(error: AmbiguousSubmitError) -> Attempt:
    """An attempt record for an `AmbiguousSubmitError` (its fate is unknown)."""
    return Attempt(
        id=attempt_id(error),
        model=error.model,
        started_at=error.started_at,
        ends_by=error.started_at,
        state="unknown",
        owner="",
        tagged=error.tagged,
    )


#: How many jobs older than a listing's floor in a row end it: the job list is
#: newest first, but a late creation may be listed after younger jobs.
_OLDER_IN_A_ROW = 100


def created_at(job: Job) -> float | None:
    """When *job* was created (server Unix time), if the API said."""
    created = job.info.created_at
    return None if created is None else created.timestamp()


async def created_since(
    client: ReconcileClient, *, model: str | None, floor: float
) -> list[Job]:
    """The account's jobs (of *model*) created at or after *floor* (server time)."""
    found: list[Job] = []
    older = 0
    async with contextlib.aclosing(client.list_jobs(model=model)) as jobs:
        async for job in jobs:
            created = created_at(job)
            if created is not None and created < floor:
                older += 1
                if older >= _OLDER_IN_A_ROW:
                    break
                continue
            older = 0
            found.append(job)
    return found


class Claims:
    """
    Job ids this process claims, each remembered for *retention* seconds.

    Reconcile and the audit skip claimed jobs.  Entries are pruned by age on every
    `add` (amortised O(1)), so the set is bounded by the window, not by how many
    jobs the process has ever run.
    """

    __slots__ = ("_clock", "_ids", "retention")

    def __init__(self, clock: Clock, retention: float) -> None:
        self._clock = clock
        self.retention = retention
        self._ids: dict[str, float] = {}

    def add(self, job_id: str) -> None:
        """Claim *job_id* now (refreshing an earlier claim)."""
        now = self._clock.time()
        self._ids.pop(job_id, None)
        self._ids[job_id] = now
        self.prune(now)

    def prune(self, now: float | None = None) -> None:
        """Forget claims older than the retention window."""
        if now is None:
            now = self._clock.time()
        horizon = now - self.retention
        ids = self._ids
        while ids:
            oldest = next(iter(ids))
            if ids[oldest] >= horizon:
                break
            del ids[oldest]

    def __contains__(self, job_id: object) -> bool:
        return job_id in self._ids

    def __len__(self) -> int:
        return len(self._ids)


class SubmitInFlight:
    """A submit request on the wire (reconcile waits for those of its model)."""

    __slots__ = ("done", "model")

    def __init__(self, model: str) -> None:
        self.model = model
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def finish(self) -> None:
        """Mark the submit as answered (or failed)."""
        if not self.done.done():
            self.done.set_result(None)


class AttemptSource(Protocol):
    """
    What webhook deliveries proved: which attempt created which job.

    Asynchronous, because with a hub the answer may come from deliveries another
    process received (read from the hub's store).
    """

    async def job_for_attempt(self, attempt: str) -> str | None:
        """The job the first verified delivery tagged with *attempt* named."""
        ...

    async def attempt_for(self, job_id: str) -> str | None:
        """The attempt nonce a delivery for *job_id* carried, if one did."""
        ...


class ReconcileClient(Protocol):
    """
    What `Reconciler` needs of its client, and nothing more.

    Its clock, the two read endpoints, and the webhook deliveries seen (``None``
    without webhooks).  `PixelByte` lends a small adapter that satisfies this, so
    this package never imports the client.
    """

    @property
    def clock(self) -> Clock:
        """The client's clock."""
        ...

    @property
    def attempts(self) -> AttemptSource | None:
        """Attempt → job attribution from webhook deliveries, if webhooks are on."""
        ...

    async def get_job(self, job_id: str) -> Job:
        """`PixelByte.get_job`."""
        ...

    def list_jobs(self, *, model: str | None = None) -> AsyncGenerator[Job, None]:
        """`PixelByte.list_jobs`, newest first."""
        ...


def new_owner() -> str:
    """Who sends a client's submits, as the ledger names it: ``host:pid:client``."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"


def owner_gone(owner: str) -> bool:
    """
    Whether *owner* (``host:pid:client``) is a process of this machine that is dead.

    False when it cannot be told (another machine, a process we may not signal,
    this very process): a live sender is never taken for a dead one.
    """
    host, _, rest = owner.partition(":")
    pid = rest.partition(":")[0]
    if host != socket.gethostname() or not pid.isdigit() or int(pid) == os.getpid():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except OSError:
        return False
    return False
