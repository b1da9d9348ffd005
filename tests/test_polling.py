"""Adaptive polling, wait() outcomes, deadlines, cancellation, watch()."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import pytest
from pixelbyte_async import (
    JobCancelled,
    JobFailed,
    JobStatus,
    KlingO1StartEndFrame,
    MockTransport,
    PixelByte,
    PollPolicy,
    Request,
    TransportError,
    VirtualClock,
    WaitTimeout,
    json_response,
)


pytestmark = pytest.mark.anyio

KLING = KlingO1StartEndFrame(
    image_url="https://e.x/a.jpg", end_image_url="https://e.x/b.jpg"
)


def iso(t: float) -> str:
    return datetime.fromtimestamp(t, tz=UTC).isoformat().replace("+00:00", "Z")


class SimJob:
    """A one-job server whose state follows the client's virtual clock."""

    def __init__(
        self,
        clock,
        *,
        queue=5.0,
        processing=240.0,
        outcome="completed",
        eta=True,
        statuses=None,
    ):
        self.clock = clock
        self.t0 = clock.time()
        self.queue, self.processing, self.outcome = queue, processing, outcome
        self.eta = eta
        self.gets: list[float] = []
        self.cancels = 0
        self.cancelled = False
        self.statuses = statuses
        self.transient_failures = 0

    @property
    def done_at(self):
        return self.t0 + self.queue + self.processing

    def status(self):
        if self.cancelled:
            return "cancelled"
        if self.statuses is not None:
            return self.statuses
        now = self.clock.time()
        if now < self.t0 + self.queue:
            return "pending"
        if now < self.done_at:
            return "processing"
        return self.outcome

    def __call__(self, request: Request):
        if request.url.endswith("/submit"):
            body = {"jobId": "job_sim", "status": "pending", "costMicroCents": 250000}
            if self.eta:
                body["estimatedCompletionTime"] = iso(self.done_at)
            return json_response(body)
        if request.url.endswith("/cancel"):
            self.cancels += 1
            if self.status() != "pending":
                return json_response(
                    {
                        "success": False,
                        "error": {"code": "JOB_CANNOT_BE_CANCELLED", "message": "no"},
                    },
                    400,
                )
            self.cancelled = True
            return json_response(
                {
                    "jobId": "job_sim",
                    "status": "cancelled",
                    "refundedMicroCents": 250000,
                }
            )
        self.gets.append(self.clock.time())
        if self.transient_failures:
            self.transient_failures -= 1
            raise TransportError("connection reset")
        status = self.status()
        body = {"jobId": "job_sim", "status": status, "createdAt": iso(self.t0)}
        if status == "completed":
            body["output"] = "https://cdn.example/o.mp4"
        if status == "failed":
            body["error"] = {
                "code": "GENERATION_FAILED",
                "message": "Credits have been refunded.",
            }
        return json_response(body)


def make(sim_kwargs=None, **client_kwargs):
    clock = VirtualClock(start=1_760_000_000)
    sim = SimJob(clock, **(sim_kwargs or {}))
    pb = PixelByte(
        api_key="pb_k",
        base_url="https://api.test",
        transport=MockTransport(sim),
        clock=clock,
        rng=lambda a, b: b,
        **client_kwargs,
    )
    return pb, sim, clock


@pytest.mark.parametrize("eta", [True, False], ids=["server-eta", "model-typical"])
async def test_240s_job_costs_at_most_10_gets_and_is_noticed_within_5s(eta):
    """A 240 s Kling job: <= 10 GETs, completion noticed <= 5 s late (max jitter)."""
    pb, sim, clock = make({"eta": eta})
    async with pb:
        job = await pb.submit(KLING)
        done = await job.wait()
    assert done is job
    assert done.status is JobStatus.COMPLETED
    assert done.video_url == "https://cdn.example/o.mp4"
    assert len(sim.gets) <= 10
    assert sim.gets[-1] - sim.done_at <= 5.0
    assert sim.gets[-1] >= sim.done_at


@pytest.mark.parametrize("late", [10, 30, 55])
async def test_late_job_still_noticed_promptly(late):
    """A job running past its ETA is noticed within near_interval of finishing."""
    pb, sim, clock = make({"processing": 240 + late, "eta": False})
    async with pb:
        job = await pb.submit(KLING)
        await job.wait()
    assert sim.gets[-1] - sim.done_at <= 5.0


