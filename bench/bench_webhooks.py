"""
Webhooks: the receiver's throughput, delivery -> wait() latency, requests per job.

* Receiver throughput: signed deliveries per second through ``WebhookServer`` vs a
  bare aiohttp handler doing the same HMAC check, in rotating rounds of the same run
  (target: ratio >= 0.8).  A third server, the same ``WebhookReceiver`` mounted in a
  plain aiohttp app, separates what the receiver costs from what ``WebhookServer``'s
  connection guard adds.  The servers run in this process, pinned to one core; the
  load generator (an aiohttp client with a connection pool) runs in its own process
  on the other core, so what is measured is the server's core.  Server CPU per
  delivery is measured too (steadier than throughput on a shared machine).
* Burst: 2,000 deliveries issued at once through a pool of 200 connections (under
  the server's default cap of 256); p50/p99 latency from issue to answer, both
  servers side by side.
* Burst on 2,000 connections at once (a pool of 2,000, as an API ending 2,000 jobs
  together would open them): how many got 503 and p50/p99, for a bare aiohttp
  server, ``WebhookServer`` refusing at its cap at once (``queue_wait=0``: how it
  was before the line) and ``WebhookServer`` as it is (past the cap a connection
  waits up to 2 s for a slot), and the receiver mounted on a ``GuardedSite``.  The
  soft open-file limit is raised to the hard one for this (both processes); with a
  hard limit too low the burst is made smaller, and says so.
* Latency: N jobs wait on FakePixelByte deliveries (real HTTP on 127.0.0.1); for each
  job, the time from the receiver getting its verified delivery to the awaiting
  ``job.wait()`` returning.  Target p99 <= 10 ms in one process.
* Requests per 240 s Kling job (virtual time): adaptive polling, a fixed 5 s loop, and
  webhook mode (target: 1 submit + <= 1 GET per job in webhook mode; <= 10 GETs and
  completion noticed <= 5 s late when polling).

Writes bench/results/webhooks.json (not with ``--receiver-only``, which runs the receiver
figures alone and only prints them).

    python bench/bench_webhooks.py [--jobs 1000] [--deliveries 3000] [--rounds 5]
        [--concurrency 50] [--burst 2000] [--burst-pool 200] [--burst-rounds 3]
        [--burst-all 2000] [--receiver-only]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import hmac
import json
import os
import resource
import statistics
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
from _pinning import cpus
from aiohttp import web
from pixelbyte_async import KlingO1StartEndFrame, PixelByte, PollPolicy, VirtualClock
from pixelbyte_async.testing import FakePixelByte
from pixelbyte_async.webhooks import (
    DEFAULT_MAX_BODY,
    DEFAULT_TOLERANCE,
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    GuardedSite,
    WebhookReceiver,
    WebhookServer,
    signature_headers,
)


SECRET = "whsec_bench"  # noqa: S105 -- the benchmark signs its own deliveries


def kling(i: int) -> KlingO1StartEndFrame:
    return KlingO1StartEndFrame(
        image_url="https://e.x/a.jpg", end_image_url="https://e.x/b.jpg", prompt=f"p{i}"
    )


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def latency(n: int) -> dict[str, float]:
    clock = VirtualClock(autojump=False)
    async with FakePixelByte(clock=clock, allow_http_webhooks=True) as fake:
        server = WebhookServer(fake.webhook_secret, clock=clock)
        arrived: dict[str, float] = {}
        dispatch = server.receiver.dispatch

        def stamped(event):  # type: ignore[no-untyped-def]
            arrived.setdefault(event.job_id, time.perf_counter())
            return dispatch(event)

        server.receiver.dispatch = stamped  # type: ignore[method-assign]
        async with PixelByte(
            api_key=fake.api_key,
            base_url=fake.url,
            clock=clock,
            webhook=server,
            max_concurrent_jobs=None,
        ) as pb:
            jobs = await asyncio.gather(*(pb.submit(kling(i)) for i in range(n)))
            returned: dict[str, float] = {}

            async def wait(job) -> None:  # type: ignore[no-untyped-def]
                await job.wait()
                returned[job.id] = time.perf_counter()

            waits = asyncio.gather(*(wait(j) for j in jobs))
            for _ in range(10):
                await asyncio.sleep(0)
            fake.advance(245)
            await fake.deliver_webhooks()
            await waits
            gets = fake.count("GET", "/v1/jobs/*")
    lat = [(returned[j] - arrived[j]) * 1000 for j in returned]
    return {
        "jobs": n,
        "latency_ms_p50": statistics.median(lat),
        "latency_ms_p99": pct(lat, 0.99),
        "latency_ms_max": max(lat),
        "gets_per_job": gets / n,
    }


async def requests_per_job(mode: str) -> dict[str, float]:
    clock = VirtualClock(autojump=mode != "webhook")
    async with FakePixelByte(clock=clock, allow_http_webhooks=True) as fake:
        kwargs: dict[str, object] = {}
        if mode == "webhook":
            kwargs["webhook"] = WebhookServer(fake.webhook_secret, clock=clock)
        async with PixelByte(
            api_key=fake.api_key,
            base_url=fake.url,
            clock=clock,
            **kwargs,  # type: ignore[arg-type]
        ) as pb:
            job = await pb.submit(kling(0))
            finished = fake.jobs[job.id].estimated_completion_time
            poll = PollPolicy.fixed(5.0) if mode == "fixed-5s" else None
            if mode == "webhook":
                waiter = asyncio.ensure_future(job.wait())
                for _ in range(10):
                    await asyncio.sleep(0)
                fake.advance(245)
                await fake.deliver_webhooks()
                await waiter
                noticed = fake.clock.time()
            else:
                await job.wait(poll=poll)
                noticed = fake.clock.time()
        return {
            "submits": fake.count("POST", "/v1/jobs/submit"),
            "gets": fake.count("GET", "/v1/jobs/*"),
            "noticed_late_s": round(noticed - finished, 3),
        }


# -- receiver throughput: WebhookServer vs a bare aiohttp handler -----------------------


@contextlib.contextmanager
def server_core() -> Iterator[set[int]]:
    """Pin this (server) process to the last core; yield the others (may be empty)."""
    mine = cpus()
    if len(mine) < 2:
        yield set()
        return
    os.sched_setaffinity(0, {mine[-1]})
    try:
        yield set(mine[:-1])
    finally:
        os.sched_setaffinity(0, set(mine))


def bare_app(secret: str) -> web.Application:
    """What a user would hand-write: read the body, check the HMAC and the age."""
    key = secret.encode()

    async def handler(request: web.Request) -> web.Response:
        body = await request.read()
        ts = request.headers.get(TIMESTAMP_HEADER, "")
        sig = request.headers.get(SIGNATURE_HEADER, "")
        expected = (
            "sha256="
            + hmac.new(key, ts.encode() + b"." + body, hashlib.sha256).hexdigest()
        )
        if not (
            ts.isdigit()
            and abs(time.time() - int(ts)) <= DEFAULT_TOLERANCE
            and hmac.compare_digest(expected, sig)
        ):
            return web.json_response({"ok": False, "reason": "mismatch"}, status=401)
        return web.json_response({"ok": True, "reason": "ok"})

    app = web.Application(client_max_size=DEFAULT_MAX_BODY + 1)
    app.router.add_post("/hook", handler)
    return app


@contextlib.asynccontextmanager
async def aiohttp_server(app: web.Application) -> AsyncIterator[str]:
    async with aiohttp_site(app, web.TCPSite) as (url, _site):
        yield url


@contextlib.asynccontextmanager
async def aiohttp_site(
    app: web.Application, site_class: type[web.TCPSite]
) -> AsyncIterator[tuple[str, web.TCPSite]]:
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = site_class(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}/hook", site
    finally:
        await runner.cleanup()


def raise_fd_limit(wanted: int) -> int:
    """Raise the soft open-file limit toward *wanted* (up to the hard one); the new soft."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        soft = target
    return soft


