"""
Fan-out: ``asyncio.gather(*(pb.run(x) for x in inputs))`` at growing N, side by side.

The pattern the README recommends: every input gathered at once under
``max_concurrent_jobs=100``, each one submit + wait + download, against the
in-process sandbox with its clock 6,000 times faster than real time (a Kling job
lasts ~40 ms).  Prints the wall time per N and the ratio t(2000) / t(500): linear
is 4, the goal is <= 5.  Writes bench/results/fanout.json.

    python bench/bench_fanout.py [--sizes 500,1000,2000] [--limit 100]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
from pathlib import Path

from _sandbox import kling, sandbox


async def run(n: int, limit: int) -> float:
    """Seconds for *n* gathered runs (submit, wait, download)."""
    async with sandbox(time_scale=6000, limit=limit) as (_, pb):
        with tempfile.TemporaryDirectory() as tmp:

            async def one(i: int) -> None:
                job = await pb.submit(kling(f"fan-out {i}"))
                done = await job.wait()
                await done.download(Path(tmp) / f"{i}.mp4")

            began = time.perf_counter()
            await asyncio.gather(*(one(i) for i in range(n)))
            return time.perf_counter() - began


async def main(ns: argparse.Namespace) -> dict[str, object]:
    seconds = {n: round(await run(n, ns.limit), 2) for n in ns.sizes}
    first, last = ns.sizes[0], ns.sizes[-1]
    return {
        "limit": ns.limit,
        "seconds": seconds,
        "ratio": round(seconds[last] / seconds[first], 2),
        "linear_ratio": last / first,
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--sizes",
        type=lambda text: [int(n) for n in text.split(",")],
        default=[500, 1000, 2000],
    )
    parser.add_argument("--limit", type=int, default=100)
    args = parser.parse_args()
    report = asyncio.run(main(args))
    for key, value in report.items():
        print(f"{key:>13}: {value}")
    goal = 5 * args.sizes[-1] / args.sizes[0] / 4
    met = "met" if report["ratio"] <= goal else "MISSED"  # type: ignore[operator]
    print(f"{'goal':>13}: ratio <= {goal:g} ({met})")
    out = Path(__file__).parent / "results" / "fanout.json"
    out.write_text(json.dumps(report, indent=2) + "\n")
