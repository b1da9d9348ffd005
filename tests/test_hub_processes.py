"""
`PixelByte(hub=...)` across real processes: one receiver, several clients, one API.

The fake API runs in the test process, in real time (``time_scale=1``) with jobs
500 times shorter (a Kling job takes about half a second), and sends its webhook
deliveries by itself, to the receiver process only.  The clients are other
processes (``tests/hub_workers.py``) that share a real redis-server with the
receiver; what each of them saw comes back as JSON lines, what the API saw is in
the fake's records.
"""

from __future__ import annotations

import asyncio
import json
import signal
import sys
from collections.abc import AsyncIterator, Awaitable
from pathlib import Path
from typing import Any

import anyio
import pytest
from pixelbyte_async.testing import FakePixelByte, JobScript

import redis_fixture
from redis_fixture import (  # noqa: F401 -- fixtures
    own_redis_fixture,
    persistent_redis_fixture,
    prefix_fixture,
    redis_server_fixture,
    require_redis_fixture,
)


pytestmark = pytest.mark.anyio

RedisServer = redis_fixture.RedisServer
SECRET = redis_fixture.SECRET
until = redis_fixture.until

WORKERS = Path(__file__).resolve().parent / "hub_workers.py"
SPEEDUP = 500  # a Kling job (5 s queued + 240 s) takes 0.49 s
SUBMIT = "/v1/jobs/submit"


