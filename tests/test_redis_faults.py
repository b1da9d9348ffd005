"""
RedisHub when Redis goes away: no wait hangs, health is told once, slots degrade.

The lessons of Celery's Redis result backend: waits hanging forever after a Redis
restart, results lost while Redis is away, and a reconnect that must also catch up
on what changed during the outage.
"""

from __future__ import annotations

import asyncio
import logging

import anyio
import pytest

from redis_fixture import (  # noqa: F401 -- fixtures
    make_event,
    own_redis_fixture,
    persistent_redis_fixture,
    prefix_fixture,
    redis_server_fixture,
    require_redis,
    until,
)


pytestmark = pytest.mark.anyio

WAIT = 10.0  # seconds any single wait may take before the test fails
QUICK = {"reconnect_initial": 0.05, "reconnect_max": 0.2, "connect_timeout": 2.0}


@pytest.fixture(autouse=True)
def _require_redis():
    require_redis()


class Health:
    """Records a hub's health transitions and lets a test await them."""

    def __init__(self) -> None:
        self.changes: list[bool] = []
        self._changed = asyncio.Event()

    def __call__(self, healthy: bool) -> None:
        self.changes.append(healthy)
        self._changed.set()

    async def becomes(self, healthy: bool) -> None:
        with anyio.fail_after(WAIT):
            while not self.changes or self.changes[-1] is not healthy:
                self._changed.clear()
                await self._changed.wait()


def unreachable_warnings(caplog) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == "pixelbyte_async"
        and r.levelno == logging.WARNING
        and "unreachable" in r.getMessage()
    ]


async def test_a_redis_restart_mid_run_hangs_no_wait(own_redis, prefix, caplog):
    """
    Redis stops and starts again on the same port: health goes false then true
    (one WARNING per hub), an event published meanwhile resolves the other
    process's wait after the reconnect, and slots degrade then recover.
    """
    from pixelbyte_async import RequestTimeout
    from pixelbyte_async.redis import HubUnavailable, RedisHub

    health = Health()
    url = own_redis.url
    async with (
        RedisHub(url, key_prefix=prefix, on_health=health, **QUICK) as a,
        RedisHub(url, key_prefix=prefix, **QUICK) as b,
    ):
        slots = a.slots(4, lease=3, fallback_limit=2, retry_interval=0.05)
        first = await slots.acquire(timeout=1)
        assert await slots.in_use() == 1
        future = a.future_for("job_outage")
        b_future = b.future_for("job_outage")

        with caplog.at_level(logging.INFO, logger="pixelbyte_async"):
            own_redis.stop()
            await health.becomes(False)
            assert not a.healthy

            # Delivered to b while Redis is away: b's own waiter gets it at once,
            # and b keeps it for re-publication; the API should retry (503).
            with pytest.raises(HubUnavailable):
                await b.publish(make_event("job_outage"))
            assert b_future.done()
            assert not future.done()

            # Slots fall back to the per-process limit (2, one already held).
            second = await slots.acquire(timeout=0)
            with pytest.raises(RequestTimeout):
                await slots.acquire(timeout=0)
            assert slots.fallback_admissions == 1

            own_redis.start()
            await health.becomes(True)
            with anyio.fail_after(WAIT):
                event = await future

        assert event.job_id == "job_outage"
        assert health.changes == [True, False, True]
        warnings = unreachable_warnings(caplog)
        assert len(warnings) == 2, warnings  # one for a, one for b
        assert "admit up to 2 jobs in this process" in " ".join(warnings)
        assert "is back after" in caplog.text

        # Both leases (the one from before, the one admitted locally) count again,
        # and as Redis lost its data, admissions hold for a renewal interval
        # (while other processes register theirs).
        await until(_equals(slots.in_use, 2), WAIT)
        third = await slots.acquire(timeout=WAIT)
        assert await slots.in_use() == 3
        for lease in (first, second, third):
            await slots.release(lease)
        assert await slots.in_use() == 0


async def test_after_a_restart_that_lost_redis_data_waits_are_watched_again(
    own_redis, prefix
):
    """
    Redis restarts empty (no persistence): it no longer knows which process
    watches which job, so each hub watches its waited-for jobs again on
    reconnection, and a delivery that comes later still reaches them.
    """
    from pixelbyte_async.redis import RedisHub

    health = Health()
    url = own_redis.url
    async with (
        RedisHub(url, key_prefix=prefix, on_health=health, **QUICK) as a,
        RedisHub(url, key_prefix=prefix, **QUICK) as b,
    ):
        future = a.future_for("job_after_restart")
        await a.refresh()
        own_redis.stop()
        await health.becomes(False)
        own_redis.start()
        await health.becomes(True)
        await until(lambda: b.healthy, WAIT)

        assert await b.publish(make_event("job_after_restart")) is True
        with anyio.fail_after(WAIT):
            event = await future
    assert event.job_id == "job_after_restart"
    assert a.stats["delivered"] == 1


