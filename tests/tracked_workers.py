"""
A worker process of ``tests/test_tracked_hub.py``: a client on a shared hub that
submits tracked jobs and handles the tracked jobs it holds.

``python tests/tracked_workers.py REDIS PREFIX API_URL API_KEY LOG --tag T --jobs N
[--die] [--lease S]``: takes over what is left (``resume()``), submits *N* tracked
jobs at once, prints ``{"submitted": [ids]}``, then kills itself (``--die``: the
jobs are left running) or stays, handling.  Each handler completion appends
``JOB_ID TAG`` to *LOG*.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys

from pixelbyte_async import Job, KlingO1StartEndFrame, PixelByte, PollPolicy
from pixelbyte_async.redis import RedisHub


async def work(ns: argparse.Namespace) -> None:
    hub = RedisHub(ns.redis, key_prefix=ns.prefix, reconnect_max=0.2)
    # Jobs here last a second, not 240 s: a resumed job (whose GET has no ETA) is
    # polled every half second instead of by the model's typical duration.
    poll = PollPolicy(
        min_interval=0.2, near_interval=0.5, unsure_interval=0.5, max_interval=0.5
    )
    # No shared job slots: a killed worker's slots would stay taken until the
    # hub's checker sees its jobs end (tests/test_hub_processes.py covers that).
    async with PixelByte(
        api_key=ns.api_key,
        base_url=ns.api_url,
        hub=hub,
        poll=poll,
        max_concurrent_jobs=None,
    ) as pb:
        pb._tracker.lease = ns.lease

        async def handled(job: Job) -> None:
            with open(ns.log, "a") as log:  # noqa: ASYNC230, PTH123 -- a line, at once
                log.write(f"{job.id} {ns.tag} {job.context['n']}\n")

        pb.on_finished(handled)
        await pb.resume()
        jobs = await asyncio.gather(
            *(
                pb.submit(
                    KlingO1StartEndFrame(
                        image_url="https://e.x/a.jpg",
                        end_image_url="https://e.x/b.jpg",
                        prompt=f"{ns.tag} {n}",
                    ),
                    context={"n": n},
                )
                for n in range(ns.jobs)
            )
        )
        sys.stdout.write(json.dumps({"submitted": [j.id for j in jobs]}) + "\n")
        sys.stdout.flush()
        if ns.die:
            os.kill(os.getpid(), signal.SIGKILL)
        await asyncio.sleep(3600)


def main() -> None:
    parser = argparse.ArgumentParser()
    for name in ("redis", "prefix", "api_url", "api_key", "log"):
        parser.add_argument(name)
    parser.add_argument("--tag", required=True)
    parser.add_argument("--jobs", type=int, default=10)
    parser.add_argument("--die", action="store_true")
    parser.add_argument("--lease", type=float, default=1.0)
    asyncio.run(work(parser.parse_args()))


if __name__ == "__main__":
    main()
