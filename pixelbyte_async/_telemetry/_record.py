"""
What the SDK records: a job's span and metrics (`JobTrace`), HTTP spans, counters.

Every entry point returns at once when OpenTelemetry is not installed, and builds no
attribute when nothing records (no provider configured: the API's no-op span).
Nothing here ever sees a request's headers, so neither the API key nor the webhook
secret can reach an attribute; URLs are recorded without their query's values.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any, Literal, Self
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from . import _instruments
from ._instruments import Instruments, instruments


if TYPE_CHECKING:
    from opentelemetry.trace import Span


__all__ = [
    "HttpCall",
    "JobTrace",
    "Operation",
    "RequestKind",
    "adopted",
    "delivery",
    "http_call",
    "kind_of",
    "operation",
    "quiet",
    "safe_url",
    "slot_wait",
    "start_job",
]

#: What an HTTP request is for, in ``pixelbyte.requests``.
RequestKind = Literal[
    "submit", "poll", "list", "upload", "download", "cancel", "catalog", "other"
]


def kind_of(method: str, path: str) -> RequestKind:
    """The kind of an API call from its method and path."""
    if path.startswith("/v1/jobs"):
        if path == "/v1/jobs/submit":
            return "submit"
        if path.endswith("/cancel"):
            return "cancel"
        if path.rstrip("/") == "/v1/jobs":
            return "list"
        return "poll" if method == "GET" else "other"
    if path.startswith("/v1/uploads"):
        return "upload"
    if path.startswith(("/v1/models", "/v1/providers", "/v1/estimate")):
        return "catalog"
    return "other"


_DEFAULT_PORTS = {"https": 443, "http": 80}


def _sanitised(
    url: str, params: Mapping[str, str] | None
) -> tuple[str, int | None, str]:
    """
    *url*'s host, its ``server.port`` and `safe_url` (*url* is split once).

    The port is the URL's, else its scheme's default; ``None`` when invalid.
    """
    parts = urlsplit(url)
    host = parts.hostname or ""
    try:
        port = parts.port
    except ValueError:
        port = server_port = None
    else:
        server_port = port or _DEFAULT_PORTS.get(parts.scheme)
    query = parse_qsl(parts.query, keep_blank_values=True)
    if params:
        query.extend(params.items())
    shown_host = f"[{host}]" if ":" in host else host
    netloc = shown_host if port is None else f"{shown_host}:{port}"
    shown = urlencode([(key, "REDACTED") for key, _ in query])
    return host, server_port, urlunsplit((parts.scheme, netloc, parts.path, shown, ""))


def safe_url(url: str, params: Mapping[str, str] | None = None) -> str:
    """*url* (plus *params*) with no user info and every query value redacted."""
    return _sanitised(url, params)[2]


#: A request's span attributes by (method, URL, kind), for URLs with no query and
#: no ``params`` (the API's paths; never a signed upload or download URL): a job's
#: GETs repeat its URL, so it is split and sanitised once.  Shared and never
#: mutated (the OpenTelemetry SDK copies a span's attributes).
_REQUEST_ATTRIBUTES: dict[tuple[str, str, str], dict[str, str | int]] = {}
#: How many URLs `_REQUEST_ATTRIBUTES` holds before it starts afresh.
_CACHED_URLS = 1024
#: ``pixelbyte.requests``' attributes by (kind, outcome), shared likewise.
_COUNT_ATTRIBUTES: dict[tuple[str, str], dict[str, str]] = {}
#: Outcomes are kinds x (``ok``, HTTP statuses, exception names): few, yet bounded.
_CACHED_OUTCOMES = 256


def _request_attributes(
    method: str, url: str, kind: str, params: Mapping[str, str] | None
) -> dict[str, str | int]:
    """The client span's attributes for a request (shared: never mutate it)."""
    key = (method, url, kind)
    cached = not params and "?" not in url
    if cached:
        found = _REQUEST_ATTRIBUTES.get(key)
        if found is not None:
            return found
    host, port, safe = _sanitised(url, params)
    attributes: dict[str, str | int] = {
        "http.request.method": method,
        "server.address": host,
    }
    if port is not None:
        attributes["server.port"] = port
    attributes["url.full"] = safe
    attributes["pixelbyte.request.kind"] = kind
    if cached:
        if len(_REQUEST_ATTRIBUTES) >= _CACHED_URLS:
            _REQUEST_ATTRIBUTES.clear()
        _REQUEST_ATTRIBUTES[key] = attributes
    return attributes


