"""
The exception tree of `pixelbyte_async`.

Every exception the SDK raises derives from `PixelByteError`; aiohttp's exceptions never
escape.  Classes are grouped by what the caller should *do*::

    PixelByteError                      root; never raised directly
    ├── ValidationError (ValueError)    bad input caught locally; nothing was sent
    │   └── BatchInputError             bad batch rows, every one listed (_batch/)
    ├── ClientClosedError (RuntimeError) the client was used after aclose()
    ├── TransportError                  could not talk to the API (connect/read); retryable
    │   └── RequestTimeout (TimeoutError) the call's deadline passed
    ├── AmbiguousSubmitError            a submit's fate is unknown: it may have created (and
    │                                   charged) a job; never re-sent; see PixelByte.reconcile
    ├── ReconcileError                  reconcile cannot tell which job is whose
    │   └── ReconcileTimeout (TimeoutError) its timeout ended before the settle horizon
    ├── EventLoopMismatch (RuntimeError) a client was used from a second event loop
    ├── BudgetExceeded                  a batch would cost more than allowed (_batch/)
    ├── JournalError                    a batch journal is in use or unreadable (_journal/)
    ├── APIError                        the server answered with an error
    │   ├── InvalidRequestError   400   INVALID_INPUT, INVALID_MODEL_SLUG, JOB_CANNOT_BE_CANCELLED …
    │   ├── AuthenticationError   401   UNAUTHORIZED, INVALID_API_KEY, API_KEY_EXPIRED …
    │   ├── InsufficientBalance   402   INSUFFICIENT_BALANCE: top up
    │   ├── PermissionDenied      403   OPERATION_NOT_ALLOWED, MODEL_ACCESS_DENIED …
    │   ├── NotFound              404   JOB_NOT_FOUND, MODEL_NOT_FOUND …
    │   ├── RateLimited           429   CONCURRENT_JOBS_EXCEEDED; .retry_after; retryable
    │   ├── ServerError           5xx   INTERNAL_ERROR, PUBSUB_PUBLISH_FAILED; retryable
    │   └── UnexpectedRedirect    3xx   an API call was redirected (never followed); .location
    ├── ResponseDecodeError             a body did not have the expected shape
    │   └── ResponseTooLarge            a body was over the size limit; never re-fetched
    ├── JobError                        a job ended without success; carries the Job
    │   ├── JobFailed                   status "failed" (the API refunds it)
    │   └── JobCancelled                status "cancelled"
    ├── WaitTimeout (TimeoutError)      wait() passed its deadline; carries the last Job seen
    ├── MissingOutputError              a completed job has no usable output URL
    ├── DownloadError                   an output could not be downloaded or failed a check
    └── WebhookVerificationError        a webhook delivery failed verification; .reason
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any


if TYPE_CHECKING:
    from ._job import Job


__all__ = [
    "APIError",
    "AmbiguousSubmitError",
    "AuthenticationError",
    "ClientClosedError",
    "DownloadError",
    "EventLoopMismatch",
    "InsufficientBalance",
    "InvalidRequestError",
    "JobCancelled",
    "JobError",
    "JobFailed",
    "MissingOutputError",
    "NotFound",
    "PermissionDenied",
    "PixelByteError",
    "RateLimited",
    "ReconcileError",
    "ReconcileTimeout",
    "RequestTimeout",
    "ResponseDecodeError",
    "ResponseTooLarge",
    "ServerError",
    "TransportError",
    "UnexpectedRedirect",
    "ValidationError",
    "WaitTimeout",
    "WebhookVerificationError",
    "error_class_for",
]


class PixelByteError(Exception):
    """
    Root of every exception raised by `pixelbyte_async`.

    Attributes:
        retryable: Whether trying the same call again later may succeed.
        retry_after: Seconds the server asked us to wait, if it said so.

    """

    retryable: bool = False
    retry_after: float | None = None


class ValidationError(PixelByteError, ValueError):
    """
    Input was rejected locally, before any request was sent (so nothing was charged).

    Attributes:
        field: The offending field (``"duration"``, ``"image_url"`` …) or ``None``.

    """

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class ClientClosedError(PixelByteError, RuntimeError):
    """The client was used after `PixelByte.aclose` (or outside its ``async with``)."""


class TransportError(PixelByteError):
    """
    The API could not be reached or the connection broke.

    Attributes:
        request_sent: ``False`` when the failure happened before the request left this
            process (a connect error), so the server cannot have acted on it.

    """

    retryable = True

    def __init__(self, message: str, *, request_sent: bool = True) -> None:
        super().__init__(message)
        self.request_sent = request_sent


class RequestTimeout(TransportError, TimeoutError):
    """A call did not finish within its deadline (retries included)."""


class APIError(PixelByteError):
    """
    The API answered with an error.

    Attributes:
        status: HTTP status code.
        code: The API's machine-readable code (``"INSUFFICIENT_BALANCE"``) or ``None``.
        message: The API's human-readable message.
        details: ``error.details`` from the body (may be empty).
        request_id: The API's ``requestId``: quote it to support.

    """

    def __init__(
        self,
        message: str,
        *,
        status: int,
        code: str | None = None,
        details: Mapping[str, Any] | None = None,
        request_id: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.code = code
        self.details: Mapping[str, Any] = dict(details or {})
        self.request_id = request_id
        self.retry_after = retry_after

    def __str__(self) -> str:
        code = f" {self.code}" if self.code else ""
        rid = f" (request_id={self.request_id})" if self.request_id else ""
        return f"HTTP {self.status}{code}: {self.message}{rid}"

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(status={self.status!r}, code={self.code!r}, "
            f"message={self.message!r}, request_id={self.request_id!r})"
        )


class InvalidRequestError(APIError):
    """400: the request was malformed or not allowed in the job's state; fix it."""


