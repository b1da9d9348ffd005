"""The client end to end against FakePixelByte on 127.0.0.1."""

from __future__ import annotations

import asyncio
import gc
from importlib.resources import files

import aiohttp
import pytest
from pixelbyte_async import (
    AmbiguousSubmitError,
    InvalidRequestError,
    JobFailed,
    JobStatus,
    KlingO1StartEndFrame,
    MissingOutputError,
    NotFound,
    PixelByte,
    ReconcileError,
    RequestTimeout,
    ValidationError,
)
from pixelbyte_async.testing import Fault, JobScript

from conftest import bound_client


pytestmark = pytest.mark.anyio

SLUG = "kling-plus/kling-o1-standard/start-end-frame-to-video"
A = "https://example.com/a.jpg"
B = "https://example.com/b.jpg"
PNG = b"\x89PNG\r\n\x1a\n" + b"\0" * 64
MP4 = (files("pixelbyte_async") / "_data" / "sample.mp4").read_bytes()


def kling(**kw):
    kw.setdefault("prompt", "p")
    return KlingO1StartEndFrame(
        image_url=kw.pop("image_url", A), end_image_url=kw.pop("end_image_url", B), **kw
    )


@pytest.mark.parametrize("envelope", ["mixed", "flat", "wrapped"])
async def test_transition_end_to_end(fake, tmp_path, envelope):
    """Submit, wait, download: one charge, the real MP4, no key sent to the CDN."""
    fake.envelope = envelope
    async with bound_client(fake) as pb:
        job = await pb.submit(kling(duration=6))
        assert (job.status, job.cost_micro_cents) == (JobStatus.PENDING, 300_000)
        done = await job.wait(timeout=900)
        path = await done.download(tmp_path / "out.mp4")
    assert path.read_bytes() == MP4
    assert done.video_url.startswith(fake.cdn_url)
    assert [r.authorization for r in fake.cdn_requests] == [None]
    assert fake.ledger.charged_micro_cents == 300_000
    assert fake.ledger.double_charged() == []
    # The first job of a model: polled every 12 s once it may have ended.
    assert fake.count("GET", "/v1/jobs/*") <= 12
    assert list(tmp_path.iterdir()) == [path]


@pytest.mark.parametrize(
    "shape", ["reference", "object", "video_url", "outputs_only", "image_url"]
)
async def test_every_output_shape_resolves(fake, pb, shape):
    """The video URL is found whatever output shape the server uses."""
    fake.script_next(JobScript(output_shape=shape))
    job = await pb.submit(kling())
    await job.wait()
    assert job.video_url is not None
    assert job.video_url.startswith("http")


async def test_completed_without_output(fake, pb, tmp_path):
    """A completed job with no URL returns from wait; download says why it cannot."""
    fake.script_next(JobScript(output_shape="none"))
    job = await (await pb.submit(kling())).wait()
    assert job.video_url is None
    with pytest.raises(MissingOutputError):
        await job.download(tmp_path / "x.mp4")


@pytest.mark.parametrize(
    ("shape", "has_poster"),
    [("reference", True), ("outputs_only", True), ("object", False), ("none", False)],
)
async def test_poster_image_is_downloaded_like_the_output(
    fake, pb, tmp_path, shape, has_poster
):
    """``posterImage`` (else ``thumbnail``) of the outputs; a folder names it by id."""
    fake.script_next(JobScript(output_shape=shape))
    job = await (await pb.submit(kling())).wait()
    if not has_poster:
        assert job.poster_url is None
        with pytest.raises(MissingOutputError, match="no poster image"):
            await job.download_poster(tmp_path)
        return
    assert job.poster_url == f"{fake.cdn_url}/outputs/{job.id}/poster_0.jpg"
    path = await job.download_poster(tmp_path)
    assert path == tmp_path / f"{job.id}.poster.jpg"
    assert path.read_bytes()[:3] == b"\xff\xd8\xff"  # the sandbox's JPEG
    assert [r.authorization for r in fake.cdn_requests] == [None]  # no API key


async def test_failed_job_raises(fake, pb):
    """A failed job raises JobFailed with the server's code; the fake refunds it."""
    fake.script_next(JobScript(outcome="failed", error_code="GENERATION_FAILED"))
    job = await pb.submit(kling())
    with pytest.raises(JobFailed) as info:
        await job.wait()
    assert info.value.code == "GENERATION_FAILED"
    assert fake.ledger.charged_micro_cents == 0


