"""
What OpenTelemetry costs: GETs with and without a configured provider, side by side.

The same client `get_job`s the same job against the in-process sandbox, in rounds
that alternate three ways (the order rotating from round to round):

- ``without``: no provider (the API's no-op), what the SDK costs by default;
- ``ours``: the OpenTelemetry SDK with a tracer and a meter provider (spans
  batched to an in-memory exporter, metrics to an in-memory reader), recorded by
  the SDK's own telemetry: a client span per request and a ``pixelbyte.requests``
  count;
- ``floor``: no provider for the SDK's telemetry, but each GET wrapped by the bare
  minimum the OpenTelemetry SDK needs for the same record, through the same
  providers: one ``start_span`` with the same five attributes (precomputed), the
  status code set after the answer, ``end()``, and one counter ``add`` with
  precomputed attributes.

Each figure is the median over rounds of that round's ratio to ``without`` (and of
the µs, wall clock and process CPU, each adds per GET), so what our code adds
(``ours`` against ``floor``) is told apart from what the OpenTelemetry SDK itself
costs (``floor`` against ``without``).  The exporter is emptied after each round,
as a real one forgets what it sent, so no round pays for its predecessors' spans
on the heap.  Also: what the first use of the OpenTelemetry API costs (imported on
first use, never by ``import pixelbyte_async``), in a fresh process.

Writes bench/results/telemetry.json.

    python bench/bench_telemetry.py [--rounds 21] [--gets 1000]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from _sandbox import kling, sandbox
from pixelbyte_async._telemetry import configure


MODES = ("without", "ours", "floor")


class Floor:
    """The bare OpenTelemetry SDK calls one GET's record needs, nothing computed."""

    def __init__(self, tracer_provider: Any, meter_provider: Any, url: str) -> None:
        from opentelemetry.trace import SpanKind  # noqa: PLC0415

        self.tracer = tracer_provider.get_tracer("bench.floor")
        self.counter = meter_provider.get_meter("bench.floor").create_counter(
            "bench.floor.requests"
        )
        self.kind = SpanKind.CLIENT
        host, port = url.split("://", 1)[1].split("/", 1)[0].rsplit(":", 1)
        # What our client span carries for this GET, computed once.
        self.attributes = {
            "http.request.method": "GET",
            "server.address": host,
            "server.port": int(port),
            "url.full": url,
            "pixelbyte.request.kind": "poll",
        }
        self.count = {"pixelbyte.request.kind": "poll", "outcome": "ok"}


async def gets(n: int, floor: tuple[Any, Any] | None = None) -> tuple[float, float]:
    """
    *n* sequential GETs of one job (each wrapped: *floor*).

    Returns calls per second (wall clock) and the process's CPU µs per call (every
    thread: the span processor's included; what other processes take is not).
    """
    async with sandbox(time_scale=None, limit=None) as (fake, pb):
        job = await pb.submit(kling("telemetry"))
        if floor is None:
            began, cpu = time.perf_counter(), time.process_time()
            for _ in range(n):
                await pb.get_job(job.id)
        else:
            bare = Floor(*floor, f"{fake.url.rstrip('/')}/v1/jobs/{job.id}")
            tracer, counter, kind = bare.tracer, bare.counter, bare.kind
            attributes, count = bare.attributes, bare.count
            began, cpu = time.perf_counter(), time.process_time()
            for _ in range(n):
                span = tracer.start_span("GET", kind=kind, attributes=attributes)
                await pb.get_job(job.id)
                span.set_attribute("http.response.status_code", 200)
                span.end()
                counter.add(1, count)
        wall, cpu = time.perf_counter() - began, time.process_time() - cpu
        return n / wall, cpu / n * 1e6


