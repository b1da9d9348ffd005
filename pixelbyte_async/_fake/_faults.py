"""Fault injection: make the next matching requests fail in a chosen way."""

from __future__ import annotations

import math
from fnmatch import fnmatchcase
from typing import Literal, TypeAlias, get_args

import attrs


__all__ = ["Fault", "FaultHandle", "FaultKind", "FaultQueue", "Origin"]

FaultKind: TypeAlias = Literal[
    "status", "delay", "drop_before", "drop_after", "html", "garbage", "late_create"
]
LateAnswer: TypeAlias = Literal["drop", "hang"]
Origin: TypeAlias = Literal["api", "cdn"]

_DEFAULT_MESSAGES = {
    "PUBSUB_PUBLISH_FAILED": "Failed to queue the job. Please retry.",
    "INTERNAL_ERROR": "An unexpected error occurred.",
    "CONFIG_ERROR": "Server misconfiguration.",
    "CONCURRENT_JOBS_EXCEEDED": "Too many concurrent jobs for your plan.",
    "INSUFFICIENT_BALANCE": "Insufficient balance for this job.",
    "INVALID_API_KEY": "Invalid API key.",
    "MODEL_ACCESS_DENIED": "Your API key may not use this model.",
    "OPERATION_NOT_ALLOWED": "Your API key lacks the scope for this operation.",
}


# Arguments are checked when a fault is built: a bad one must fail in the test that
# wrote it, not as a crash inside the fake's request handler later.


def _number(value: object, what: str) -> float:
    """A finite number >= 0 from an int, a float or a numeric string."""
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        msg = f"{what} must be a number (int, float or numeric str), got {value!r}"
        raise TypeError(msg)
    try:
        number = float(value)
    except (ValueError, OverflowError):
        raise ValueError(f"{what} must be a number, got {value!r}") from None
    if not math.isfinite(number) or number < 0:
        raise ValueError(f"{what} must be a finite number >= 0, got {value!r}")
    return number


def _seconds(value: object) -> float:
    return _number(value, "seconds")


def _retry_after(value: object) -> float | None:
    return None if value is None else _number(value, "retry_after")


def _http_status(value: object) -> int:
    """A three-digit HTTP status from an int, an integral float or a digit string."""
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        msg = f"an HTTP status must be an int, got {value!r}"
        raise TypeError(msg)
    try:
        number = float(value)
    except (ValueError, OverflowError):
        raise ValueError(f"an HTTP status must be a number, got {value!r}") from None
    if not number.is_integer() or not 100 <= number <= 999:  # noqa: PLR2004 -- HTTP/1.1 status syntax
        raise ValueError(f"an HTTP status has three digits, got {value!r}")
    return int(number)


def _optional_http_status(value: object) -> int | None:
    return None if value is None else _http_status(value)


