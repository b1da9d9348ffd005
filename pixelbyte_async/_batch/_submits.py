"""
Sending a batch's rows: budget-checked, journaled, side by side, never paid twice.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
from typing import TYPE_CHECKING, Any, Literal, cast

import attrs

from pixelbyte_async._errors import (
    AmbiguousSubmitError,
    InsufficientBalance,
    PixelByteError,
    TransportError,
)
from pixelbyte_async._inputs import ModelInput
from pixelbyte_async._journal import Journal
from pixelbyte_async._seams import BatchClient
from pixelbyte_async._signing import new_attempt_id

from ._budget import Budget
from ._outcomes import Outcomes
from ._rows import Entry, describe_local
from ._types import BatchItemStatus, is_fatal
from ._unknown import UnknownFates


if TYPE_CHECKING:
    from pixelbyte_async._job import Job


__all__ = ["SendWindow", "Submits"]

_MAX_AMBIGUOUS_ATTEMPTS = 3


class SendWindow:
    """
    How many submits of one model may be on the wire at once.

    Without webhooks, the job list is all that can tell apart the jobs of
    submits of one model that lost their answers at the same time (a network
    cut, a `kill -9`), and it cannot: so they go one at a time, and a crash or a
    cut leaves at most one row of a model of unknown fate.  With webhooks each
    attempt carries a nonce its delivery names, so a model's submits go out
    side by side: a slow start from one, one more for each answered submit, up
    to *cap* (the batch's concurrency); a submit that loses its answer shuts the
    window to one again while it is looked for.
    """

    def __init__(self, cap: int) -> None:
        self.cap = max(1, cap)
        self.limit = 1
        self.sending = 0
        self._waiting: collections.deque[asyncio.Future[None]] = collections.deque()

    async def acquire(self) -> None:
        """Wait for room on the wire (first come, first served)."""
        if self.sending < self.limit and not self._waiting:
            self.sending += 1
            return
        turn = asyncio.get_running_loop().create_future()
        self._waiting.append(turn)
        try:
            await turn
        except BaseException:
            if turn.done() and not turn.cancelled():
                self.release()  # handed over just as we gave up: pass it on
            else:
                with contextlib.suppress(ValueError):  # dropped by a release
                    self._waiting.remove(turn)
            raise

    def release(self, *, answered: bool = False, lost: bool = False) -> None:
        """A submit is off the wire: *answered* widens the window, *lost* shuts it."""
        self.sending -= 1
        if lost:
            self.limit = 1
        elif answered:
            self.limit = min(self.cap, self.limit + 1)
        while self._waiting and self.sending < self.limit:
            turn = self._waiting.popleft()
            if not turn.done():
                self.sending += 1
                turn.set_result(None)


class Submits:
    """
    A batch's submits: each row is sent at most once unless proven unsent.

    Every attempt is checked against the budget (which counts every earlier
    one at once) and journaled before it is sent; one of unknown fate is settled
    (`UnknownFates`) before the row may be sent again.  How many of a model's
    submits are on the wire at once is its `SendWindow`'s say.
    """

    def __init__(
        self,
        pb: BatchClient,
        *,
        journal: Journal,
        outcomes: Outcomes,
        budget: Budget,
        unknown: UnknownFates,
        cap: int,
    ) -> None:
        self._pb = pb
        self._journal = journal
        self._outcomes = outcomes
        self._budget = budget
        self._unknown = unknown
        self._cap = cap
        self._windows: dict[str, SendWindow] = {}

    async def submit(self, entry: Entry) -> Job | None:
        """Submit *entry* without ever paying twice; ``None`` when it ended already."""
        for _ in range(_MAX_AMBIGUOUS_ATTEMPTS):
            if self._refuse(entry):
                return None
            try:
                request, sent = await self._upload(entry)
            except PixelByteError as exc:
                self._rejected(entry, exc, what="upload failed")
                return None
            window = self._windows.setdefault(entry.model, SendWindow(self._cap))
            while True:
                await self._unknown.until_attributable(entry.model)
                await window.acquire()
                # The checks and the budget's count happen at once (nothing
                # awaited between them), so the check of each submit sees every
                # earlier one counted (its estimate until its charge is known).
                if self._unknown.holds(entry.model):
                    window.release()
                    continue  # two submits became unknown meanwhile
                if self._refuse(entry):
                    window.release()
                    return None
                self._budget.charge(
                    entry.key, entry.estimate or 0, assumed=entry.estimate_assumed
                )
                break
            sent_outcome: Job | AmbiguousSubmitError | Literal[False] = False
            try:
                sent_outcome = await self._send(
                    entry, request, sent, alone=window.limit == 1
                )
            finally:
                window.release(
                    # Only a job its webhook delivery will name (the attempt's
                    # nonce) widens the window; without webhooks, one at a time.
                    answered=sent_outcome is not False
                    and not isinstance(sent_outcome, AmbiguousSubmitError)
                    and sent_outcome.via_webhook,
                    lost=isinstance(sent_outcome, AmbiguousSubmitError),
                )
            if isinstance(sent_outcome, AmbiguousSubmitError):
                # Look for its job outside the window: other rows go on meanwhile.
                found = await self._unknown.reconcile_now(entry, sent_outcome)
                if found is None:
                    continue  # the horizon passed with nothing found: send again
                return found or None
            return sent_outcome or None
        self._outcomes.emit(
            entry,
            BatchItemStatus.FAILED,
            error=f"{_MAX_AMBIGUOUS_ATTEMPTS} submits failed ambiguously, and after "
            "each no job appeared within the settle horizon; run the batch again "
            "to retry",
        )
        return None

    async def resume(self, entry: Entry) -> Job | None:
        """Settle a row an earlier run left in 'submitting', then send it if safe."""
        found = await self._unknown.reconcile_now(
            entry, self._unknown.attempt(entry.key)
        )
        if found is None:
            return await self.submit(entry)
        return found or None

    def _refuse(self, entry: Entry) -> bool:
        """Skip *entry* (and stop submitting) if the budget or the API says so."""
        if self._outcomes.stop_reason is None and self._budget.refuses(entry):
            self._outcomes.stop("budget")
        if self._outcomes.stop_reason is None:
            return False
        self._outcomes.emit(
            entry, BatchItemStatus.SKIPPED, skip_reason=self._outcomes.stop_reason
        )
        return True

    async def _upload(
        self, entry: Entry
    ) -> tuple[ModelInput | dict[str, Any], dict[str, Any]]:
        """Upload local frames (free) and return ``(request, input to send)``."""
        typed = entry.typed
        if typed is None:
            assert entry.raw is not None  # noqa: S101 -- raw entries have raw input
            return entry.raw, entry.raw
        done: dict[str, str] = {}
        changes: dict[str, str] = {}
        for name in getattr(typed, "frame_fields", ()):
            value = getattr(typed, name)
            if isinstance(value, str):
                continue  # a str is always a URL (never a local file)
            key = describe_local(value)
            if key not in done:
                done[key] = await self._pb.upload(value)
            changes[name] = done[key]
        if changes:
            typed = cast("ModelInput", attrs.evolve(cast("Any", typed), **changes))
        return typed, typed.to_input()

    async def _send(
        self,
        entry: Entry,
        request: ModelInput | dict[str, Any],
        sent: dict[str, Any],
        *,
        alone: bool,
    ) -> Job | AmbiguousSubmitError | Literal[False]:
        """
        Journal and send one submit of *entry*, and journal its answer.

        The row is journaled 'submitting' (synced to the disk; rows going out at
        once share one commit, and a row *alone* on its model's wire is synced
        on the loop at once) by the client's *on_sending*: once the client's
        job slot is taken, right before the request leaves, with that moment as
        the attempt's start.  Journaled before the slot wait, a row waiting
        long for a slot would count its settle horizon from too early a start.

        Returns:
            The job; the `AmbiguousSubmitError` when its fate is unknown (the row
            stays 'submitting'); ``False`` when the entry has ended (rejected).

        """
        attempt = new_attempt_id()
        journaled = False

        async def journal(started_at: float) -> None:
            nonlocal journaled
            await self._journal.submitting(
                entry.key,
                started_at=started_at,
                sent_input=sent,
                attempt=attempt,
                alone=alone,
            )
            journaled = True

        try:
            if isinstance(request, dict):
                job = await self._pb.submit(
                    entry.model, request, attempt=attempt, on_sending=journal
                )
            else:
                job = await self._pb.submit(
                    request, attempt=attempt, on_sending=journal
                )
        except AmbiguousSubmitError as exc:
            # It may be charged: count it against the budget until settled.
            self._budget.charge(
                entry.key, entry.estimate or 0, assumed=entry.estimate_assumed
            )
            self._unknown.lost(entry, exc)
            return exc
        except PixelByteError as exc:
            self._budget.forget(entry.key)  # no job: nothing to count
            if journaled:  # else its request never left (a slot's wait timed out)
                await self._journal.unsubmitted(
                    entry.key, error=str(exc), outcome="rejected"
                )
            self._rejected(entry, exc, what="submit rejected")
            return False
        await self._outcomes.record(entry, job, how="submitted")
        return job

    def _rejected(self, entry: Entry, exc: PixelByteError, *, what: str) -> None:
        """Report a submit that created no job; stop submitting if all would fail."""
        if is_fatal(exc):
            raise exc
        if isinstance(exc, InsufficientBalance | TransportError):
            # No balance, or the API is unreachable (the request never left, and
            # it was retried): every further submit would fail the same way.
            reason = (
                "balance" if isinstance(exc, InsufficientBalance) else "unavailable"
            )
            self._outcomes.stop(reason)
            self._outcomes.emit(
                entry, BatchItemStatus.SKIPPED, skip_reason=reason, error=str(exc)
            )
            return
        self._outcomes.emit(entry, BatchItemStatus.FAILED, error=f"{what}: {exc}")