async def test_fixed_loop_comparison():
    """For scale: a fixed 5 s loop needs ~50 GETs for the same job."""
    pb, sim, clock = make()
    async with pb:
        job = await pb.submit(KLING)
        await job.wait(poll=PollPolicy.fixed(5.0))
    assert len(sim.gets) >= 45


async def test_failed_job_raises_with_server_code():
    """A failed job raises JobFailed carrying the server's code and the job."""
    pb, sim, _ = make({"outcome": "failed"})
    async with pb:
        job = await pb.submit(KLING)
        with pytest.raises(JobFailed) as info:
            await job.wait()
    assert info.value.code == "GENERATION_FAILED"
    assert info.value.job is job
    assert "refunded" in str(info.value)
    assert pb.jobs_in_flight == 0


async def test_cancelled_job_raises():
    """A job cancelled elsewhere raises JobCancelled."""
    pb, sim, _ = make()
    async with pb:
        job = await pb.submit(KLING)
        sim.cancelled = True
        with pytest.raises(JobCancelled):
            await job.wait()


async def test_timeout_raises_wait_timeout_with_last_job():
    """The deadline raises WaitTimeout (a TimeoutError) carrying the last job seen."""
    pb, sim, clock = make()
    async with pb:
        job = await pb.submit(KLING)
        start = clock.monotonic()
        with pytest.raises(TimeoutError) as info:
            await job.wait(timeout=100)
    assert isinstance(info.value, WaitTimeout)
    assert info.value.job is job
    assert not info.value.cancel_attempted
    assert clock.monotonic() - start <= 100 + 1e-6
    assert sim.cancels == 0


async def test_unknown_status_never_spins_forever():
    """An unknown status keeps polling only until the documented default deadline."""
    pb, sim, clock = make(
        {"statuses": "throttled"}, poll=PollPolicy(default_timeout=600)
    )
    async with pb:
        job = await pb.submit(KLING)
        with pytest.raises(WaitTimeout):
            await job.wait()
    assert job.status is JobStatus.UNKNOWN
    assert job.info.raw_status == "throttled"
    assert clock.monotonic() <= 601
    assert len(sim.gets) <= 40


async def test_cancel_on_timeout_refunds_pending_job():
    """cancel_on_timeout cancels a still-pending job and reports the refund."""
    pb, sim, _ = make({"queue": 1000})
    async with pb:
        job = await pb.submit(KLING)
        with pytest.raises(WaitTimeout) as info:
            await job.wait(timeout=30, cancel_on_timeout=True)
    assert (info.value.cancel_attempted, info.value.cancelled) == (True, True)
    assert info.value.refunded_micro_cents == 250000
    assert job.status is JobStatus.CANCELLED


async def test_cancel_on_timeout_reports_when_job_cannot_be_cancelled():
    """A processing job cannot be cancelled: WaitTimeout says so."""
    pb, sim, _ = make()
    async with pb:
        job = await pb.submit(KLING)
        with pytest.raises(WaitTimeout) as info:
            await job.wait(timeout=60, cancel_on_timeout=True)
    assert (info.value.cancel_attempted, info.value.cancelled) == (True, False)
    assert "cancelling failed" in str(info.value)


async def test_cancelling_the_waiter_stops_polling_and_keeps_the_job():
    """Cancelling the awaiting task stops polling and never cancels the paid job."""
    pb, sim, clock = make()
    async with pb:
        job = await pb.submit(KLING)
        task = asyncio.ensure_future(job.wait())
        for _ in range(5):
            await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        polled = len(sim.gets)
        await clock.sleep(600)
        assert len(sim.gets) == polled
    assert sim.cancels == 0


async def test_transient_poll_errors_do_not_end_the_wait():
    """Transport errors while polling are retried; the wait still completes."""
    pb, sim, _ = make()
    sim.transient_failures = 12
    async with pb:
        job = await pb.submit(KLING)
        await job.wait()
    assert job.status is JobStatus.COMPLETED


