"""
What the ledger costs per submit: time (µs) and disk (bytes), side by side.

Each submit writes two ledger entries: its attempt before it is sent, and its job
once answered.  Two measurements, memory ledger against the SQLite ledger in the
same run (rounds interleaved, median of rounds):

* ``writes``: the two writes alone, 20,000 times, on the event loop;
* ``submits``: 2,000 submits through one client against FakePixelByte (in this
  process, virtual clock), ``asyncio.gather`` under ``max_concurrent_jobs=50``:
  the extra wall time per submit is what the ledger adds to a real submit path.

With ``redis-server`` installed (or ``--no-redis`` to skip), the hub's Redis
ledger (`RedisHub.ledger()`) is measured too, on a server of its own on
127.0.0.1: its writes (5,000 times: each is a round trip, a claim a few) and the
gathered submits of a client with ``hub=``, against a client with the same hub
and a memory ledger, so that only the ledger differs.

Disk: the SQLite file's size (after a checkpoint) per recorded submit; Redis:
``used_memory`` grown per recorded submit.  Writes bench/results/ledger.json.

    python bench/bench_ledger.py [--rounds 3] [--no-redis]
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
from pixelbyte_async._ledger import Attempt, SqliteLedger
from pixelbyte_async.redis import RedisHub
from pixelbyte_async.testing import FakePixelByte


REQUEST = KlingO1StartEndFrame(
    image_url="https://e.x/a.jpg", end_image_url="https://e.x/b.jpg"
)


async def writes(ledger, n: int) -> float:
    """Seconds per submit's two writes, *n* times."""
    began = time.perf_counter()
    for i in range(n):
        await ledger.begin(
            Attempt(
                id=f"a{i:015d}",
                model=REQUEST.model_slug,
                started_at=1_800_000_000.0 + i,
                ends_by=1_800_000_900.0 + i,
                state="sending",
                owner="bench:1:0",
                list_price=250_000,
            )
        )
        await ledger.claim(
            f"job_{i:012x}",
            how="submitted",
            at=1_800_000_000.0 + i,
            attempt=f"a{i:015d}",
        )
    return (time.perf_counter() - began) / n


async def submits(ledger_spec, n: int, **more) -> float:
    """Wall seconds per submit of *n* gathered submits."""
    async with (
        FakePixelByte() as fake,
        PixelByte(
            api_key=fake.api_key,
            base_url=fake.url,
            clock=fake.clock,
            max_concurrent_jobs=None,
            **({} if ledger_spec == "hub" else {"ledger": ledger_spec}),
            **more,
        ) as pb,
    ):
        await pb.submit(REQUEST)  # warm: connections, the ledger's file
        began = time.perf_counter()
        await asyncio.gather(*(pb.submit(REQUEST) for _ in range(n)))
        return (time.perf_counter() - began) / n


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--no-redis", action="store_true")
    args = parser.parse_args()
    results: dict[str, list[float]] = {
        k: [] for k in ("w-mem", "w-sql", "s-mem", "s-sql")
    }
    sizes: list[float] = []
    redis_sizes: list[float] = []
    server = None
    if not args.no_redis and shutil.which("redis-server"):
        server = Server()
        results.update({k: [] for k in ("w-red", "s-hubmem", "s-red")})
    try:
        with tempfile.TemporaryDirectory() as tmp:
            await rounds(
                args.rounds, tmp, server, results, sizes=sizes, redis_sizes=redis_sizes
            )
    finally:
        if server is not None:
            server.stop()
    med = {k: statistics.median(v) * 1e6 for k, v in results.items()}
    report = {
        "writes_us_memory": round(med["w-mem"], 1),
        "writes_us_sqlite": round(med["w-sql"], 1),
        "submit_us_memory": round(med["s-mem"], 1),
        "submit_us_sqlite": round(med["s-sql"], 1),
        "ledger_us_per_submit": round(med["s-sql"] - med["s-mem"], 1),
        "submit_ratio_sqlite_over_memory": round(med["s-sql"] / med["s-mem"], 3),
        "bytes_per_submit_on_disk": round(statistics.median(sizes)),
        "rounds": args.rounds,
    }
    if server is not None:
        report |= {
            "writes_us_redis": round(med["w-red"], 1),
            "submit_us_hub_memory_ledger": round(med["s-hubmem"], 1),
            "submit_us_hub_redis_ledger": round(med["s-red"], 1),
            "redis_ledger_us_per_submit": round(med["s-red"] - med["s-hubmem"], 1),
            "submit_ratio_redis_over_memory": round(med["s-red"] / med["s-hubmem"], 3),
            "bytes_per_submit_in_redis": round(statistics.median(redis_sizes)),
        }
    for key, value in report.items():
        print(f"{key:>34}: {value}")
    out = Path(__file__).parent / "results" / "ledger.json"
    out.write_text(json.dumps(report, indent=2) + "\n")


async def rounds(n_rounds, tmp, server, results, *, sizes, redis_sizes) -> None:
    """Interleaved rounds of every measurement."""
    for r in range(n_rounds):
        results["w-mem"].append(await writes(MemoryLedger(), 20_000))
        path = Path(tmp) / f"w{r}.sqlite3"
        ledger = SqliteLedger(path, account="bench")
        results["w-sql"].append(await writes(ledger, 20_000))
        await ledger.aclose()
        size = sum(
            part.stat().st_size
            for part in (path, path.with_name(path.name + "-wal"))
            if part.exists()
        )
        sizes.append(size / 20_000)
        results["s-mem"].append(await submits(None, 2_000))
        results["s-sql"].append(await submits(Path(tmp) / f"s{r}.sqlite3", 2_000))
        if server is not None:
            await redis_round(server, r, results, redis_sizes)


async def redis_round(server, r: int, results, redis_sizes) -> None:
    """One round of the Redis ledger: its writes, then submits with hub=."""
    async with RedisHub(server.url, key_prefix=f"w{r}") as hub:
        redis = hub._link.client()  # noqa: SLF001 -- the bench reads Redis's memory
        before = (await redis.info("memory"))["used_memory"]
        results["w-red"].append(await writes(hub.ledger(account="bench"), 5_000))
        after = (await redis.info("memory"))["used_memory"]
        redis_sizes.append((after - before) / 5_000)
    async with RedisHub(server.url, key_prefix=f"m{r}") as hub:
        results["s-hubmem"].append(await submits(None, 2_000, hub=hub))
    async with RedisHub(server.url, key_prefix=f"s{r}") as hub:
        results["s-red"].append(await submits("hub", 2_000, hub=hub))


if __name__ == "__main__":
    asyncio.run(main())
