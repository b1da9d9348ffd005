"""
Every ledger keeps one contract: in memory, in an SQLite file, in a hub's Redis.

The same tests run against each `SubmitLedger`: what is recorded comes back as
it was written, one job goes to one attempt whoever claims first, a submit's own
answer beats an inferred claim, reads filter as documented, and entries are
forgotten after the retention (by the writers' clock).
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from pixelbyte_async import MemoryLedger, SqliteLedger
from pixelbyte_async._ledger import Attempt, SubmitLedger

from redis_fixture import redis_server_fixture, require_redis  # noqa: F401 -- fixture


pytestmark = pytest.mark.anyio

KLING = "kling-plus/kling-o1-standard/start-end-frame-to-video"
OTHER = "other/model"
T0 = 1_800_000_000.0

Make = Callable[..., Any]


def attempt(n: int, **changes: Any) -> Attempt:
    values: dict[str, Any] = {
        "id": f"attempt{n:08d}",
        "model": KLING,
        "started_at": T0 + n,
        "ends_by": T0 + 60 + n,
        "state": "sending",
        "owner": "host:1:abc",
    }
    return Attempt(**{**values, **changes})


def aid(n: int) -> str:
    return f"attempt{n:08d}"


@pytest.fixture(name="make", params=["memory", "sqlite", "redis"])
async def make_fixture(request, tmp_path) -> AsyncIterator[Make]:
    """``make(account=..., retention=...)``: a ledger of the kind under test."""
    made: list[Any] = []
    hubs: list[Any] = []
    kind = request.param
    shared = MemoryLedger()  # one store for every "process" of the memory kind
    prefix = "t" + uuid.uuid4().hex[:10]
    if kind == "redis":
        require_redis()
        server = request.getfixturevalue("redis_server")

    async def make(account: str = "a", retention: float = 86_400.0) -> SubmitLedger:
        if kind == "memory":
            return (
                shared
                if retention == shared.retention
                else MemoryLedger(retention=retention)
            )
        if kind == "sqlite":
            ledger: Any = SqliteLedger(
                tmp_path / "l.sqlite3", account=account, retention=retention
            )
            made.append(ledger)
            return ledger
        from pixelbyte_async.redis import RedisHub

        hub = RedisHub(server.url, key_prefix=prefix)  # one hub: one "machine"
        await hub.start()
        hubs.append(hub)
        return hub.ledger(account=account, retention=retention)

    make.kind = kind  # type: ignore[attr-defined]
    yield make
    for ledger in made:
        await ledger.aclose()
    for hub in hubs:
        await hub.aclose()


async def test_an_attempt_comes_back_as_it_was_written(make):
    ledger = await make()
    full = attempt(
        1, tagged=True, list_price=250_000, offset=(-0.5, 1.25), owner="h:2:x"
    )
    await ledger.begin(full)
    await ledger.begin(attempt(2))
    assert await ledger.attempt(aid(1)) == full
    assert await ledger.attempt(aid(2)) == attempt(2)
    assert await ledger.attempt("nobody") is None
    await ledger.mark(aid(1), "unknown", at=T0 + 5)
    moved = await ledger.attempt(aid(1))
    assert moved is not None
    assert moved.state == "unknown"
    assert moved.list_price == 250_000
    await ledger.mark("nobody", "none", at=T0 + 5)  # no such attempt: no record
    assert await ledger.attempt("nobody") is None


async def test_one_job_one_attempt_whoever_claims_first(make):
    first, second = await make(), await make()
    for n in (1, 2, 3):
        await first.begin(attempt(n))
    assert await first.claim("job_1", how="list", at=T0 + 9, attempt=aid(1)) is None
    # Claiming again the same way is harmless.
    assert await second.claim("job_1", how="list", at=T0 + 9, attempt=aid(1)) is None
    in_the_way = await second.claim("job_1", how="delivery", at=T0 + 9, attempt=aid(2))
    assert in_the_way is not None
    assert (in_the_way.attempt, in_the_way.how) == (aid(1), "list")
    # An attempt makes one job at most.
    in_the_way = await second.claim("job_2", how="list", at=T0 + 9, attempt=aid(1))
    assert in_the_way is not None
    assert in_the_way.job_id == "job_1"
    # A claim with no attempt (a person's) is refused on a claimed job too.
    assert await second.claim("job_1", how="person", at=T0 + 9) is not None
    found = await first.attempt(aid(1))
    assert found is not None
    assert (found.state, found.job_id) == ("found", "job_1")
    claims = await second.claims(["job_1", "job_2", "job_9"])
    assert set(claims) == {"job_1"}
    assert claims["job_1"].attempt == aid(1)


async def test_a_submits_own_answer_beats_an_inferred_claim(make, caplog):
    first, second = await make(), await make()
    await first.begin(attempt(1))
    await first.begin(attempt(2))
    assert await first.claim("job_1", how="list", at=T0 + 9, attempt=aid(1)) is None
    assert (
        await second.claim("job_1", how="submitted", at=T0 + 10, attempt=aid(2)) is None
    )
    assert "its own submit's answer" in caplog.text
    winner, loser = await second.attempt(aid(2)), await first.attempt(aid(1))
    assert winner is not None
    assert (winner.state, winner.job_id) == ("created", "job_1")
    assert loser is not None
    assert (loser.state, loser.job_id) == ("unknown", None)
    assert (await first.claims(["job_1"]))["job_1"].attempt == aid(2)
    # The loser is open again: it may claim another job.
    assert await first.claim("job_3", how="list", at=T0 + 11, attempt=aid(1)) is None
    # A submit's answer does not displace another submit's answer.
    assert (
        await first.claim("job_1", how="submitted", at=T0 + 12, attempt=aid(3))
        is not None
    )


async def test_attempts_are_read_by_model_window_and_openness(make):
    ledger = await make()
    await ledger.begin(attempt(1))
    await ledger.begin(attempt(2, model=OTHER))
    await ledger.begin(attempt(3))
    await ledger.begin(attempt(40))
    await ledger.mark(aid(3), "none", at=T0 + 50)
    window = {"since": T0, "until": T0 + 10}
    assert {a.id for a in await ledger.attempts(model=KLING, **window)} == {
        aid(1),
        aid(3),
    }
    assert {a.id for a in await ledger.attempts(model=None, **window)} == {
        aid(1),
        aid(2),
        aid(3),
    }
    assert {
        a.id for a in await ledger.attempts(model=KLING, open_only=True, **window)
    } == {aid(1)}
    everything = await ledger.attempts(model=KLING, since=T0, until=T0 + 100)
    assert {a.id for a in everything} == {aid(1), aid(3), aid(40)}


async def test_many_claims_are_read_at_once(make):
    ledger = await make()
    for n in range(1_200):
        assert await ledger.claim(f"job_{n}", how="person", at=T0) is None
    wanted = [f"job_{n}" for n in range(0, 2_400, 2)]
    found = await ledger.claims(wanted)
    assert set(found) == {f"job_{n}" for n in range(0, 1_200, 2)}
    assert await ledger.claims([]) == {}


async def test_a_ledger_is_bounded_by_time(make):
    ledger = await make(retention=100.0)
    await ledger.begin(attempt(1, started_at=1000.0))
    await ledger.claim("job_1", how="submitted", at=1000.0, attempt=aid(1))
    await ledger.begin(attempt(2, started_at=1200.0))  # forgets what is 100 s older
    assert await ledger.attempt(aid(1)) is None
    assert await ledger.claims(["job_1"]) == {}
    assert [a.id for a in await ledger.attempts(model=None, since=0, until=2e9)] == [
        aid(2)
    ]


async def test_accounts_are_kept_apart(make):
    if make.kind == "memory":
        pytest.skip("a memory ledger is one account's by construction")
    mine, theirs = await make(account="a"), await make(account="b")
    await mine.begin(attempt(1))
    await mine.claim("job_1", how="submitted", at=T0, attempt=aid(1))
    assert await theirs.claims(["job_1"]) == {}
    assert await theirs.attempt(aid(1)) is None
    assert await theirs.attempts(model=None, since=0, until=2e9) == []
    assert await theirs.claim("job_1", how="person", at=T0) is None