class AuthenticationError(APIError):
    """401: the API key is missing, unknown, inactive or expired."""


class InsufficientBalance(APIError):
    """402: the account balance does not cover the job; top up."""


class PermissionDenied(APIError):
    """403: the key lacks a scope, the IP is not allowed, or the model is off-limits."""


class NotFound(APIError):
    """404: unknown job, model, version or upload."""


class RateLimited(APIError):
    """429: too many concurrent jobs for the plan; wait ``retry_after`` seconds and try again."""

    retryable = True


class ServerError(APIError):
    """5xx: the API failed; retrying (a limited number of times) may help."""

    retryable = True


class UnexpectedRedirect(APIError):
    """
    3xx: an API call was answered with a redirect, which the SDK never follows.

    Following it could carry the API key, or a paid submit, to another host.  The
    server did not run the call (a redirected submit created no job), so it is not
    ambiguous, and not retried: check *base_url* (``http://`` for ``https://``, a moved
    host) or a proxy in between.

    Attributes:
        location: The ``Location`` header (the redirect's target), or ``None``.

    .. versionadded:: 0.1.0

    """

    def __init__(
        self,
        message: str,
        *,
        status: int,
        code: str | None = None,
        details: Mapping[str, Any] | None = None,
        request_id: str | None = None,
        retry_after: float | None = None,
        location: str | None = None,
    ) -> None:
        super().__init__(
            message,
            status=status,
            code=code,
            details=details,
            request_id=request_id,
            retry_after=retry_after,
        )
        self.location = location

    def __repr__(self) -> str:
        location = None if self.location is None else loggable_url(self.location)
        return (
            f"{type(self).__name__}(status={self.status!r}, "
            f"location={location!r}, request_id={self.request_id!r})"
        )


def loggable_url(url: str, limit: int = 200) -> str:
    """
    Return *url* without its query and fragment, cut to *limit* characters.

    The query of a signed URL may hold a credential; messages and reprs (often
    logged) show the rest, while the attributes keep the whole URL.
    """
    shown = url.split("#", 1)[0]
    if "?" in shown:
        shown = shown.split("?", 1)[0] + "?..."
    return shown if len(shown) <= limit else shown[:limit] + "..."


class ResponseDecodeError(PixelByteError):
    """
    A response body was not what the API contract describes.

    Attributes:
        status: HTTP status of the response.
        body_excerpt: The first bytes of the body, for debugging.

    """

    def __init__(
        self, message: str, *, status: int = 0, body_excerpt: str = ""
    ) -> None:
        super().__init__(message)
        self.status = status
        self.body_excerpt = body_excerpt


class ResponseTooLarge(ResponseDecodeError):
    """
    A response body was larger than the SDK accepts; it was not read, nor fetched again.

    A body that big is not a job or an error envelope, and downloading it again on
    every retry would only cost time and memory.  To a submit it is still ambiguous
    (the job may exist): see `AmbiguousSubmitError`.

    Attributes:
        limit: The limit in bytes.
        size: The declared size (``Content-Length``) when known, else ``None``.

    .. versionadded:: 0.1.0

    """

    def __init__(
        self, message: str, *, status: int = 0, limit: int, size: int | None = None
    ) -> None:
        super().__init__(message, status=status)
        self.limit = limit
        self.size = size