def _count_attributes(kind: str, outcome: str) -> dict[str, str]:
    """``pixelbyte.requests``' attributes (shared: never mutate them)."""
    key = (kind, outcome)
    found = _COUNT_ATTRIBUTES.get(key)
    if found is None:
        found = {"pixelbyte.request.kind": kind, "outcome": outcome}
        if len(_COUNT_ATTRIBUTES) >= _CACHED_OUTCOMES:
            _COUNT_ATTRIBUTES.clear()
        _COUNT_ATTRIBUTES[key] = found
    return found


class HttpCall:
    """One HTTP request's client span and its ``pixelbyte.requests`` count."""

    __slots__ = ("_ins", "_kind", "_span", "_status")

    def __init__(self, ins: Instruments | None, span: Span | None, kind: str) -> None:
        self._ins = ins
        self._span = span
        self._kind = kind
        self._status: int | None = None

    def __enter__(self) -> Self:
        return self

    def response(self, status: int) -> None:
        """The answer's HTTP status."""
        self._status = status
        span = self._span
        if span is not None and span.is_recording():
            span.set_attribute("http.response.status_code", status)

    def __exit__(self, exc_type: type[BaseException] | None, *_: object) -> None:
        ins = self._ins
        if ins is None:
            return
        status = self._status
        error: str | None = None
        if exc_type is not None:
            error = exc_type.__qualname__
        elif status is not None and status >= 400:  # noqa: PLR2004 -- HTTP errors
            error = str(status)
        span = self._span
        if span is not None:
            if error is not None and span.is_recording():
                span.set_attribute("error.type", error)
                span.set_status(ins.error)
            span.end()
        ins.requests.add(1, _count_attributes(self._kind, error or "ok"))


_NO_CALL = HttpCall(None, None, "")


#: What `quiet` last looked at: the instruments, and when they are the API's
#: proxies (no provider given to `configure`), the API's module, the proxy tracer
#: and the proxy counter, which tell whether a global provider was set since.
_watched: tuple[Any, Any, Any, Any] = (None, None, None, None)


def _watch(ins: Instruments) -> tuple[Any, Any, Any, Any]:
    """
    Remember what tells whether *ins* record nothing now.

    Instruments made from providers given to `configure` (or from a global one
    set before they were made) may always record: nothing is remembered for
    them but themselves.  The API's proxies record nothing until the
    application sets a global provider, which they learn at once.
    """
    global _watched  # noqa: PLW0603 -- the one cache of `quiet`
    api, tracer, counter = ins.trace_api, ins.tracer, ins.requests
    if (
        isinstance(tracer, getattr(api, "ProxyTracer", ()))
        and hasattr(api, "_TRACER_PROVIDER")
        and hasattr(tracer, "_real_tracer")
        and hasattr(counter, "_real_instrument")
    ):
        _watched = (ins, api, tracer, counter)
    else:
        _watched = (ins, None, None, None)
    return _watched


def quiet() -> bool:
    """
    Whether an HTTP request would record nothing (no OpenTelemetry, or no provider).

    A cheap check for the path every request takes: when it says ``True``,
    `http_call` may be skipped.
    """
    ins = _instruments._loaded  # noqa: SLF001 -- instruments(), without a call
    if ins is None:
        return True
    seen, api, tracer, counter = _watched
    if seen is not ins:
        if ins is _instruments._UNSET:  # noqa: SLF001 -- not loaded yet
            ins = instruments()
            if ins is None:
                return True
        seen, api, tracer, counter = _watch(ins)
    return (
        api is not None
        and api._TRACER_PROVIDER is None  # noqa: SLF001 -- set once, by the API
        and tracer._real_tracer is None  # noqa: SLF001
        and counter._real_instrument is None  # noqa: SLF001
    )


