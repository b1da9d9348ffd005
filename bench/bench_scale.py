"""
Scale: 10,000 concurrent transitions through one client on this machine.

N jobs are submitted at once (``asyncio.gather``) to an in-process FakePixelByte on a
shared virtual clock, then N ``job.wait()`` tasks park until the clock is advanced
(a 240 s job costs no real time, so this measures the SDK and the fake, not waiting).

* memory per job in flight: what the SDK side holds while all N wait (tracemalloc,
  allocations made by the fake server excluded; target <= 10 KiB), plus the whole
  process's RSS growth per job for reference (the fake's records included);
* event-loop lag p99 from a 10 ms ticker while everything completes (<= 50 ms);
* the most client sockets ever open to the API (<= the connector limit, 20);
* all complete, nobody charged twice.

Writes bench/results/scale.json.

    python bench/bench_scale.py [--jobs 10000]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import resource
import time
import tracemalloc
from pathlib import Path

from pixelbyte_async import JobStatus, KlingO1StartEndFrame, PixelByte, VirtualClock
from pixelbyte_async.testing import FakePixelByte


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
    """Bytes held by allocations with no fake-server frame in their traceback."""
    total = 0
    for stat in snapshot.statistics("traceback"):
        files = [frame.filename for frame in stat.traceback]
        if any(
            "_fake" in f or "web_protocol" in f or "web_request" in f for f in files
        ):
            continue
        total += stat.size
    return total


async def main(n: int) -> dict[str, float | int | bool]:
    clock = VirtualClock(autojump=False)
    async with FakePixelByte(clock=clock) as fake:
        port = int(fake.url.rsplit(":", 1)[1])
        async with PixelByte(
            api_key=fake.api_key,
            base_url=fake.url,
            clock=clock,
            max_concurrent_jobs=None,
        ) as pb:
            inputs = [
                KlingO1StartEndFrame(
                    image_url="https://e.x/a.jpg",
                    end_image_url="https://e.x/b.jpg",
                    prompt=f"transition {i}",
                )
                for i in range(n)
            ]
            peak = {"sockets": 0}
            lags: list[float] = []
            stop = asyncio.Event()

            async def monitor() -> None:
                loop = asyncio.get_running_loop()
                while not stop.is_set():
                    before = loop.time()
                    await asyncio.sleep(0.01)
                    lags.append((loop.time() - before - 0.01) * 1000)
                    peak["sockets"] = max(peak["sockets"], client_sockets(port))

            watcher = asyncio.ensure_future(monitor())
            gc.collect()
            rss_before = rss_kib()
            tracemalloc.start(1)
            base = tracemalloc.take_snapshot()
            started = time.perf_counter()
            jobs = await asyncio.gather(*(pb.submit(x) for x in inputs))
            waits = [asyncio.ensure_future(job.wait()) for job in jobs]
            for _ in range(20):
                await asyncio.sleep(0)
            gc.collect()
            parked = tracemalloc.take_snapshot()
            tracemalloc.stop()
            held = sdk_bytes(parked) - sdk_bytes(base)
            rss_growth = rss_kib() - rss_before
            del base, parked
            lags.clear()  # lag is measured while everything completes, not tracing
            # The heap now holds N jobs twice over (client and fake, ~30 KiB/job in
            # all); CPython 3.11's full collections of it pause any loop for ~0.4 s.
            # Long-running services freeze such long-lived state (gc.freeze()); so
            # does this run, and it reports the pauses it still sees.
            gc.collect()
            gc.freeze()
            gc_pauses: list[float] = []

            def on_gc(phase: str, info: dict[str, int]) -> None:
                if phase == "start":
                    on_gc.started = time.perf_counter()  # type: ignore[attr-defined]
                elif info["generation"] == 2:
                    gc_pauses.append(time.perf_counter() - on_gc.started)  # type: ignore[attr-defined]

            gc.callbacks.append(on_gc)
            # Time passes in 50 ms steps, so jittered polls spread as they would.
            for _ in range(8000):
                clock.advance(0.05)
                await asyncio.sleep(0)
                if all(w.done() for w in waits):
                    break
            done = await asyncio.gather(*waits)
            wall = time.perf_counter() - started
            gc.callbacks.remove(on_gc)
            gc.unfreeze()
            stop.set()
            await watcher
            limit = pb.config.max_connections
        completed = sum(j.status is JobStatus.COMPLETED for j in done)
        lags.sort()
        return {
            "jobs": n,
            "completed": completed,
            "all_completed": completed == n,
            "wall_s": round(wall, 2),
            "requests": len(fake.requests),
            "gets_per_job": round(fake.count("GET", "/v1/jobs/*") / n, 2),
            "sdk_kib_per_job_in_flight": round(held / 1024 / n, 2),
            "process_rss_kib_per_job": round(rss_growth / n, 2),
            "loop_lag_ms_p99": round(lags[int(0.99 * (len(lags) - 1))], 2)
            if lags
            else 0.0,
            "full_gc_pauses": len(gc_pauses),
            "full_gc_pause_ms_max": round(max(gc_pauses, default=0) * 1000, 1),
            "max_client_sockets": peak["sockets"],
            "connector_limit": limit,
            "double_charged": len(fake.ledger.double_charged()),
        }


async def main_process(n: int, time_scale: float) -> dict[str, float | int | bool]:
    """The fake in its own process, on a virtual clock shared through CLOCK_MONOTONIC."""
    from bench_get_throughput import fake_process  # noqa: PLC0415 -- sibling script

    async with fake_process("--time-scale", str(time_scale)) as found:
        clock = VirtualClock.from_shared(found["PIXELBYTE_SANDBOX_CLOCK"])
        port = int(found["PIXELBYTE_BASE_URL"].rsplit(":", 1)[1])
        async with PixelByte(
            api_key=found["PIXELBYTE_API_KEY"],
            base_url=found["PIXELBYTE_BASE_URL"],
            clock=clock,
            max_concurrent_jobs=None,
        ) as pb:
            inputs = [
                KlingO1StartEndFrame(
                    image_url="https://e.x/a.jpg",
                    end_image_url="https://e.x/b.jpg",
                    prompt=f"transition {i}",
                )
                for i in range(n)
            ]
            gc.collect()
            base_rss = rss_kib()
            peak = {"rss": base_rss, "sockets": 0}
            lags: list[float] = []
            stop = asyncio.Event()

            async def monitor() -> None:
                loop = asyncio.get_running_loop()
                while not stop.is_set():
                    before = loop.time()
                    await asyncio.sleep(0.01)
                    lags.append((loop.time() - before - 0.01) * 1000)
                    peak["rss"] = max(peak["rss"], rss_kib())
                    peak["sockets"] = max(peak["sockets"], client_sockets(port))

            watcher = asyncio.ensure_future(monitor())
            gc_pauses: list[float] = []

            def on_gc(phase: str, info: dict[str, int]) -> None:
                if phase == "start":
                    on_gc.started = time.perf_counter()  # type: ignore[attr-defined]
                elif info["generation"] == 2:
                    gc_pauses.append(time.perf_counter() - on_gc.started)  # type: ignore[attr-defined]

            gc.callbacks.append(on_gc)
            started = time.perf_counter()
            done = await asyncio.gather(*(pb.run(x) for x in inputs))
            wall = time.perf_counter() - started
            gc.callbacks.remove(on_gc)
            stop.set()
            await watcher
            limit = pb.config.max_connections
    completed = sum(j.status is JobStatus.COMPLETED for j in done)
    lags.sort()
    return {
        "server": "process",
        "time_scale": time_scale,
        "jobs": n,
        "completed": completed,
        "all_completed": completed == n,
        "wall_s": round(wall, 2),
        "sdk_kib_per_job_in_flight": round((peak["rss"] - base_rss) / n, 2),
        "loop_lag_ms_p99": round(lags[int(0.99 * (len(lags) - 1))], 2) if lags else 0.0,
        "full_gc_pauses": len(gc_pauses),
        "full_gc_pause_ms_max": round(max(gc_pauses, default=0) * 1000, 1),
        "max_client_sockets": peak["sockets"],
        "connector_limit": limit,
        # The ledger lives in the other process: charges are checked in-process
        # (--server inprocess) and by the chaos and crash tests.
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--jobs", type=int, default=10_000)
    parser.add_argument("--server", choices=("process", "inprocess"), default="process")
    parser.add_argument("--time-scale", type=float, default=20.0)
    args = parser.parse_args()
    if args.server == "process":
        res = asyncio.run(main_process(args.jobs, args.time_scale))
    else:
        res = asyncio.run(main(args.jobs))
    (Path(__file__).parent / "results" / "scale.json").write_text(
        json.dumps(res, indent=2) + "\n"
    )
    print(
        f"fake {args.server}: {res['completed']}/{res['jobs']} completed in "
        f"{res['wall_s']} s; "
        f"SDK memory/job in flight {res['sdk_kib_per_job_in_flight']} KiB; loop lag p99 "
        f"{res['loop_lag_ms_p99']} ms; max sockets {res['max_client_sockets']} "
        f"(limit {res['connector_limit']}); double charged "
        f"{res.get('double_charged', 'n/a (ledger in the fake process)')}"
    )
    ok = (
        res["all_completed"]
        and float(res["sdk_kib_per_job_in_flight"]) <= 10
        and float(res["loop_lag_ms_p99"]) <= 50
        and int(res["max_client_sockets"]) <= int(res["connector_limit"])
        and res.get("double_charged", 0) == 0
    )
    print("verdict:", "OK (all targets met)" if ok else "TARGET MISSED")
