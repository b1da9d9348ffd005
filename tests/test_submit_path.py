"""
What a submit's answer is followed by: the ledger's record of its job, in no
extra turn of the event loop while the ledger need not wait (a batch's
one-at-a-time submits are a chain of such turns), and never lost to a cancel.
"""

from __future__ import annotations

import asyncio

import anyio
import pytest
from pixelbyte_async import KlingO1StartEndFrame, MemoryLedger
from pixelbyte_async._handoff import to_the_end

from conftest import bound_client, until


pytestmark = pytest.mark.anyio


def kling(n: int) -> KlingO1StartEndFrame:
    return KlingO1StartEndFrame(
        image_url=f"https://e.x/{n}.jpg", end_image_url="https://e.x/b.jpg", prompt="p"
    )


def counting_tasks() -> list[asyncio.Task[object]]:
    """Every task created on the running loop from now on."""
    loop = asyncio.get_running_loop()
    made: list[asyncio.Task[object]] = []

    def factory(loop, coro, **kw):  # type: ignore[no-untyped-def]
        task = asyncio.Task(coro, loop=loop, **kw)
        made.append(task)
        return task

    loop.set_task_factory(factory)
    return made


async def test_a_step_that_need_not_wait_runs_inline():
    """No task (and so no turn of the loop): the result comes back at once."""
    done: list[int] = []

    async def step() -> int:
        done.append(1)
        return 7

    made = counting_tasks()
    try:
        assert await to_the_end(step(), inline=True) == 7
    finally:
        asyncio.get_running_loop().set_task_factory(None)
    assert (made, done) == ([], [1])


async def test_a_step_that_waits_ends_even_if_its_caller_is_cancelled():
    gate = asyncio.Event()
    done: list[str] = []

    async def step() -> str:
        done.append("began")
        await gate.wait()
        await asyncio.sleep(0)
        done.append("ended")
        return "x"

    caller = asyncio.ensure_future(to_the_end(step(), inline=True))
    await until(lambda: done == ["began"])
    caller.cancel()
    with pytest.raises(asyncio.CancelledError):
        await caller
    gate.set()
    await until(lambda: done == ["began", "ended"])


@pytest.mark.parametrize("waits", [False, True])
async def test_a_steps_error_reaches_its_caller(waits):
    async def step() -> None:
        if waits:
            await asyncio.sleep(0)
        raise KeyError("k")

    with pytest.raises(KeyError):
        await to_the_end(step(), inline=True)


async def test_a_submits_job_is_claimed_in_the_ledger_even_if_the_caller_gives_up(
    fake,
):
    """The answer came: its claim lands though the awaiting task is cancelled."""
    gate = asyncio.Event()

    class SlowLedger(MemoryLedger):
        async def claim(self, job_id, **kw):  # type: ignore[no-untyped-def]
            await gate.wait()
            return await super().claim(job_id, **kw)

    ledger = SlowLedger()
    async with bound_client(fake, ledger=ledger) as pb:
        submit = asyncio.ensure_future(pb.submit(kling(1)))
        await until(lambda: fake.count("POST", "/v1/jobs/submit") == 1)
        await until(lambda: gate._waiters)  # type: ignore[attr-defined]
        submit.cancel()
        with pytest.raises(asyncio.CancelledError):
            await submit
        gate.set()
        (job,) = [job async for job in pb.list_jobs()]
        for _ in range(100):  # the claim's task finishes within a few turns
            claims = await ledger.claims([job.id])
            if claims:
                break
            await asyncio.sleep(0)
        assert claims[job.id].how == "submitted"


async def test_a_ledger_whose_waits_are_tied_to_its_task_is_shielded_as_a_whole(fake):
    """
    A ledger that does not say ``writes_on_loop`` (as the Redis one, whose reads
    wait inside timeouts of their task) runs in a task of its own from the start.
    """

    class ScopedLedger(MemoryLedger):
        writes_on_loop = False

        async def claim(self, job_id, **kw):  # type: ignore[no-untyped-def]
            with anyio.CancelScope():  # must be left by the task that entered it
                await asyncio.sleep(0)
            return await super().claim(job_id, **kw)

    ledger = ScopedLedger()
    async with bound_client(fake, ledger=ledger) as pb:
        job = await pb.submit(kling(1))
        assert (await ledger.claims([job.id]))[job.id].how == "submitted"


def test_the_ledgers_that_write_on_the_loop_say_so():
    from pixelbyte_async import SqliteLedger
    from pixelbyte_async.redis import RedisLedger

    assert MemoryLedger.writes_on_loop is SqliteLedger.writes_on_loop is True
    assert getattr(RedisLedger, "writes_on_loop", False) is False
