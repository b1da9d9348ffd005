"""Fault injection: make the next matching requests fail in a chosen way."""

from __future__ import annotations

from fnmatch import fnmatchcase
from typing import Literal, TypeAlias

import attrs


__all__ = ["Fault", "FaultHandle", "FaultKind", "FaultQueue", "Origin"]

FaultKind: TypeAlias = Literal[
    "status", "delay", "drop_before", "drop_after", "html", "garbage"
]
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
        retry_after_header: A ``Retry-After`` header, sent verbatim.
        seconds: Real seconds a ``delay`` fault waits.

    """

    kind: FaultKind
    http_status: int | None = None
    code: str | None = None
    message: str | None = None
    retry_after: float | None = None
    retry_after_header: str | None = None
    seconds: float = 0.0

    @classmethod
    def status(
        cls,
        http_status: int,
        code: str,
        message: str | None = None,
        *,
        retry_after: float | None = None,
        retry_after_header: str | None = None,
    ) -> Fault:
        """
        Answer with the error envelope instead of handling the request.

        Nothing happens on the server: a faulted submit creates no job and charges
        nothing.

        Args:
            http_status: The HTTP status, e.g. 503.
            code: ``error.code``, e.g. ``"PUBSUB_PUBLISH_FAILED"``.
            message: ``error.message``; a plausible default per code otherwise.
            retry_after: Put ``details.retryAfter`` (seconds) in the body.
            retry_after_header: Send this ``Retry-After`` header value verbatim
                (e.g. ``"2"`` or an HTTP date).

        """
        return cls(
            kind="status",
            http_status=http_status,
            code=code,
            message=message or _DEFAULT_MESSAGES.get(code, f"Injected {code}."),
            retry_after=retry_after,
            retry_after_header=retry_after_header,
        )

    @classmethod
    def delay(cls, seconds: float) -> Fault:
        """
        Wait *seconds* of **real** time, then handle the request normally.

        For read-timeout tests; keep it tiny.  The server's side effects happen even
        if the client gave up meanwhile.

        Args:
            seconds: Real seconds to wait.

        """
        if seconds < 0:
            raise ValueError("seconds must be >= 0")
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
    def html(cls, status: int = 502) -> Fault:
        """
        Answer with a proxy's HTML error page (``text/html``) without handling.

        Args:
            status: The HTTP status.

        """
        return cls(kind="html", http_status=status)

    @classmethod
    def garbage(cls, status: int = 200) -> Fault:
        """
        Handle the request fully, then send its JSON body cut in half.

        Side effects happen (a submit creates and charges its job), but the body is
        not valid JSON.

        Args:
            status: The HTTP status sent with the broken body.

        """
        return cls(kind="garbage", http_status=status)


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

    fault: Fault
    method: str
    path: str
    origin: Origin
    remaining: int | None
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
