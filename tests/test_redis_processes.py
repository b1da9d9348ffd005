"""RedisHub across real processes: one publisher, several waiting workers."""

from __future__ import annotations

import pytest

from redis_fixture import (  # noqa: F401 -- fixtures
    finish,
    prefix_fixture,
    read_line,
    redis_server_fixture,
    require_redis,
    spawn,
)


pytestmark = pytest.mark.anyio

JOBS = 60


@pytest.fixture(autouse=True)
def _require_redis():
    require_redis()


async def test_one_publisher_resolves_the_waits_of_three_processes(
    redis_server, prefix
):
    """
    Three worker processes wait on all jobs; a fourth publishes each delivery
    twice (the API retries): every wait resolves once, with the event's status and
    attempt, and only the first publish of each job counts.
    """
    waiters = [
        await spawn("wait", redis_server.url, prefix, f"--jobs=0:{JOBS}")
        for _ in range(3)
    ]
    for proc in waiters:
        assert await read_line(proc) == "READY"

    publisher = await spawn(
        "publish", redis_server.url, prefix, f"--jobs=0:{JOBS}", "--rounds=2"
    )
    published = await finish(publisher)
    results = [await finish(proc) for proc in waiters]

    assert (published["first"], published["dup"]) == (JOBS, JOBS)
    expected = {
        f"job-{i}": "failed" if i % 5 == 0 else "completed" for i in range(JOBS)
    }
    for result in results:
        assert result["statuses"] == expected
        assert result["attempts"] == {job: f"a{job}" for job in expected}
        assert result["stats"]["delivered"] == JOBS
        assert result["waiting"] == 0


async def test_a_process_started_after_the_deliveries_sees_them_all(
    redis_server, prefix
):
    """A worker that starts late resolves every wait from the stored events."""
    publisher = await spawn("publish", redis_server.url, prefix, "--jobs=0:20")
    assert (await finish(publisher))["first"] == 20

    late = await spawn("wait", redis_server.url, prefix, "--jobs=0:20")
    assert await read_line(late) == "READY"
    result = await finish(late)

    assert len(result["statuses"]) == 20
    assert result["stats"]["delivered"] == 20