def _payloads(n: int, prefix: str) -> list[tuple[bytes, dict[str, str]]]:
    """Signed deliveries shaped like the documented example, one job id each."""
    now = int(time.time())
    out = []
    for i in range(n):
        body = json.dumps(
            {
                "jobId": f"job_{prefix}_{i}",
                "requestId": f"req_{prefix}_{i}",
                "status": "completed",
                "output": {
                    "videoUrl": f"https://cdn.muvi.video/outputs/job_{prefix}_{i}.mp4"
                },
                "completedAt": "2026-02-18T12:00:00.000Z",
            },
            separators=(",", ":"),
        ).encode()
        out.append((body, signature_headers(body, SECRET, timestamp=now)))
    return out


async def _fire(cmd: dict[str, Any]) -> dict[str, float]:
    """In the load generator: send the deliveries, time each, return the figures."""
    n = int(cmd["n"])
    payloads = _payloads(n, str(cmd["prefix"]))
    url = str(cmd["url"])
    latencies = [0.0] * n
    statuses: Counter[int] = Counter()  # 0: no answer (a connection error)
    sem = asyncio.Semaphore(int(cmd["concurrency"]))
    connector = aiohttp.TCPConnector(limit=int(cmd["pool"]))
    async with aiohttp.ClientSession(connector=connector) as session:

        async def one(i: int) -> None:
            body, headers = payloads[i]
            async with sem:
                t0 = time.perf_counter()
                try:
                    async with session.post(url, data=body, headers=headers) as r:
                        await r.read()
                        status = r.status
                except aiohttp.ClientError:
                    status = 0
                latencies[i] = time.perf_counter() - t0
            statuses[status] += 1

        start = time.perf_counter()
        cpu = time.process_time()
        await asyncio.gather(*(one(i) for i in range(n)))
        elapsed = time.perf_counter() - start
        cpu = time.process_time() - cpu
    ms = [x * 1000 for x in latencies]
    return {
        "deliveries": n,
        "per_s": n / elapsed,
        "elapsed_s": elapsed,
        "errors": n - statuses[200],
        "status_503": statuses[503],
        "no_answer": statuses[0],
        "client_cpu_us": cpu / n * 1e6,
        "p50_ms": statistics.median(ms),
        "p99_ms": pct(ms, 0.99),
        "max_ms": max(ms),
    }