class AmbiguousSubmitError(PixelByteError):
    """
    A submit may or may not have created a job: it was **not** re-sent.

    Raised on read timeouts, connections dropped after sending, and 5xx answers other
    than ``PUBSUB_PUBLISH_FAILED``.  Pass it to `PixelByte.reconcile` to find the job.

    Attributes:
        model: The model slug that was submitted.
        input: The input that was sent.
        webhook_url: The webhook URL that was sent, if any.
        started_at: Wall-clock time (Unix seconds) when the try whose answer
            was lost went out (after 429s of the plan's limit, minutes after
            the call began: the tries before it made no job); the settle
            horizon of `PixelByte.reconcile` counts from it.
        attempt: The attempt's id in the ledger, also the nonce (``pb_attempt``)
            of its ``webhookUrl`` when webhooks are in use (see `tagged`).
            ``None`` only in errors built by hand.

    .. versionchanged:: 0.3.0 *attempt* is set with or without webhooks.
    """

    def __init__(
        self,
        message: str,
        *,
        model: str,
        input: Mapping[str, Any],  # noqa: A002 -- mirrors the API's field name
        webhook_url: str | None,
        started_at: float,
        attempt: str | None = None,
    ) -> None:
        super().__init__(message)
        self.model = model
        self.input: Mapping[str, Any] = dict(input)
        self.webhook_url = webhook_url
        self.started_at = started_at
        self.attempt = attempt

    @property
    def tagged(self) -> bool:
        """Whether the ``webhookUrl`` sent carries *attempt* (deliveries prove its job)."""
        if self.attempt is None or self.webhook_url is None:
            return False
        return f"pb_attempt={self.attempt}" in self.webhook_url


class ReconcileError(PixelByteError):
    """
    Reconciling an ambiguous submit cannot tell which job is its own.

    Either several unknown jobs were created since the attempt, or other ambiguous
    submits of the same model (not yet reconciled) could own the one that was.  The
    API has no idempotency key and does not echo inputs, so the SDK does not guess:
    guessing wrong would give one input's video to another, or pay twice.

    Or the account has other submitters the ledger does not know, so the job list
    cannot prove that a job in the attempt's window is its own.

    Attributes:
        candidates: The jobs that could be the one.
        competing: Other unreconciled ambiguous submits that could own them.
        foreign: Jobs of the model no recorded submit could have made: the sign
            of other submitters (another app, machine or person on the key).
        settle_at: Unix time the attempt's settle horizon ends (``None`` if not
            given): a job it made may still appear until then.

    .. versionchanged:: 0.3.0 *foreign* and *settle_at*.
    """

    def __init__(
        self,
        message: str,
        *,
        candidates: list[Job],
        competing: list[AmbiguousSubmitError] | None = None,
        foreign: list[Job] | None = None,
        settle_at: float | None = None,
    ) -> None:
        super().__init__(message)
        self.candidates = candidates
        self.competing = competing or []
        self.foreign = foreign or []
        self.settle_at = settle_at


class ReconcileTimeout(ReconcileError, TimeoutError):
    """
    `PixelByte.reconcile`'s *timeout* ended before the settle horizon.

    The submit's fate is still unknown: do **not** re-send it before
    ``settle_at``; call `PixelByte.reconcile` again later.

    Attributes:
        settle_at: Unix time the horizon ends; "no job found" after it is proof.

    """

    settle_at: float

    def __init__(self, message: str, *, settle_at: float) -> None:
        super().__init__(message, candidates=[], settle_at=settle_at)


class EventLoopMismatch(PixelByteError, RuntimeError):
    """
    A client was used on an event loop other than the one it first ran on.

    Its connections belong to that loop (which may be closed, e.g. after a second
    ``asyncio.run()``).  Create the client inside the running loop.
    """


class JobError(PixelByteError):
    """
    A job reached a terminal state other than ``completed``.

    Attributes:
        job: The job as last seen.
        code: The job's error code (``GENERATION_FAILED`` …) or ``None``.

    """

    def __init__(self, message: str, *, job: Job, code: str | None = None) -> None:
        super().__init__(message)
        self.job = job
        self.code = code


class JobFailed(JobError):
    """The job failed (the API refunds failed jobs)."""


