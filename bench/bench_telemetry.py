"""
What OpenTelemetry costs: GETs with and without a configured provider, side by side.

The same client `get_job`s the same job against the in-process sandbox, in rounds
that alternate: no provider (the API's no-op), then the OpenTelemetry SDK with a
tracer and a meter provider (spans batched to an in-memory exporter, metrics to an
in-memory reader), median of rounds; the figure is the throughput with the SDK over
the throughput without.  Also: what the first use of the OpenTelemetry API costs
(imported on first use, never by ``import pixelbyte_async``), in a fresh process.

Writes bench/results/telemetry.json.

    python bench/bench_telemetry.py [--rounds 5] [--gets 2000]
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

from _sandbox import kling, sandbox
from pixelbyte_async._telemetry import configure


async def gets_per_second(n: int) -> float:
    """*n* sequential GETs of one finished job: calls per second."""
    async with sandbox(time_scale=None, limit=None) as (_, pb):
        job = await pb.submit(kling("telemetry"))
        began = time.perf_counter()
        for _ in range(n):
            await pb.get_job(job.id)
        return n / (time.perf_counter() - began)


def providers() -> tuple[object, object]:
    from opentelemetry.sdk.metrics import MeterProvider  # noqa: PLC0415
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader  # noqa: PLC0415
    from opentelemetry.sdk.trace import TracerProvider  # noqa: PLC0415
    from opentelemetry.sdk.trace.export import BatchSpanProcessor  # noqa: PLC0415
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import (  # noqa: PLC0415
        InMemorySpanExporter,
    )

    tracer = TracerProvider()
    # What a production set-up uses: spans exported off the request path.
    tracer.add_span_processor(BatchSpanProcessor(InMemorySpanExporter()))
    return tracer, MeterProvider(metric_readers=[InMemoryMetricReader()])


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


async def main(ns: argparse.Namespace) -> dict[str, float]:
    plain: list[float] = []
    traced: list[float] = []
    tracer, meter = providers()
    for _ in range(ns.rounds):
        configure()  # the global providers: none set, the API's no-op
        plain.append(await gets_per_second(ns.gets))
        configure(tracer_provider=tracer, meter_provider=meter)  # type: ignore[arg-type]
        traced.append(await gets_per_second(ns.gets))
    configure()
    return {
        "gets_per_s_without": round(statistics.median(plain)),
        "gets_per_s_with_sdk": round(statistics.median(traced)),
        "ratio_with_over_without": round(
            statistics.median(traced) / statistics.median(plain), 3
        ),
        "otel_api_first_use_ms": round(first_use_ms(), 1),
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--gets", type=int, default=2000)
    args = parser.parse_args()
    report = asyncio.run(main(args))
    for key, value in report.items():
        print(f"{key:>26}: {value}")
    out = Path(__file__).parent / "results" / "telemetry.json"
    out.write_text(json.dumps(report, indent=2) + "\n")
