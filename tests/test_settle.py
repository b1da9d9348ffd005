"""
"Never charged twice" when the API creates a job after the client gave up.

Each test here reproduces a finding of the money-safety review (issue 10): a
backend that creates the job seconds after the client's timeout or after a proxy
dropped the connection.  Reconcile must not answer "no job" before the settle
horizon has passed.
"""

from __future__ import annotations

import asyncio
import datetime as dt

import pytest
from pixelbyte_async import (
    AmbiguousSubmitError,
    EventLoopMismatch,
    KlingO1StartEndFrame,
    PixelByte,
    ReconcileError,
    ReconcileTimeout,
    ValidationError,
)
from pixelbyte_async.testing import FakePixelByte, Fault, JobScript

from conftest import bound_client


pytestmark = pytest.mark.anyio

SUBMIT = "/v1/jobs/submit"
REQUEST = KlingO1StartEndFrame(
    image_url="https://e.x/a.jpg", end_image_url="https://e.x/b.jpg", duration=5
)


def submits(fake: FakePixelByte) -> int:
    return fake.count("POST", "/v1/jobs/submit")


def charges(fake: FakePixelByte) -> int:
    return sum(1 for e in fake.ledger.entries if e.kind == "charge")


@pytest.mark.parametrize("answer", ["drop", "hang"])
async def test_late_creation_is_found_not_reported_absent(
    fake: FakePixelByte, answer: str
) -> None:
    """The job appears 2.5 s after the lost answer: reconcile finds it."""
    fake.inject(
        Fault.late_create(2.5, answer=answer),  # type: ignore[arg-type]
        method="POST",
        path="/v1/jobs/submit",
    )
    async with bound_client(fake) as pb:
        with pytest.raises(AmbiguousSubmitError) as lost:
            await pb.submit(REQUEST, timeout=0.3)
        # Right after the lost answer the job does not exist yet ...
        assert fake.jobs == {}
        # ... and reconcile keeps looking instead of saying "re-send".
        job = await pb.reconcile(lost.value)
        assert job is not None
        assert job.id in fake.jobs
        assert job.input == lost.value.input
    assert submits(fake) == 1
    assert charges(fake) == 1


async def test_reconcile_returns_none_only_after_the_horizon(
    fake: FakePixelByte,
) -> None:
    """A submit that created nothing: None, but only once the horizon passed."""
    fake.inject(Fault.drop_before(), method="POST", path="/v1/jobs/submit", times=2)
    fake.inject(Fault.status(502, "BAD_GATEWAY"), method="POST", path="/v1/jobs/*")
    async with bound_client(fake, settle=120) as pb:
        with pytest.raises(AmbiguousSubmitError) as lost:
            await pb.submit(REQUEST)
        began = lost.value.started_at
        assert await pb.reconcile(lost.value) is None
        assert fake.clock.time() >= began + 120
        looks = fake.count("GET", "/v1/jobs")
        # A gentle cadence: 2, 4, 8, 16, 30 ... seconds, not a busy loop.
        assert 5 <= looks <= 12


async def test_reconcile_horizon_is_counted_from_the_attempt(
    fake: FakePixelByte,
) -> None:
    """An attempt recorded long ago (a journal) needs one look, not a new wait."""
    async with bound_client(fake) as pb:
        old = AmbiguousSubmitError(
            "earlier process",
            model=REQUEST.model_slug,
            input=REQUEST.to_input(),
            webhook_url=None,
            started_at=fake.clock.time() - 3600,
        )
        before = fake.clock.time()
        assert await pb.reconcile(old) is None
        assert fake.clock.time() == before
        assert fake.count("GET", "/v1/jobs") == 1


