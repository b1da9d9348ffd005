"""
The OpenTelemetry tracer and instruments, loaded on first use.

`instruments` imports ``opentelemetry`` the first time something is recorded, and
remembers when it is not installed, so ``import pixelbyte_async`` never pays for it.
Only the OpenTelemetry **API** is used: until the application configures a
provider, the tracer and the meter are the API's no-op proxies.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any


if TYPE_CHECKING:
    from opentelemetry.metrics import (
        Counter,
        Histogram,
        Meter,
        MeterProvider,
        UpDownCounter,
    )
    from opentelemetry.trace import SpanKind, StatusCode, Tracer, TracerProvider


__all__ = ["Instruments", "configure", "instruments"]

#: The instrumentation scope's name (the tracer's and the meter's).
SCOPE = "pixelbyte_async"


class Instruments:
    """The tracer and every instrument the SDK records with."""

    __slots__ = (
        "active",
        "client",
        "deliveries",
        "duration",
        "error",
        "requests",
        "slots_waiting",
        "spend",
        "trace_api",
        "tracer",
    )

    def __init__(self, trace_api: Any, tracer: Tracer, meter: Meter) -> None:
        #: The ``opentelemetry.trace`` module (``use_span``, ``SpanKind`` ...).
        self.trace_api = trace_api
        self.tracer = tracer
        #: ``SpanKind.CLIENT`` and ``StatusCode.ERROR``, looked up once.
        self.client: SpanKind = trace_api.SpanKind.CLIENT
        self.error: StatusCode = trace_api.StatusCode.ERROR
        self.active: UpDownCounter = meter.create_up_down_counter(
            "pixelbyte.jobs.active",
            unit="{job}",
            description="Jobs submitted by this process and not yet seen to end.",
        )
        self.spend: Counter = meter.create_counter(
            "pixelbyte.spend",
            unit="{micro-cent}",
            description="What the API charged for jobs seen to end, net of refunds "
            "(1,000,000 micro-cents = US$1).",
        )
        self.duration: Histogram = meter.create_histogram(
            "pixelbyte.job.duration",
            unit="s",
            description="From submit until the SDK saw the job end.",
        )
        self.requests: Counter = meter.create_counter(
            "pixelbyte.requests",
            unit="{request}",
            description="HTTP requests sent, by kind and outcome.",
        )
        self.deliveries: Counter = meter.create_counter(
            "pixelbyte.webhook.deliveries",
            unit="{delivery}",
            description="Webhook deliveries received, by result.",
        )
        self.slots_waiting: UpDownCounter = meter.create_up_down_counter(
            "pixelbyte.slots.waiting",
            unit="{submit}",
            description="Submits waiting for a job slot.",
        )


_UNSET: Any = object()
_loaded: Instruments | None = _UNSET


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version  # noqa: PLC0415 -- only when tracing

    try:
        return version("pixelbyte_async")
    except PackageNotFoundError:  # pragma: no cover -- run from a source tree
        return ""


def _load(
    tracer_provider: TracerProvider | None, meter_provider: MeterProvider | None
) -> Instruments | None:
    try:
        from opentelemetry import metrics, trace  # noqa: PLC0415 -- lazy: optional extra
    except ImportError:
        return None
    version = _version()
    return Instruments(
        trace,
        trace.get_tracer(SCOPE, version, tracer_provider),
        metrics.get_meter(SCOPE, version, meter_provider),
    )


def instruments() -> Instruments | None:
    """The tracer and instruments, or ``None`` when OpenTelemetry is not installed."""
    global _loaded  # noqa: PLW0603 -- the one cache of a process-wide import
    if _loaded is _UNSET:
        _loaded = _load(None, None)
    return _loaded


def configure(
    *,
    tracer_provider: TracerProvider | None = None,
    meter_provider: MeterProvider | None = None,
) -> None:
    """
    Record through these providers from now on (the global ones when not given).

    The application normally sets the global providers and never calls this; tests
    use it to record into an SDK of their own without touching the global state.
    """
    global _loaded  # noqa: PLW0603 -- the one cache of a process-wide import
    _loaded = _load(tracer_provider, meter_provider)
