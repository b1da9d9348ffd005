"""
`FakePixelByte` faults (API and CDN) and the records of every request.
"""

from __future__ import annotations

import asyncio
import json

import aiohttp
import pytest
from pixelbyte_async._fake._util import parse_iso
from pixelbyte_async.testing import FakePixelByte, Fault, JobScript

from fake_helpers import (
    KLING,
    KLING_INPUT,
    api,
    assert_error,
    bearer,
    get_job,
    session_fixture,  # noqa: F401 -- the session fixture
    submit,
    submit_ok,
)


pytestmark = pytest.mark.anyio

# -- faults ---------------------------------------------------------------------------


async def test_status_fault(fake, session):
    """A status fault answers the envelope (with retry hints) and creates no job."""
    handle = fake.inject(
        Fault.status(
            503, "PUBSUB_PUBLISH_FAILED", retry_after=2, retry_after_header="3"
        ),
        method="POST",
        path="/v1/jobs/submit",
        times=2,
    )
    for _ in range(2):
        r = await submit(session, fake)
        error = assert_error(r, 503, "PUBSUB_PUBLISH_FAILED")
        assert error["details"] == {"retryAfter": 2}
        assert error["message"] == "Failed to queue the job. Please retry."
        assert r.headers["Retry-After"] == "3"
    assert dict(fake.jobs) == {}
    assert (handle.hits, handle.remaining, handle.active) == (2, 0, False)
    await submit_ok(session, fake)
    assert [r.fault for r in fake.requests] == ["status", "status", None]


async def test_status_fault_default_message_and_float_retry(fake, session):
    """Unknown codes get a generic message; fractional retryAfter stays fractional."""
    fake.inject(Fault.status(500, "WEIRD", retry_after=1.5))
    r = await api(session, fake, "GET", "/v1/jobs")
    error = assert_error(r, 500, "WEIRD")
    assert error["details"]["retryAfter"] == 1.5
    assert "Retry-After" not in r.headers


async def test_faults_match_method_and_path_globs_in_order(fake, session):
    """Faults hit only matching requests, first injected first."""
    fake.inject(
        Fault.status(500, "INTERNAL_ERROR"), method="GET", path="/v1/jobs/job_*"
    )
    fake.inject(Fault.status(503, "PUBSUB_PUBLISH_FAILED"), method="post")
    fake.inject(Fault.status(502, "BAD_GATEWAY"), method="POST")
    job_id = await submit(session, fake)
    assert job_id.status == 503
    assert (await submit(session, fake)).status == 502
    job_id = await submit_ok(session, fake)
    assert (await api(session, fake, "GET", "/v1/jobs")).status == 200
    assert (await api(session, fake, "GET", f"/v1/jobs/{job_id}")).status == 500
    assert (await api(session, fake, "GET", f"/v1/jobs/{job_id}")).status == 200


async def test_unlimited_fault_until_cancelled(fake, session):
    """times=None applies a fault until its handle is cancelled or faults cleared."""
    handle = fake.inject(Fault.status(500, "INTERNAL_ERROR"), times=None)
    for _ in range(3):
        assert (await api(session, fake, "GET", "/v1/jobs")).status == 500
    handle.cancel()
    assert (await api(session, fake, "GET", "/v1/jobs")).status == 200
    fake.inject(Fault.status(500, "INTERNAL_ERROR"), times=None)
    fake.clear_faults()
    assert (await api(session, fake, "GET", "/v1/jobs")).status == 200
    with pytest.raises(ValueError, match="times"):
        fake.inject(Fault.drop_before(), times=0)
    with pytest.raises(ValueError, match="seconds"):
        Fault.delay(-1)


async def test_delay_fault_lets_clients_time_out(fake, session):
    """A delay fault holds the answer for real seconds; the work still happens."""
    fake.inject(Fault.delay(0.05), path="/v1/jobs/submit")
    with pytest.raises(TimeoutError):
        async with session.post(
            fake.url + "/v1/jobs/submit",
            json={"model": KLING, "input": KLING_INPUT},
            headers=bearer(fake),
            timeout=aiohttp.ClientTimeout(total=0.01),
        ):
            pass  # pragma: no cover
    await asyncio.sleep(0.08)
    assert len(fake.jobs) == 1
    fake.inject(Fault.delay(0.001))
    assert (await api(session, fake, "GET", "/v1/jobs")).status == 200