def _header_value(value: object) -> str | None:
    """A header value: numbers as delta-seconds, strings verbatim (if sendable)."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        msg = f"retry_after_header must be an int, float or str, got {value!r}"
        raise TypeError(msg)
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"retry_after_header must be >= 0, got {value!r}")
        return str(value)
    if isinstance(value, float):
        number = _number(value, "retry_after_header")
        return str(int(number)) if number.is_integer() else repr(number)
    if any((ord(ch) < 0x20 and ch != "\t") or ord(ch) == 0x7F for ch in value):  # noqa: PLR2004 -- C0 controls and DEL
        raise ValueError(
            f"retry_after_header cannot hold control characters, got {value!r}"
        )
    return value


@attrs.frozen(kw_only=True)
class Fault:
    """
    Something going wrong with one request.  Build one with the class methods.

    Args:
        kind: What happens; see the constructors.
        http_status: The status of ``status``, ``html`` and ``garbage`` faults.
        code: ``error.code`` of a ``status`` fault.
        message: ``error.message`` of a ``status`` fault.
        retry_after: ``error.details.retryAfter`` of a ``status`` fault.
        retry_after_header: A ``Retry-After`` header: a str is sent verbatim, a
            number as its seconds.
        seconds: Real seconds a ``delay`` fault waits; virtual seconds after
            which a ``late_create`` fault creates its job.
        late_answer: How a ``late_create`` fault answers: ``"drop"`` or ``"hang"``.
        hold: Real seconds at most that a hanging ``late_create`` holds the
            connection open (until the client gives up).

    """

    kind: FaultKind = attrs.field(validator=attrs.validators.in_(get_args(FaultKind)))
    http_status: int | None = attrs.field(default=None, converter=_optional_http_status)
    code: str | None = attrs.field(
        default=None,
        validator=attrs.validators.optional(attrs.validators.instance_of(str)),
    )
    message: str | None = attrs.field(
        default=None,
        validator=attrs.validators.optional(attrs.validators.instance_of(str)),
    )
    retry_after: float | None = attrs.field(default=None, converter=_retry_after)
    retry_after_header: str | None = attrs.field(default=None, converter=_header_value)
    seconds: float = attrs.field(default=0.0, converter=_seconds)
    late_answer: LateAnswer = "drop"
    hold: float = 5.0

    @classmethod
    def status(
        cls,
        http_status: int | str,
        code: str,
        message: str | None = None,
        *,
        retry_after: float | str | None = None,
        retry_after_header: float | str | None = None,
    ) -> Fault:
        """
        Answer with the error envelope instead of handling the request.

        Nothing happens on the server: a faulted submit creates no job and charges
        nothing.

        Args:
            http_status: The HTTP status, e.g. 503 (three digits).
            code: ``error.code``, e.g. ``"PUBSUB_PUBLISH_FAILED"``.
            message: ``error.message``; a plausible default per code otherwise.
            retry_after: Put ``details.retryAfter`` (seconds >= 0, an int, float or
                numeric str) in the body.
            retry_after_header: Send a ``Retry-After`` header: a number of seconds
                >= 0 (``1``, ``1.5``) or a str sent verbatim (``"2"``, an HTTP date,
                or garbage to test a client's tolerance).

        Raises:
            TypeError: An argument of the wrong type.
            ValueError: A status that is not three digits, a negative or
                non-finite number, a non-numeric *retry_after*, or a header with
                control characters.

        """
        return cls(
            kind="status",
            http_status=_http_status(http_status),
            code=code,
            message=message or _DEFAULT_MESSAGES.get(code, f"Injected {code}."),
            retry_after=retry_after,
            retry_after_header=retry_after_header,
        )

    @classmethod
    def delay(cls, seconds: float | str) -> Fault:
        """
        Wait *seconds* of **real** time, then handle the request normally.

        For read-timeout tests; keep it tiny.  The server's side effects happen even
        if the client gave up meanwhile.

        Args:
            seconds: Real seconds to wait (finite, >= 0).

        """
        return cls(kind="delay", seconds=seconds)

    @classmethod
    def drop_before(cls) -> Fault:
        """Close the connection without a response before doing anything."""
        return cls(kind="drop_before")

    @classmethod
    def drop_after(cls) -> Fault:
        """
        Handle the request fully, then close the connection instead of answering.

        A dropped submit *did* create and charge its job: the dangerous case.
        """
        return cls(kind="drop_after")

    @classmethod
    def late_create(
        cls, after: float, *, answer: LateAnswer = "drop", hold: float = 5.0
    ) -> Fault:
        """
        Accept a submit, but create (and charge) its job *after* virtual seconds.

        The client never gets the answer: with ``answer="drop"`` the connection is
        closed at once (a proxy dropping it); with ``answer="hang"`` it is held
        open until the client gives up (its timeout), at most *hold* real
        seconds.  The job appears in the job list, with its ``createdAt``, only
        *after* seconds later: the case where "no job found" right after an
        ambiguous submit is not proof that none will be.

        Args:
            after: Virtual seconds after the request until the job exists.
            answer: ``"drop"`` or ``"hang"``.
            hold: Longest real hold of a hanging answer.

        """
        if answer not in {"drop", "hang"}:
            raise ValueError("answer must be 'drop' or 'hang'")
        return cls(
            kind="late_create",
            seconds=_number(after, "after"),
            late_answer=answer,
            hold=_number(hold, "hold"),
        )

    @classmethod
    def html(cls, status: int | str = 502) -> Fault:
        """
        Answer with a proxy's HTML error page (``text/html``) without handling.

        Args:
            status: The HTTP status (three digits).

        """
        return cls(kind="html", http_status=_http_status(status))

    @classmethod
    def garbage(cls, status: int | str = 200) -> Fault:
        """
        Handle the request fully, then send its JSON body cut in half.

        Side effects happen (a submit creates and charges its job), but the body is
        not valid JSON.

        Args:
            status: The HTTP status sent with the broken body (three digits).

        """
        return cls(kind="garbage", http_status=_http_status(status))


@attrs.define(kw_only=True)
class FaultHandle:
    """
    An injected fault waiting for matching requests.

    Args:
        fault: The fault.
        method: Glob matched against the HTTP method (upper case).
        path: Glob matched against the URL path (`fnmatch` syntax).
        origin: ``"api"`` or ``"cdn"``: which of the fake's two origins it watches.
        remaining: How many more matching requests it applies to (`None`: all).
        hits: How many requests it has been applied to so far.

    """

    fault: Fault = attrs.field(validator=attrs.validators.instance_of(Fault))
    method: str = attrs.field(validator=attrs.validators.instance_of(str))
    path: str = attrs.field(validator=attrs.validators.instance_of(str))
    origin: Origin = attrs.field(validator=attrs.validators.in_(get_args(Origin)))
    remaining: int | None = attrs.field(
        validator=attrs.validators.optional(attrs.validators.instance_of(int))
    )
    hits: int = 0

    @property
    def active(self) -> bool:
        """Return whether the fault still applies to future requests."""
        return self.remaining is None or self.remaining > 0

    def cancel(self) -> None:
        """Stop applying the fault."""
        self.remaining = 0

    def matches(self, origin: Origin, method: str, path: str) -> bool:
        """
        Return whether a request is one this fault is waiting for.

        Args:
            origin: The origin the request arrived at.
            method: Its HTTP method.
            path: Its URL path.

        """
        return (
            self.active
            and origin == self.origin
            and fnmatchcase(method.upper(), self.method.upper())
            and fnmatchcase(path, self.path)
        )


@attrs.define
class FaultQueue:
    """The injected faults, consulted in injection order."""

    handles: list[FaultHandle] = attrs.field(factory=list)

    def take(self, origin: Origin, method: str, path: str) -> Fault | None:
        """Consume and return the first fault matching a request, if any."""
        for handle in self.handles:
            if handle.matches(origin, method, path):
                handle.hits += 1
                if handle.remaining is not None:
                    handle.remaining -= 1
                self.handles = [h for h in self.handles if h.active]
                return handle.fault
        return None