class Worker:
    """A process of ``hub_workers.py``; its JSON lines are collected as they come."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.lines: list[dict[str, Any]] = []
        self.stderr = b""
        self._reading = asyncio.gather(self._read_stdout(), self._read_stderr())

    async def _read_stdout(self) -> None:
        assert self.proc.stdout is not None
        async for raw in self.proc.stdout:
            self.lines.append(json.loads(raw))

    async def _read_stderr(self) -> None:
        assert self.proc.stderr is not None
        self.stderr = await self.proc.stderr.read()

    def said(self, key: str) -> list[Any]:
        """Every value printed under *key*, in order."""
        return [line[key] for line in self.lines if key in line]

    async def first(self, key: str, timeout: float = 30.0) -> Any:
        """The first value printed under *key*; fail if the process ends first."""
        await until(
            lambda: bool(self.said(key)) or self.proc.returncode is not None, timeout
        )
        if not self.said(key):
            await self.ended()
        return self.said(key)[0]

    async def ended(self, timeout: float = 30.0) -> None:
        with anyio.move_on_after(timeout):
            await asyncio.shield(self._reading)
        if self.proc.returncode is None and not self._reading.done():
            self.proc.send_signal(signal.SIGUSR1)  # it prints its tasks and exits
            with anyio.move_on_after(10):
                await asyncio.shield(self._reading)
        rc = await self.proc.wait()
        assert rc == 0, (
            f"rc={rc} after {timeout} s; printed {self.lines}; "
            f"stderr: {self.stderr.decode(errors='replace')}"
        )

    async def result(self, timeout: float = 30.0) -> dict[str, Any]:
        """The last line of a ``submit`` worker, once it has exited with 0."""
        await self.ended(timeout)
        (last,) = [line for line in self.lines if "done" in line]
        return last


class Account:
    """
    The processes of one test, sharing one hub (*redis*, *prefix*): a receiver
    and clients; each is killed at the end if still running.
    """

    def __init__(self, fake: FakePixelByte, redis: RedisServer, prefix: str) -> None:
        self.fake = fake
        self.redis = redis
        self.prefix = prefix
        self.hook = ""  # the receiver's URL, once it listens
        self.started: list[Worker] = []

    async def start(self, *args: str) -> Worker:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            str(WORKERS),
            *args,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        self.started.append(Worker(proc))
        return self.started[-1]

    async def receiver(self) -> Worker:
        """The receiver process: the API delivers to `hook`."""
        worker = await self.start("receive", self.redis.url, self.prefix, SECRET)
        self.hook = await worker.first("url")
        return worker

    async def clients(self, n: int, *options: str) -> list[Worker]:
        """*n* more client processes, tagged ``w0``, ``w1``, ... in start order."""
        fake = self.fake
        return [
            await self.start(
                *("submit", self.redis.url, self.prefix),
                *(fake.url, fake.api_key, self.hook),
                f"--tag=w{len(self.started) - 1}",  # the receiver came first
                *options,
            )
            for _ in range(n)
        ]

    async def close(self) -> None:
        for worker in self.started:
            if worker.proc.returncode is None:
                worker.proc.kill()
            await worker.proc.wait()


@pytest.fixture(name="fake")
async def fake_fixture() -> AsyncIterator[FakePixelByte]:
    async with FakePixelByte(
        time_scale=1.0,
        speedup=SPEEDUP,
        allow_http_webhooks=True,
        auto_webhooks=True,
        webhook_secret=SECRET,
        concurrent_job_limit=1000,  # counts peak_active_jobs; never refuses here
    ) as fake:
        yield fake


@pytest.fixture(name="account")
async def account_fixture(
    fake: FakePixelByte, redis_server: RedisServer, prefix: str
) -> AsyncIterator[Account]:
    account = Account(fake, redis_server, prefix)
    try:
        yield account
    finally:
        await account.close()


def statuses(results: list[dict[str, Any]]) -> dict[str, str]:
    return {job: status for r in results for job, status in r["done"].items()}


def prompts(fake: FakePixelByte) -> list[str]:
    return sorted(job.input["prompt"] for job in fake.jobs.values())


def expected_prompts(workers: int, jobs: int) -> list[str]:
    return sorted(f"w{w} {n}" for w in range(workers) for n in range(jobs))


async def test_deliveries_to_one_receiver_resolve_the_waits_of_three_processes(
    account, fake
):
    """3 clients × 10 jobs; every delivery goes to the receiver process only."""
    await account.receiver()
    workers = await account.clients(3, "--jobs=10")
    results = [await w.result() for w in workers]

    done = statuses(results)
    assert sorted(done) == sorted(fake.jobs)
    assert len(done) == 30
    assert set(done.values()) == {"completed"}
    for job_id in done:  # fed by the hub, not by polling
        assert fake.count("GET", f"/v1/jobs/{job_id}") <= 1, job_id
    deliveries = fake.webhook_deliveries
    assert {d.url.partition("?")[0] for d in deliveries} == {account.hook}
    assert sorted(d.job_id for d in deliveries if d.ok) == sorted(done)
    # Each saw at least its own ten (and others' until it left).
    assert all(r["stats"]["delivered"] >= 10 for r in results)
    assert fake.ledger.double_charged() == []


async def test_three_processes_share_one_limit_of_four_jobs_in_flight(account, fake):
    await account.receiver()
    workers = await account.clients(3, "--jobs=8", "--limit=4")
    results = [await w.result() for w in workers]

    assert set(statuses(results).values()) == {"completed"}
    assert prompts(fake) == expected_prompts(3, 8)
    assert fake.peak_active_jobs == 4  # reached, never passed
    assert fake.count("POST", SUBMIT) == len(fake.jobs)  # no submit was refused
    assert sum(r["fallback_admissions"] for r in results) == 0


async def test_workers_with_other_limits_keep_the_api_under_the_smaller(
    account, fake, caplog
):
    """One worker says 3, two say 6: the API never runs more than 3, and it is said."""
    await account.receiver()
    strict = await account.clients(1, "--jobs=6", "--limit=3")
    await strict[0].first("submitted")  # its limit is on record before theirs
    loose = await account.clients(2, "--jobs=6", "--limit=6")
    results = [await w.result() for w in strict + loose]
    assert set(statuses(results).values()) == {"completed"}
    assert fake.peak_active_jobs <= 3
    said = b"".join(w.stderr for w in strict + loose).decode()
    assert "limit=3" in said
    assert "limit=6" in said
    assert "strictest limit (3)" in said


async def test_a_killed_workers_slots_stay_taken_until_its_jobs_end(
    account, fake, redis_server, prefix
):
    """
    A holds both slots of the account with jobs still running and is killed: its
    leases expire, but its jobs run on at the API, so B and C must wait for them
    to end (the API never runs more than the limit), then get the slots at once.
    """
    from pixelbyte_async.redis import RedisHub

    lease = 1.0
    options = ("--limit=2", f"--lease={lease}")
    await account.receiver()
    long = JobScript(queue_seconds=0, processing_seconds=3.5 * SPEEDUP)
    fake.script_next(long, long)  # A's jobs run seconds past the kill
    (a,) = await account.clients(1, "--jobs=2", *options)
    await until(lambda: len(a.said("submitted")) == 2, 30)
    b, c = await account.clients(2, "--jobs=3", *options)
    queue = f"{prefix}:{{default}}:slots-queue:jobs"
    async with redis_server.client() as redis:
        # All six submits of B and C wait in the account's queue: A holds both.
        await until(lambda: _equals(redis.zcard(queue), 6), 30)
    assert len(fake.jobs) == 2

    a.proc.kill()  # SIGKILL: no release, no goodbye
    killed_at = fake.clock.time()
    results = [await w.result(timeout=60) for w in (b, c)]

    assert set(statuses(results).values()) == {"completed"}
    assert fake.peak_active_jobs == 2  # A's jobs ran to their end: never 3 or 4
    a_ended = min(
        job.finished_at for job in fake.jobs.values() if job.created_at < killed_at
    )
    later = [job.created_at for job in fake.jobs.values() if job.created_at > killed_at]
    assert len(later) == 6
    assert min(later) >= a_ended - 0.2  # not when A's leases expired (1 s)
    # Freed by the end of A's jobs (their deliveries, through the receiver), not
    # by a lease: the first new job comes within a renewal or two of it.
    assert min(later) - a_ended < 3.0
    async with RedisHub(redis_server.url, key_prefix=prefix) as hub:
        assert await hub.slots(2, lease=lease).in_use() == 0


async def _equals(value: Awaitable[Any], expected: Any) -> bool:
    return await value == expected


@pytest.mark.parametrize("kill", [False, True], ids=["sigterm", "sigkill"])
async def test_redis_restarted_mid_run_never_lets_the_api_run_more_than_the_limit(
    fake, own_redis, prefix, kill
):
    """
    Redis stops (its data lost) while 4 workers run jobs under a limit of 8: no
    process admits a job it cannot prove a slot for, waits poll, the receiver
    answers 503 (the API retries); Redis comes back on the same port: every wait
    returns, every input was submitted once, and the API never ran more than 8.
    """
    account = Account(fake, own_redis, prefix)
    try:
        processes = [await account.receiver()]
        processes += await account.clients(4, "--jobs=10", "--limit=8", "--lease=3")
        await until(lambda: all(w.said("healthy") == [True] for w in processes), 30)
        await until(lambda: len(fake.jobs) >= 10, 30)

        own_redis.stop(kill=kill)
        await until(lambda: all(False in w.said("healthy") for w in processes), 30)
        # While Redis is away jobs end, their deliveries are refused (to come
        # again), waits poll, and no process admits a new job.
        await until(lambda: any(not d.ok for d in fake.webhook_deliveries), 30)
        await until(lambda: ended(fake) == len(fake.jobs), 30)
        made = len(fake.jobs)
        await asyncio.sleep(0.5)  # real time: the workers' submits would land
        assert len(fake.jobs) == made < 40
        own_redis.start()
        results = [await w.result(timeout=60) for w in processes[1:]]
    finally:
        await account.close()

    assert set(statuses(results).values()) == {"completed"}
    assert len(statuses(results)) == 40
    assert prompts(fake) == expected_prompts(4, 10)  # one job per input
    assert fake.count("POST", SUBMIT) == 40
    assert fake.ledger.double_charged() == []
    assert fake.peak_active_jobs <= 8
    assert sum(r["fallback_admissions"] for r in results) == 0
    # The receiver came back (a client may have finished while Redis was away).
    assert processes[0].said("healthy")[-1] is True


@pytest.mark.parametrize("kill", [False, True], ids=["sigterm", "sigkill"])
async def test_a_persistent_redis_restart_frees_the_jobs_that_ended_meanwhile(
    fake, persistent_redis, prefix, kill
):
    """
    Redis keeps its data (AOF) and restarts while jobs end: the releases made
    while it was away reach it when it is back, so the account does not stall
    until the leases of finished jobs expire (30 s here).  Killed, Redis may lose
    its last second of writes: what it lost is registered again, or found ended.
    """
    account = Account(fake, persistent_redis, prefix)
    try:
        processes = [await account.receiver()]
        processes += await account.clients(3, "--jobs=8", "--limit=4", "--lease=30")
        await until(lambda: all(w.said("healthy") == [True] for w in processes), 30)
        await until(lambda: len(fake.jobs) >= 4, 30)
        persistent_redis.stop(kill=kill)
        await until(lambda: all(False in w.said("healthy") for w in processes), 30)
        await until(lambda: ended(fake) >= 4, 30)
        persistent_redis.start()
        back = fake.clock.time()
        results = [await w.result(timeout=60) for w in processes[1:]]
    finally:
        await account.close()

    assert set(statuses(results).values()) == {"completed"}
    assert prompts(fake) == expected_prompts(3, 8)
    assert fake.peak_active_jobs <= 4
    # 24 jobs of 0.5 s, 4 at a time: a few seconds once Redis is back, where
    # slots held by finished jobs would stall the account for most of a lease.
    assert fake.clock.time() - back < 15


def ended(fake: FakePixelByte) -> int:
    now = fake.clock.time()
    return sum(job.finished_at <= now for job in fake.jobs.values())