async def test_drop_before_creates_nothing(fake, session):
    """drop_before closes the connection unanswered and does nothing."""
    fake.inject(Fault.drop_before(), method="POST", path="/v1/jobs/submit")
    with pytest.raises((aiohttp.ServerDisconnectedError, aiohttp.ClientOSError)):
        await submit(session, fake)
    assert dict(fake.jobs) == {}
    assert fake.ledger.entries == []
    assert fake.requests[-1].fault == "drop_before"
    await submit_ok(session, fake)


async def test_drop_after_creates_and_charges(fake, session):
    """drop_after does the work, then closes the connection unanswered."""
    fake.inject(Fault.drop_after(), method="POST", path="/v1/jobs/submit")
    with pytest.raises((aiohttp.ServerDisconnectedError, aiohttp.ClientOSError)):
        await submit(session, fake)
    [job] = fake.jobs.values()
    assert fake.ledger.charged_micro_cents == job.cost == 250_000


async def test_html_fault(fake, session):
    """html answers a proxy's error page and creates nothing."""
    fake.inject(Fault.html(), path="/v1/jobs/submit")
    async with session.post(
        fake.url + "/v1/jobs/submit",
        json={"model": KLING, "input": KLING_INPUT},
        headers=bearer(fake),
    ) as r:
        assert r.status == 502
        assert r.content_type == "text/html"
        assert "<h1>502 Bad Gateway</h1>" in await r.text()
    assert dict(fake.jobs) == {}


async def test_garbage_fault(fake, session):
    """garbage sends half a JSON body after doing the work."""
    fake.inject(Fault.garbage(), path="/v1/jobs/submit")
    async with session.post(
        fake.url + "/v1/jobs/submit",
        json={"model": KLING, "input": KLING_INPUT},
        headers=bearer(fake),
    ) as r:
        assert r.status == 200
        assert r.content_type == "application/json"
        text = await r.text()
    with pytest.raises(json.JSONDecodeError):
        json.loads(text)
    assert text.startswith('{"jobId"')
    assert len(fake.jobs) == 1


async def test_cdn_faults(fake, session):
    """Faults can target the CDN origin; API faults never hit it."""
    job_id = await submit_ok(session, fake)
    fake.advance(245)
    url = f"{fake.cdn_url}/outputs/{job_id}/output_0.mp4"
    fake.inject(Fault.status(500, "INTERNAL_ERROR"))  # api origin only
    # aiohttp's client retries an idempotent request once after a drop: drop twice.
    fake.inject(Fault.drop_before(), origin="cdn", path="/outputs/*", times=2)
    with pytest.raises((aiohttp.ServerDisconnectedError, aiohttp.ClientOSError)):
        async with session.get(url) as r:
            await r.read()  # pragma: no cover
    fake.inject(Fault.html(503), origin="cdn")
    async with session.get(url) as r:
        assert r.status == 503
    async with session.get(url) as r:
        assert r.status == 200
    faults = [r.fault for r in fake.cdn_requests]
    assert faults == ["drop_before", "drop_before", "html", None]
    assert (await api(session, fake, "GET", "/v1/jobs")).status == 500


async def test_cdn_drop_after_and_garbage(fake, session):
    """drop_after and garbage work on the CDN too."""
    job_id = await submit_ok(session, fake)
    fake.advance(245)
    url = f"{fake.cdn_url}/outputs/{job_id}/output_0.mp4"
    fake.inject(Fault.drop_after(), origin="cdn", times=2)
    with pytest.raises((aiohttp.ServerDisconnectedError, aiohttp.ClientOSError)):
        async with session.get(url) as r:
            await r.read()  # pragma: no cover
    fake.inject(Fault.garbage(), origin="cdn")
    async with session.get(url) as r:
        assert len(await r.read()) == 7553 // 2


# -- records --------------------------------------------------------------------------


async def test_requests_are_recorded(fake, session):
    """Every API request is recorded with headers (incl. Authorization), JSON and query."""
    await submit_ok(session, fake)
    await api(session, fake, "GET", "/v1/jobs", params={"limit": "5"})
    [sub] = fake.requests_for("POST", "/v1/jobs/submit")
    assert sub.json == {"model": KLING, "input": KLING_INPUT}
    assert sub.headers["Authorization"] == f"Bearer {fake.api_key}"
    assert sub.method == "POST"
    assert sub.time == pytest.approx(fake.clock.time())
    assert sub.request_id.startswith("req_")
    [listing] = fake.requests_for("get", "/v1/jobs")
    assert listing.query == {"limit": "5"}
    assert listing.json is None
    assert fake.count("*", "/v1/jobs*") == 2
    assert fake.count("POST", "*") == 1
    fake.reset_records()
    assert fake.requests == []
    assert fake.cdn_requests == []
    assert len(fake.jobs) == 1


