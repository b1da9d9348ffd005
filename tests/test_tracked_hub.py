"""
Tracked jobs across processes on one hub (issue 26): 3 workers, 30 tracked jobs,
one of them killed (``kill -9``) with its jobs still running: 30 handler
completions, none twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import sys
from pathlib import Path

import pytest
from pixelbyte_async import PixelByte
from pixelbyte_async.redis import RedisHub
from pixelbyte_async.testing import FakePixelByte, JobScript

from conftest import until
from redis_fixture import (  # noqa: F401 -- fixtures
    prefix_fixture,
    redis_server_fixture,
    require_redis_fixture,
)


pytestmark = pytest.mark.anyio

WORKER = Path(__file__).resolve().parent / "tracked_workers.py"


async def test_three_workers_handle_thirty_tracked_jobs_once_each(
    redis_server, prefix, tmp_path
):
    log = tmp_path / "handled.txt"
    log.touch()
    async with FakePixelByte(time_scale=1.0) as fake:
        # Long enough that the killed worker's jobs are still running when it dies.
        fake.set_default_script(JobScript(queue_seconds=0.05, processing_seconds=1.5))

        async def start(tag: str, *extra: str) -> asyncio.subprocess.Process:
            return await asyncio.create_subprocess_exec(
                sys.executable,
                str(WORKER),
                redis_server.url,
                prefix,
                fake.url,
                fake.api_key,
                str(log),
                "--tag",
                tag,
                *extra,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
            )

        procs = [await start("a", "--die"), await start("b"), await start("c")]
        try:
            assert procs[0].stdout is not None
            doomed = json.loads(await asyncio.wait_for(procs[0].stdout.readline(), 30))
            assert len(doomed["submitted"]) == 10
            assert await asyncio.wait_for(procs[0].wait(), 30) == -signal.SIGKILL
            assert all(fake.jobs[j].status != "completed" for j in doomed["submitted"])

            def lines() -> list[str]:
                return log.read_text().splitlines()

            await until(lambda: len(lines()) >= 30 and len(fake.jobs) == 30, 60)
            # Until the hub's ledger has nothing left to handle: no late second run.
            hub = RedisHub(redis_server.url, key_prefix=prefix)
            async with PixelByte(
                api_key=fake.api_key, base_url=fake.url, hub=hub
            ) as watcher:
                for _ in range(200):
                    if not await watcher.ledger.tracked():  # type: ignore[attr-defined]
                        break
                    await asyncio.sleep(0.05)
                handled = await watcher.ledger.tracked(states=("handled",))  # type: ignore[attr-defined]
        finally:
            for proc in procs:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await proc.wait()
    ids = [line.split()[0] for line in lines()]
    assert sorted(ids) == sorted(fake.jobs)  # every job, once
    assert len(ids) == len(set(ids)) == 30
    assert {r.job_id for r in handled} == set(fake.jobs)
    # The killed worker's jobs were handled by the others.
    takers = {
        line.split()[1] for line in lines() if line.split()[0] in doomed["submitted"]
    }
    assert takers <= {"b", "c"}
    assert fake.ledger.double_charged() == []
