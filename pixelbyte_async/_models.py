"""
Response types: frozen, lenient values decoded by `_serde`.
"""

from __future__ import annotations

import enum
from datetime import datetime
from typing import Any

import attrs


__all__ = [
    "CatalogModel",
    "Estimate",
    "EstimateLine",
    "JobErrorInfo",
    "JobInfo",
    "JobOutput",
    "JobStatus",
    "Upload",
]


class JobStatus(enum.StrEnum):
    """
    A job's status.  Unknown values from the server decode to `UNKNOWN`.

    Decoding is case-insensitive and reads plain synonyms too (``succeeded``,
    ``error``, ``expired``, ``queued``, ``running``, ``canceled`` …): a server that
    says "succeeded" means the job is over, and waiting for "completed" would poll
    for nothing until the deadline.  The string as sent stays in
    `JobInfo.raw_status`.

    .. versionadded:: 0.1.0
    """

    PENDING = "pending"
    PROCESSING = "processing"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"
    UNKNOWN = "unknown"

    @property
    def is_terminal(self) -> bool:
        """Whether the job will not change any more."""
        return self in {JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.CANCELLED}

    @classmethod
    def parse(cls, value: object) -> JobStatus:
        """Decode a wire status case-insensitively; anything unknown is `UNKNOWN`."""
        if not isinstance(value, str):
            return cls.UNKNOWN
        exact = _EXACT.get(value)
        if exact is not None:
            return exact
        normalized = value.strip().lower().replace("-", "_").replace(" ", "_")
        return _SYNONYMS.get(normalized, cls.UNKNOWN)


_EXACT: dict[str, JobStatus] = {status.value: status for status in JobStatus}

# Lower case, "-" and " " read as "_".  "unknown" itself is not a status a server
# can announce: it stays UNKNOWN like any other unrecognised value.
_SYNONYMS: dict[str, JobStatus] = {
    **dict.fromkeys(
        ("pending", "queued", "waiting", "starting", "submitted", "created"),
        JobStatus.PENDING,
    ),
    **dict.fromkeys(
        ("processing", "running", "in_progress", "started"), JobStatus.PROCESSING
    ),
    **dict.fromkeys(
        (
            "completed",
            "complete",
            "succeeded",
            "success",
            "successful",
            "done",
            "finished",
        ),
        JobStatus.COMPLETED,
    ),
    **dict.fromkeys(
        (
            "failed",
            "error",
            "errored",
            "failure",
            "expired",
            "timeout",
            "timed_out",
            "rejected",
        ),
        JobStatus.FAILED,
    ),
    **dict.fromkeys(
        ("cancelled", "canceled", "canceled_by_user", "cancelled_by_user"),
        JobStatus.CANCELLED,
    ),
}


@attrs.frozen(kw_only=True)
class JobOutput:
    """
    One output of a job.

    .. versionadded:: 0.1.0
    """

    url: str
    type: str | None = None
    thumbnail: str | None = None
    poster_image: str | None = None
    content_type: str | None = None
    duration_seconds: float | None = None


@attrs.frozen(kw_only=True)
class JobErrorInfo:
    """
    Why a job failed, as the server said (``error.code`` / ``error.message``).

    .. versionadded:: 0.1.0
    """

    code: str | None = None
    message: str = ""


@attrs.frozen(kw_only=True)
class JobInfo:
    """
    A snapshot of a job as the API last described it.

    Attributes:
        id: The job id (``job_…``).
        status: Decoded status; `JobStatus.UNKNOWN` for values this SDK does not know.
        raw_status: The status string exactly as sent.
        progress: 0..100 as the server reports it (coarse: 0, 50, 100).
        model: Model slug, when the server says it.
        video_url: The primary output URL, resolved from every documented shape:
            the first one that can be downloaded (an http(s) URL with a host and a
            valid port), or ``None``.
        raw_output_url: The first output URL as sent, usable or not (so an
            unusable one can still be seen and reported).
        outputs: All outputs.
        error: Why it failed, for failed jobs.
        cost_micro_cents: What the job costs (1,000,000 = US$1), when known.
        refunded_micro_cents: What a cancel refunded, when known.
        estimated_completion_time: The server's ETA.
        created_at: When the job was created.
        completed_at: When it reached a terminal state.
        request_id: ``requestId`` of the response that first reported this state.

    .. versionadded:: 0.1.0

    """

    id: str
    status: JobStatus = JobStatus.UNKNOWN
    raw_status: str | None = None
    progress: float | None = None
    model: str | None = None
    video_url: str | None = None
    raw_output_url: str | None = None
    outputs: tuple[JobOutput, ...] = ()
    error: JobErrorInfo | None = None
    cost_micro_cents: int | None = None
    refunded_micro_cents: int | None = None
    estimated_completion_time: datetime | None = None
    created_at: datetime | None = None
    completed_at: datetime | None = None
    request_id: str | None = None

    def merged_over(self, older: JobInfo | None) -> JobInfo:
        """Return this snapshot with fields it lacks taken from *older*."""
        if older is None:
            return self
        if (
            (self.model is not None or older.model is None)
            and (self.cost_micro_cents is not None or older.cost_micro_cents is None)
            and (
                self.estimated_completion_time is not None
                or older.estimated_completion_time is None
            )
            and (self.created_at is not None or older.created_at is None)
            and (
                self.refunded_micro_cents is not None
                or older.refunded_micro_cents is None
            )
        ):
            return self  # nothing to take from *older* (the common case)
        changes: dict[str, Any] = {}
        for name in (
            "model",
            "cost_micro_cents",
            "estimated_completion_time",
            "created_at",
            "refunded_micro_cents",
        ):
            if getattr(self, name) is None and getattr(older, name) is not None:
                changes[name] = getattr(older, name)
        return attrs.evolve(self, **changes) if changes else self


@attrs.frozen(kw_only=True)
class EstimateLine:
    """One component of a cost estimate."""

    component: str
    cost_micro_cents: int


@attrs.frozen(kw_only=True)
class Estimate:
    """
    A cost estimate (no job is created).

    Attributes:
        estimated_cost_micro_cents: What the job would cost you (after discounts).
        base_cost_micro_cents: The price before discounts, when the server says.
        breakdown: Components of the price.
        has_discount: Whether a discount applies.
        discount: The discount as sent (``{"type","percentage","savedMicroCents"}``).
        source: ``"api"`` or ``"local"`` (the SDK's price table).

    .. versionadded:: 0.1.0

    """

    estimated_cost_micro_cents: int
    base_cost_micro_cents: int | None = None
    breakdown: tuple[EstimateLine, ...] = ()
    has_discount: bool = False
    discount: dict[str, Any] | None = None
    source: str = "api"

    @property
    def usd(self) -> float:
        """The estimate in US dollars."""
        return self.estimated_cost_micro_cents / 1_000_000


@attrs.frozen(kw_only=True)
class Upload:
    """
    A temporary uploaded file (deleted by the API 60 minutes after creation).

    .. versionadded:: 0.1.0
    """

    id: str
    file_url: str
    upload_url: str | None = None
    filename: str | None = None
    content_type: str | None = None
    status: str | None = None
    max_size: int | None = None
    expires_at: datetime | None = None
    created_at: datetime | None = None


@attrs.frozen(kw_only=True)
class CatalogModel:
    """
    A model from the public catalogue.

    .. versionadded:: 0.1.0
    """

    slug: str
    name: str | None = None
    description: str | None = None
    category: str | None = None
    capability: str | None = None
    provider: str | None = None
    pricing: dict[str, Any] | None = None
    input_schema: dict[str, Any] | None = None
    tags: tuple[str, ...] = ()