def _equals(read, expected):
    async def check() -> bool:
        try:
            return expected == await read()
        except Exception:
            return False

    return check


async def _kill_subscriber(server, client_name: str) -> None:
    """CLIENT KILL the pub/sub connection of the hub named *client_name*."""
    async with server.client() as raw:
        clients = await raw.client_list(_type="pubsub")
        ids = [c["id"] for c in clients if c.get("name") == client_name]
        assert len(ids) == 1, clients
        await raw.execute_command("CLIENT", "KILL", "ID", ids[0])


async def test_the_reconnect_catches_up_on_events_missed_meanwhile(
    redis_server, prefix
):
    """
    Events published while a process was unsubscribed resolve its waits when
    it re-reads the stored state after re-subscribing (its reconnect is held
    back by a virtual clock, so the message is surely missed).
    """
    from pixelbyte_async import VirtualClock
    from pixelbyte_async.redis import RedisHub

    clock = VirtualClock(autojump=False)
    health = Health()
    async with (
        RedisHub(
            redis_server.url,
            key_prefix=prefix,
            clock=clock,
            on_health=health,
            redis_options={"client_name": f"{prefix}-a"},
        ) as a,
        RedisHub(redis_server.url, key_prefix=prefix) as b,
    ):
        before = a.future_for("job_missed")
        outage = a.outage()
        assert not outage.done()
        await _kill_subscriber(redis_server, f"{prefix}-a")
        await health.becomes(False)
        assert outage.done()
        assert a.outage().done()  # while it lasts
        during = a.future_for("job_missed_too")  # registered while away

        assert await b.publish(make_event("job_missed")) is True
        assert await b.publish(make_event("job_missed_too", "failed")) is True
        assert not before.done()
        assert not during.done()

        clock.advance(60)  # the reconnect pause ends
        with anyio.fail_after(WAIT):
            events = await asyncio.gather(before, during)

        assert [e.job_id for e in events] == ["job_missed", "job_missed_too"]
        assert a.stats["caught_up"] == 2
        assert a.healthy
        assert not a.outage().done()
        assert health.changes == [True, False, True]


async def test_a_hub_started_while_redis_is_down_connects_later(
    own_redis, prefix, caplog
):
    """start() returns even with Redis down (one WARNING); waits resolve once up."""
    from pixelbyte_async.redis import RedisHub

    own_redis.stop()
    health = Health()
    with caplog.at_level(logging.WARNING, logger="pixelbyte_async"):
        async with RedisHub(
            own_redis.url, key_prefix=prefix, on_health=health, **QUICK
        ) as hub:
            assert not hub.healthy
            future = hub.future_for("job_boot")
            own_redis.start()
            await health.becomes(True)
            async with RedisHub(own_redis.url, key_prefix=prefix) as other:
                await other.publish(make_event("job_boot"))
            with anyio.fail_after(WAIT):
                await future

    assert len(unreachable_warnings(caplog)) == 1
    assert hub.stats["reconnects"] >= 1


async def test_a_silent_redis_is_noticed_by_the_ping(redis_server, prefix):
    """A Redis that stops answering (CLIENT PAUSE) turns the hub unhealthy, then back."""
    from pixelbyte_async.redis import RedisHub

    health = Health()
    async with RedisHub(
        redis_server.url,
        key_prefix=prefix,
        on_health=health,
        ping_interval=0.2,
        **QUICK,
    ) as hub:
        assert hub.healthy
        async with redis_server.client() as raw:
            await raw.execute_command("CLIENT", "PAUSE", "1500", "ALL")
        await health.becomes(False)
        await health.becomes(True)

    assert health.changes == [True, False, True]


async def test_slots_never_wait_forever_nor_admit_without_limit(own_redis, prefix):
    """Redis away: the per-process fallback admits, frees and times out locally."""
    from pixelbyte_async import RequestTimeout
    from pixelbyte_async.redis import RedisHub

    health = Health()
    async with RedisHub(
        own_redis.url, key_prefix=prefix, on_health=health, **QUICK
    ) as hub:
        slots = hub.slots(10, fallback_limit=1, retry_interval=0.05)
        own_redis.stop()
        await health.becomes(False)

        only = await slots.acquire(timeout=0)
        waiter = asyncio.ensure_future(slots.acquire(timeout=WAIT))
        await asyncio.sleep(0)
        assert not waiter.done()
        await slots.release(only)  # a local release wakes the local waiter
        with anyio.fail_after(WAIT):
            lease = await waiter
        with pytest.raises(RequestTimeout, match="no job slot"):
            await slots.acquire(timeout=0.05)
        assert slots.fallback_admissions == 2
        assert {lease: None} == slots.leases()
        own_redis.start()
        await health.becomes(True)
        await until(_equals(slots.in_use, 1), WAIT)


