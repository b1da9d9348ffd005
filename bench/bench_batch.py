"""
The batch against a bare SDK loop gated by a semaphore, side by side.

2,000 rows (``--rows``), each submit + wait + download, against the in-process
sandbox with its clock 6,000 times faster than real time: once through
``run_batch`` (journal and output folder on disk, everything it promises), once
as the loop a user would write instead (``asyncio.Semaphore(100)`` around
``pb.run`` and ``download``, no journal).  Both with ``max_concurrent_jobs=100``;
rounds interleaved, median.  Prints batch / bare throughput (goal >= 0.8) and
writes bench/results/batch.json.  The batch runs twice: as by default (with its
report: a poster image fetched per row, ``report.html`` written at the end) and
with ``report=False``.  The bare loop runs twice too: as above, and fetching each
row's poster as well (the same work as the batch with its report), so each
batch is set against the loop that does what it does.

``--time-scale`` (default 6,000) sets how much faster than real time the
sandbox's jobs run: at 6,000 a 240 s job lasts 40 ms.

    python bench/bench_batch.py [--rows 2000] [--rounds 3] [--webhooks]
        [--time-scale 6000]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
from pathlib import Path

from _sandbox import kling, sandbox
from pixelbyte_async import KlingO1StartEndFrame, run_batch


def inputs(n: int) -> list[KlingO1StartEndFrame]:
    return [kling(f"batch bench {i}") for i in range(n)]


async def timed(
    kind: str, rows: int, *, webhooks: bool = False, time_scale: float = 6000
) -> float:
    """Seconds for *rows* through the batch or the bare loop."""
    async with sandbox(time_scale=time_scale, limit=100, webhooks=webhooks) as (
        _,
        pb,
    ):
        with tempfile.TemporaryDirectory() as tmp:
            began = time.perf_counter()
            if kind in {"batch", "batch_no_report"}:
                summary = await run_batch(
                    pb,
                    inputs(rows),
                    journal=Path(tmp) / "journal.sqlite",
                    out_dir=Path(tmp) / "out",
                    report=kind == "batch",
                ).summary()
                assert summary.completed == rows, summary
                assert (summary.report is not None) is (kind == "batch")
            else:
                gate = asyncio.Semaphore(100)

                async def one(i: int, request: KlingO1StartEndFrame) -> None:
                    async with gate:
                        done = await pb.run(request)
                        await done.download(Path(tmp) / f"{i}.mp4")
                        if kind == "bare_posters":
                            await done.download_poster(Path(tmp) / f"{i}.poster.jpg")

                await asyncio.gather(*(one(i, r) for i, r in enumerate(inputs(rows))))
            return time.perf_counter() - began


async def main(ns: argparse.Namespace) -> dict[str, object]:
    kinds = ("bare", "bare_posters", "batch", "batch_no_report")
    seconds: dict[str, list[float]] = {kind: [] for kind in kinds}
    for _ in range(ns.rounds):
        for kind in kinds:
            seconds[kind].append(
                await timed(
                    kind, ns.rows, webhooks=ns.webhooks, time_scale=ns.time_scale
                )
            )
    median = {kind: statistics.median(seconds[kind]) for kind in kinds}
    return {
        "rows": ns.rows,
        "rounds": ns.rounds,
        "webhooks": ns.webhooks,
        "time_scale": ns.time_scale,
        "bare_seconds": round(median["bare"], 2),
        "bare_posters_seconds": round(median["bare_posters"], 2),
        "batch_seconds": round(median["batch"], 2),
        "batch_no_report_seconds": round(median["batch_no_report"], 2),
        # The batch with its report fetches each row's poster: against the loop
        # that does the same; without it, against the plain loop.
        "ratio_batch_over_bare": round(median["bare_posters"] / median["batch"], 3),
        "ratio_batch_no_report_over_bare": round(
            median["bare"] / median["batch_no_report"], 3
        ),
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--webhooks",
        action="store_true",
        help="both sides receive the sandbox's deliveries (a batch then sends a "
        "model's submits side by side: each attempt's nonce names its job)",
    )
    parser.add_argument("--time-scale", type=float, default=6000.0)
    args = parser.parse_args()
    report = asyncio.run(main(args))
    for key, value in report.items():
        print(f"{key:>22}: {value}")
    worst = min(
        report["ratio_batch_over_bare"],  # type: ignore[type-var]
        report["ratio_batch_no_report_over_bare"],  # type: ignore[type-var]
    )
    met = "met" if worst >= 0.8 else "MISSED"  # type: ignore[operator]
    print(f"{'goal':>22}: batch / bare >= 0.8 ({met})")
    name = "batch-webhooks.json" if args.webhooks else "batch.json"
    if args.time_scale != 6000:
        name = name.replace(".json", f"-x{args.time_scale:g}.json")
    out = Path(__file__).parent / "results" / name
    out.write_text(json.dumps(report, indent=2) + "\n")
