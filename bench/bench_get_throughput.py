"""
GET overhead: the SDK's get_job throughput vs a bare aiohttp loop, side by side.

Both hit the same FakePixelByte job on 127.0.0.1 with the same concurrency; rounds are
interleaved (bare, sdk, bare, sdk, ...) so machine noise hits both alike.  By default
the fake runs in its own process, as a remote API would (``--server inprocess`` puts
it on the client's event loop, which makes every client-side microsecond count more).
Prints the ratio sdk/bare (target >= 0.95, issue 23) and writes bench/results/get_throughput.json.

    python bench/bench_get_throughput.py [--requests 2000] [--concurrency 10] [--rounds 5]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import statistics
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
from _pinning import pin_client, pin_to_last_cpu
from pixelbyte_async import KlingO1StartEndFrame, PixelByte
from pixelbyte_async.testing import FakePixelByte


async def bare_loop(url: str, key: str, n: int, concurrency: int) -> float:
    """What a user would hand-write: one session, Bearer header, json(), a semaphore."""
    sem = asyncio.Semaphore(concurrency)
    connector = aiohttp.TCPConnector(limit=20)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def one() -> None:
            async with (
                sem,
                session.get(url, headers={"Authorization": f"Bearer {key}"}) as r,
            ):
                body = await r.json()
                assert body["jobId"]

        start = time.perf_counter()
        await asyncio.gather(*(one() for _ in range(n)))
        return n / (time.perf_counter() - start)


async def sdk_loop(pb: PixelByte, job_id: str, n: int, concurrency: int) -> float:
    sem = asyncio.Semaphore(concurrency)

    async def one() -> None:
        async with sem:
            job = await pb.get_job(job_id)
            assert job.id

    start = time.perf_counter()
    await asyncio.gather(*(one() for _ in range(n)))
    return n / (time.perf_counter() - start)


@contextlib.asynccontextmanager
async def fake_process(*extra: str) -> AsyncIterator[dict[str, str]]:
    """Run ``python -m pixelbyte_async.testing`` and yield what it prints."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "pixelbyte_async.testing",
        "--port",
        "0",
        *extra,
        stdout=asyncio.subprocess.PIPE,
        preexec_fn=pin_to_last_cpu,
    )
    wanted = {"PIXELBYTE_BASE_URL", "PIXELBYTE_API_KEY"}
    try:
        found: dict[str, str] = {}
        assert proc.stdout is not None
        while len(found) < len(wanted):
            line = (await asyncio.wait_for(proc.stdout.readline(), 30)).decode()
            if not line:
                msg = "fake server process exited"
                raise RuntimeError(msg)
            key, _, value = line.strip().partition("=")
            if key in wanted:
                found[key] = value
        yield found
    finally:
        proc.terminate()
        await proc.wait()


@contextlib.asynccontextmanager
async def fake_server(where: str) -> AsyncIterator[tuple[str, str]]:
    """Yield (base_url, api_key) of a FakePixelByte in this process or its own."""
    if where == "inprocess":
        async with FakePixelByte() as fake:
            yield fake.url, fake.api_key
        return
    async with fake_process() as found:
        yield found["PIXELBYTE_BASE_URL"], found["PIXELBYTE_API_KEY"]


async def main(
    requests: int,
    concurrency: int,
    rounds: int,
    where: str = "process",
    *,
    untracked: bool = False,
) -> dict[str, float | str]:
    async with (
        fake_server(where) as (base_url, key),
        PixelByte(api_key=key, base_url=base_url, ledger=None) as submitter,
        PixelByte(api_key=key, base_url=base_url, ledger=None) as reader,
    ):
        # --untracked: the GETs come from a client that did not submit the job
        # (a status page, another process; a finished job is untracked too).
        pb = reader if untracked else submitter
        job = await submitter.submit(
            KlingO1StartEndFrame(
                image_url="https://e.x/a.jpg", end_image_url="https://e.x/b.jpg"
            )
        )
        url = f"{base_url}/v1/jobs/{job.id}"
        await bare_loop(url, key, 200, concurrency)  # warm-up
        await sdk_loop(pb, job.id, 200, concurrency)
        bare, sdk = [], []
        bare_cpu: list[float] = []
        sdk_cpu: list[float] = []
        for _ in range(rounds):
            cpu = time.process_time()
            bare.append(await bare_loop(url, key, requests, concurrency))
            bare_cpu.append((time.process_time() - cpu) / requests * 1e6)
            cpu = time.process_time()
            sdk.append(await sdk_loop(pb, job.id, requests, concurrency))
            sdk_cpu.append((time.process_time() - cpu) / requests * 1e6)
    return {
        "server": where,
        "untracked": untracked,
        # Client CPU per request is steadier than throughput on a shared machine.
        "bare_cpu_us_per_request": statistics.median(bare_cpu),
        "sdk_cpu_us_per_request": statistics.median(sdk_cpu),
        "bare_rps_median": statistics.median(bare),
        "sdk_rps_median": statistics.median(sdk),
        # Each round pairs a bare run with an SDK run right after it; the median of
        # the paired ratios is robust to the machine's drift between rounds.
        "ratio": statistics.median(s / b for s, b in zip(sdk, bare, strict=True)),
        "ratio_min": min(s / b for s, b in zip(sdk, bare, strict=True)),
        "ratio_max": max(s / b for s, b in zip(sdk, bare, strict=True)),
        "requests_per_round": requests,
        "concurrency": concurrency,
        "rounds": rounds,
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--server", choices=("process", "inprocess"), default="process")
    parser.add_argument("--untracked", action="store_true")
    args = parser.parse_args()
    if args.server == "process":
        pin_client()
    res = asyncio.run(
        main(
            args.requests,
            args.concurrency,
            args.rounds,
            args.server,
            untracked=args.untracked,
        )
    )
    out = Path(__file__).parent / "results" / "get_throughput.json"
    out.write_text(json.dumps(res, indent=2) + "\n")
    ratio = float(res["ratio"])
    print(
        f"fake server {args.server}: bare aiohttp {res['bare_rps_median']:.0f} req/s, "
        f"sdk get_job {res['sdk_rps_median']:.0f} req/s, ratio {ratio:.3f} "
        f"(rounds {res['ratio_min']:.3f}..{res['ratio_max']:.3f}); client CPU per "
        f"request {res['bare_cpu_us_per_request']:.1f} vs "
        f"{res['sdk_cpu_us_per_request']:.1f} us"
    )
    print("verdict:", "OK (>= 0.95)" if ratio >= 0.95 else "BELOW TARGET 0.95")