async def test_local_frames_are_uploaded(fake, pb, tmp_path):
    """Paths and bytes are uploaded via presign + PUT (no key to storage), once each."""
    start = tmp_path / "start.png"
    start.write_bytes(PNG)
    job = await pb.submit(kling(image_url=start, end_image_url=PNG))
    assert fake.count("POST", "/v1/uploads/presign") == 2
    puts = fake.cdn_requests_for("PUT", "*")
    assert len(puts) == 2
    assert all(p.authorization is None for p in puts)
    sent = fake.jobs[job.id].input
    assert sent["image_url"].startswith(fake.cdn_url)
    assert sent["end_image_url"].startswith(fake.cdn_url)
    assert sent["duration"] == "5"
    same = await pb.submit(kling(image_url=start, end_image_url=start))
    assert fake.count("POST", "/v1/uploads/presign") == 3
    assert (
        fake.jobs[same.id].input["image_url"]
        == fake.jobs[same.id].input["end_image_url"]
    )


async def test_upload_checks_type_before_sending(fake, pb, tmp_path):
    """Unknown types are refused locally; nothing is presigned."""
    bad = tmp_path / "notes.txt"
    bad.write_text("hello")
    with pytest.raises(ValidationError):
        await pb.upload(bad)
    with pytest.raises(ValidationError):
        await pb.upload(tmp_path / "missing.png")
    assert fake.count("POST", "/v1/uploads/presign") == 0
    url = await pb.upload(PNG, filename="frame.png")
    async with aiohttp.ClientSession() as s, s.get(url) as r:
        assert await r.read() == PNG


async def test_cancel_pending_and_processing(fake, pb):
    """Pending jobs cancel with a refund; processing ones raise JOB_CANNOT_BE_CANCELLED."""
    fake.script_next(JobScript(queue_seconds=100))
    job = await pb.submit(kling())
    assert await job.cancel() == 250_000
    assert job.status is JobStatus.CANCELLED
    assert fake.ledger.charged_micro_cents == 0
    assert pb.jobs_in_flight == 0
    other = await pb.submit(kling())
    fake.advance(10)
    with pytest.raises(InvalidRequestError) as info:
        await other.cancel()
    assert info.value.code == "JOB_CANNOT_BE_CANCELLED"


async def test_get_job_and_not_found(fake, pb):
    """get_job rehydrates a handle by id; unknown ids raise NotFound."""
    job = await pb.submit(kling())
    fake.advance(400)
    again = await pb.get_job(job.id)
    assert again.status is JobStatus.COMPLETED
    assert again is job
    async with bound_client(fake) as other:
        fresh = await other.get_job(job.id)
        assert fresh.video_url is not None
    with pytest.raises(NotFound) as info:
        await pb.get_job("job_nope")
    assert info.value.code == "JOB_NOT_FOUND"
    assert info.value.request_id


async def test_list_jobs_follows_cursors(fake):
    """list_jobs pages through nextCursor, filters by status/model, and honours limit."""
    async with bound_client(fake, max_concurrent_jobs=None) as pb:
        ids = [(await pb.submit(kling())).id for _ in range(25)]
        listed = [job.id async for job in pb.list_jobs(page_size=10)]
        assert sorted(listed) == sorted(ids)
        assert fake.count("GET", "/v1/jobs") == 3
        assert len([j async for j in pb.list_jobs(limit=7, page_size=5)]) == 7
        assert [
            j async for j in pb.list_jobs(model="test/echo-image/text-to-image")
        ] == []
        pending = [j async for j in pb.list_jobs(status="pending")]
        assert len(pending) == 25
        with pytest.raises(ValidationError):
            [j async for j in pb.list_jobs(page_size=500)]


async def test_estimate_server_and_local(pb):
    """estimate() asks the API; local=True uses the price table offline."""
    est = await pb.estimate(kling(duration=8))
    assert est.estimated_cost_micro_cents == 400_000
    local = await pb.estimate(kling(duration=8, pro=True), local=True)
    assert (local.estimated_cost_micro_cents, local.source) == (560_000, "local")
    raw = await pb.estimate(SLUG, {"duration": "3"})
    assert raw.estimated_cost_micro_cents == 150_000
    with pytest.raises(ValidationError):
        await pb.estimate("nobody/knows/this", {}, local=True)


async def test_catalog(pb):
    """models() lists the catalogue; model(slug) includes the input schema."""
    models = await pb.models()
    assert SLUG in {m.slug for m in models}
    detail = await pb.model(SLUG)
    assert detail.input_schema is not None
    assert "image_url" in str(detail.input_schema)


