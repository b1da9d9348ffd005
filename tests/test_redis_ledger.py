"""
The hub's Redis as the ledger across machines (issue 21), on a real redis-server.

Two hubs on one server are two machines: with the hub's ledger, each knows the
other's submits, so a lost submit is told from theirs by the ledger alone, where
machines with ledgers of their own must refuse to guess.  While Redis is away,
submits go on and what they wrote reaches Redis once it is back.
"""

from __future__ import annotations

import asyncio

import pytest
from pixelbyte_async import (
    AmbiguousSubmitError,
    KlingO1StartEndFrame,
    LedgerError,
)
from pixelbyte_async._ledger import Attempt, account_id
from pixelbyte_async.testing import FakePixelByte, Fault

from conftest import bound_client
from redis_fixture import (  # noqa: F401 -- fixtures
    hubs_fixture,
    own_redis_fixture,
    prefix_fixture,
    redis_server_fixture,
    require_redis_fixture,
    until,
)


pytestmark = pytest.mark.anyio

SUBMIT = "/v1/jobs/submit"


def kling(prompt: str) -> KlingO1StartEndFrame:
    return KlingO1StartEndFrame(
        image_url="https://e.x/a.jpg",
        end_image_url="https://e.x/b.jpg",
        prompt=prompt,
        duration=5,
    )


def attempt(n: int, state: str) -> Attempt:
    """Attempt *n* of model ``m``, a second apart from the others."""
    return Attempt(
        id=f"attempt{n:08d}",
        model="m",
        started_at=1_800_000_000.0 + n,
        ends_by=1_800_000_060.0 + n,
        state=state,  # type: ignore[arg-type]
        owner="h:1:x",
    )


async def lose_submit(pb, fault: Fault, fake: FakePixelByte, prompt: str = "A"):
    fake.inject(fault, method="POST", path=SUBMIT)
    with pytest.raises(AmbiguousSubmitError) as lost:
        await pb.submit(kling(prompt))
    return lost.value


async def test_a_client_on_a_hub_records_its_submits_in_the_hubs_ledger(fake, hubs):
    a, _ = hubs
    async with bound_client(fake, hub=a) as pb:
        assert pb.ledger is a.ledger(account=account_id(fake.api_key))
        assert "redis://" in pb.ledger.where
        job = await pb.submit(kling("mine"))
    assert a.running  # the client borrowed the hub's ledger and left it open
    claim = (await a.ledger(account=account_id(fake.api_key)).claims([job.id]))[job.id]
    assert claim.how == "submitted"
    async with bound_client(fake, hub=a, ledger=None) as pb:
        assert pb.ledger.where == "memory"


@pytest.mark.parametrize("fault", ["drop_before", "late_create"])
async def test_two_machines_sharing_a_hub_tell_their_jobs_apart(
    fake, hubs, fault, monkeypatch
):
    """
    The case where separate ledgers must refuse (tests/test_shared_account.py).

    B is an active submitter on another machine; A's submit is lost and B submits
    the same model just after.  Through the hub's ledger every job B made is
    explained, so A finds no job (nothing was created) or its own late one, and
    never B's.
    """
    monkeypatch.setenv("PIXELBYTE_LEDGER", ":memory:")  # no file shared either
    hub_a, hub_b = hubs
    async with bound_client(fake, hub=hub_a) as a, bound_client(fake, hub=hub_b) as b:
        await b.submit(kling("B earlier"))
        fake.advance(20)
        lost = await lose_submit(
            a,
            Fault.drop_before() if fault == "drop_before" else Fault.late_create(30),
            fake,
        )
        theirs = await b.submit(kling("B"))
        found = await a.reconcile(lost)
    if fault == "drop_before":
        assert found is None
        assert len(fake.jobs) == 2
    else:
        assert found is not None
        assert found.id != theirs.id
        assert fake.jobs[found.id].input["prompt"] == "A"
    assert fake.jobs[theirs.id].input["prompt"] == "B"
    assert fake.ledger.double_charged() == []


async def test_concurrent_claims_from_two_machines_give_each_job_one_attempt(hubs):
    a, b = (hub.ledger(account="acct") for hub in hubs)
    attempts = [attempt(n, "unknown") for n in range(40)]
    for made in attempts:
        await a.begin(made)
    for job in range(10):
        answers = await asyncio.gather(
            *(
                (a if n % 2 else b).claim(
                    f"job_{job}", how="list", at=1_800_000_100.0, attempt=made.id
                )
                for n, made in enumerate(attempts)
            )
        )
        winners = [
            made.id for made, got in zip(attempts, answers, strict=True) if got is None
        ]
        assert len(winners) == 1
        attempts = [made for made in attempts if made.id not in winners]
    assert len(await a.attempts(model="m", since=0, until=2e9, open_only=True)) == 30


