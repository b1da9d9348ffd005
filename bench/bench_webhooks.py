"""
Webhook-fed waiting: delivery -> wait() latency, and requests per job by wait mode.

* Latency: N jobs wait on FakePixelByte deliveries (real HTTP on 127.0.0.1); for each
  job, the time from the receiver getting its verified delivery to the awaiting
  ``job.wait()`` returning.  Target p99 <= 10 ms in one process.
* Requests per 240 s Kling job (virtual time): adaptive polling, a fixed 5 s loop, and
  webhook mode (target: 1 submit + <= 1 GET per job in webhook mode; <= 10 GETs and
  completion noticed <= 5 s late when polling).

Writes bench/results/webhooks.json.

    python bench/bench_webhooks.py [--jobs 1000]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from pathlib import Path

from pixelbyte_async import KlingO1StartEndFrame, PixelByte, PollPolicy, VirtualClock
from pixelbyte_async.testing import FakePixelByte
from pixelbyte_async.webhooks import WebhookServer


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


async def main(n: int) -> dict[str, object]:
    return {
        "latency": await latency(n),
        "requests_per_240s_job": {
            mode: await requests_per_job(mode)
            for mode in ("adaptive-polling", "fixed-5s", "webhook")
        },
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--jobs", type=int, default=1000)
    args = parser.parse_args()
    res = asyncio.run(main(args.jobs))
    out = Path(__file__).parent / "results" / "webhooks.json"
    out.write_text(json.dumps(res, indent=2) + "\n")
    lat = res["latency"]
    assert isinstance(lat, dict)
    print(
        f"delivery -> wait() latency over {lat['jobs']} jobs: p50 {lat['latency_ms_p50']:.2f} ms, "
        f"p99 {lat['latency_ms_p99']:.2f} ms (GETs/job {lat['gets_per_job']:.2f})"
    )
    rpj = res["requests_per_240s_job"]
    assert isinstance(rpj, dict)
    for mode, r in rpj.items():
        print(
            f"{mode:>17}: {r['submits']} submit + {r['gets']} GETs, noticed {r['noticed_late_s']} s late"
        )
    ok = (
        lat["latency_ms_p99"] <= 10
        and rpj["webhook"]["gets"] <= 1
        and rpj["adaptive-polling"]["gets"] <= 10
        and rpj["adaptive-polling"]["noticed_late_s"] <= 5
    )
    print("verdict:", "OK (all targets met)" if ok else "TARGET MISSED")