def http_call(
    method: str,
    url: str,
    *,
    kind: str,
    params: Mapping[str, str] | None = None,
    resend: int = 0,
) -> HttpCall:
    """A client span for one HTTP request, a child of the current span."""
    if quiet():
        return _NO_CALL
    ins = instruments()
    if ins is None:  # pragma: no cover -- quiet() said so
        return _NO_CALL
    span = ins.tracer.start_span(method, kind=ins.client)
    if span.is_recording():
        # One call, one lock: the attributes are parsed once per URL (cached).
        span.set_attributes(_request_attributes(method, url, kind, params))
        if resend:
            span.set_attribute("http.request.resend_count", resend)
    return HttpCall(ins, span, kind)


class JobTrace:
    """
    One job's ``pixelbyte.job`` span and metrics, from submit until its end is seen.

    Built by `start_job` (a shared no-op when OpenTelemetry is not installed).
    """

    __slots__ = ("_assumed", "_counted", "_ins", "_model", "_span", "_started")

    def __init__(
        self, ins: Instruments | None, span: Span | None, model: str, started: float
    ) -> None:
        self._ins = ins
        self._span = span
        self._model = model
        self._started = started
        self._counted = False
        #: The list price, counted as spend when the API never says the charge
        #: (a job found by reconcile or resume: its submit's answer is gone).
        self._assumed: int | None = None

    @property
    def open(self) -> bool:
        """Whether the span is still open."""
        return self._span is not None

    def current(self) -> contextlib.AbstractContextManager[Any]:
        """Make the job's span the current one (its HTTP requests become children)."""
        span = self._span
        if span is None or self._ins is None:
            return contextlib.nullcontext()
        used: contextlib.AbstractContextManager[Any] = self._ins.trace_api.use_span(
            span, end_on_exit=False
        )
        return used

    def event(self, name: str, attributes: Mapping[str, str | int | float]) -> None:
        """Add the span event *name* (``pixelbyte.poll``, ``pixelbyte.reconcile`` ...)."""
        span = self._span
        if span is not None and span.is_recording():
            span.add_event(name, attributes)

    def created(self, job_id: str, status: str, cost: int | None) -> None:
        """The submit made job *job_id*: it is now active."""
        ins = self._ins
        if ins is None:
            return
        span = self._span
        if span is not None and span.is_recording():
            span.set_attribute("pixelbyte.job.id", job_id)
            span.set_attribute("pixelbyte.job.status", status)
            if cost is not None:
                span.set_attribute("pixelbyte.job.cost_micro_cents", cost)
            span.add_event("pixelbyte.submitted", {"pixelbyte.job.status": status})
        if not self._counted:
            self._counted = True
            ins.active.add(1, {"pixelbyte.model": self._model})

    def status(self, old: str, new: str, *, via: str) -> None:
        """The job's status changed from *old* to *new*, seen *via* poll or webhook."""
        span = self._span
        if span is not None and span.is_recording():
            span.add_event(
                "pixelbyte.status",
                {"pixelbyte.job.status": new, "previous": old, "via": via},
            )

    def ended(
        self, status: str, *, cost: int | None, charged: bool, now: float
    ) -> None:
        """
        The SDK has seen the job end with *status*; close the span and count it.

        *charged* says whether *cost* stays charged (a failed or cancelled job is
        refunded, so it adds nothing to ``pixelbyte.spend``).
        """
        ins = self._ins
        span = self._span
        if ins is None or span is None:
            return
        self._span = None
        model = {"pixelbyte.model": self._model}
        assumed = self._assumed if charged and cost is None else None
        if span.is_recording():
            span.set_attribute("pixelbyte.job.status", status)
            if cost is not None:
                span.set_attribute("pixelbyte.job.cost_micro_cents", cost)
            elif assumed is not None:
                span.set_attribute("pixelbyte.job.cost_assumed_micro_cents", assumed)
            if status != "completed":
                span.set_attribute("error.type", status)
                span.set_status(ins.error)
        span.end()
        if self._counted:
            ins.active.add(-1, model)
        if charged and cost:
            ins.spend.add(cost, model)
        elif assumed:
            # Not the API's word: said so, as the batch says "assumed".
            ins.spend.add(assumed, {**model, "pixelbyte.cost.source": "list_price"})
        ins.duration.record(
            max(0.0, now - self._started), {**model, "pixelbyte.job.status": status}
        )

    def failed(self, error: BaseException, *, status: str) -> None:
        """The submit made no job we know of (*status*: ``refused`` or ``unknown``)."""
        ins = self._ins
        span = self._span
        if ins is None or span is None:
            return
        self._span = None
        if span.is_recording():
            span.set_attribute("pixelbyte.job.status", status)
            span.set_attribute("error.type", type(error).__qualname__)
            span.set_status(ins.error)
        span.end()