class JobCancelled(JobError):
    """The job was cancelled."""


class WaitTimeout(PixelByteError, TimeoutError):
    """
    `Job.wait` passed its deadline; the job may still be running (and charged).

    Attributes:
        job: The job as last seen.
        cancel_attempted: Whether ``cancel_on_timeout`` tried to cancel it.
        cancelled: Whether that cancel succeeded.
        refunded_micro_cents: What the cancel refunded, if it succeeded.

    """

    def __init__(
        self,
        message: str,
        *,
        job: Job,
        cancel_attempted: bool = False,
        cancelled: bool = False,
        refunded_micro_cents: int | None = None,
    ) -> None:
        super().__init__(message)
        self.job = job
        self.cancel_attempted = cancel_attempted
        self.cancelled = cancelled
        self.refunded_micro_cents = refunded_micro_cents


class MissingOutputError(PixelByteError):
    """A job completed but none of the documented output shapes held a URL."""


class DownloadError(PixelByteError):
    """Downloading an output failed (HTTP error, size mismatch or limit exceeded)."""


class WebhookVerificationError(PixelByteError):
    """
    A webhook delivery failed verification.

    Attributes:
        reason: Machine-readable: ``missing_header``, ``malformed``, ``stale``,
            ``future``, ``mismatch``, ``too_large`` or ``not_json``.
        signed: Whether the signature was valid and the signed body itself is
            unusable (not JSON, no job id, nested too deep): a receiver answers
            400, not 401.

    .. versionchanged:: 0.4.0 *signed*.

    """

    def __init__(self, message: str, *, reason: str, signed: bool = False) -> None:
        super().__init__(message)
        self.reason = reason
        self.signed = signed


_BY_STATUS: dict[int, type[APIError]] = {
    400: InvalidRequestError,
    401: AuthenticationError,
    402: InsufficientBalance,
    403: PermissionDenied,
    404: NotFound,
    409: InvalidRequestError,
    413: InvalidRequestError,
    422: InvalidRequestError,
    429: RateLimited,
}

# Codes whose class does not follow from the status alone (the docs leave some statuses
# unstated, e.g. the upload validation codes).
_BY_CODE: dict[str, type[APIError]] = {
    "INVALID_INPUT": InvalidRequestError,
    "VALIDATION_ERROR": InvalidRequestError,
    "INVALID_CONTENT_TYPE": InvalidRequestError,
    "INVALID_MODEL_SLUG": InvalidRequestError,
    "INVALID_WEBHOOK_URL": InvalidRequestError,
    "MODEL_VERSION_NOT_ACTIVE": InvalidRequestError,
    "JOB_CANNOT_BE_CANCELLED": InvalidRequestError,
    "UNAUTHORIZED": AuthenticationError,
    "INVALID_API_KEY": AuthenticationError,
    "API_KEY_INACTIVE": AuthenticationError,
    "API_KEY_EXPIRED": AuthenticationError,
    "INSUFFICIENT_BALANCE": InsufficientBalance,
    "IP_NOT_WHITELISTED": PermissionDenied,
    "OPERATION_NOT_ALLOWED": PermissionDenied,
    "MODEL_ACCESS_DENIED": PermissionDenied,
    "UNAUTHORIZED_ACCESS": PermissionDenied,
    "MODEL_NOT_FOUND": NotFound,
    "MODEL_VERSION_NOT_FOUND": NotFound,
    "JOB_NOT_FOUND": NotFound,
    "NOT_FOUND": NotFound,
    "CONCURRENT_JOBS_EXCEEDED": RateLimited,
    "INTERNAL_ERROR": ServerError,
    "CONFIG_ERROR": ServerError,
    "PUBSUB_PUBLISH_FAILED": ServerError,
}


def error_class_for(status: int, code: str | None) -> type[APIError]:
    """
    Return the exception class for an error answer: the one table of the SDK.

    A 5xx status always maps to `ServerError` and a 3xx to `UnexpectedRedirect`;
    otherwise a known *code* wins over the status, then the status decides, and
    anything else is a plain `APIError`.
    """
    if status >= 500:  # noqa: PLR2004 -- HTTP's server-error class
        return ServerError
    if 300 <= status < 400:  # noqa: PLR2004 -- HTTP's redirection class
        return UnexpectedRedirect
    if code is not None and code in _BY_CODE:
        return _BY_CODE[code]
    return _BY_STATUS.get(status, APIError)
