"""
Retry policy: stamina's knobs, full jitter, server hints first, one deadline per call.
"""

from __future__ import annotations

import email.utils
import math
import random
from collections.abc import Callable, Mapping
from typing import Any

import attrs

from ._errors import APIError, PixelByteError
from ._serde import lenient_float


__all__ = ["RetryPolicy", "parse_retry_after"]


def _positive(_: object, attribute: attrs.Attribute[Any], value: float) -> None:
    if value < 0 or math.isnan(value):
        raise ValueError(f"{attribute.name} must be >= 0, got {value!r}")


@attrs.frozen(kw_only=True)
class RetryPolicy:
    """
    How the client retries requests that are safe to retry.

    GETs, estimates, cancels of already-cancelled jobs and uploads are retried on
    transport errors, 429 and 5xx.  A submit is retried **only** when the server
    provably created no job (429 ``CONCURRENT_JOBS_EXCEEDED``, 503
    ``PUBSUB_PUBLISH_FAILED``, or a connect error before anything was sent).

    The wait before retry *n* (1-based) is drawn uniformly from
    ``[0, min(wait_max, wait_initial * wait_exp_base ** (n - 1))]`` ("full jitter"),
    unless the server said how long to wait (``Retry-After`` header or
    ``error.details.retryAfter``), which wins when it is at most *max_retry_after*;
    a longer hint is not waited for and the error is raised instead.

    Args:
        attempts: Attempts in total, the first one included (1 = no retries).
        wait_initial: Backoff base in seconds.
        wait_max: Cap on a computed backoff in seconds.
        wait_exp_base: Growth factor of the backoff.
        jitter: Use full jitter (``False``: wait the cap exactly; for tests).
        max_retry_after: Longest server-requested wait that is honoured.

    .. versionadded:: 0.1.0

    """

    attempts: int = attrs.field(default=5, validator=attrs.validators.ge(1))
    wait_initial: float = attrs.field(default=0.5, validator=_positive)
    wait_max: float = attrs.field(default=30.0, validator=_positive)
    wait_exp_base: float = attrs.field(default=2.0, validator=attrs.validators.ge(1.0))
    jitter: bool = True
    max_retry_after: float = attrs.field(default=120.0, validator=_positive)

    @classmethod
    def disabled(cls) -> RetryPolicy:
        """Return a policy that never retries (wrap calls in stamina yourself)."""
        return cls(attempts=1)

    def backoff(
        self, retry_number: int, rng: Callable[[float, float], float] | None = None
    ) -> float:
        """Return the computed wait before retry number *retry_number* (1-based)."""
        cap = min(
            self.wait_max, self.wait_initial * self.wait_exp_base ** (retry_number - 1)
        )
        if not self.jitter:
            return cap
        uniform = rng or random.uniform
        return uniform(0.0, cap)

    def delay_for(
        self,
        error: PixelByteError,
        retry_number: int,
        rng: Callable[[float, float], float] | None = None,
    ) -> float | None:
        """
        Return how long to wait before retrying after *error*, or ``None`` to give up.

        Gives up when *error* is not retryable, when attempts are used up, or when the
        server asked for a wait longer than *max_retry_after*.
        """
        if not error.retryable or retry_number >= self.attempts:
            return None
        if error.retry_after is not None:
            if error.retry_after > self.max_retry_after:
                return None
            return error.retry_after
        return self.backoff(retry_number, rng)


def parse_retry_after(value: str | None, *, now: float) -> float | None:
    """
    Parse a ``Retry-After`` header: delta-seconds (fractions allowed) or an HTTP-date.

    Returns seconds from *now* (never negative), or ``None`` when absent or unreadable.
    """
    if value is None:
        return None
    value = value.strip()
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        pass
    else:
        if math.isnan(seconds) or math.isinf(seconds):
            return None
        return max(0.0, seconds)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        return None
    return max(0.0, when.timestamp() - now)


def retry_after_from_details(details: Mapping[str, Any]) -> float | None:
    """Return ``details.retryAfter`` as seconds when it is a usable number."""
    value = lenient_float(details.get("retryAfter", details.get("retry_after")))
    return None if value is None or value < 0 else value


def is_submit_safe_to_retry(error: PixelByteError) -> bool:
    """Return whether a failed submit provably created no job and may be re-sent."""
    if isinstance(error, APIError):
        # A 429 is a refusal before any work; PUBSUB_PUBLISH_FAILED is documented as
        # "please retry".  Every other error answer to a submit is not retried here.
        return error.status == 429 or error.code == "PUBSUB_PUBLISH_FAILED"  # noqa: PLR2004 -- HTTP 429
    request_sent = getattr(error, "request_sent", True)
    return request_sent is False
