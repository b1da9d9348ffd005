"""
The client's job slots under fan-out: a freed slot goes to the next waiter, in order.

`asyncio.gather` over every input is the pattern the README recommends; with
hundreds of submits queued for a few slots, each release must wake one waiter (the
slot is handed over, as `asyncio.Semaphore` does), and the duty of checking on
unwatched jobs must be one task, not every waiter.  Counted, never timed.
"""

from __future__ import annotations

import asyncio

import pytest
from pixelbyte_async import ClientConfig, RequestTimeout, VirtualClock
from pixelbyte_async._slots import JobSlots


pytestmark = pytest.mark.anyio

CONFIG = ClientConfig(api_key="pb_test_slots")


class Counted(JobSlots):
    """JobSlots that count their sweeps (each one walks every job in flight)."""

    sweeps = 0

    async def _sweep(self, clock, config, deadline):
        self.sweeps += 1
        await super()._sweep(clock, config, deadline)


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def test_each_release_hands_the_slot_to_the_next_waiter_in_order():
    clock = VirtualClock(autojump=False)  # time stands still: only releases wake
    slots = Counted(2)
    admitted: list[int] = []

    async def submit(n: int) -> None:
        await slots.acquire(clock, CONFIG, None)
        admitted.append(n)

    waiters = [asyncio.ensure_future(submit(n)) for n in range(300)]
    await settle()
    assert admitted == [0, 1]
    for n in range(2, 300):
        slots.free(None)
        await settle()
        assert admitted[-1] == n  # the next in line, and only it
    assert admitted == list(range(300))
    assert slots.used == 2
    await asyncio.gather(*waiters)
    # One sweeper for the whole queue (time never moved: it swept once), where
    # every waiter used to sweep at each release: 298 x 149 sweeps.
    assert slots.sweeps <= 2


async def test_a_waiter_that_gives_up_passes_its_turn_on():
    clock = VirtualClock(autojump=False)
    slots = JobSlots(1)
    await slots.acquire(clock, CONFIG, None)
    first = asyncio.ensure_future(slots.acquire(clock, CONFIG, None))
    second = asyncio.ensure_future(slots.acquire(clock, CONFIG, None))
    await settle()
    first.cancel()
    await settle()
    slots.free(None)
    await settle()
    assert second.done()
    assert slots.used == 1
    # Cancelled after the slot was handed to it: the slot goes on, not lost.
    third = asyncio.ensure_future(slots.acquire(clock, CONFIG, None))
    fourth = asyncio.ensure_future(slots.acquire(clock, CONFIG, None))
    await settle()
    slots.free(None)  # handed to third ...
    third.cancel()  # ... which is cancelled before it runs
    await settle()
    assert fourth.done()
    assert slots.used == 1


async def test_a_waiter_times_out_on_its_own_deadline():
    clock = VirtualClock()  # autojump: the timeout passes at once
    slots = JobSlots(1)
    await slots.acquire(clock, CONFIG, None)
    with pytest.raises(RequestTimeout, match="no job slot freed"):
        await slots.acquire(clock, CONFIG, 30)
    assert slots.used == 1
    slots.free(None)
    await slots.acquire(clock, CONFIG, 0)  # free now: no wait
    assert slots.used == 1
