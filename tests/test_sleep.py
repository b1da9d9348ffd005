"""`sleep_or_until` and `resolve`: how soon a parked wait resumes, and no leak."""

from __future__ import annotations

import asyncio
import gc
import weakref

import pytest
from pixelbyte_async._clock import SystemClock, _sleepers, resolve, sleep_or_until


pytestmark = pytest.mark.anyio


async def _turns_until_resumed(complete) -> int:
    """Park a sleeper on a future, *complete* it, count loop turns until it runs."""
    future = asyncio.get_running_loop().create_future()
    resumed = []

    async def sleeper() -> None:
        await sleep_or_until(SystemClock(), 60, future)
        resumed.append(True)

    task = asyncio.ensure_future(sleeper())
    await asyncio.sleep(0)  # parked
    complete(future)
    turns = 0
    while not resumed:
        await asyncio.sleep(0)
        turns += 1
    await task
    return turns


async def test_resolve_resumes_a_parked_wait_in_the_next_loop_turn():
    """
    A delivery resolves its job's future with `resolve`: the wait runs in the next
    turn, where a plain set_result takes two (the callback, then the task), so
    other work queued meanwhile does not come in between.
    """
    assert await _turns_until_resumed(lambda f: resolve(f, "event")) == 1
    assert await _turns_until_resumed(lambda f: f.set_result("event")) == 2


async def test_every_sleeper_of_a_future_is_woken_and_none_is_kept():
    loop = asyncio.get_running_loop()
    shared, other = loop.create_future(), loop.create_future()
    clock = SystemClock()
    sleepers = [
        asyncio.ensure_future(sleep_or_until(clock, 60, shared, other))
        for _ in range(3)
    ]
    timed_out = asyncio.ensure_future(sleep_or_until(clock, 0.001, other))
    await asyncio.sleep(0)
    assert len(_sleepers[shared]) == 3

    resolve(shared, "event")
    await asyncio.wait_for(asyncio.gather(*sleepers, timed_out), 5)

    assert shared not in _sleepers
    assert _sleepers.get(other, []) == []  # each left its place on the way out
    kept = weakref.ref(other)
    del other, timed_out, sleepers
    gc.collect()
    assert kept() is None  # the registry holds its futures weakly