async def test_reconcile_timeout_raises_and_never_returns_none(
    fake: FakePixelByte,
) -> None:
    fake.inject(Fault.late_create(200), method="POST", path="/v1/jobs/submit")
    async with bound_client(fake) as pb:
        with pytest.raises(AmbiguousSubmitError) as lost:
            await pb.submit(REQUEST)
        with pytest.raises(ReconcileTimeout) as timed_out:
            await pb.reconcile(lost.value, timeout=30)
        assert timed_out.value.settle_at == lost.value.started_at + 300
        assert isinstance(timed_out.value, ReconcileError)
        assert isinstance(timed_out.value, TimeoutError)
        # Asked again, it finds the job once the backend created it.
        job = await pb.reconcile(lost.value)
        assert job is not None
    assert charges(fake) == 1


async def test_settle_is_validated(fake: FakePixelByte) -> None:
    with pytest.raises(ValidationError):
        bound_client(fake, settle=-1)
    async with bound_client(fake) as pb:
        error = AmbiguousSubmitError(
            "x", model=REQUEST.model_slug, input={}, webhook_url=None, started_at=0
        )
        with pytest.raises(ValidationError):
            await pb.reconcile(error, settle=float("inf"))


async def test_competing_late_jobs_raise_instead_of_guessing(
    fake: FakePixelByte,
) -> None:
    """Two lost submits of one model, two late jobs: nothing is guessed."""
    fake.inject(Fault.late_create(3), method="POST", path="/v1/jobs/submit", times=2)
    async with bound_client(fake) as pb:
        with pytest.raises(AmbiguousSubmitError) as first:
            await pb.submit(REQUEST)
        with pytest.raises(AmbiguousSubmitError):
            await pb.submit(REQUEST)
        with pytest.raises(ReconcileError) as unclear:
            await pb.reconcile(first.value)
        assert not isinstance(unclear.value, ReconcileTimeout)
        assert len(unclear.value.competing) == 1
    assert charges(fake) == 2


async def test_one_deadline_covers_uploads_and_submit(fake: FakePixelByte) -> None:
    """Slow upload PUTs plus a slow submit: the call ends by its one deadline."""
    png = b"\x89PNG\r\n\x1a\n" + b"\0" * 64
    fake.inject(Fault.delay(0.4), method="PUT", origin="cdn", times=None)
    fake.inject(Fault.delay(0.4), method="POST", path="/v1/jobs/submit")
    request = KlingO1StartEndFrame(image_url=png, end_image_url=png + b"\1")
    # Real time: the delays are real, and so must the deadline be.
    async with PixelByte(api_key=fake.api_key, base_url=fake.url) as pb:
        loop = asyncio.get_running_loop()
        began = loop.time()
        with pytest.raises((AmbiguousSubmitError, TimeoutError)):
            await pb.submit(request, timeout=0.6)
        assert loop.time() - began < 0.95


def test_a_client_is_bound_to_its_first_loop() -> None:
    """A second event loop gets a clear error, not aiohttp's 'loop is closed'."""
    first, second = asyncio.new_event_loop(), asyncio.new_event_loop()
    try:
        fake = FakePixelByte()
        first.run_until_complete(fake.start())
        pb = PixelByte(api_key=fake.api_key, base_url=fake.url, clock=fake.clock)
        job = first.run_until_complete(pb.submit(REQUEST))

        async def from_another_loop() -> None:
            with pytest.raises(EventLoopMismatch, match="inside the running loop"):
                await pb.get_job(job.id)
            with pytest.raises(EventLoopMismatch):
                await pb.submit(REQUEST)

        second.run_until_complete(from_another_loop())
        # The first loop still owns a working client.
        assert first.run_until_complete(pb.get_job(job.id)).id == job.id
        first.run_until_complete(pb.aclose())
        first.run_until_complete(fake.close())
        assert fake.count("POST", "/v1/jobs/submit") == 1
    finally:
        first.close()
        second.close()