async def test_gather_respects_max_concurrent_jobs(fake):
    """gather over 60 transitions keeps at most N jobs in flight: no 429 ever."""
    fake.concurrent_job_limit = 5
    async with bound_client(fake, max_concurrent_jobs=5) as pb:
        done = await asyncio.gather(*(pb.run(kling(prompt=f"p{i}")) for i in range(60)))
    assert all(j.status is JobStatus.COMPLETED for j in done)
    assert not [r for r in fake.requests if r.path == "/v1/jobs/submit" and r.fault]
    assert fake.count("POST", "/v1/jobs/submit") == 60
    assert fake.ledger.double_charged() == []
    assert len(fake.ledger.entries) == 60


async def test_submit_all_then_wait_all_does_not_deadlock(fake):
    """Submitting more jobs than slots before waiting frees slots by itself."""
    async with bound_client(fake, max_concurrent_jobs=3) as pb:
        jobs = await asyncio.gather(*(pb.submit(kling()) for _ in range(10)))
        await asyncio.gather(*(j.wait() for j in jobs))
    assert pb.jobs_in_flight == 0
    assert len({j.id for j in jobs}) == 10


async def test_queued_submitters_do_not_poll_the_same_jobs(fake):
    """
    50 queued submits share one sweep: a handful of GETs per job (the polling
    budget of a job whose ETA is right: 8), not one per queued submitter.
    """
    async with bound_client(fake, max_concurrent_jobs=5) as pb:
        jobs = await asyncio.gather(
            *(pb.submit(kling(prompt=f"p{i}")) for i in range(50))
        )
        await asyncio.gather(*(j.wait() for j in jobs))
    assert fake.count("GET", "/v1/jobs/*") <= 50 * 8


async def test_plan_limit_below_client_limit(fake):
    """When the plan allows fewer jobs than the client, 429s are waited out safely."""
    fake.concurrent_job_limit = 2
    fake.concurrency_retry_after = 20
    async with bound_client(fake, max_concurrent_jobs=6) as pb:
        done = await asyncio.gather(*(pb.run(kling(prompt=f"p{i}")) for i in range(8)))
    assert len(done) == 8
    assert fake.ledger.double_charged() == []
    assert len(fake.ledger.entries) == 8
    assert fake.count("POST", "/v1/jobs/submit") > 8


async def test_pubsub_503_is_retried_once_charged(fake, pb):
    """503 PUBSUB_PUBLISH_FAILED is retried; exactly one job and charge result."""
    fake.inject(
        Fault.status(503, "PUBSUB_PUBLISH_FAILED"),
        method="POST",
        path="/v1/jobs/submit",
        times=2,
    )
    job = await pb.submit(kling())
    assert fake.count("POST", "/v1/jobs/submit") == 3
    assert list(fake.jobs) == [job.id]
    assert len(fake.ledger.entries) == 1


async def test_dropped_after_create_is_reconciled(fake, pb):
    """A submit dropped after the job was created is not re-sent; reconcile finds it."""
    fake.inject(Fault.drop_after(), method="POST", path="/v1/jobs/submit")
    with pytest.raises(AmbiguousSubmitError) as info:
        await pb.submit(kling())
    assert fake.count("POST", "/v1/jobs/submit") == 1
    job = await pb.reconcile(info.value)
    assert job is not None
    assert list(fake.jobs) == [job.id]
    assert job.input == kling().to_input()
    await job.wait()
    assert len(fake.ledger.entries) == 1
    # Asked again, the ledger remembers: the same job, never "re-send".
    again = await pb.reconcile(info.value)
    assert again is not None
    assert again.id == job.id


async def test_dropped_before_create_reconciles_to_none(fake, pb):
    """A submit dropped before the job existed reconciles to None: safe to resubmit."""
    await pb.submit(kling())
    fake.inject(Fault.drop_before(), method="POST", path="/v1/jobs/submit")
    with pytest.raises(AmbiguousSubmitError) as info:
        await pb.submit(kling())
    assert await pb.reconcile(info.value) is None
    assert len(fake.jobs) == 1


async def test_submit_500_is_ambiguous(fake, pb):
    """A 500 on submit is not retried (the job may exist)."""
    fake.inject(
        Fault.status(500, "INTERNAL_ERROR"), method="POST", path="/v1/jobs/submit"
    )
    with pytest.raises(AmbiguousSubmitError):
        await pb.submit(kling())
    assert fake.count("POST", "/v1/jobs/submit") == 1


async def test_slow_get_times_out_within_deadline(fake):
    """A slow server cannot stretch a call past its timeout."""
    async with bound_client(fake) as pb:
        job = await pb.submit(kling())
        fake.inject(Fault.delay(0.5), method="GET", path="/v1/jobs/*", times=None)
        loop = asyncio.get_running_loop()
        start = loop.time()
        with pytest.raises(RequestTimeout):
            await pb.get_job(job.id, timeout=0.2)
        assert loop.time() - start < 0.45
        fake.clear_faults()