async def test_the_api_key_never_reaches_redis(fake, hubs, redis_server, prefix):
    a, _ = hubs
    async with bound_client(fake, hub=a) as pb:
        await pb.submit(kling("mine"))
        await lose_submit(pb, Fault.drop_before(), fake)
    async with redis_server.client() as redis:
        keys = [k async for k in redis.scan_iter(match=f"{prefix}:*")]
        assert any(b":la:" in k for k in keys)  # attempts are there
        for key in keys:
            kind = (await redis.type(key)).decode()
            value = {
                "hash": redis.hgetall,
                "zset": lambda k: redis.zrange(k, 0, -1),
                "string": redis.get,
            }[kind](key)
            dumped = repr(await value) + key.decode()
            assert fake.api_key not in dumped
            assert "SECRET" not in dumped


async def test_submits_go_on_while_redis_is_away_and_reach_it_when_it_is_back(
    fake, own_redis, prefix, caplog
):
    from pixelbyte_async.redis import RedisHub

    hub = RedisHub(own_redis.url, key_prefix=prefix, reconnect_max=0.2)
    async with bound_client(fake, hub=hub, max_concurrent_jobs=None) as pb:
        ledger = pb.ledger
        before = await pb.submit(kling("before"))
        own_redis.stop()
        await until(lambda: not hub.healthy)
        during = await pb.submit(kling("during"))
        lost = await lose_submit(pb, Fault.drop_before(), fake)
        assert ledger.pending >= 3  # type: ignore[attr-defined]
        # This process's own records are still readable ...
        mine = await ledger.attempt(lost.attempt)
        assert mine is not None
        assert mine.state == "unknown"
        # ... but whose job is whose needs every machine's word.
        with pytest.raises(LedgerError, match="unreachable"):
            await ledger.claims([during.id])
        with pytest.raises(LedgerError, match="unreachable"):
            await ledger.claim(before.id, how="list", at=fake.clock.time(), attempt="x")
        with pytest.raises(LedgerError, match="unreachable"):
            await pb.reconcile(lost)
        own_redis.start()
        await until(lambda: hub.healthy)
        assert ledger.pending == 0  # type: ignore[attr-defined]
        assert "were made while Redis was away" not in caplog.text
    # Another machine (a fresh hub) sees what was written during the outage.
    async with RedisHub(own_redis.url, key_prefix=prefix) as other:
        theirs = other.ledger(account=account_id(fake.api_key))
        claims = await theirs.claims([before.id, during.id])
        # Redis restarted without persistence: what it held before is gone,
        # what was written while it was away is there.
        assert set(claims) == {during.id}
        assert claims[during.id].how == "submitted"
        recorded = await theirs.attempt(lost.attempt)
        assert recorded is not None
        assert recorded.state == "unknown"


@pytest.mark.parametrize("seed", [11, 12])
async def test_two_apps_on_two_machines_sharing_a_hub(redis_server, prefix, seed):
    """
    The chaos run of tests/test_chaos.py on two machines that share a hub's
    ledger: 0 double charges, 0 wrong adoptions, 0 foreign cancellations.
    """
    import random

    from pixelbyte_async.redis import RedisHub

    from test_chaos import assert_safe, shared_account_faults, two_apps

    rng = random.Random(seed)  # noqa: S311 -- fault placement, not security
    async with FakePixelByte() as fake:
        began = shared_account_faults(fake, rng)
        async with (
            RedisHub(redis_server.url, key_prefix=prefix) as hub_a,
            RedisHub(redis_server.url, key_prefix=prefix) as hub_b,
            bound_client(fake, hub=hub_a, max_concurrent_jobs=40) as pa,
            bound_client(fake, hub=hub_b, max_concurrent_jobs=40) as pb,
        ):
            apps, cancelled = await two_apps(fake, pa, pb, rng, began)
    assert_safe(fake, apps, cancelled)


async def test_a_burst_of_writes_waits_for_connections_instead_of_an_outage(
    hubs, caplog
):
    """300 submits' records at once: more than redis-py's pool had, no false outage."""
    a, _ = hubs
    ledger = a.ledger(account="burst")
    await asyncio.gather(*(ledger.begin(attempt(n, "sending")) for n in range(300)))
    assert a.healthy
    assert ledger.pending == 0
    assert "unreachable" not in caplog.text
    assert len(await ledger.attempts(model="m", since=0, until=2e9)) == 300
