"""
The batch's public values and errors: what it accepts, plans, reports and raises.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Literal, TypeAlias

import attrs

from pixelbyte_async._audit_report import AuditOrphan, known_cost
from pixelbyte_async._errors import (
    AuthenticationError,
    ClientClosedError,
    PermissionDenied,
    PixelByteError,
    ValidationError,
)
from pixelbyte_async._inputs import ModelInput
from pixelbyte_async._journal import JournalError


__all__ = [
    "SPENDING",
    "Action",
    "BatchInput",
    "BatchInputError",
    "BatchItem",
    "BatchItemStatus",
    "BatchPlan",
    "BatchSummary",
    "BudgetExceeded",
    "PlannedItem",
    "Settling",
    "is_fatal",
]

#: What `run_batch` accepts per input: a typed input, a ``(slug, input)`` tuple,
#: or a mapping ``{"id": ..., "model": ..., "input": {...}}`` (``input`` may also
#: be a typed input, then ``model`` is optional).
BatchInput: TypeAlias = ModelInput | tuple[str, Mapping[str, Any]] | Mapping[str, Any]

Action: TypeAlias = Literal[
    "submit",
    "retry",
    "reconcile",
    "attach",
    "download",
    "done",
    "failed",
    "cancelled",
    "needs_attention",
    "over_budget",
    "changed",
]

#: The actions that may spend: the plan prices them and the budget counts them.
SPENDING: frozenset[str] = frozenset(
    {"submit", "retry", "reconcile", "needs_attention"}
)


# -- errors ------------------------------------------------------------------------


class BudgetExceeded(PixelByteError):
    """
    A batch's estimated cost exceeds its *max_cost_micro_cents*; nothing was submitted.

    Attributes:
        estimate_micro_cents: The batch's estimated total, including what earlier
            runs with the same journal already charged.
        limit_micro_cents: The limit.
        charged_micro_cents: The part already charged by earlier runs.

    .. versionadded:: 0.2.0

    """

    def __init__(
        self,
        message: str,
        *,
        estimate_micro_cents: int,
        limit_micro_cents: int,
        charged_micro_cents: int = 0,
    ) -> None:
        super().__init__(message)
        self.estimate_micro_cents = estimate_micro_cents
        self.limit_micro_cents = limit_micro_cents
        self.charged_micro_cents = charged_micro_cents


class BatchInputError(ValidationError):
    """
    Some inputs of a batch are invalid; nothing was submitted.

    Every problem is reported at once, not just the first.

    Attributes:
        problems: ``(where, message)`` pairs; *where* is ``"file:line"`` for
            `read_batch_file` and ``"input N (key)"`` for `run_batch`.

    .. versionadded:: 0.2.0

    """

    def __init__(self, message: str, *, problems: Iterable[tuple[str, str]]) -> None:
        self.problems = tuple(problems)
        lines = [message, *(f"  {where}: {what}" for where, what in self.problems)]
        super().__init__("\n".join(lines), field="input")


def is_fatal(exc: BaseException) -> bool:
    """Whether *exc* ends the whole batch rather than one input."""
    if isinstance(exc, PermissionDenied):
        return exc.code != "MODEL_ACCESS_DENIED"
    return isinstance(exc, AuthenticationError | ClientClosedError | JournalError)


# -- public values -----------------------------------------------------------------


class BatchItemStatus(enum.StrEnum):
    """
    How one input of a batch ended (in this run).

    .. versionadded:: 0.2.0
    """

    #: The job completed (and its output was downloaded, with *out_dir*).
    COMPLETED = "completed"
    #: The job failed (refunded by the API), or the submit was rejected.
    FAILED = "failed"
    #: The job was cancelled (refunded).
    CANCELLED = "cancelled"
    #: Not submitted, because the budget, the balance or the API ran out
    #: (see *skip_reason*).
    SKIPPED = "skipped"
    #: A submit of unknown fate could not be matched to one job; never re-sent.
    NEEDS_ATTENTION = "needs_attention"
    #: Still running, or not downloaded yet; running the batch again finishes it.
    UNFINISHED = "unfinished"
    #: What a dry run would do.
    PLANNED = "planned"


@attrs.frozen(kw_only=True)
class BatchItem:
    """
    The outcome of one input of a batch.

    Attributes:
        key: The input's stable key: its ``id``, or a hash of model and input.
            It names the journal row and the output file.
        index: The input's position in the batch.
        input: The input as given.
        model: The model slug.
        status: How it ended.
        job_id: The job, if one was created.
        error: What went wrong, in words.
        cost_micro_cents: What the job costs you as far as known: its charge, 0
            once refunded (failed, cancelled), ``None`` if never submitted.
        estimated_cost_micro_cents: The estimate made before submitting.
        output_url: The output URL of a completed job.
        path: Where the output was written (with *out_dir*).
        skip_reason: Why it was skipped: ``"budget"``, ``"balance"`` or
            ``"unavailable"``.
        resumed: Whether an earlier run had already started or finished it.
        candidates: Job ids that may be this input's job (``NEEDS_ATTENTION``).
        action: What the batch did or (dry run) would do with it.

    .. versionadded:: 0.2.0

    """

    key: str
    index: int
    input: BatchInput = attrs.field(repr=False)
    model: str
    status: BatchItemStatus
    job_id: str | None = None
    error: str | None = None
    cost_micro_cents: int | None = None
    estimated_cost_micro_cents: int | None = None
    output_url: str | None = None
    path: Path | None = None
    skip_reason: str | None = None
    resumed: bool = False
    candidates: tuple[str, ...] = ()
    action: str = "submit"


@attrs.frozen(kw_only=True)
class PlannedItem:
    """
    What a batch will do with one input (see `BatchPlan`).

    Attributes:
        key: The input's key.
        index: Its position.
        model: The model slug.
        action: ``submit``, ``retry`` (failed before, *retry_failed*),
            ``reconcile`` (a submit of unknown fate), ``attach`` (wait for a job
            submitted earlier), ``download``, ``done``, ``failed``, ``cancelled``,
            ``needs_attention``, ``over_budget`` (left out by *fit*) or
            ``changed`` (its input is not what its job was made for: reported,
            re-run only with *rerun_changed*).
        estimated_cost_micro_cents: What it may still cost (``None`` if nothing).
        job_id: Its job, if the journal knows one.

    .. versionadded:: 0.2.0

    """

    key: str
    index: int
    model: str
    action: str
    estimated_cost_micro_cents: int | None = None
    job_id: str | None = None


@attrs.frozen(kw_only=True)
class BatchPlan:
    """
    A batch's plan, made before the first submit (and all a dry run does).

    Attributes:
        items: One `PlannedItem` per input, in input order.
        estimated_cost_micro_cents: What this run may still spend.
        charged_micro_cents: What earlier runs with the journal already charged
            (net of refunds).
        max_cost_micro_cents: The limit, if any.
        estimate_source: ``"api"`` (the API's ``/estimate``: your prices),
            ``"local"`` (the SDK's list-price table, because the API could not be
            asked: see *estimate_note*), ``"mixed"`` or ``"none"`` (nothing to
            estimate).
        estimate_note: Why the local table was used, if it was.

    .. versionadded:: 0.2.0

    """

    items: tuple[PlannedItem, ...]
    estimated_cost_micro_cents: int
    charged_micro_cents: int = 0
    max_cost_micro_cents: int | None = None
    estimate_source: str = "api"
    estimate_note: str | None = None

    @property
    def total_micro_cents(self) -> int:
        """The batch's estimated total, already charged plus still to spend."""
        return self.charged_micro_cents + self.estimated_cost_micro_cents

    @property
    def within_budget(self) -> bool:
        """Whether the total fits *max_cost_micro_cents* (always, without one)."""
        limit = self.max_cost_micro_cents
        return limit is None or self.total_micro_cents <= limit

    def count(self, action: str) -> int:
        """Return how many inputs the plan gives *action*."""
        return sum(1 for item in self.items if item.action == action)


@attrs.frozen(kw_only=True)
class Settling:
    """
    A row whose submit's fate is unknown, being settled (see `Batch.settling`).

    Attributes:
        key: The row.
        model: Its model.
        settle_at: Unix time its settle horizon ends: by then its job is found, or
            it is known to have made none.
        holding: Whether new submits of its model wait for it: two lost submits of
            one model at once, which the job list could not tell apart from a
            third, or a submit an earlier run left in flight.
        waiting: How many rows of its model wait (while *holding*).

    .. versionadded:: 0.3.0
    """

    key: str
    model: str
    settle_at: float
    holding: bool
    waiting: int


@attrs.frozen(kw_only=True)
class BatchSummary:
    """
    How a batch run went.

    Attributes:
        items: One `BatchItem` per input, in input order.
        plan: The plan made before the first submit.
        cost_micro_cents: What the batch's jobs cost as far as known (charges net
            of refunds, earlier runs included; estimates stand in for charges the
            API did not report).
        assumed_cost_micro_cents: The part of *cost_micro_cents* that is the
            SDK's list prices, confirmed by no charge or estimate of the API: the
            account may have paid more.
        wall_seconds: How long this run took, in real seconds.
        clock_seconds: How long it took by the client's clock (the same, but for
            a client on a virtual clock: the sandbox's seconds).
        stop_reason: Why submitting stopped early: ``"budget"``, ``"balance"``,
            ``"unavailable"``, or ``None``.
        journal: The journal file, if any.
        dry_run: Whether this was a dry run.
        orphans: The account's jobs of the batch's models created during the run
            that no journal row claims and that a lost submit of this machine's
            ledger may have made (`PixelByte.audit` over the run's window): paid
            for, most likely ours.  ``None`` if the audit could not run (see
            *audit_error*).
        others: The unclaimed jobs of the batch's models created during the run
            that no recorded submit could have made: other submitters' (another
            app, machine or person using the key), as far as this machine knows.
        audit_error: Why the audit could not run.
        follow_up: The rows whose lost submit no job is tied to (set aside for a
            person, or left unknown): a job one of them made is found by
            ``pixelbyte-async audit --journal PATH`` (and by the next run).
        follow_up_until: Until when (Unix time) those lost submits may still make
            a job (their settle horizon), if any.
        report: The report written in the output folder (``report.html``), if any.

    .. versionadded:: 0.2.0
    .. versionchanged:: 0.3.0 *others*, *follow_up*, *follow_up_until*,
       *clock_seconds*; *orphans* only jobs a lost submit may have made;
       *wall_seconds* is real time (it was the client's clock).

    """

    items: tuple[BatchItem, ...]
    plan: BatchPlan
    cost_micro_cents: int
    wall_seconds: float
    assumed_cost_micro_cents: int = 0
    stop_reason: str | None = None
    journal: Path | None = None
    dry_run: bool = False
    orphans: tuple[AuditOrphan, ...] | None = ()
    others: tuple[AuditOrphan, ...] = ()
    audit_error: str | None = None
    clock_seconds: float | None = None
    follow_up: tuple[str, ...] = ()
    follow_up_until: float | None = None
    report: Path | None = None

    @property
    def orphan_cost_micro_cents(self) -> int:
        """What the orphans cost, at most (refunded ones excluded)."""
        return known_cost(self.orphans or ())

    def _count(self, status: BatchItemStatus) -> int:
        return sum(1 for item in self.items if item.status is status)

    @property
    def completed(self) -> int:
        """How many inputs completed."""
        return self._count(BatchItemStatus.COMPLETED)

    @property
    def failed(self) -> int:
        """How many inputs failed."""
        return self._count(BatchItemStatus.FAILED)

    @property
    def cancelled(self) -> int:
        """How many jobs were cancelled."""
        return self._count(BatchItemStatus.CANCELLED)

    @property
    def skipped(self) -> int:
        """How many inputs were not submitted (budget, balance, API down)."""
        return self._count(BatchItemStatus.SKIPPED)

    @property
    def needs_attention(self) -> int:
        """How many inputs need a human decision (see `BatchItem.candidates`)."""
        return self._count(BatchItemStatus.NEEDS_ATTENTION)

    @property
    def unfinished(self) -> int:
        """How many inputs a re-run would still finish (timeouts, downloads)."""
        return self._count(BatchItemStatus.UNFINISHED)

    @property
    def ok(self) -> bool:
        """Whether every input completed (a dry run is never ok)."""
        return not self.dry_run and self.completed == len(self.items)
