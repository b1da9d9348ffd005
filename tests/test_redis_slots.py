"""RedisSlots: an account-wide counting semaphore with leases, on a real redis-server."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from typing import Any

import anyio
import pytest

from redis_fixture import (  # noqa: F401 -- fixtures
    finish,
    hubs_fixture,
    make_event,
    prefix_fixture,
    read_line,
    redis_server_fixture,
    require_redis,
    require_redis_fixture,
    spawn,
    until,
)


pytestmark = pytest.mark.anyio

WAIT = 10.0  # seconds any single wait may take before the test fails


async def test_the_limit_holds_across_hubs(hubs):
    """Leases of every hub count against one limit; a release lets the next in."""
    from pixelbyte_async import RequestTimeout

    a, b = hubs
    slots_a, slots_b = a.slots(3), b.slots(3)
    leases = [await slots_a.acquire(timeout=1), await slots_b.acquire(timeout=1)]
    leases.append(await slots_a.acquire(timeout=1))

    with pytest.raises(RequestTimeout, match="no job slot freed within 0s"):
        await slots_b.acquire(timeout=0)
    assert await slots_a.in_use() == 3
    assert (slots_a.held, slots_b.held) == (2, 1)

    waiter = asyncio.ensure_future(slots_b.acquire(timeout=WAIT))
    await slots_a.release(leases[0])  # wakes b at once (pub/sub "released")
    with anyio.fail_after(WAIT):
        await waiter
    assert await slots_b.in_use() == 3
    assert slots_a.peak == 3


async def test_waiters_are_served_first_come_first_served(redis_server, prefix, hubs):
    """Waiters of several processes get slots in the order they started waiting."""
    a, b = hubs
    slots_a = a.slots(1, retry_interval=0.05)
    slots_b = b.slots(1, retry_interval=0.05)
    holding = await slots_a.acquire(timeout=1)
    order: list[str] = []

    async def wait(name, slots):
        lease = await slots.acquire(timeout=WAIT)
        order.append(name)
        await slots.release(lease)

    async with redis_server.client() as raw:
        queue = f"{prefix}:{{default}}:slots-queue:jobs"
        async with anyio.create_task_group() as tg:
            for n, (name, slots) in enumerate(
                [("b1", slots_b), ("a1", slots_a), ("b2", slots_b), ("a2", slots_a)]
            ):
                tg.start_soon(wait, name, slots)
                await until(_equals(lambda: raw.zcard(queue), n + 1))
            await slots_a.release(holding)

    assert order == ["b1", "a1", "b2", "a2"]


def _equals(read, expected):
    async def check() -> bool:
        return expected == await read()

    return check


async def test_a_lease_bound_to_a_job_is_released_when_the_job_ends(hubs):
    """bind() then release_job() (sync, from Job._observe) frees the slot."""
    a, _ = hubs
    slots = a.slots(2)
    lease = await slots.acquire(timeout=1)
    slots.bind(lease, "job_1")
    assert slots.leases() == {lease: "job_1"}

    assert slots.release_job("job_1") is True
    assert slots.release_job("job_1") is False
    assert slots.held == 0
    await until(_equals(slots.in_use, 0))


async def test_an_adopted_job_counts_even_past_the_limit(hubs):
    """A job found in flight after a restart takes a slot without waiting."""
    a, _ = hubs
    slots = a.slots(1)
    await slots.acquire(timeout=1)

    lease = slots.adopt("job_found")

    assert slots.adopt("job_found") == lease
    await until(_equals(slots.in_use, 2))


async def test_one_renewal_task_keeps_every_lease_alive(redis_server, prefix):
    """Leases outlive their lease time while renewed, by one task per process."""
    from pixelbyte_async import RequestTimeout
    from pixelbyte_async.redis import RedisHub

    async with (
        RedisHub(redis_server.url, key_prefix=prefix) as holder,
        RedisHub(redis_server.url, key_prefix=prefix) as other,
    ):
        slots = holder.slots(3, lease=0.5)
        for _ in range(3):
            await slots.acquire(timeout=1)
        renewers = [
            t for t in asyncio.all_tasks() if t.get_name().endswith("jobs-renew")
        ]
        assert len(renewers) == 1

        started = time.monotonic()
        with pytest.raises(RequestTimeout):  # 3 lease times: still all taken
            await other.slots(3, lease=0.5).acquire(timeout=1.5)
        assert time.monotonic() - started >= 1.5
        assert await slots.in_use() == 3

    async with RedisHub(redis_server.url, key_prefix=prefix) as after:
        # aclose() gave the leases back at once.
        assert await after.slots(3, lease=0.5).in_use() == 0


async def test_settings_of_a_slot_group_must_agree(hubs):
    """The same name with another limit is a mistake, reported at once."""
    a, _ = hubs
    assert a.slots(2) is a.slots(2)
    with pytest.raises(ValueError, match="limit=2"):
        a.slots(3)
    with pytest.raises(ValueError, match="positive"):
        a.slots(0, name="other")


async def test_three_processes_never_hold_more_than_four_slots(redis_server, prefix):
    """3 processes × 4 eager tasks share a limit of 4: never more, measured in Redis."""
    workers = [
        await spawn(
            "slots",
            redis_server.url,
            prefix,
            "--limit=4",
            "--rounds=12",
            "--concurrency=4",
            "--lease=5",
        )
        for _ in range(3)
    ]
    for proc in workers:
        assert await read_line(proc) == "READY"
    results = [await finish(proc) for proc in workers]

    assert sum(r["acquired"] for r in results) == 3 * 4 * 12
    assert max(r["max_seen"] for r in results) == 4
    assert max(r["peak"] for r in results) == 4


async def test_a_killed_process_frees_a_slot_only_when_its_job_cannot_run(
    redis_server, prefix
):
    """
    A process killed with SIGKILL holds 4 slots: 2 bound to jobs still running, 2
    whose submits were on the wire.  The latter are free once their settle
    horizon has passed; a job's slot stays taken until its end is known: its
    terminal event stored (a receiver published it), or the API's word.
    """
    from pixelbyte_async import RequestTimeout
    from pixelbyte_async.redis import RedisHub

    lease_time, settle = 0.6, 0.6
    proc = await spawn(
        "hold",
        redis_server.url,
        prefix,
        "--limit=4",
        "--count=4",
        "--bind=2",
        f"--lease={lease_time}",
        f"--settle={settle}",
    )
    try:
        assert len((await finish_line(proc))["leases"]) == 4
        async with RedisHub(redis_server.url, key_prefix=prefix) as hub:
            slots = hub.slots(4, lease=lease_time, retry_interval=0.1, settle=settle)
            # Renewed by the live process: still full after two lease times.
            with pytest.raises(RequestTimeout):
                await slots.acquire(timeout=2 * lease_time)
            assert await slots.in_use() == 4

            os.kill(proc.pid, signal.SIGKILL)
            killed = time.monotonic()
            mine = [await slots.acquire(timeout=WAIT) for _ in range(2)]
            # Not before the horizon: the leases lived up to a renewal interval
            # (lease/3) less than a lease past the kill, then *settle* more.
            assert time.monotonic() - killed >= lease_time * 2 / 3 + settle - 0.1
            # The two jobs still run: their slots stay taken, long past the lease.
            with pytest.raises(RequestTimeout):
                await slots.acquire(timeout=2 * lease_time)
            assert await slots.in_use() == 4

            # job-0 ends and a receiver publishes its delivery: its slot is free
            # by the next slot operation of any process (our waiter's attempt).
            await hub.publish(make_event("job-0"))
            mine.append(await slots.acquire(timeout=WAIT))
            # job-1's end is learnt from the API (no delivery): a live client asks.
            asked: list[str] = []

            async def ended(job_id: str) -> bool:
                asked.append(job_id)
                return True

            slots.use_checker(ended)
            mine.append(await slots.acquire(timeout=WAIT))
            assert asked == ["job-1"]
            assert slots.reaped == 1
            for lease in mine:
                await slots.release(lease)
            assert await slots.in_use() == 0
    finally:
        if proc.returncode is None:
            proc.kill()
        await proc.wait()


async def finish_line(proc):
    return json.loads(await read_line(proc))


async def test_a_group_made_with_a_short_lease_is_the_one_a_client_joins(hubs):
    """`slots(limit)` without a lease takes the group's own; a clash is still an error."""
    a, _ = hubs
    group = a.slots(4, lease=2.0)
    assert a.slots(4) is group  # what PixelByte(hub=a, max_concurrent_jobs=4) asks
    assert group.lease == 2.0
    with pytest.raises(ValueError, match="lease=2"):
        a.slots(4, lease=30.0)
    assert a.slots(5, name="fresh").lease == 60.0  # the default for a new group


