"""
What the ledger costs per submit: time (µs) and disk (bytes), side by side.

Each submit writes two ledger entries: its attempt before it is sent, and its job
once answered.  Two measurements, memory ledger against the SQLite ledger in the
same run (rounds interleaved, median of rounds):

* ``writes``: the two writes alone, 20,000 times, on the event loop;
* ``submits``: 2,000 submits through one client against FakePixelByte (in this
  process, virtual clock), ``asyncio.gather`` under ``max_concurrent_jobs=50``:
  the extra wall time per submit is what the ledger adds to a real submit path.

Disk: the SQLite file's size (after a checkpoint) per recorded submit.  Writes
bench/results/ledger.json.

    python bench/bench_ledger.py [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
from pathlib import Path

from pixelbyte_async import KlingO1StartEndFrame, MemoryLedger, PixelByte
from pixelbyte_async._ledger import Attempt, SqliteLedger
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


async def submits(ledger_spec, n: int) -> float:
    """Wall seconds per submit of *n* gathered submits."""
    async with (
        FakePixelByte() as fake,
        PixelByte(
            api_key=fake.api_key,
            base_url=fake.url,
            clock=fake.clock,
            max_concurrent_jobs=None,
            ledger=ledger_spec,
        ) as pb,
    ):
        await pb.submit(REQUEST)  # warm: connections, the ledger's file
        began = time.perf_counter()
        await asyncio.gather(*(pb.submit(REQUEST) for _ in range(n)))
        return (time.perf_counter() - began) / n


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    results: dict[str, list[float]] = {
        k: [] for k in ("w-mem", "w-sql", "s-mem", "s-sql")
    }
    sizes: list[float] = []
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
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
    for key, value in report.items():
        print(f"{key:>34}: {value}")
    out = Path(__file__).parent / "results" / "ledger.json"
    out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    asyncio.run(main())