def providers() -> tuple[Any, Any, Any]:
    """A tracer provider (batched to an in-memory exporter), a meter provider."""
    from opentelemetry.sdk.metrics import MeterProvider  # noqa: PLC0415
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader  # noqa: PLC0415
    from opentelemetry.sdk.trace import TracerProvider  # noqa: PLC0415
    from opentelemetry.sdk.trace.export import BatchSpanProcessor  # noqa: PLC0415
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import (  # noqa: PLC0415
        InMemorySpanExporter,
    )

    tracer = TracerProvider()
    exporter = InMemorySpanExporter()
    # What a production set-up uses: spans exported off the request path.
    tracer.add_span_processor(BatchSpanProcessor(exporter))
    return tracer, MeterProvider(metric_readers=[InMemoryMetricReader()]), exporter


def first_use_ms() -> float:
    """Milliseconds to import the OpenTelemetry API in a fresh interpreter."""
    code = (
        "import time; t = time.perf_counter(); "
        "import opentelemetry.trace, opentelemetry.metrics; "
        "print((time.perf_counter() - t) * 1000)"
    )
    runs = [
        float(subprocess.check_output([sys.executable, "-c", code], text=True))  # noqa: S603 -- our interpreter
        for _ in range(5)
    ]
    return statistics.median(runs)


async def main(ns: argparse.Namespace) -> dict[str, Any]:
    rates: dict[str, list[float]] = {mode: [] for mode in MODES}
    cpus: dict[str, list[float]] = {mode: [] for mode in MODES}
    tracer, meter, exporter = providers()
    for round_ in range(ns.rounds):
        for i in range(len(MODES)):
            mode = MODES[(round_ + i) % len(MODES)]
            if mode == "ours":
                configure(tracer_provider=tracer, meter_provider=meter)
            else:
                configure()  # the global providers: none set, the API's no-op
            rate, cpu = await gets(
                ns.gets, (tracer, meter) if mode == "floor" else None
            )
            rates[mode].append(rate)
            cpus[mode].append(cpu)
            # An exporter sends its spans and forgets them: none piles up on the heap.
            tracer.force_flush()
            exporter.clear()
    configure()

    def ratio(mode: str) -> float:
        """The median over rounds of *mode*'s throughput over ``without``'s."""
        paired = zip(rates[mode], rates["without"], strict=True)
        return round(statistics.median(a / b for a, b in paired), 3)

    def extra_us(mode: str, cpu: bool = False) -> float:
        """The median over rounds of what *mode* adds per GET, in µs (or CPU µs)."""
        if cpu:
            pairs = zip(cpus[mode], cpus["without"], strict=True)
            return round(statistics.median(a - b for a, b in pairs), 1)
        pairs = zip(rates[mode], rates["without"], strict=True)
        return round(statistics.median(1e6 / a - 1e6 / b for a, b in pairs), 1)

    return {
        "rounds": ns.rounds,
        "gets_per_round": ns.gets,
        "gets_per_s_without": round(statistics.median(rates["without"])),
        "gets_per_s_ours": round(statistics.median(rates["ours"])),
        "gets_per_s_floor": round(statistics.median(rates["floor"])),
        "ratio_ours_over_without": ratio("ours"),
        "ratio_floor_over_without": ratio("floor"),
        "extra_us_per_get_ours": extra_us("ours"),
        "extra_us_per_get_floor": extra_us("floor"),
        "cpu_us_per_get_without": round(statistics.median(cpus["without"]), 1),
        "extra_cpu_us_per_get_ours": extra_us("ours", cpu=True),
        "extra_cpu_us_per_get_floor": extra_us("floor", cpu=True),
        "otel_api_first_use_ms": round(first_use_ms(), 1),
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=21)
    parser.add_argument("--gets", type=int, default=1000)
    args = parser.parse_args()
    report = asyncio.run(main(args))
    for key, value in report.items():
        print(f"{key:>26}: {value}")
    ratio = report["ratio_ours_over_without"]
    floor = report["ratio_floor_over_without"]
    verdict = "met" if ratio >= 0.97 else "missed"
    print(
        f"verdict: {verdict} (ours {ratio}, {report['extra_us_per_get_ours']} µs more"
        f" per GET, vs goal >= 0.97; the OpenTelemetry SDK's own floor {floor},"
        f" {report['extra_us_per_get_floor']} µs)"
    )
    out = Path(__file__).parent / "results" / "telemetry.json"
    out.write_text(json.dumps(report, indent=2) + "\n")
