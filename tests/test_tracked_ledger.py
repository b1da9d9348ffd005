"""
Tracked jobs keep one contract in every ledger (issue 26): in memory, SQLite, Redis.

A record comes back as written; a lease goes to one owner at a time (taken when
free, run out, or its holder is known dead); only the lease holder finishes a
record; a closing owner releases its leases; finished records are forgotten after
the retention, active ones never.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import anyio
import pytest
from pixelbyte_async._ledger import TrackedRecord

# The ledgers under test, one fixture for both contracts: memory, SQLite, Redis.
from redis_fixture import redis_server_fixture  # noqa: F401 -- fixture
from test_ledger_contract import make_fixture  # noqa: F401 -- fixture


pytestmark = pytest.mark.anyio

KLING = "kling-plus/kling-o1-standard/start-end-frame-to-video"
T0 = 1_800_000_000.0
A, B = "host:1:aaa", "host:2:bbb"

Make = Callable[..., Any]


def record(n: int, **changes: Any) -> TrackedRecord:
    values: dict[str, Any] = {
        "attempt": f"attempt{n:08d}",
        "model": KLING,
        "context": json.dumps({"chat_id": n}),
        "owner": A,
        "lease_until": T0 + 60,
        "created_at": T0 + n,
        "updated_at": T0 + n,
    }
    return TrackedRecord(**{**values, **changes})


async def test_a_record_comes_back_as_written(make):
    ledger = await make()
    await ledger.track(record(1))
    await ledger.track(record(2, context='{"user": "ada"}', group="web"))
    await ledger.tracked_job("attempt00000001", "job_one", at=T0 + 5)
    found = await ledger.tracked()
    assert [r.attempt for r in found] == ["attempt00000001", "attempt00000002"]
    assert found[0].job_id == "job_one"
    assert found[0].updated_at == T0 + 5
    assert found[1].context == '{"user": "ada"}'
    assert found[1] == record(2, context='{"user": "ada"}', group="web")
    assert found[0].group == "default"
    assert await ledger.tracked(states=("handled", "parked")) == []


async def test_a_lease_goes_to_one_owner_at_a_time(make):
    first, second = await make(), await make()
    await first.track(record(1))
    # Held by A until T0 + 60: B cannot take it, A can renew it.
    assert await second.lease("attempt00000001", B, until=T0 + 120, at=T0 + 10) is None
    again = await first.lease("attempt00000001", A, until=T0 + 90, at=T0 + 10)
    assert again is not None
    assert again.lease_until == T0 + 90
    # Run out: B takes it, and then A cannot.
    taken = await second.lease("attempt00000001", B, until=T0 + 200, at=T0 + 91)
    assert taken is not None
    assert taken.owner == B
    assert await first.lease("attempt00000001", A, until=T0 + 300, at=T0 + 92) is None
    # Its holder known dead: taken at once.
    dead = await first.lease("attempt00000001", A, until=T0 + 300, at=T0 + 93, gone={B})
    assert dead is not None
    assert dead.owner == A
    assert await first.lease("attempt_unknown", A, until=T0 + 300, at=T0) is None


async def test_concurrent_leases_give_one_winner(make):
    ledgers = [await make() for _ in range(6)]
    await ledgers[0].track(record(1, owner=None, lease_until=0.0))
    won: list[str] = []

    async def take(n: int) -> None:
        got = await ledgers[n].lease(
            "attempt00000001", f"host:{n}:x", until=T0 + 60, at=T0
        )
        if got is not None:
            won.append(got.owner)

    async with anyio.create_task_group() as tg:
        for n in range(6):
            tg.start_soon(take, n)
    assert len(won) == 1


async def test_only_the_lease_holder_finishes(make):
    ledger = await make()
    await ledger.track(record(1))
    assert not await ledger.finish("attempt00000001", B, state="handled", at=T0 + 2)
    assert await ledger.finish(
        "attempt00000001", A, state="active", at=T0 + 2, failures=1, error="boom"
    )
    (still,) = await ledger.tracked()
    assert (still.failures, still.error) == (1, "boom")
    assert await ledger.finish("attempt00000001", A, state="parked", at=T0 + 3)
    assert await ledger.tracked() == []
    (parked,) = await ledger.tracked(states=("parked",))
    assert (parked.failures, parked.error, parked.state) == (1, "boom", "parked")
    # Nothing more happens to a finished record.
    assert not await ledger.finish("attempt00000001", A, state="handled", at=T0 + 4)
    assert await ledger.lease("attempt00000001", A, until=T0 + 99, at=T0 + 4) is None


async def test_renew_and_release(make):
    ledger = await make()
    await ledger.track(record(1))
    await ledger.track(record(2))
    await ledger.track(record(3, owner=B))
    await ledger.renew(A, until=T0 + 500, at=T0 + 10)
    by = {r.attempt: r for r in await ledger.tracked()}
    assert by["attempt00000001"].lease_until == T0 + 500
    assert by["attempt00000003"].lease_until == T0 + 60
    await ledger.release(A, at=T0 + 11)
    by = {r.attempt: r for r in await ledger.tracked()}
    assert by["attempt00000001"].owner is None
    assert by["attempt00000002"].lease_until == 0
    assert by["attempt00000003"].owner == B
    # Released: anybody may take it now, long before the old lease would end.
    assert await ledger.lease("attempt00000002", B, until=T0 + 99, at=T0 + 12)


async def test_finished_records_are_forgotten_after_the_retention(make):
    ledger = await make(retention=100.0)
    await ledger.track(record(1))
    await ledger.track(record(2))
    assert await ledger.finish("attempt00000001", A, state="handled", at=T0 + 5)
    # Time passes (by the writers' clock): a later write prunes.
    await ledger.track(record(3, created_at=T0 + 400, updated_at=T0 + 400))
    assert await ledger.tracked(states=("handled",)) == []
    assert [r.attempt for r in await ledger.tracked()] == [
        "attempt00000002",
        "attempt00000003",
    ]