async def test_watch_yields_each_change_then_stops():
    """watch() yields the first snapshot and each status change, ending at terminal."""
    pb, sim, _ = make()
    async with pb:
        job = await pb.submit(KLING)
        seen = [info.status async for info in job.watch()]
    assert seen == [JobStatus.PENDING, JobStatus.PROCESSING, JobStatus.COMPLETED]


async def test_watch_yields_failure_without_raising():
    """watch() yields a failed snapshot; raise_for_status() raises it."""
    pb, sim, _ = make({"outcome": "failed"})
    async with pb:
        job = await pb.submit(KLING)
        seen = [info.status async for info in job.watch()]
        assert seen[-1] is JobStatus.FAILED
        with pytest.raises(JobFailed):
            job.raise_for_status()


def test_next_delay_schedule():
    """The schedule: long pauses far from the ETA, near_interval close to it."""
    policy = PollPolicy(jitter=0)
    assert policy.next_delay(now=0, eta=245, previous=None) == 60
    assert policy.next_delay(now=200, eta=245, previous=None) == 41
    assert policy.next_delay(now=243, eta=245, previous=None) == 4
    assert policy.next_delay(now=300, eta=245, previous=None) == 4
    assert policy.next_delay(now=345, eta=245, previous=None) == 14
    assert policy.next_delay(now=2000, eta=245, previous=None) == 60
    assert policy.next_delay(now=0, eta=None, previous=None) == 1
    assert policy.next_delay(now=0, eta=None, previous=10) == 15
    assert policy.next_delay(now=0, eta=None, previous=50) == 60
    jittered = PollPolicy(jitter=0.1)
    assert jittered.next_delay(now=243, eta=245, previous=None, rng=lambda a, b: b) <= 4
    assert PollPolicy.fixed(5).next_delay(now=0, eta=999, previous=None) == 5


# -- learning where a model's jobs end against its ETA --------------------------------


@pytest.mark.parametrize("eta_factor", [0.5, 1.5])
async def test_polling_learns_where_a_models_jobs_end_against_its_eta(eta_factor):
    """
    The API's ETA is consistently wrong: from the 4th job on, polling aims at
    where the model's jobs have been ending (few GETs, a few seconds late).
    """
    from pixelbyte_async.testing import FakePixelByte, JobScript

    from conftest import bound_client

    results: list[tuple[int, float]] = []
    async with FakePixelByte() as fake, bound_client(fake, ledger=None) as pb:
        for n in range(5):
            fake.script_next(
                JobScript(
                    queue_seconds=5,
                    processing_seconds=235,
                    eta_seconds=240 * eta_factor,
                )
            )
            job = await pb.submit(
                KlingO1StartEndFrame(
                    image_url="https://e.x/a.jpg",
                    end_image_url="https://e.x/b.jpg",
                    prompt=f"eta {n}",
                )
            )
            await job.wait()
            gets = fake.count("GET", f"/v1/jobs/{job.id}")
            results.append((gets, fake.clock.time() - fake.jobs[job.id].finished_at))
    for gets, late in results[3:]:
        assert gets <= 10
        assert late <= 5
    first_gets, first_late = results[0]
    # The first job had nothing to learn from: an ETA that is too short costs
    # GETs, one that is too long costs lateness.
    assert first_gets > 10 or first_late > 5


def test_the_eta_bias_is_bounded_and_needs_three_jobs():
    from pixelbyte_async._polling import EtaBias

    bias = EtaBias(keep=4, models=2)
    for _ in range(2):
        bias.learn("m", created=0, eta=100, ended=200)
    assert bias.factor("m") == 1.0  # two jobs prove nothing yet
    bias.learn("m", created=0, eta=100, ended=200)
    assert bias.factor("m") == 2.0
    for _ in range(4):
        bias.learn("m", created=0, eta=100, ended=50)
    assert bias.factor("m") == 0.5  # only the last 4 count
    bias.learn("m", created=0, eta=100, ended=100_000)
    assert bias.factor("m") == 0.5  # a freak job moves the median little (clamped)
    bias.learn("a", created=0, eta=10, ended=10)
    bias.learn("b", created=0, eta=10, ended=10)
    assert bias.factor("m") == 1.0  # forgotten: two models at most
    bias.learn("c", created=5, eta=5, ended=9)  # no ETA to compare with
    assert bias.factor("c") == 1.0