def loadgen() -> None:
    """The load generator process: one JSON command per line in, figures out."""
    raise_fd_limit(1 << 16)
    for line in sys.stdin:
        print(json.dumps(asyncio.run(_fire(json.loads(line)))), flush=True)


class LoadGen:
    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.rounds = 0

    async def fire(
        self, url: str, n: int, concurrency: int, pool: int
    ) -> dict[str, float]:
        assert self.proc.stdin is not None
        assert self.proc.stdout is not None
        self.rounds += 1
        cmd = {
            "url": url,
            "n": n,
            "concurrency": concurrency,
            "pool": pool,
            "prefix": f"r{self.rounds}",
        }
        self.proc.stdin.write(json.dumps(cmd).encode() + b"\n")
        await self.proc.stdin.drain()
        line = await asyncio.wait_for(self.proc.stdout.readline(), 120)
        if not line:
            msg = "load generator exited"
            raise RuntimeError(msg)
        return json.loads(line)  # type: ignore[no-any-return]


@contextlib.asynccontextmanager
async def loadgen_process(cpus: set[int]) -> AsyncIterator[LoadGen]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        __file__,
        "--loadgen",
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    )
    if cpus:
        os.sched_setaffinity(proc.pid, cpus)
    try:
        yield LoadGen(proc)
    finally:
        assert proc.stdin is not None
        proc.stdin.close()
        try:
            await asyncio.wait_for(proc.wait(), 10)
        except TimeoutError:
            proc.kill()
            await proc.wait()


