"""
The API's clock, measured: every answer's ``Date`` header bounds its offset from ours.

Issue 21 ("narrow the windows with measured time"): reconcile and the audit bound
their windows by what was measured, seconds instead of a fixed 120 s.
"""

from __future__ import annotations

import email.utils

import pytest
from pixelbyte_async import KlingO1StartEndFrame, NotFound
from pixelbyte_async._clock import ServerOffset
from pixelbyte_async.testing import FakePixelByte

from conftest import bound_client


pytestmark = pytest.mark.anyio

REQUEST = KlingO1StartEndFrame(
    image_url="https://e.x/a.jpg", end_image_url="https://e.x/b.jpg"
)


def date(unix: float) -> str:
    return email.utils.formatdate(unix, usegmt=True)


def test_unknown_until_a_date_is_seen():
    offset = ServerOffset()
    assert not offset.known
    assert offset.bounds(120.0) == (-120.0, 120.0)
    offset.observe(None, sent=10.0, received=10.5)
    offset.observe("not a date", sent=10.0, received=10.5)
    assert not offset.known


def test_one_answer_bounds_the_offset_by_its_second_and_round_trip():
    """A Date of second D seen between our t0 and t1: offset in [D - t1, D + 1 - t0]."""
    offset = ServerOffset()
    server_ahead = 42.3
    t0, t1 = 1_700_000_000.2, 1_700_000_000.4
    offset.observe(date(t0 + 0.1 + server_ahead), sent=t0, received=t1)
    low, high = offset.bounds(120.0)
    assert low <= server_ahead <= high
    assert high - low <= 1.2 + 1e-6


def test_answers_at_other_fractions_of_a_second_narrow_it():
    offset = ServerOffset()
    server_behind = -7.65
    for k in range(20):
        t = 1_700_000_100.0 + k * 0.37
        offset.observe(date(t + server_behind), sent=t, received=t)
    low, high = offset.bounds(120.0)
    assert low <= server_behind <= high
    assert high - low < 0.2


def test_a_clock_step_starts_again_from_the_new_answers():
    """An NTP step of our clock (or the server's) must not leave a wrong interval."""
    offset = ServerOffset()
    for k in range(10):
        t = 1_700_000_000.0 + k * 0.3
        offset.observe(date(t), sent=t, received=t)
    for k in range(10):
        t = 1_700_000_100.0 + k * 0.3
        offset.observe(date(t + 30), sent=t, received=t)
    low, high = offset.bounds(120.0)
    assert low <= 30 <= high
    assert high - low < 1.5


async def test_the_fake_dates_its_answers_by_its_own_clock():
    """FakePixelByte's Date header is its (virtual) server time, skew included."""
    async with FakePixelByte(clock_offset=-90) as fake, bound_client(fake) as pb:
        fake.advance(3600.25)
        job = await pb.submit(REQUEST)
        sent = fake.requests[-1]
        assert sent.time == pytest.approx(fake.clock.time() - 90)
        assert fake.jobs[job.id].created_at == pytest.approx(fake.clock.time() - 90)
        low, high = pb._pipeline.server_offset.bounds(120.0)
        assert low <= -90 <= high
        assert high - low <= 1.0 + 1e-6


async def test_error_answers_are_dated_too(fake):
    async with bound_client(fake) as pb:
        with pytest.raises(NotFound):
            await pb.get_job("job_000000000000")
        assert pb._pipeline.server_offset.known


async def test_a_clock_stepped_at_the_server_is_followed(fake):
    """The server's clock is stepped by 30 s: the next answers say so."""
    async with bound_client(fake) as pb:
        await pb.submit(REQUEST)
        fake.clock_offset = 30
        for _ in range(3):
            fake.advance(0.4)
            await pb.get_job(next(iter(fake.jobs)))
        low, high = pb._pipeline.server_offset.bounds(120.0)
        assert low <= 30 <= high
