"""
What tracked jobs cost: ledger time and bytes per tracked job, and resume() at scale.

* ``ledger``: a tracked job's life in the ledger, 2,000 times: recorded before its
  submit (`track`), tied to its job (`tracked_job`), its lease renewed once
  (`lease`), handled (`finish`); µs per tracked job, memory ledger against SQLite
  (and the hub's Redis ledger with ``redis-server``), rounds interleaved, median of
  rounds; bytes per tracked job on disk (after a checkpoint) and in Redis.
* ``resume``: 10,000 tracked jobs submitted by a client that then closes (in
  process, FakePixelByte on a frozen clock, SQLite ledger); a second client's
  ``resume()`` re-attaches them all (a lease and a GET each): seconds in all.

Writes bench/results/tracked.json.

    python bench/bench_tracked.py [--rounds 3] [--jobs 10000] [--no-redis]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from bench_hub import Server
from pixelbyte_async import KlingO1StartEndFrame, MemoryLedger, PixelByte
from pixelbyte_async._ledger import SqliteLedger, TrackedRecord
from pixelbyte_async.redis import RedisHub
from pixelbyte_async.testing import FakePixelByte


OWNER = "bench:1:abc"
T0 = 1_800_000_000.0


async def life(ledger, n: int) -> float:
    """Seconds per tracked job's four ledger writes, *n* times."""
    began = time.perf_counter()
    for i in range(n):
        attempt = f"a{i:015d}"
        at = T0 + i
        await ledger.track(
            TrackedRecord(
                attempt=attempt,
                model="kling-plus/kling-o1-standard/start-end-frame-to-video",
                context=json.dumps({"chat_id": 100_000 + i}),
                owner=OWNER,
                lease_until=at + 60,
                created_at=at,
                updated_at=at,
            )
        )
        await ledger.tracked_job(attempt, f"job_{i:012x}", at=at + 1)
        await ledger.lease(attempt, OWNER, until=at + 120, at=at + 2)
        await ledger.finish(attempt, OWNER, state="handled", at=at + 240)
    return (time.perf_counter() - began) / n


async def resume_time(n: int, tmp: Path) -> dict[str, float]:
    """Submit *n* tracked jobs, close; time another client's resume()."""
    request = KlingO1StartEndFrame(
        image_url="https://e.x/a.jpg", end_image_url="https://e.x/b.jpg"
    )
    ledger = tmp / "resume.sqlite3"
    async with FakePixelByte() as fake:
        fake.clock.autojump = False  # the jobs stay running: resume() re-attaches
        options = {
            "api_key": fake.api_key,
            "base_url": fake.url,
            "clock": fake.clock,
            "ledger": ledger,
            "max_concurrent_jobs": None,
        }
        began = time.perf_counter()
        async with PixelByte(**options) as first:
            await asyncio.gather(
                *(first.submit(request, context={"n": i}) for i in range(n))
            )
        submitted = time.perf_counter() - began
        async with PixelByte(**options) as second:

            async def handled(job) -> None:
                del job

            second.on_finished(handled)
            began = time.perf_counter()
            jobs = await second.resume()
            resumed = time.perf_counter() - began
            assert len(jobs) == n, len(jobs)
    return {"submit_s": round(submitted, 2), "resume_s": round(resumed, 2)}


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--jobs", type=int, default=10_000)
    parser.add_argument("--no-redis", action="store_true")
    args = parser.parse_args()
    times: dict[str, list[float]] = {"memory": [], "sqlite": []}
    disk: list[float] = []
    in_redis: list[float] = []
    server = None
    if not args.no_redis and shutil.which("redis-server"):
        server = Server()
        times["redis"] = []
    n = 2_000
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for r in range(args.rounds):
                times["memory"].append(await life(MemoryLedger(), n))
                path = Path(tmp) / f"l{r}.sqlite3"
                ledger = SqliteLedger(path, account="bench")
                times["sqlite"].append(await life(ledger, n))
                await ledger.aclose()
                disk.append(
                    sum(
                        p.stat().st_size
                        for p in (path, path.with_name(path.name + "-wal"))
                        if p.exists()
                    )
                    / n
                )
                if server is not None:
                    async with RedisHub(server.url, key_prefix=f"t{r}") as hub:
                        redis = hub._link.client()  # noqa: SLF001 -- reads memory
                        before = (await redis.info("memory"))["used_memory"]
                        times["redis"].append(
                            await life(hub.ledger(account="bench"), n)
                        )
                        after = (await redis.info("memory"))["used_memory"]
                        in_redis.append((after - before) / n)
            resumed = await resume_time(args.jobs, Path(tmp))
    finally:
        if server is not None:
            server.stop()
    report: dict[str, object] = {
        f"us_per_tracked_job_{k}": round(statistics.median(v) * 1e6, 1)
        for k, v in times.items()
    }
    report["bytes_per_tracked_job_sqlite"] = round(statistics.median(disk))
    if in_redis:
        report["bytes_per_tracked_job_redis"] = round(statistics.median(in_redis))
    report |= {
        "resume_jobs": args.jobs,
        "resume_submit_s": resumed["submit_s"],
        "resume_s": resumed["resume_s"],
        "resume_ms_per_job": round(1000 * resumed["resume_s"] / args.jobs, 3),
    }
    for key, value in report.items():
        print(f"{key:>30}: {value}")
    out = Path(__file__).parent / "results" / "tracked.json"
    out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    asyncio.run(main())
