"""
Scale: 10,000 concurrent transitions through one client on this machine.

N ``pb.run(...)`` calls are gathered at once.  By default the fake runs in its own
process (``python -m pixelbyte_async.testing``: wall-clock timestamps, jobs x20
shorter), so every figure is the client's alone:

* all complete;
* memory per job in flight: the client's RSS growth per job (target <= 10 KiB);
* event-loop lag p99 from a 10 ms ticker while they run (target <= 50 ms), and the
  full garbage collections seen meanwhile;
* the most client sockets ever open to the API (<= the connector limit, 20).

``--server inprocess`` runs the fake on this loop with a manual clock instead: it adds
the SDK's own allocations per job in flight (tracemalloc, the fake's excluded) and
checks the fake's ledger (nobody charged twice).

``--server queued`` measures the other side of scale: N submits queued behind
``max_concurrent_jobs=100`` (each one submit + wait + download, the in-process
sandbox 6,000x faster than real time), against N / 4 in the same run.  Linear is a
ratio of 4; the goal is <= 5 (every release hands its slot to the next waiter).

Writes bench/results/scale_<server>.json.

    python bench/bench_scale.py [--jobs 10000] [--server process|inprocess|queued]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import resource
import tempfile
import time
import tracemalloc
from pathlib import Path

from _sandbox import kling, sandbox
from pixelbyte_async import JobStatus, KlingO1StartEndFrame, PixelByte, VirtualClock
from pixelbyte_async.testing import FakePixelByte


_SERVER_SIDE = ("_fake", "web_protocol", "web_request", "web_app", "web_urldispatcher")
#: Frames kept per allocation: enough to see whether the fake made it.
_FRAMES = 16


def rss_kib() -> int:
    """Current resident set size in KiB (Linux /proc)."""
    with open("/proc/self/status") as fh:  # noqa: PTH123 -- tiny synchronous read
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def client_sockets(port: int) -> int:
    """Established TCP connections from this machine to *port* (client side)."""
    count = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            remote, state = fields[2], fields[3]
            if state == "01" and int(remote.rsplit(":", 1)[1], 16) == port:
                count += 1
    return count


def sdk_bytes(snapshot: tracemalloc.Snapshot) -> int:
    """
    Bytes held, less what the fake server allocated (in its own modules or in
    anything they called: its JSON parsing of each request is the fake's).
    """
    return sum(
        stat.size
        for stat in snapshot.statistics("traceback")
        if not any(
            part in frame.filename for frame in stat.traceback for part in _SERVER_SIDE
        )
    )


def inputs_for(n: int) -> list[KlingO1StartEndFrame]:
    return [
        KlingO1StartEndFrame(
            image_url="https://e.x/a.jpg",
            end_image_url="https://e.x/b.jpg",
            prompt=f"transition {i}",
        )
        for i in range(n)
    ]


class Monitor:
    """Loop lag (10 ms ticker), peak RSS and sockets, and full-GC pauses."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.lags: list[float] = []
        self.gc_pauses: list[float] = []
        self.base_rss = rss_kib()
        self.peak_rss = self.base_rss
        self.peak_sockets = 0
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._gc_started = 0.0

    def _on_gc(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._gc_started = time.perf_counter()
        elif info["generation"] == 2:
            self.gc_pauses.append(time.perf_counter() - self._gc_started)

    async def _tick(self) -> None:
        loop = asyncio.get_running_loop()
        while not self._stop.is_set():
            before = loop.time()
            await asyncio.sleep(0.01)
            self.lags.append((loop.time() - before - 0.01) * 1000)
            self.peak_rss = max(self.peak_rss, rss_kib())
            self.peak_sockets = max(self.peak_sockets, client_sockets(self.port))

    def start(self) -> None:
        gc.callbacks.append(self._on_gc)
        self._task = asyncio.ensure_future(self._tick())

    async def stop(self) -> None:
        self._stop.set()
        if self._task is not None:
            await self._task
        gc.callbacks.remove(self._on_gc)

    def figures(self, n: int) -> dict[str, float | int]:
        lags = sorted(self.lags)
        return {
            "rss_kib_per_job_in_flight": round((self.peak_rss - self.base_rss) / n, 2),
            "loop_lag_ms_p99": round(lags[int(0.99 * (len(lags) - 1))], 2)
            if lags
            else 0.0,
            "full_gc_pauses": len(self.gc_pauses),
            "full_gc_pause_ms_max": round(max(self.gc_pauses, default=0) * 1000, 1),
            "max_client_sockets": self.peak_sockets,
        }


async def main_process(
    n: int, time_scale: float
) -> dict[str, float | int | bool | str]:
    """The fake in its own process, in real time with jobs *time_scale* times shorter."""
    from bench_get_throughput import fake_process  # noqa: PLC0415 -- sibling script

    async with fake_process("--time-scale", str(time_scale)) as found:
        base_url = found["PIXELBYTE_BASE_URL"]
        async with PixelByte(
            api_key=found["PIXELBYTE_API_KEY"],
            base_url=base_url,
            max_concurrent_jobs=None,
        ) as pb:
            inputs = inputs_for(n)
            gc.collect()
            monitor = Monitor(int(base_url.rsplit(":", 1)[1]))
            monitor.start()
            started = time.perf_counter()
            done = await asyncio.gather(*(pb.run(x) for x in inputs))
            wall = time.perf_counter() - started
            await monitor.stop()
            limit = pb.config.max_connections
    completed = sum(j.status is JobStatus.COMPLETED for j in done)
    return {
        "server": "process",
        "time_scale": time_scale,
        "jobs": n,
        "completed": completed,
        "all_completed": completed == n,
        "wall_s": round(wall, 2),
        **monitor.figures(n),
        "connector_limit": limit,
        # The ledger lives in the other process: charges are checked by the
        # in-process run and by the chaos and crash tests.
    }


async def main_inprocess(n: int) -> dict[str, float | int | bool | str]:
    """The fake on this loop with a manual clock; adds tracemalloc and the ledger."""
    clock = VirtualClock(autojump=False)
    async with FakePixelByte(clock=clock) as fake:
        async with PixelByte(
            api_key=fake.api_key,
            base_url=fake.url,
            clock=clock,
            max_concurrent_jobs=None,
            # tracemalloc with 16 frames slows 10,000 gathered submits past the
            # default 30 s (aiohttp's timeouts are real time, this clock is not):
            # a timed-out submit would wait a settle horizon that never passes.
            timeout=600,
        ) as pb:
            inputs = inputs_for(n)
            gc.collect()
            monitor = Monitor(int(fake.url.rsplit(":", 1)[1]))
            tracemalloc.start(_FRAMES)
            base = tracemalloc.take_snapshot()
            started = time.perf_counter()
            submits = asyncio.ensure_future(
                asyncio.gather(*(pb.submit(x) for x in inputs))
            )
            # A submit told to wait (a retry after a refused connection) sleeps on
            # this manual clock: when no submit got through for half a second,
            # time moves a second (a job lasts 240 s; the jobs stay in flight).
            seen = -1
            while not submits.done():
                await asyncio.wait({submits}, timeout=0.5)
                through = fake.count("POST", "/v1/jobs/submit")
                if through == seen:
                    clock.advance(1.0)
                seen = through
            jobs = submits.result()
            del submits  # the gather holds every finished submit task: the caller's
            waits = [asyncio.ensure_future(job.wait()) for job in jobs]
            for _ in range(20):
                await asyncio.sleep(0)
            gc.collect()
            parked = tracemalloc.take_snapshot()
            tracemalloc.stop()
            held = sdk_bytes(parked) - sdk_bytes(base)
            del base, parked
            monitor.start()  # lag is measured while everything completes
            # Time passes in 50 ms steps, so jittered polls spread as they would
            # (up to 1,000 virtual s: a model's first jobs may be polled to twice
            # their ETA).
            for _ in range(20_000):
                clock.advance(0.05)
                await asyncio.sleep(0)
                if all(w.done() for w in waits):
                    break
            done = await asyncio.gather(*waits)
            wall = time.perf_counter() - started
            await monitor.stop()
            limit = pb.config.max_connections
        completed = sum(j.status is JobStatus.COMPLETED for j in done)
        return {
            "server": "inprocess",
            "jobs": n,
            "completed": completed,
            "all_completed": completed == n,
            "wall_s": round(wall, 2),
            "gets_per_job": round(fake.count("GET", "/v1/jobs/*") / n, 2),
            "sdk_kib_per_job_in_flight": round(held / 1024 / n, 2),
            **monitor.figures(n),
            "connector_limit": limit,
            "double_charged": len(fake.ledger.double_charged()),
        }


async def queued_seconds(n: int) -> float:
    """Seconds for *n* gathered runs queued behind 100 slots."""
    async with sandbox(time_scale=6000, limit=100) as (_, pb):
        with tempfile.TemporaryDirectory() as tmp:

            async def one(i: int) -> None:
                # The sandbox's seconds pass 6,000 times faster: the default 900 s
                # deadline is 150 ms of real time, less than 10,000 ready tasks
                # can take to run once each.
                job = await pb.submit(kling(f"queued {i}"), timeout=1e7)
                done = await job.wait()
                await done.download(Path(tmp) / f"{i}.mp4")

            began = time.perf_counter()
            await asyncio.gather(*(one(i) for i in range(n)))
            return time.perf_counter() - began


async def main_queued(n: int) -> dict[str, float | int | bool | str]:
    """N submits queued behind 100 slots against N / 4, in one run."""
    quarter = await queued_seconds(n // 4)
    whole = await queued_seconds(n)
    ratio = whole / quarter
    return {
        "server": "queued",
        "jobs": n,
        "limit": 100,
        "seconds_quarter": round(quarter, 2),
        "seconds": round(whole, 2),
        "ratio": round(ratio, 2),
        "linear_ratio": 4,
        "met": ratio <= 5,
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--jobs", type=int, default=10_000)
    parser.add_argument(
        "--server", choices=("process", "inprocess", "queued"), default="process"
    )
    parser.add_argument("--time-scale", type=float, default=20.0)
    args = parser.parse_args()
    out = Path(__file__).parent / "results" / f"scale_{args.server}.json"
    if args.server == "queued":
        res = asyncio.run(main_queued(args.jobs))
        out.write_text(json.dumps(res, indent=2) + "\n")
        print(
            f"{args.jobs:,} queued submits: {res['seconds']} s; {args.jobs // 4:,}: "
            f"{res['seconds_quarter']} s; ratio {res['ratio']} (linear 4, goal <= 5)"
        )
        print("verdict:", "OK (target met)" if res["met"] else "TARGET MISSED")
        raise SystemExit(0)
    if args.server == "process":
        res = asyncio.run(main_process(args.jobs, args.time_scale))
    else:
        res = asyncio.run(main_inprocess(args.jobs))
    out.write_text(json.dumps(res, indent=2) + "\n")
    memory = res.get("sdk_kib_per_job_in_flight", res["rss_kib_per_job_in_flight"])
    print(
        f"fake {args.server}: {res['completed']}/{res['jobs']} completed in "
        f"{res['wall_s']} s; memory/job in flight {memory} KiB; loop lag p99 "
        f"{res['loop_lag_ms_p99']} ms ({res['full_gc_pauses']} full GCs, max "
        f"{res['full_gc_pause_ms_max']} ms); max sockets {res['max_client_sockets']} "
        f"(limit {res['connector_limit']}); double charged "
        f"{res.get('double_charged', 'n/a (ledger in the fake process)')}"
    )
    ok = (
        res["all_completed"]
        and float(memory) <= 10
        and float(res["loop_lag_ms_p99"]) <= 50
        and int(res["max_client_sockets"]) <= int(res["connector_limit"])
        and res.get("double_charged", 0) == 0
    )
    print("verdict:", "OK (all targets met)" if ok else "TARGET MISSED")