async def test_by_default_no_slot_is_admitted_while_redis_is_away(own_redis, prefix):
    """Nobody can count the account's jobs: held slots stay, none is added."""
    from pixelbyte_async import RequestTimeout
    from pixelbyte_async.redis import RedisHub

    health = Health()
    async with RedisHub(
        own_redis.url, key_prefix=prefix, on_health=health, **QUICK
    ) as hub:
        slots = hub.slots(10, lease=3, retry_interval=0.05)
        held = await slots.acquire(timeout=1)
        own_redis.stop()
        await health.becomes(False)
        with pytest.raises(RequestTimeout, match="no job slot"):
            await slots.acquire(timeout=0.2)
        waiter = asyncio.ensure_future(slots.acquire(timeout=WAIT))
        assert slots.fallback_admissions == 0
        assert list(slots.leases()) == [held]
        own_redis.start()  # its data is lost: the held lease is registered again
        with anyio.fail_after(WAIT):
            second = await waiter
        assert await slots.in_use() == 2
        for lease in (held, second):
            await slots.release(lease)


async def test_releases_made_while_redis_is_away_reach_it_when_it_is_back(
    persistent_redis, prefix
):
    """Redis keeps its data: a slot released meanwhile is free as soon as it is back."""
    from pixelbyte_async.redis import RedisHub

    health = Health()
    async with RedisHub(
        persistent_redis.url, key_prefix=prefix, on_health=health, **QUICK
    ) as hub:
        slots = hub.slots(2, lease=60, retry_interval=0.05)
        first, second = [await slots.acquire(timeout=1) for _ in range(2)]
        slots.bind(first, "job-a")
        slots.bind(second, "job-b")
        await slots.renew(first)  # bound in Redis, and written to its file
        persistent_redis.stop()
        await health.becomes(False)
        await slots.release(second)  # job-b ended while Redis was away
        persistent_redis.start()
        await health.becomes(True)
        # Given back during the reconnection, before anyone could be admitted:
        # not held by a finished job until its lease expires (60 s).
        assert await slots.in_use() == 1
        third = await slots.acquire(timeout=1)
        for lease in (first, third):
            await slots.release(lease)
        assert await slots.in_use() == 0


async def test_aclose_ends_even_when_a_read_swallows_its_cancellation(
    redis_server, prefix, monkeypatch
):
    """
    A redis-py read can swallow the cancellation that stops the hub's listener
    (seen once in 20 bench runs: a publisher's `async with RedisHub` never
    returned).  The listener checks that the hub is closing after every read,
    and `aclose` closes the connection under a read that outlives the cancel.
    """
    import redis.asyncio.client
    from pixelbyte_async.redis import RedisHub

    read = redis.asyncio.client.PubSub.get_message
    swallowed = []

    async def swallowing(self, *args, **kwargs):
        try:
            return await read(self, *args, **kwargs)
        except asyncio.CancelledError:
            if swallowed:
                raise
            swallowed.append(True)
            return None

    monkeypatch.setattr(redis.asyncio.client.PubSub, "get_message", swallowing)
    hub = RedisHub(
        redis_server.url, key_prefix=prefix, ping_interval=30, connect_timeout=1
    )
    await hub.start()
    assert hub.healthy
    with anyio.fail_after(5):
        await hub.aclose()
    assert swallowed
    assert not hub.running


async def test_a_partitioned_process_keeps_its_jobs_slots(redis_server, prefix):
    """
    A's link to Redis goes silent for longer than a lease while its jobs run:
    its leases expire but its slots stay taken, B admits nothing past the
    limit, and A's slots are its own again when the link is back.
    """
    from pixelbyte_async import RequestTimeout
    from pixelbyte_async.redis import RedisHub

    from redis_fixture import Proxy

    async with Proxy(redis_server.port) as proxy:
        a = RedisHub(proxy.url(), key_prefix=prefix, ping_interval=0.3, **QUICK)
        async with a, RedisHub(redis_server.url, key_prefix=prefix, **QUICK) as b:
            mine = a.slots(2, lease=1, retry_interval=0.05)
            theirs = b.slots(2, lease=1, retry_interval=0.05)
            held = [await mine.acquire(timeout=1) for _ in range(2)]
            for n, lease in enumerate(held):
                mine.bind(lease, f"job-part-{n}")
            await mine.renew(held[0])
            proxy.freeze()
            await until(lambda: not a.healthy, WAIT)
            with pytest.raises(RequestTimeout):
                await theirs.acquire(timeout=2.5)  # 2.5 leases: A's have expired
            assert await theirs.in_use() == 2
            proxy.thaw()
            await until(lambda: a.healthy, 3 * WAIT)
            assert await theirs.in_use() == 2
            await mine.release(held[0])
            lease = await theirs.acquire(timeout=WAIT)
            await theirs.release(lease)
            await mine.release(held[1])
            assert await theirs.in_use() == 0