# -- failures, ETAs and waits of a sandbox (issue 24, item 12) ------------------------


async def outcomes(session, fake: FakePixelByte, jobs: int) -> list[str]:
    """Submit *jobs* Kling jobs, let them end, and return their statuses in order."""
    ids = [await submit_ok(session, fake) for _ in range(jobs)]
    fake.advance(245)
    return [(await get_job(session, fake, i))["status"] for i in ids]


async def test_fail_rate_fails_a_share_of_the_jobs_the_same_for_a_seed(session):
    """fail_rate=0.5 fails about half; the same seed fails the same jobs."""
    runs = []
    for _ in range(2):
        async with FakePixelByte(fail_rate=0.5, seed=7) as fake:
            runs.append(await outcomes(session, fake, 40))
            failed = [j for j in fake.jobs.values() if j.status == "failed"]
            assert fake.ledger.charged_micro_cents == (40 - len(failed)) * 250_000
    assert runs[0] == runs[1]
    assert 10 <= runs[0].count("failed") <= 30
    assert set(runs[0]) == {"completed", "failed"}
    async with FakePixelByte(fail_rate=0.5, seed=8) as fake:
        assert await outcomes(session, fake, 40) != runs[0]


async def test_fail_rate_leaves_scripted_jobs_alone(session):
    """All jobs fail at 1, none at 0; a script_next job keeps its own outcome."""
    async with FakePixelByte(fail_rate=1.0) as fake:
        fake.script_next(JobScript())
        assert await outcomes(session, fake, 3) == ["completed", "failed", "failed"]
        fake.fail_rate = 0
        assert await outcomes(session, fake, 2) == ["completed", "completed"]


@pytest.mark.parametrize(("error", "eta"), [(-0.5, 122.5), (1.0, 490.0), (0, 245.0)])
async def test_eta_error_makes_the_announced_eta_wrong_by_that_share(
    session, error, eta
):
    """The ETA says createdAt + 245 s x (1 + eta_error); the job still takes 245 s."""
    async with FakePixelByte(eta_error=error) as fake:
        r = await submit(session, fake)
        job = await get_job(session, fake, r.body["jobId"])
        created = parse_iso(job["createdAt"])
        assert parse_iso(r.body["estimatedCompletionTime"]) - created == eta
        fake.advance(244)
        assert (await get_job(session, fake, job["jobId"]))["status"] == "processing"
        fake.advance(1)
        assert (await get_job(session, fake, job["jobId"]))["status"] == "completed"


async def test_eta_error_spares_a_script_that_names_its_eta(session):
    async with FakePixelByte(eta_error=-0.5) as fake:
        fake.script_next(JobScript(eta_seconds=100))
        r = await submit(session, fake)
        job = fake.jobs[r.body["jobId"]]
        assert job.estimated_completion_time - job.created_at == 100


@pytest.mark.parametrize(
    ("speedup", "says", "answers"),
    [(1.0, 60, 60), (20.0, 60, 3), (20.0, 30, 2), (60.0, 30, 1), (1000.0, 30, 1)],
)
async def test_a_faster_fake_shortens_the_429_retry_after(
    session, speedup, says, answers
):
    """Jobs *speedup* times shorter free slots that much sooner: retryAfter shrinks."""
    async with FakePixelByte(
        speedup=speedup, concurrent_job_limit=1, concurrency_retry_after=says
    ) as fake:
        await submit_ok(session, fake)
        error = assert_error(
            await submit(session, fake), 429, "CONCURRENT_JOBS_EXCEEDED"
        )
        assert error["details"]["retryAfter"] == answers
        assert fake.concurrency_retry_after == says


@pytest.mark.parametrize(
    "kwargs",
    [
        {"fail_rate": 1.5},
        {"fail_rate": -0.1},
        {"fail_rate": float("nan")},
        {"eta_error": -1.5},
        {"eta_error": float("inf")},
    ],
    ids=["rate-above-1", "rate-below-0", "rate-nan", "eta-below-minus-1", "eta-inf"],
)
async def test_bad_failure_and_eta_knobs_are_refused(kwargs):
    """The constructor and the properties refuse a share not in 0..1, an ETA below -1."""
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        FakePixelByte(**kwargs)
    async with FakePixelByte() as fake:
        for name, value in kwargs.items():
            with pytest.raises(ValueError, match=name):
                setattr(fake, name, value)