#: bare: the HMAC check alone; plain: the SDK's WebhookReceiver mounted in a plain
#: aiohttp app (what the guard adds is sdk vs plain); sdk: WebhookServer.
SERVERS = ("bare", "plain", "sdk")


#: The burst on 2,000 connections at once: a bare aiohttp server; WebhookServer
#: refusing at its cap at once (queue_wait=0, as before the line: "before"); as it is
#: ("after"); the receiver mounted in a plain app on a GuardedSite.
BURST_ALL = ("bare", "sdk_no_line", "sdk", "guarded")


def plain_receiver_app() -> web.Application:
    app = web.Application(client_max_size=DEFAULT_MAX_BODY + 1)
    app.router.add_post("/hook", WebhookReceiver(SECRET).aiohttp_handler)
    return app


async def receiver_throughput(
    *,
    deliveries: int,
    rounds: int,
    concurrency: int,
    burst: int,
    burst_pool: int,
    burst_rounds: int,
    burst_all: int,
) -> dict[str, object]:
    # Each connection of the burst on all connections costs a descriptor in both
    # processes, with room for the servers' own and the line's.
    fds = raise_fd_limit(2 * burst_all + 1024)
    if burst_all > fds // 2 - 512:
        smaller = max(0, fds // 2 - 512)
        print(
            f"open-file limit {fds} (ulimit -n): the burst on all connections is "
            f"{smaller} instead of {burst_all}"
        )
        burst_all = smaller
    with server_core() as others:
        async with (
            aiohttp_server(bare_app(SECRET)) as bare_url,
            aiohttp_server(plain_receiver_app()) as plain_url,
            aiohttp_site(plain_receiver_app(), GuardedSite) as (guarded_url, site),
            WebhookServer(SECRET) as hooks,
            WebhookServer(SECRET, queue_wait=0) as no_line,
            loadgen_process(others) as gen,
        ):
            urls = {
                "bare": bare_url,
                "plain": plain_url,
                "sdk": hooks.url,
                "sdk_no_line": no_line.url,
                "guarded": guarded_url,
            }
            for name in SERVERS:  # warm-up
                await gen.fire(urls[name], 500, concurrency, concurrency)
            runs: dict[str, list[dict[str, float]]] = {name: [] for name in SERVERS}
            for r in range(rounds):
                # Rotate who goes first, so drift within a round hits all alike.
                for name in SERVERS[r % 3 :] + SERVERS[: r % 3]:
                    cpu = time.process_time()
                    res = await gen.fire(
                        urls[name], deliveries, concurrency, concurrency
                    )
                    res["server_cpu_us"] = (
                        (time.process_time() - cpu) / deliveries * 1e6
                    )
                    runs[name].append(res)
            bursts: dict[str, list[dict[str, float]]] = {"bare": [], "sdk": []}
            for r in range(burst_rounds):
                for name in ("bare", "sdk") if r % 2 == 0 else ("sdk", "bare"):
                    cpu = time.process_time()
                    res = await gen.fire(urls[name], burst, burst, burst_pool)
                    res["server_cpu_us"] = (time.process_time() - cpu) / burst * 1e6
                    bursts[name].append(res)
            guard = hooks.stats
            accepted = hooks.receiver.stats["accepted"]
            everyone: dict[str, list[dict[str, float]]] = {n: [] for n in BURST_ALL}
            for r in range(burst_rounds if burst_all else 0):
                for name in BURST_ALL[r % 4 :] + BURST_ALL[: r % 4]:
                    res = await gen.fire(urls[name], burst_all, burst_all, burst_all)
                    everyone[name].append(res)
                    await asyncio.sleep(1.0)  # the last connections close
            assert isinstance(site, GuardedSite)
            guards = {
                "sdk": hooks.stats,
                "sdk_no_line": no_line.stats,
                "guarded": site.stats,
            }

    def med(rows: list[dict[str, float]], key: str) -> float:
        return statistics.median(row[key] for row in rows)

    def ratios(a: str, b: str) -> list[float]:
        return [x["per_s"] / y["per_s"] for x, y in zip(runs[a], runs[b], strict=True)]

    sdk_bare = ratios("sdk", "bare")
    return {
        "throughput": {
            "deliveries_per_round": deliveries,
            "rounds": rounds,
            "concurrency": concurrency,
            **{f"{name}_per_s_median": med(runs[name], "per_s") for name in SERVERS},
            # The median of per-round paired ratios is robust to drift between rounds.
            "ratio": statistics.median(sdk_bare),
            "ratio_min": min(sdk_bare),
            "ratio_max": max(sdk_bare),
            "ratio_sdk_to_plain_receiver": statistics.median(ratios("sdk", "plain")),
            "ratio_plain_receiver_to_bare": statistics.median(ratios("plain", "bare")),
            **{
                f"{name}_server_cpu_us_per_delivery": med(runs[name], "server_cpu_us")
                for name in SERVERS
            },
            **{
                f"{name}_client_cpu_us_per_delivery": med(runs[name], "client_cpu_us")
                for name in SERVERS
            },
            "errors": sum(row["errors"] for rows in runs.values() for row in rows),
        },
        "burst": {
            "concurrent": burst,
            "pool": burst_pool,
            "rounds": burst_rounds,
            **{
                f"{name}_{key}": med(bursts[name], key)
                for name in ("bare", "sdk")
                for key in ("p50_ms", "p99_ms", "max_ms", "per_s", "server_cpu_us")
            },
            "errors": sum(row["errors"] for rows in bursts.values() for row in rows),
        },
        "burst_all_connections": {
            "concurrent": burst_all,
            "pool": burst_all,
            "rounds": len(everyone["sdk"]),
            **{
                f"{name}_{key}": med(everyone[name], key)
                for name in BURST_ALL
                for key in ("status_503", "no_answer", "p50_ms", "p99_ms", "max_ms")
                if everyone[name]
            },
            "guard": guards,
        },
        "guard": guard,
        "sdk_accepted": accepted,
        "sdk_expected": 500 + rounds * deliveries + burst_rounds * burst,
    }


async def main(args: argparse.Namespace) -> dict[str, object]:
    def receiver() -> Awaitable[dict[str, object]]:
        return receiver_throughput(
            deliveries=args.deliveries,
            rounds=args.rounds,
            concurrency=args.concurrency,
            burst=args.burst,
            burst_pool=args.burst_pool,
            burst_rounds=args.burst_rounds,
            burst_all=args.burst_all,
        )

    if args.receiver_only:
        return {"receiver": await receiver()}
    return {
        "latency": await latency(args.jobs),
        "requests_per_240s_job": {
            mode: await requests_per_job(mode)
            for mode in ("adaptive-polling", "fixed-5s", "webhook")
        },
        "receiver": await receiver(),
    }


def report_waits(res: dict[str, Any]) -> bool:
    """Print the latency and requests-per-job figures; whether they met the targets."""
    lat = res["latency"]
    print(
        f"delivery -> wait() latency over {lat['jobs']} jobs: p50 {lat['latency_ms_p50']:.2f} ms, "
        f"p99 {lat['latency_ms_p99']:.2f} ms (GETs/job {lat['gets_per_job']:.2f})"
    )
    rpj = res["requests_per_240s_job"]
    for mode, r in rpj.items():
        print(
            f"{mode:>17}: {r['submits']} submit + {r['gets']} GETs, noticed {r['noticed_late_s']} s late"
        )
    return bool(
        lat["latency_ms_p99"] <= 10
        and rpj["webhook"]["gets"] <= 1
        and rpj["adaptive-polling"]["gets"] <= 10
        and rpj["adaptive-polling"]["noticed_late_s"] <= 5
    )


def report_receiver(rec: dict[str, Any]) -> bool:
    """Print the receiver's figures; whether they met the targets."""
    tp, burst = rec["throughput"], rec["burst"]
    print(
        f"receiver: WebhookServer {tp['sdk_per_s_median']:.0f} deliveries/s vs bare "
        f"aiohttp HMAC handler {tp['bare_per_s_median']:.0f}/s, ratio "
        f"{tp['ratio']:.3f} (rounds {tp['ratio_min']:.3f}..{tp['ratio_max']:.3f}); "
        f"WebhookReceiver in a plain aiohttp app {tp['plain_per_s_median']:.0f}/s "
        f"(WebhookServer/plain {tp['ratio_sdk_to_plain_receiver']:.3f})"
    )
    print(
        "server CPU per delivery: "
        + ", ".join(
            f"{name} {tp[f'{name}_server_cpu_us_per_delivery']:.0f} us"
            for name in ("bare", "plain", "sdk")
        )
        + "; load generator CPU per delivery: "
        + ", ".join(
            f"{name} {tp[f'{name}_client_cpu_us_per_delivery']:.0f} us"
            for name in ("bare", "plain", "sdk")
        )
    )
    print(
        f"burst of {burst['concurrent']} (pool {burst['pool']}): WebhookServer p50 "
        f"{burst['sdk_p50_ms']:.0f} ms, p99 {burst['sdk_p99_ms']:.0f} ms; bare p50 "
        f"{burst['bare_p50_ms']:.0f} ms, p99 {burst['bare_p99_ms']:.0f} ms; errors "
        f"{tp['errors'] + burst['errors']}; guard {rec['guard']}"
    )
    everyone = rec["burst_all_connections"]
    if everyone["rounds"]:
        names = {
            "bare": "bare aiohttp",
            "sdk_no_line": "WebhookServer refusing at its cap (before)",
            "sdk": "WebhookServer with its line (after)",
            "guarded": "receiver on a GuardedSite",
        }
        print(
            f"burst on {everyone['concurrent']} connections at once (median of "
            f"{everyone['rounds']} rounds):"
        )
        for name, label in names.items():
            print(
                f"  {label}: {everyone[f'{name}_status_503']:.0f} got 503, "
                f"{everyone[f'{name}_no_answer']:.0f} no answer; p50 "
                f"{everyone[f'{name}_p50_ms']:.0f} ms, p99 "
                f"{everyone[f'{name}_p99_ms']:.0f} ms, max "
                f"{everyone[f'{name}_max_ms']:.0f} ms"
            )
        print(f"  guards after the run: {everyone['guard']}")
    return bool(
        tp["ratio"] >= 0.8
        and tp["errors"] + burst["errors"] == 0
        and rec["sdk_accepted"] == rec["sdk_expected"]
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--jobs", type=int, default=1000)
    parser.add_argument("--deliveries", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--burst", type=int, default=2000)
    parser.add_argument("--burst-pool", type=int, default=200)
    parser.add_argument("--burst-rounds", type=int, default=3)
    parser.add_argument(
        "--burst-all",
        type=int,
        default=2000,
        help="deliveries on as many connections at once (0: skip)",
    )
    parser.add_argument(
        "--receiver-only",
        action="store_true",
        help="only the receiver's throughput and burst; results are printed, not written",
    )
    parser.add_argument("--loadgen", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.loadgen:
        loadgen()
        sys.exit(0)
    res = asyncio.run(main(args))
    ok = True
    if not args.receiver_only:
        out = Path(__file__).parent / "results" / "webhooks.json"
        out.write_text(json.dumps(res, indent=2) + "\n")
        ok = report_waits(res)
    rec = res["receiver"]
    assert isinstance(rec, dict)
    ok = report_receiver(rec) and ok
    print("verdict:", "OK (all targets met)" if ok else "TARGET MISSED")
