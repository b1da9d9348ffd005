"""Adaptive polling, wait() outcomes, deadlines, cancellation, watch()."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from itertools import pairwise

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


@pytest.mark.parametrize(
    ("eta", "most_gets", "most_late"),
    [(True, 12, 1.0), (False, 14, 4.0)],
    ids=["server-eta", "model-typical"],
)
async def test_a_first_240s_job_costs_few_gets_and_is_noticed_promptly(
    eta, most_gets, most_late
):
    """
    A 240 s Kling job of a model this client knows nothing of yet: it may end
    from 0.6 to 2 times its ETA, so it is polled every 12 s from 144 s on, with
    one GET aimed just after the ETA (here at the server's ETA; the model's
    typical 240 s misses the 245 s job by 5 s, and near_interval catches it).
    """
    pb, sim, clock = make({"eta": eta})
    async with pb:
        job = await pb.submit(KLING)
        done = await job.wait()
    assert done is job
    assert done.status is JobStatus.COMPLETED
    assert done.video_url == "https://cdn.example/o.mp4"
    assert len(sim.gets) <= most_gets
    assert 0 <= sim.gets[-1] - sim.done_at <= most_late
    assert all(b - a <= 60 for a, b in pairwise(sim.gets))


@pytest.mark.parametrize("late", [10, 30, 55, 200])
async def test_late_job_still_noticed_promptly(late):
    """A job running past its ETA is noticed within unsure_interval (12 s)."""
    pb, sim, clock = make({"processing": 240 + late, "eta": False})
    async with pb:
        job = await pb.submit(KLING)
        await job.wait()
    assert sim.gets[-1] - sim.done_at <= 12.0


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
    # Every 12 s while it may end (to twice its ETA), then less and less often.
    assert len(sim.gets) <= 45


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
    """
    The schedule: even long steps until the job may have ended, then at most
    unsure_interval, one GET just after the expected end, near_interval for
    overdue_grace, unsure_interval to the latest plausible end, then backoff.
    """
    policy = PollPolicy(jitter=0)
    window = {"eta": 240, "earliest": 144, "latest": 480, "previous": None}
    assert policy.next_delay(now=0, **window) == 48  # 144 in 3 even steps
    assert policy.next_delay(now=143.5, **window) == pytest.approx(97 / 9)
    assert policy.next_delay(now=144, **window) == pytest.approx(96.5 / 9)
    assert policy.next_delay(now=235, **window) == 5.5  # lands on 240.5
    assert policy.next_delay(now=240.5, **window) == 4
    assert policy.next_delay(now=252, **window) == 4
    assert policy.next_delay(now=253, **window) == 12
    assert policy.next_delay(now=479, **window) == 12
    assert policy.next_delay(now=520, **window) == 22  # 12 + 0.25 * 40
    assert policy.next_delay(now=2000, **window) == 60
    # Without a window, the ETA is both ends of it.
    assert policy.next_delay(now=0, eta=240, previous=None) == pytest.approx(48.1)
    assert policy.next_delay(now=200, eta=245, previous=None) == 45.5
    assert policy.next_delay(now=300, eta=245, previous=None) == 22.625
    # Without an ETA: backoff.
    assert policy.next_delay(now=0, eta=None, previous=None) == 1
    assert policy.next_delay(now=0, eta=None, previous=10) == 15
    assert policy.next_delay(now=0, eta=None, previous=50) == 60
    # Jitter only ever shortens a far step, and never so much that it adds one.
    jittered = PollPolicy(jitter=0.1)
    lows = {"rng": lambda a, b: a, **window}
    assert jittered.next_delay(now=0, **lows) == pytest.approx(43.2)
    assert jittered.next_delay(now=0, eta=240, previous=None, rng=lambda a, b: b) == (
        pytest.approx(48.1)
    )
    even = {"eta": 300, "earliest": 180, "latest": 600, "previous": None}
    assert jittered.next_delay(now=0, rng=lambda a, b: a, **even) == 60  # 3 x 60
    assert jittered.next_delay(now=240.5, rng=lambda a, b: b, **window) == 4
    assert PollPolicy.fixed(5).next_delay(now=0, eta=999, previous=None) == 5
    assert PollPolicy.fixed(5).next_delay(now=2000, eta=999, previous=None) == 5


# -- learning where a model's jobs end against its ETA --------------------------------


@pytest.mark.parametrize("eta_factor", [0.5, 1.0, 1.5])
async def test_polling_learns_where_a_models_jobs_end_against_its_eta(eta_factor):
    """
    The API's ETA is right, or consistently 50 % short or long: no job is ever
    noticed more than 15 s late, and from the 4th job on, polling aims at where
    the model's jobs have been ending (few GETs, within a second).
    """
    from pixelbyte_async.testing import FakePixelByte, JobScript

    from conftest import bound_client

    results: list[tuple[int, float]] = []
    async with FakePixelByte() as fake, bound_client(fake, ledger=None) as pb:
        for n in range(6):
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
    assert all(late <= 15 for _, late in results), results
    assert all(gets <= 20 for gets, _ in results), results
    for gets, late in results[3:]:
        assert gets <= 7
        assert late <= 1.5


def test_the_eta_bias_window_narrows_as_jobs_agree():
    from pixelbyte_async._polling import EtaBias

    bias = EtaBias(keep=4, models=2)
    assert bias.ratios("m") == (0.6, 1.0, 2.0)  # nothing known: off by half
    bias.learn("m", created=0, eta=100, ended=200)
    low, mid, high = bias.ratios("m")
    # One job: centred on it, but the ETA itself stays plausible.
    assert mid == 2.0
    assert low == pytest.approx(1.0 / 1.5**0.5)
    assert high == pytest.approx(2.0 * 1.5**0.5)
    for _ in range(2):
        bias.learn("m", created=0, eta=100, ended=200)
    low, mid, high = bias.ratios("m")  # three agree: the ETA is out
    assert (low, mid, high) == pytest.approx((2 / 1.5**0.25, 2.0, 2 * 1.5**0.25))
    for _ in range(4):
        bias.learn("m", created=0, eta=100, ended=50)
    margin = 1.5 ** (1 / 5)  # four jobs (all it keeps): narrower
    assert bias.ratios("m") == pytest.approx((0.5 / margin, 0.5, 0.5 * margin))
    bias.learn("m", created=0, eta=100, ended=100_000)
    low, mid, high = bias.ratios("m")
    assert mid == 0.5  # a freak job moves the median little ...
    assert high == pytest.approx(10 * margin)  # ... and widens the window (clamped)
    window = bias.window("m", start=1000, eta=1100)
    assert (window.earliest, window.expected) == pytest.approx(
        (1000 + 50 / margin, 1050)
    )
    bias.learn("a", created=0, eta=10, ended=10)
    bias.learn("b", created=0, eta=10, ended=10)
    assert bias.ratios("m") == (0.6, 1.0, 2.0)  # forgotten: two models at most
    bias.learn("c", created=5, eta=5, ended=9)  # no ETA to compare with
    assert bias.ratios("c") == (0.6, 1.0, 2.0)
    assert bias.window("c", start=10, eta=5) == bias.window("c", start=5, eta=5)
