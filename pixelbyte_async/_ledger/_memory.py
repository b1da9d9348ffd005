"""
`MemoryLedger`: a ledger this process alone sees (``PixelByte(ledger=None)``).
"""

from __future__ import annotations

from collections.abc import Collection

import attrs

from ._claiming import decide, overridden, state_after
from ._records import Attempt, AttemptState, Claim, ClaimHow
from ._tracking import ACTIVE, DONE_STATES, TrackedRecord, TrackedState, lease_free


__all__ = ["MemoryLedger"]


class MemoryLedger:
    """
    A `SubmitLedger` kept in this process's memory, for *retention* seconds.

    Nothing survives the process and no other process sees it: use it where no
    disk can be written (serverless), or for tests.  Entries are forgotten in
    the order they were written, once older than *retention*.

    .. versionadded:: 0.3.0
    """

    #: Its writes run on the event loop and wait for nothing tied to a task
    #: (see `SubmitLedger`).
    writes_on_loop = True

    def __init__(self, *, retention: float = 86_400.0) -> None:
        self.retention = retention
        self._attempts: dict[str, Attempt] = {}
        self._written: dict[str, float] = {}  # attempt id -> last write, in order
        self._claims: dict[str, Claim] = {}  # job id -> claim, in order
        self._by_attempt: dict[str, Claim] = {}
        self._tracked: dict[str, TrackedRecord] = {}  # attempt -> record
        self._done: dict[str, float] = {}  # finished attempt -> when, in order

    @property
    def where(self) -> str:
        """``memory``."""
        return "memory"

    def __len__(self) -> int:
        return len(self._attempts) + len(self._claims) + len(self._tracked)

    # -- writes ----------------------------------------------------------------------

    def _touch(self, attempt: Attempt, at: float) -> None:
        self._attempts[attempt.id] = attempt
        self._written.pop(attempt.id, None)
        self._written[attempt.id] = at
        self._prune(at)

    def _prune(self, now: float) -> None:
        horizon = now - self.retention
        written = self._written
        while written:
            oldest, at = next(iter(written.items()))
            if at >= horizon:
                break
            del written[oldest]
            self._attempts.pop(oldest, None)
        claims = self._claims
        while claims:
            job_id, claim = next(iter(claims.items()))
            if claim.at >= horizon:
                break
            del claims[job_id]
            if claim.attempt is not None:
                self._by_attempt.pop(claim.attempt, None)
        done = self._done
        while done:
            attempt, at = next(iter(done.items()))
            if at >= horizon:
                break
            del done[attempt]
            self._tracked.pop(attempt, None)

    async def ready(self) -> None:
        """Nothing to open."""

    async def begin(self, attempt: Attempt) -> None:
        """See `SubmitLedger.begin`."""
        self._touch(attempt, attempt.started_at)

    async def mark(self, attempt_id: str, state: AttemptState, *, at: float) -> None:
        """See `SubmitLedger.mark`."""
        found = self._attempts.get(attempt_id)
        if found is not None:
            self._touch(attrs.evolve(found, state=state), at)

    async def claim(
        self, job_id: str, *, how: ClaimHow, at: float, attempt: str | None = None
    ) -> Claim | None:
        """See `SubmitLedger.claim`."""
        on_job = self._claims.get(job_id)
        on_attempt = None if attempt is None else self._by_attempt.get(attempt)
        verdict, other = decide(
            job_id, attempt, how, on_job=on_job, on_attempt=on_attempt
        )
        if verdict == "conflict":
            return other
        if verdict == "same":
            return None
        if verdict == "override" and other is not None:
            overridden(job_id, other, attempt)
            if other.attempt is not None:
                self._by_attempt.pop(other.attempt, None)
                displaced = self._attempts.get(other.attempt)
                if displaced is not None:
                    self._touch(
                        attrs.evolve(displaced, state="unknown", job_id=None), at
                    )
        claim = Claim(job_id=job_id, attempt=attempt, how=how, at=at)
        self._claims.pop(job_id, None)
        self._claims[job_id] = claim
        if attempt is not None:
            self._by_attempt[attempt] = claim
            found = self._attempts.get(attempt)
            if found is not None:
                self._touch(
                    attrs.evolve(found, state=state_after(how), job_id=job_id), at
                )
        self._prune(at)
        return None

    # -- reads -----------------------------------------------------------------------

    async def attempt(self, attempt_id: str) -> Attempt | None:
        """See `SubmitLedger.attempt`."""
        return self._attempts.get(attempt_id)

    async def attempts(
        self, *, model: str | None, since: float, until: float, open_only: bool = False
    ) -> list[Attempt]:
        """See `SubmitLedger.attempts`."""
        return [
            a
            for a in self._attempts.values()
            if since <= a.started_at <= until
            and (model is None or a.model == model)
            and (a.open or not open_only)
        ]

    async def claims(self, job_ids: Collection[str]) -> dict[str, Claim]:
        """See `SubmitLedger.claims`."""
        found = self._claims
        return {j: found[j] for j in job_ids if j in found}

    # -- tracked jobs ----------------------------------------------------------------

    async def track(self, record: TrackedRecord) -> None:
        """See `TrackingLedger.track`."""
        self._tracked[record.attempt] = record
        self._prune(record.created_at)

    async def tracked_job(self, attempt: str, job_id: str, *, at: float) -> None:
        """See `TrackingLedger.tracked_job`."""
        found = self._tracked.get(attempt)
        if found is not None:
            self._tracked[attempt] = attrs.evolve(found, job_id=job_id, updated_at=at)

    async def tracked(
        self, *, states: Collection[TrackedState] = ACTIVE
    ) -> list[TrackedRecord]:
        """See `TrackingLedger.tracked`."""
        wanted = set(states)
        return sorted(
            (r for r in self._tracked.values() if r.state in wanted),
            key=lambda r: r.created_at,
        )

    async def lease(
        self,
        attempt: str,
        owner: str,
        *,
        until: float,
        at: float,
        gone: Collection[str] = (),
    ) -> TrackedRecord | None:
        """See `TrackingLedger.lease`."""
        found = self._tracked.get(attempt)
        if found is None or not lease_free(found, owner, at=at, gone=gone):
            return None
        leased = attrs.evolve(found, owner=owner, lease_until=until, updated_at=at)
        self._tracked[attempt] = leased
        return leased

    async def renew(self, owner: str, *, until: float, at: float) -> None:
        """See `TrackingLedger.renew`."""
        del at  # a renewal is not a change worth a timestamp
        for attempt, r in self._tracked.items():
            if r.owner == owner and r.state == "active":
                self._tracked[attempt] = attrs.evolve(r, lease_until=until)

    async def release(self, owner: str, *, at: float) -> None:
        """See `TrackingLedger.release`."""
        for attempt, r in self._tracked.items():
            if r.owner == owner and r.state == "active":
                self._tracked[attempt] = attrs.evolve(
                    r, owner=None, lease_until=0.0, updated_at=at
                )

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
        """See `TrackingLedger.finish`."""
        found = self._tracked.get(attempt)
        if found is None or found.owner != owner or found.state != "active":
            return False
        self._tracked[attempt] = attrs.evolve(
            found,
            state=state,
            failures=found.failures if failures is None else failures,
            error=error if error is not None else found.error,
            updated_at=at,
        )
        if state in DONE_STATES:
            self._done[attempt] = at
        self._prune(at)
        return True

    async def aclose(self) -> None:
        """Nothing to let go of."""