async def test_transient_faults_during_get_are_retried(fake, pb):
    """Resets, 502 HTML pages and garbage-free 5xx during GET are retried."""
    job = await pb.submit(kling())
    fake.inject(Fault.drop_before(), method="GET", path="/v1/jobs/*")
    fake.inject(Fault.html(502), method="GET", path="/v1/jobs/*")
    fake.inject(Fault.status(500, "INTERNAL_ERROR"), method="GET", path="/v1/jobs/*")
    again = await pb.get_job(job.id)
    assert again.id == job.id


async def test_borrowed_session_is_not_closed(fake):
    """A user-supplied aiohttp session is borrowed and left open."""
    async with aiohttp.ClientSession() as session:
        async with PixelByte(
            api_key=fake.api_key, base_url=fake.url, clock=fake.clock, session=session
        ) as pb:
            await pb.submit(kling())
        assert not session.closed


async def test_unclosed_client_warns_without_io(fake):
    """A client dropped while open warns (ResourceWarning) and schedules no I/O."""
    pb = bound_client(fake)
    await pb.submit(kling())
    session = pb._transport._session
    del pb
    with pytest.warns(ResourceWarning, match="unclosed"):
        gc.collect()
    await session.close()


async def test_one_session_bounded_connector(fake):
    """The client makes one session whose connector caps open sockets."""
    async with bound_client(fake) as pb:
        await asyncio.gather(*(pb.estimate(kling()) for _ in range(50)))
        session = pb._transport._session
        assert session.connector.limit == pb.config.max_connections == 20
    assert session.closed


async def test_reconcile_from_a_journal_record(fake):
    """A new process rebuilds the error from its journal and excludes ids it knows."""
    async with bound_client(fake, ledger=None) as first:
        known = await first.submit(kling(prompt="known"))
        fake.advance(10)
        fake.inject(Fault.drop_after(), method="POST", path="/v1/jobs/submit")
        started = fake.clock.time()
        with pytest.raises(AmbiguousSubmitError):
            await first.submit(kling(prompt="lost"))
    record = AmbiguousSubmitError(
        "from journal",
        model=SLUG,
        input=kling(prompt="lost").to_input(),
        webhook_url=None,
        started_at=started,
    )
    # No shared ledger: the known job is unexplained, so the list proves nothing.
    async with bound_client(fake, ledger=None) as second:
        with pytest.raises(ReconcileError) as info:
            await second.reconcile(record)
        assert [j.id for j in info.value.foreign] == [known.id]
        assert len(info.value.candidates) == 1
        found = await second.reconcile(record, exclude={known.id})
    assert found is not None
    assert found.id != known.id
    assert set(fake.jobs) == {known.id, found.id}


async def test_requests_wait_for_a_connection_within_their_deadline(fake):
    """Requests beyond the connection limit queue in the SDK, under their own deadline."""
    from pixelbyte_async import ClientConfig

    config = ClientConfig(api_key=fake.api_key, base_url=fake.url, max_connections=1)
    async with PixelByte(config=config, clock=fake.clock) as pb:
        job = await pb.submit(kling())
        fake.inject(Fault.delay(0.3), method="GET", path="/v1/jobs/*")
        slow = asyncio.ensure_future(pb.get_job(job.id))
        await asyncio.sleep(0.05)
        with pytest.raises(RequestTimeout) as info:
            await pb.get_job(job.id, timeout=0.1)
        assert info.value.request_sent is False
        assert (await slow).id == job.id
        many = await asyncio.gather(*(pb.get_job(job.id) for _ in range(30)))
        assert {j.id for j in many} == {job.id}


async def test_a_finished_jobs_unchanged_body_is_decoded_once(fake, monkeypatch):
    """Polling a job the client no longer tracks: one decode per distinct body."""
    import pixelbyte_async._job_queries as queries

    decoded = 0
    real = queries.decode_job

    def counting(*args, **kwargs):
        nonlocal decoded
        decoded += 1
        return real(*args, **kwargs)

    monkeypatch.setattr(queries, "decode_job", counting)
    async with bound_client(fake) as pb:
        job = await pb.run(kling())  # finished: no longer tracked
        first = await pb.get_job(job.id)
        for _ in range(20):
            again = await pb.get_job(job.id)
            assert again.status is first.status
            assert again.video_url == first.video_url
        assert decoded == 1
        other = await pb.run(kling(prompt="another"))
        await pb.get_job(other.id)
        assert decoded == 2