_NO_JOB = JobTrace(None, None, "", 0.0)


class Operation:
    """
    A span around one of the SDK's own steps (``pixelbyte.reconcile`` ...).

    The span is current while the block runs; an exception leaving it is its
    ``error.type``.
    """

    __slots__ = ("_ins", "_span", "_used")

    def __init__(self, ins: Instruments | None, span: Span | None) -> None:
        self._ins = ins
        self._span = span
        self._used: contextlib.AbstractContextManager[Any] | None = None

    def __enter__(self) -> Self:
        ins, span = self._ins, self._span
        if ins is not None and span is not None:
            self._used = ins.trace_api.use_span(span, end_on_exit=False)
            self._used.__enter__()
        return self

    def set(self, key: str, value: str | float) -> None:
        """Set the attribute *key*."""
        span = self._span
        if span is not None and span.is_recording():
            span.set_attribute(key, value)

    def event(self, name: str, attributes: Mapping[str, str | int | float]) -> None:
        """Add the span event *name*."""
        span = self._span
        if span is not None and span.is_recording():
            span.add_event(name, attributes)

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: object,
    ) -> None:
        ins, span, used = self._ins, self._span, self._used
        if ins is None or span is None:
            return
        if used is not None:
            used.__exit__(None, None, None)
        if exc_type is not None and span.is_recording():
            span.set_attribute("error.type", exc_type.__qualname__)
            span.set_status(ins.error)
        span.end()


def operation(name: str, attributes: Mapping[str, str | int | float]) -> Operation:
    """A span named *name* for one step of the SDK, a child of the current span."""
    ins = instruments()
    if ins is None:
        return Operation(None, None)
    span = ins.tracer.start_span(name)
    if span.is_recording():
        span.set_attributes(attributes)
    return Operation(ins, span)


def adopted(
    job_model: str,
    attempt: str,
    *,
    started: float,
    how: str = "reconciled",
    list_price: int | None = None,
) -> JobTrace:
    """
    A job span for a job whose creation this process did not see.

    Found by reconcile (its submit's answer was lost), or re-attached by
    ``resume()``.  Opened now, a child of the current span (the ``pixelbyte.reconcile`` span);
    *started* is when its submit began, for ``pixelbyte.job.duration``; *how*
    names its first event (``pixelbyte.reconciled``, ``pixelbyte.resumed``).
    *list_price* is counted as its spend (``pixelbyte.cost.source=list_price``)
    if the API never says what it charged.
    """
    trace = start_job(job_model, attempt, started=started)
    trace.event(f"pixelbyte.{how}", {})
    if trace is not _NO_JOB:
        trace._assumed = list_price  # noqa: SLF001 -- its own class
    return trace


def start_job(model: str, attempt: str, *, started: float) -> JobTrace:
    """Open a job's span, a child of the caller's current span (at submit)."""
    ins = instruments()
    if ins is None:
        return _NO_JOB
    span = ins.tracer.start_span("pixelbyte.job")
    if span.is_recording():
        span.set_attribute("pixelbyte.model", model)
        span.set_attribute("pixelbyte.attempt", attempt)
    return JobTrace(ins, span, model, started)


def delivery(result: str) -> None:
    """Count one webhook delivery by *result* (``ok``, ``duplicate``, ``rejected:...``)."""
    ins = instruments()
    if ins is not None:
        ins.deliveries.add(1, {"result": result})


@contextlib.contextmanager
def slot_wait() -> Iterator[None]:
    """Count a submit as waiting for a job slot while the block runs."""
    ins = instruments()
    if ins is None:
        yield
        return
    ins.slots_waiting.add(1)
    try:
        yield
    finally:
        ins.slots_waiting.add(-1)