async def hand_on_one_slot(groups: list[Any]) -> None:
    """
    Ten waiters, spread over *groups* (one per process), queue for one slot with a
    retry timer too long to matter: each release must admit exactly one, at once.
    """
    holding, owner = await groups[0].acquire(timeout=1), groups[0]
    waiters = {
        asyncio.ensure_future(groups[n % len(groups)].acquire(timeout=WAIT)): groups[
            n % len(groups)
        ]
        for n in range(10)
    }
    await asyncio.sleep(0.05)  # let every waiter make its first attempt and queue
    for _ in range(10):
        await owner.release(holding)
        with anyio.fail_after(5):
            done, _ = await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        (winner,) = done
        owner = waiters.pop(winner)
        holding = winner.result()
    assert await groups[0].in_use() == 1


async def test_every_release_lets_the_next_waiter_in_without_its_retry_timer(hubs):
    """
    Ten waiters of one process: the turn is never left to the retry timer.  (A
    cheaper wake-up that woke only the first waiter of each process in its own order
    failed this: that order can differ from Redis' queue.)
    """
    a, _ = hubs
    await hand_on_one_slot([a.slots(1, retry_interval=30.0)])


async def test_every_release_lets_the_next_waiter_in_across_processes(hubs):
    """The same with the waiters of two processes."""
    a, b = hubs
    await hand_on_one_slot(
        [a.slots(1, retry_interval=30.0), b.slots(1, retry_interval=30.0)]
    )


