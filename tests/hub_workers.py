"""
The worker processes of ``tests/test_hub_processes.py``: a webhook receiver, clients.

Run as ``python tests/hub_workers.py <command> ...``; each prints JSON lines:

* ``receive REDIS PREFIX SECRET``: a `WebhookServer` with ``hub=`` (every verified
  delivery is published to the processes sharing the hub); prints ``{"url": ...}``
  once it listens, and ``{"healthy": bool}`` whenever the hub's health changes.
* ``submit REDIS PREFIX API_URL API_KEY HOOK``: a ``PixelByte(hub=...,
  max_concurrent_jobs=--limit)`` with ``use_webhooks(hub, public_url=HOOK)``
  submits ``--jobs`` jobs at once and waits for each; prints ``{"submitted": id}``
  per job, ``{"healthy": bool}`` whenever the hub's health changes, and at the end
  ``{"done": {job id: status}, ...}``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
import time

from pixelbyte_async import KlingO1StartEndFrame, PixelByte, PollPolicy
from pixelbyte_async.redis import RedisHub
from pixelbyte_async.webhooks import WebhookServer


def say(obj: object) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def request(tag: str, n: int) -> KlingO1StartEndFrame:
    """The input of job *n* of worker *tag*: each input is unique (one charge each)."""
    return KlingO1StartEndFrame(
        image_url="https://e.x/a.jpg",
        end_image_url="https://e.x/b.jpg",
        prompt=f"{tag} {n}",
        duration=5,
    )


def dump_tasks_and_exit() -> None:
    """On SIGUSR1 (a test timed out waiting for us): say where every task is."""
    for task in asyncio.all_tasks():
        task.print_stack(file=sys.stderr)
    sys.stderr.flush()
    os._exit(3)


def health(healthy: bool) -> None:
    say({"healthy": healthy})


async def receive(ns: argparse.Namespace) -> None:
    asyncio.get_running_loop().add_signal_handler(signal.SIGUSR1, dump_tasks_and_exit)
    async with (
        RedisHub(
            ns.redis, key_prefix=ns.prefix, reconnect_max=0.2, on_health=health
        ) as hub,
        WebhookServer(ns.secret, hub=hub) as server,
    ):
        say({"url": server.url})
        await asyncio.Event().wait()  # until killed


async def submit(ns: argparse.Namespace) -> None:
    asyncio.get_running_loop().add_signal_handler(signal.SIGUSR1, dump_tasks_and_exit)
    hub = RedisHub(ns.redis, key_prefix=ns.prefix, reconnect_max=0.2, on_health=health)
    if ns.limit:
        hub.slots(ns.limit, lease=ns.lease)  # the group the client joins: short leases
    began = time.monotonic()
    async with PixelByte(
        api_key=ns.api_key,
        base_url=ns.api_url,
        hub=hub,
        max_concurrent_jobs=ns.limit,
        # While Redis is away waits poll: near the ETA every second, not every 4.
        poll=PollPolicy(near_interval=1.0),
    ) as pb:
        pb.use_webhooks(hub, public_url=ns.hook)

        async def one(n: int) -> tuple[str, str]:
            job = await pb.submit(request(ns.tag, n))
            say({"submitted": job.id})
            done = await job.wait(timeout=ns.timeout)
            return job.id, done.status.value

        with_status = await asyncio.gather(*(one(n) for n in range(ns.jobs)))
        slots = hub.slots(ns.limit) if ns.limit else None
        say(
            {
                "done": dict(with_status),
                "seconds": round(time.monotonic() - began, 3),
                "stats": hub.stats,
                "fallback_admissions": slots.fallback_admissions if slots else 0,
            }
        )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("command", choices=["receive", "submit"])
    parser.add_argument("redis")
    parser.add_argument("prefix")
    parser.add_argument("rest", nargs="*")
    parser.add_argument("--jobs", type=int, default=10)
    parser.add_argument("--limit", type=int, default=None)
    parser.add_argument("--lease", type=float, default=60.0)
    parser.add_argument("--tag", default="w")
    parser.add_argument("--timeout", type=float, default=60.0)
    ns = parser.parse_args(argv)
    if ns.command == "receive":
        (ns.secret,) = ns.rest
        asyncio.run(receive(ns))
    else:
        ns.api_url, ns.api_key, ns.hook = ns.rest
        asyncio.run(submit(ns))


if __name__ == "__main__":
    main()
