"""
`SubmitLedger`: the seam every ledger implements (in memory, SQLite, a hub's Redis).
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Protocol

from ._records import Attempt, AttemptState, Claim, ClaimHow


__all__ = ["SubmitLedger"]


class SubmitLedger(Protocol):
    """
    The submits of one account that cooperating processes know of, and whose job is whose.

    Every submit attempt is recorded before it is sent (`begin`) and its outcome
    as soon as it is known (`mark`, `claim`); reconcile and the audit read them
    back (`attempts`, `claims`).  A job is claimed by one attempt at most and an
    attempt claims one job at most, whoever claims first: `claim` is atomic in
    every implementation, across processes where the store is shared.

    Entries are forgotten after the ledger's retention, so it is bounded by time.

    An implementation may set the class attribute ``writes_on_loop = True`` when
    its writes run on the event loop and never wait inside anything tied to
    their task (an ``asyncio.timeout``, an anyio cancel scope): a submit then
    records its job inline, with no task of its own (`MemoryLedger` and
    `SqliteLedger` do; the Redis ledger does not).

    .. versionadded:: 0.3.0
    .. versionchanged:: 0.5.0 ``writes_on_loop``.
    """

    @property
    def where(self) -> str:
        """Where it is kept, for messages (a path, ``memory``, a Redis URL)."""
        ...

    async def ready(self) -> None:
        """Open the store if it is not open yet (every other call does it too)."""
        ...

    async def begin(self, attempt: Attempt) -> None:
        """Record *attempt*, about to be sent (its state is ``sending``)."""
        ...

    async def mark(self, attempt_id: str, state: AttemptState, *, at: float) -> None:
        """Move an attempt to *state* (``unknown``, ``parked``, ``none`` …)."""
        ...

    async def claim(
        self, job_id: str, *, how: ClaimHow, at: float, attempt: str | None = None
    ) -> Claim | None:
        """
        Claim *job_id* (for *attempt*, if given); return the claim in the way, if any.

        ``None`` means the job is now claimed as asked (claiming it again the same
        way is harmless).  Otherwise nothing changed, and the claim returned says
        whose the job is (or which job the attempt already has).  A submit's own
        answer (*how* ``"submitted"``) is proof that beats any other claim: the
        attempt that had the job is then open again (``unknown``).
        """
        ...

    async def attempt(self, attempt_id: str) -> Attempt | None:
        """The attempt *attempt_id*, if recorded."""
        ...

    async def attempts(
        self, *, model: str | None, since: float, until: float, open_only: bool = False
    ) -> list[Attempt]:
        """
        The attempts (of *model*, or all) that began between *since* and *until*.

        With *open_only*, only those that may still own an unclaimed job
        (their state is ``sending``, ``unknown`` or ``parked``).
        """
        ...

    async def claims(self, job_ids: Collection[str]) -> dict[str, Claim]:
        """The claims on those of *job_ids* that are claimed."""
        ...

    async def aclose(self) -> None:
        """Let go of the store (idempotent)."""
        ...