async def _turn_messages(redis_server, prefix, action) -> list[tuple[str, bytes]]:
    """Run *action*; return the 'your turn' messages sent: (process inbox, body)."""
    async with redis_server.client() as raw:
        pubsub = raw.pubsub()
        await pubsub.psubscribe(f"{prefix}:{{default}}:*")
        await pubsub.get_message(timeout=1)  # the subscribe confirmation
        await action()
        seen = []
        while (message := await pubsub.get_message(timeout=0.2)) is not None:
            if message["type"] == "pmessage" and message["data"][:1] == b"r":
                seen.append((message["channel"].decode(), message["data"]))
        await pubsub.aclose()
    return seen


async def _queue_two(redis_server, prefix, first_slots, second_slots):
    """Start two waiters, of *first_slots* then *second_slots*, queued in that order."""
    async with redis_server.client() as raw:
        queue = f"{prefix}:{{default}}:slots-queue:jobs"
        first = asyncio.ensure_future(first_slots.acquire(timeout=WAIT))
        await until(_equals(lambda: raw.zcard(queue), 1))
        second = asyncio.ensure_future(second_slots.acquire(timeout=WAIT))
        await until(_equals(lambda: raw.zcard(queue), 2))
    return first, second


async def test_a_release_wakes_only_the_process_whose_turn_it_is(
    redis_server, prefix, hubs
):
    """
    A release tells nobody when nobody is queued (every process would otherwise
    wake, and contend for the cores, for each job that ends), and otherwise only
    the process of the waiter first in line, naming it: one admission attempt per
    turn, not one per process.
    """
    a, b = hubs
    slots_a, slots_b = a.slots(2), b.slots(2)

    async def unqueued() -> None:
        for _ in range(3):
            await slots_a.release(await slots_a.acquire(timeout=1))

    assert await _turn_messages(redis_server, prefix, unqueued) == []

    async def queued() -> None:
        held = [await slots_a.acquire(timeout=1), await slots_a.acquire(timeout=1)]
        first, second = await _queue_two(redis_server, prefix, slots_b, slots_a)
        await slots_a.release(held[0])
        with anyio.fail_after(WAIT):
            lease = await first
        assert not second.done()
        await slots_b.release(lease)
        with anyio.fail_after(WAIT):
            await slots_a.release(await second)
        await slots_a.release(held[1])

    told = await _turn_messages(redis_server, prefix, queued)
    inbox = f"{prefix}:{{default}}:to:"
    assert [(c.removeprefix(inbox), m.split(b"\n")[0]) for c, m in told] == [
        (b.instance_id, b"rjobs"),
        (a.instance_id, b"rjobs"),
    ]
    assert told[0][1].split(b"\n")[1].startswith(b.instance_id.encode() + b":w")


async def test_a_waiter_that_gives_up_its_turn_passes_it_on(redis_server, prefix, hubs):
    """
    The first in line is told its turn came, but its caller cancels it before it
    tries: leaving the queue passes the turn to the next waiter (of another
    process) at once, not after its retry timer.
    """
    a, b = hubs
    slots_a = a.slots(1, retry_interval=30.0)
    slots_b = b.slots(1, retry_interval=30.0)
    holding = await slots_a.acquire(timeout=1)
    first, second = await _queue_two(redis_server, prefix, slots_b, slots_a)

    await slots_a.release(holding)  # names the first waiter ...
    first.cancel()  # ... which goes away without trying
    with anyio.fail_after(5):
        lease = await second
    assert first.cancelled()
    await slots_a.release(lease)


async def test_processes_with_other_limits_use_the_strictest_and_say_so(hubs, caplog):
    """One process says 4, another 8: never more than 4, and an ERROR naming both."""
    from pixelbyte_async import RequestTimeout

    a, b = hubs
    strict = a.slots(4, lease=5, retry_interval=0.05)
    loose = b.slots(8, lease=5, retry_interval=0.05)
    held = [await strict.acquire(timeout=1)]
    await strict.renew(held[0])  # its limit is on record
    held += [await loose.acquire(timeout=1) for _ in range(3)]
    with pytest.raises(RequestTimeout):
        await loose.acquire(timeout=0.3)
    assert await loose.in_use() == 4
    await loose.renew(held[1])
    assert loose.limit_in_force == 4
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert any("limit=4" in e and "limit=8" in e for e in errors), errors
    await strict.release(held.pop(0))
    for lease in held:
        await loose.release(lease)
