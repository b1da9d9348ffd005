"""
"No job" is concluded only from a job list taken *after* the settle horizon.

A job list shows the account as it was when it was asked for.  One asked for
before the horizon ended and answered after it (slow in transit, or followed by
a wait for the model's submits on the wire) says nothing of a job the API made
in between: reconcile must not count it as covering the whole horizon (which
would let the caller re-send a submit that did make a job, and pay twice).

The clock is driven by the test (``autojump=False``) and the listings are held
by the test: what happens is decided by counting requests, never by timing.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator

import pytest
from pixelbyte_async import (
    AmbiguousSubmitError,
    Clock,
    Job,
    KlingO1StartEndFrame,
    PixelByte,
    VirtualClock,
)
from pixelbyte_async._reconcile import AttemptSource, ReconcileClient
from pixelbyte_async.testing import FakePixelByte, Fault

from conftest import bound_client


pytestmark = pytest.mark.anyio

SUBMIT = "/v1/jobs/submit"
REQUEST = KlingO1StartEndFrame(
    image_url="https://e.x/a.jpg", end_image_url="https://e.x/b.jpg", duration=5
)
HORIZON = 300.0
#: The lost submit's job appears this long after it was sent: inside the horizon.
LATE = 299.5
#: A hang guard only (real seconds): nothing here waits for time to pass.
GUARD = 15.0


def charges(fake: FakePixelByte) -> int:
    return sum(1 for e in fake.ledger.entries if e.kind == "charge")


class HeldListing:
    """
    The reconciler's client, with its first job listing watched (and held).

    The listing is read from the API in full (the account as it is then); with
    *hold*, it is handed over only once the test releases it, as a slow network
    would.  `listed` is set once it has been handed over whole.
    """

    def __init__(self, inner: ReconcileClient, *, hold: bool) -> None:
        self._inner = inner
        self.listings = 0
        self.fetched = asyncio.Event()
        self.release = asyncio.Event()
        self.listed = asyncio.Event()
        if not hold:
            self.release.set()

    @property
    def clock(self) -> Clock:
        return self._inner.clock

    @property
    def attempts(self) -> AttemptSource | None:
        return self._inner.attempts

    async def get_job(self, job_id: str) -> Job:
        return await self._inner.get_job(job_id)

    async def list_jobs(self, *, model: str | None = None) -> AsyncGenerator[Job, None]:
        self.listings += 1
        first = self.listings == 1
        jobs = [job async for job in self._inner.list_jobs(model=model)]
        if first:
            self.fetched.set()
            await self.release.wait()
        for job in jobs:
            yield job
        if first:
            self.listed.set()


async def _lost_submit(fake: FakePixelByte, pb: PixelByte) -> AmbiguousSubmitError:
    """A submit whose answer is lost; the API makes its job `LATE` s later."""
    fake.inject(Fault.late_create(LATE), method="POST", path=SUBMIT)
    with pytest.raises(AmbiguousSubmitError) as lost:
        await pb.submit(REQUEST)
    assert fake.jobs == {}
    return lost.value


async def test_a_listing_taken_before_the_horizon_is_not_proof_of_none(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """
    Listed at 299 s (no job yet), answered at 301 s: the job made at 299.5 s is
    found by a look taken after the horizon, not reported absent.
    """
    clock = VirtualClock(autojump=False)
    async with (
        FakePixelByte(clock=clock) as fake,
        bound_client(fake, settle=HORIZON) as pb,
    ):
        error = await _lost_submit(fake, pb)
        reconciler = pb._reconciler
        held = HeldListing(reconciler.client, hold=True)
        monkeypatch.setattr(reconciler, "_client", held)
        clock.advance(error.started_at + HORIZON - 1 - clock.time())
        task = asyncio.ensure_future(pb.reconcile(error))
        await asyncio.wait_for(held.fetched.wait(), GUARD)
        assert fake.count("GET", "/v1/jobs") == 1
        assert fake.jobs == {}  # the listing saw no job: there was none yet
        # While the listing is in transit, the horizon passes and the API makes
        # the lost submit's job (inside the horizon).
        clock.advance(2)
        assert clock.time() > error.started_at + HORIZON
        held.release.set()
        job = await asyncio.wait_for(task, GUARD)
        assert job is not None
        assert list(fake.jobs) == [job.id]
        assert fake.jobs[job.id].created_at < error.started_at + HORIZON
        assert held.listings == 2  # the held one, then one after the horizon
    assert fake.count("POST", SUBMIT) == 1
    assert charges(fake) == 1


async def test_a_wait_for_submits_on_the_wire_does_not_stretch_a_listing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """
    Listed at 299 s, then a wait for a submit of the same model on the wire until
    301 s: the listing still shows the account only as it was at 299 s.
    """
    clock = VirtualClock(autojump=False)
    async with (
        FakePixelByte(clock=clock) as fake,
        bound_client(fake, settle=HORIZON) as pb,
    ):
        error = await _lost_submit(fake, pb)
        reconciler = pb._reconciler
        watched = HeldListing(reconciler.client, hold=False)
        monkeypatch.setattr(reconciler, "_client", watched)
        clock.advance(error.started_at + HORIZON - 1 - clock.time())
        # Another submit of the model is on the wire (tracked as `submit` tracks
        # its own): reconcile waits for its answer before sorting the list out.
        with reconciler.submitting(error.model):
            task = asyncio.ensure_future(pb.reconcile(error))
            # Handed over whole: reconcile now waits for that submit (it runs
            # from the listing's end to that wait without yielding).
            await asyncio.wait_for(watched.listed.wait(), GUARD)
            assert not task.done()
            assert fake.count("GET", "/v1/jobs") == 1
            assert fake.jobs == {}
            clock.advance(2)
            assert clock.time() > error.started_at + HORIZON
        # That submit ends (with no job of its own): reconcile goes on.
        job = await asyncio.wait_for(task, GUARD)
        assert job is not None
        assert list(fake.jobs) == [job.id]
        assert fake.jobs[job.id].created_at < error.started_at + HORIZON
        assert watched.listings == 2
    assert fake.count("POST", SUBMIT) == 1
    assert charges(fake) == 1