async def test_audit_finds_an_unclaimed_job(fake: FakePixelByte) -> None:
    """A lost submit's paid job nobody reconciled is found, priced, and cancelled."""
    fake.set_default_script(JobScript(queue_seconds=3600))
    async with bound_client(fake) as pb, bound_client(fake) as other:
        since = dt.datetime.fromtimestamp(fake.clock.time() - 1, dt.UTC)
        mine = await pb.submit(REQUEST)
        theirs = await other.submit(REQUEST)  # the same machine: explained
        fake.inject(Fault.drop_after(), method="POST", path=SUBMIT)
        with pytest.raises(AmbiguousSubmitError) as lost:
            await pb.submit(REQUEST)
        stray = next(j for j in fake.jobs if j not in {mine.id, theirs.id})
        report = await pb.audit(since=since)
        assert [o.job.id for o in report.orphans] == [stray]
        orphan = report.orphans[0]
        assert (orphan.status.value, orphan.attempt, orphan.proven) == (
            "pending",
            lost.value.attempt,
            True,
        )
        assert (orphan.price_micro_cents, orphan.price_basis) == (250_000, "list")
        assert report.others == ()
        assert not (await pb.audit(since=since, exclude=[stray])).orphans
        # Its own process may still adopt it until the horizon: not cancelled yet.
        assert report.cancellable == ()
        assert await report.cancel_pending() == 0
        fake.advance(301)
        later = await pb.audit(since=since)
        assert await later.cancel_pending() == 250_000
    assert fake.jobs[stray].status == "cancelled"
    assert fake.jobs[mine.id].status == fake.jobs[theirs.id].status == "pending"


async def test_webhook_nonce_attributes_competing_late_jobs() -> None:
    """Two lost submits of one model: their deliveries say which job is whose."""
    from pixelbyte_async import VirtualClock
    from pixelbyte_async.webhooks import WebhookServer

    clock = VirtualClock(autojump=False)
    async with FakePixelByte(clock=clock, allow_http_webhooks=True) as fake:
        server = WebhookServer(fake.webhook_secret, clock=clock)
        async with bound_client(fake, webhook=server) as pb:
            fake.inject(Fault.late_create(3), method="POST", path=SUBMIT, times=2)
            lost = []
            for prompt in ("first", "second"):
                with pytest.raises(AmbiguousSubmitError) as exc:
                    await pb.submit(
                        KlingO1StartEndFrame(
                            image_url="https://e.x/a.jpg",
                            end_image_url="https://e.x/b.jpg",
                            prompt=prompt,
                        )
                    )
                assert exc.value.attempt is not None
                assert f"pb_attempt={exc.value.attempt}" in (
                    exc.value.webhook_url or ""
                )
                lost.append(exc.value)
            tasks = [asyncio.ensure_future(pb.reconcile(e)) for e in lost]
            for _ in range(30):
                for _ in range(5):
                    await asyncio.sleep(0)
                clock.advance(10)
                await fake.deliver_webhooks()
            found = await asyncio.wait_for(asyncio.gather(*tasks), 5)
    assert [job.input["prompt"] for job in found] == ["first", "second"]
    assert [fake.jobs[job.id].input["prompt"] for job in found] == ["first", "second"]
    assert fake.ledger.double_charged() == []


@pytest.mark.parametrize("ledger", ["memory", "file"])
async def test_a_submit_lost_after_minutes_of_429s_is_found(
    fake: FakePixelByte, ledger: str, tmp_path
) -> None:
    """
    The plan's limit answers 429 for 400 s (the submit waits, as it should), then
    the answer of the try that created the job is lost.  Its window starts at
    that try, not at the call: the job is found, never sent again.
    """
    fake.inject(
        Fault.status(429, "CONCURRENT_JOBS_EXCEEDED", retry_after=100),
        method="POST",
        path=SUBMIT,
        times=4,
    )
    fake.inject(Fault.drop_after(), method="POST", path=SUBMIT)
    began = fake.clock.time()
    where = None if ledger == "memory" else tmp_path / "l.sqlite3"
    async with bound_client(fake, ledger=where) as pb:
        with pytest.raises(AmbiguousSubmitError) as lost:
            await pb.submit(REQUEST)
        assert lost.value.started_at >= began + 400  # the lost try's start
        job = await pb.reconcile(lost.value)
        assert job is not None
        recorded = await pb.ledger.attempt(lost.value.attempt)
        assert recorded is not None
        assert recorded.started_at == lost.value.started_at
    assert list(fake.jobs) == [job.id]
    assert charges(fake) == 1
