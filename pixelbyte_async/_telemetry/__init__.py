"""
OpenTelemetry traces and metrics (the optional ``otel`` extra; the API only).

The rest of the SDK calls this small interface and nothing of OpenTelemetry:
`start_job` and `adopted` (a job's span and metrics), `http_call` (one request's
client span), `operation` (a span around a step: reconcile), `delivery` and
`slot_wait` (counters).  ``opentelemetry`` is imported on first use;
when it is not installed every call returns at once, and until the application
configures a provider nothing is recorded.
"""

from ._instruments import SCOPE, Instruments, configure, instruments
from ._record import (
    HttpCall,
    JobTrace,
    Operation,
    RequestKind,
    adopted,
    delivery,
    http_call,
    kind_of,
    operation,
    safe_url,
    slot_wait,
    start_job,
)


__all__ = [
    "SCOPE",
    "HttpCall",
    "Instruments",
    "JobTrace",
    "Operation",
    "RequestKind",
    "adopted",
    "configure",
    "delivery",
    "http_call",
    "instruments",
    "kind_of",
    "operation",
    "safe_url",
    "slot_wait",
    "start_job",
]
