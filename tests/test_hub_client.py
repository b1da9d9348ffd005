"""
`PixelByte(hub=...)`: waits and job slots shared by processes, on a real redis-server.

Two hubs on one Redis server and account are two processes as far as Redis knows:
"process A" submits and waits, "process B" receives the deliveries (publishes
them).  The fake runs on a virtual clock that moves only when a test moves it, so
a wait that returns did so because of the hub, never because a poll came due.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from pixelbyte_async import (
    AmbiguousSubmitError,
    JobStatus,
    KlingO1StartEndFrame,
    PixelByte,
    VirtualClock,
)
from pixelbyte_async.testing import FakePixelByte, Fault

from conftest import bound_client
from redis_fixture import (  # noqa: F401 -- fixtures
    hubs_fixture,
    make_event,
    own_redis_fixture,
    prefix_fixture,
    redis_server_fixture,
    require_redis_fixture,
    until,
)


pytestmark = pytest.mark.anyio

HOOK = "https://hooks.example.com/pixelbyte"
SUBMIT = "/v1/jobs/submit"


def transition(n: int = 0) -> KlingO1StartEndFrame:
    return KlingO1StartEndFrame(
        image_url="https://e.x/a.jpg",
        end_image_url="https://e.x/b.jpg",
        prompt=f"job {n}",
        duration=5,
    )


def attempt_of(fake: FakePixelByte, job_id: str) -> str:
    url = fake.jobs[job_id].webhook_url or ""
    return parse_qs(urlsplit(url).query)["pb_attempt"][0]


def gets(fake: FakePixelByte, job_id: str) -> int:
    return fake.count("GET", f"/v1/jobs/{job_id}")


@pytest.fixture(name="fake")
async def _fake() -> Any:
    clock = VirtualClock(autojump=False)
    async with FakePixelByte(clock=clock, concurrent_job_limit=1000) as fake:
        yield fake


async def deliver_elsewhere(fake: FakePixelByte, hub: Any, job_id: str) -> bool:
    """Process B: the job ends and B receives (publishes) its delivery."""
    fake.complete_now(job_id)
    return bool(await hub.publish(make_event(job_id, attempt=attempt_of(fake, job_id))))


async def test_a_delivery_received_by_another_process_resolves_the_wait(fake, hubs):
    a, b = hubs
    async with bound_client(fake, hub=a) as pb:
        pb.use_webhooks(a, public_url=HOOK)
        job = await pb.submit(transition())
        waiting = asyncio.ensure_future(job.wait())
        await until(lambda: a.waiting == 1)
        assert await deliver_elsewhere(fake, b, job.id)
        done = await asyncio.wait_for(waiting, 5)
    assert done.status is JobStatus.COMPLETED
    assert done.video_url is not None
    assert gets(fake, job.id) <= 1


async def test_a_wait_that_starts_after_the_delivery_sees_it(fake, hubs):
    a, b = hubs
    async with bound_client(fake, hub=a) as pb:
        pb.use_webhooks(a, public_url=HOOK)
        job = await pb.submit(transition())
        assert await deliver_elsewhere(fake, b, job.id)
        done = await asyncio.wait_for(job.wait(), 5)
    assert done.status is JobStatus.COMPLETED
    assert gets(fake, job.id) <= 1


async def test_job_slots_count_every_process_sharing_the_hub(fake, hubs):
    """Two processes, max_concurrent_jobs=2 for the account: never 3 in flight."""
    a, b = hubs
    limit, per_process = 2, 4
    async with (
        bound_client(fake, hub=a, max_concurrent_jobs=limit) as pa,
        bound_client(fake, hub=b, max_concurrent_jobs=limit) as pb_,
    ):
        for client, hub in ((pa, a), (pb_, b)):
            client.use_webhooks(hub, public_url=HOOK)
        submits = [
            asyncio.ensure_future(client.submit(transition(10 * n + i)))
            for n in range(per_process)
            for i, client in enumerate((pa, pb_))
        ]
        finished: set[str] = set()
        while len(finished) < len(submits):
            await until(
                lambda: (
                    len(set(fake.jobs) - finished) == limit
                    or len(fake.jobs) == len(submits)
                )
            )
            running = sorted(set(fake.jobs) - finished)
            assert len(running) <= limit
            for job_id in running:
                # Each delivery lands in the process that did not submit it.
                await deliver_elsewhere(fake, b, job_id)
                finished.add(job_id)
        jobs = await asyncio.wait_for(asyncio.gather(*submits), 10)
    assert len({j.id for j in jobs}) == 2 * per_process == len(fake.jobs)
    assert fake.peak_active_jobs == limit
    assert fake.ledger.double_charged() == []


async def test_a_job_finished_by_a_delivery_elsewhere_frees_its_slot_at_once(
    fake, hubs
):
    a, b = hubs
    async with bound_client(fake, hub=a, max_concurrent_jobs=1) as pb:
        pb.use_webhooks(a, public_url=HOOK)
        first = await pb.submit(transition(1))
        second = asyncio.ensure_future(pb.submit(transition(2)))
        await asyncio.sleep(0.2)
        assert not second.done()  # the one slot is taken, and time stands still
        await deliver_elsewhere(fake, b, first.id)
        job = await asyncio.wait_for(second, 5)
    assert job.id != first.id
    assert fake.count("GET", "/v1/jobs/*") == 0  # no sweep, no poll: the hub did it


async def test_the_woken_wait_runs_before_its_slot_goes_back_to_redis(fake, hubs):
    """
    One delivery both wakes the wait and frees the job's slot: the wait resumes
    first, the release's Redis call one loop turn later (it would otherwise take
    its turn on the loop, and the core, in front of the waiting caller).
    """
    a, b = hubs
    order: list[str] = []
    link = a._link
    call = link.call

    async def recording_call(script, keys, args):
        order.append(script)
        return await call(script, keys, args)

    async with bound_client(fake, hub=a, max_concurrent_jobs=2) as pb:
        pb.use_webhooks(a, public_url=HOOK)
        job = await pb.submit(transition())

        async def wait_then_note() -> None:
            await job.wait()
            order.append("wait returned")

        waiting = asyncio.ensure_future(wait_then_note())
        await until(lambda: a.waiting == 1)
        link.call = recording_call
        assert await deliver_elsewhere(fake, b, job.id)
        await asyncio.wait_for(waiting, 5)
        await until(lambda: "release" in order)
    assert order[:2] == ["wait returned", "release"]


async def lose_a_submit(pb: PixelByte, fake: FakePixelByte) -> AmbiguousSubmitError:
    """A submit whose answer is lost: the job exists, the client does not know it."""
    fake.inject(Fault.drop_after(), method="POST", path=SUBMIT)
    with pytest.raises(AmbiguousSubmitError) as lost:
        await pb.submit(transition())
    return lost.value


async def test_reconcile_uses_a_delivery_received_by_another_process(fake, hubs):
    a, b = hubs
    async with bound_client(fake, hub=a) as pb:
        pb.use_webhooks(a, public_url=HOOK)
        lost = await lose_a_submit(pb, fake)
        (job_id,) = fake.jobs
        assert await deliver_elsewhere(fake, b, job_id)
        found = await asyncio.wait_for(pb.reconcile(lost), 5)
    assert found is not None
    assert found.id == job_id
    assert fake.count("GET", "/v1/jobs") == 0  # attributed without listing jobs


async def test_reconcile_in_a_process_started_after_the_delivery(
    redis_server, prefix, fake, hubs
):
    """Its memory is empty: the attribution comes from what Redis stored."""
    from pixelbyte_async.redis import RedisHub

    a, b = hubs
    async with bound_client(fake, hub=a) as pb:
        pb.use_webhooks(a, public_url=HOOK)
        lost = await lose_a_submit(pb, fake)
    (job_id,) = fake.jobs
    assert await deliver_elsewhere(fake, b, job_id)
    async with (
        RedisHub(redis_server.url, key_prefix=prefix) as late,
        bound_client(fake, hub=late) as pb,
    ):
        pb.use_webhooks(late, public_url=HOOK)
        assert late.job_for_attempt(lost.attempt or "") is None
        found = await asyncio.wait_for(pb.reconcile(lost), 5)
    assert found is not None
    assert found.id == job_id
    assert fake.count("GET", "/v1/jobs") == 0


async def test_the_client_starts_the_hub_it_needs_and_closes_only_that(
    redis_server, prefix, fake
):
    from pixelbyte_async.redis import RedisHub

    mine = RedisHub(redis_server.url, key_prefix=prefix)
    async with bound_client(fake, hub=mine) as pb:
        assert mine.running
        assert "hub" not in repr(pb) or "password" not in repr(pb)
    assert not mine.running
    async with RedisHub(redis_server.url, key_prefix=prefix) as theirs:
        async with bound_client(fake, hub=theirs):
            pass
        assert theirs.running


async def test_waits_poll_while_redis_is_away_and_never_hang(own_redis, prefix, caplog):
    """Redis stops mid-wait: one WARNING, the wait polls and returns."""
    from pixelbyte_async.redis import RedisHub

    caplog.set_level(logging.WARNING, logger="pixelbyte_async")
    clock = VirtualClock(autojump=False)
    async with (
        FakePixelByte(clock=clock) as fake,
        RedisHub(own_redis.url, key_prefix=prefix, reconnect_max=0.2) as hub,
        bound_client(fake, hub=hub) as pb,
    ):
        pb.use_webhooks(hub, public_url=HOOK)
        job = await pb.submit(transition())
        waiting = asyncio.ensure_future(job.wait())
        await until(lambda: hub.waiting == 1)
        own_redis.stop()
        await until(lambda: not hub.healthy)
        fake.complete_now(job.id)
        for _ in range(100):  # polling on the fake's clock: let it come due
            if waiting.done():
                break
            clock.advance(5)
            await asyncio.sleep(0.01)
        done = await asyncio.wait_for(waiting, 5)
        own_redis.start()
    assert done.status is JobStatus.COMPLETED
    assert gets(fake, job.id) >= 1
    # Woken by the outage, not by the webhook safety delay (ETA + grace, ~300 s).
    first_get = fake.requests_for("GET", f"/v1/jobs/{job.id}")[0].time
    assert first_get - fake.jobs[job.id].created_at < 60
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1, [r.getMessage() for r in warnings]
    assert "redis" in warnings[0].getMessage().lower()


async def test_without_a_hub_nothing_changes(fake):
    async with bound_client(fake) as pb:
        assert pb._slots.shared is None
        job = await pb.submit(transition())
        fake.complete_now(job.id)
        assert (await job.refresh()).status is JobStatus.COMPLETED


def test_the_hub_satisfies_the_client_s_protocol() -> None:
    """The structural seam: a RedisHub is what PixelByte(hub=) expects."""
    from pixelbyte_async.redis import RedisHub

    hub = RedisHub("redis://127.0.0.1:1/0")
    pb = PixelByte(api_key="pb_test_x", hub=hub, max_concurrent_jobs=3)
    assert pb._slots.shared is hub.slots(3)


async def test_a_wait_whose_delivery_never_comes_through_the_hub_says_why(
    redis_server, prefix, caplog
):
    """
    The receiver publishes under another prefix (or account): every wait ends
    only at its safety GET.  The client says so once, naming what to check.
    """
    from pixelbyte_async.redis import RedisHub

    async with (
        FakePixelByte() as fake,  # a virtual clock that jumps: no real waiting
        RedisHub(redis_server.url, key_prefix=prefix) as hub,
        bound_client(fake, hub=hub) as pb,
    ):
        pb.use_webhooks(hub, public_url=HOOK)
        jobs = [await pb.submit(transition(n)) for n in range(2)]
        for job in jobs:
            done = await job.wait()
            assert done.status is JobStatus.COMPLETED
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    said = [w for w in warnings if "no delivery reached this process" in w]
    assert len(said) == 1, warnings
    assert f"key prefix {prefix!r}" in said[0]
    assert "--redis-prefix" in said[0]
