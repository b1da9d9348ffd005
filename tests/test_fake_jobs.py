"""
`FakePixelByte` jobs: their lifecycle on the clock, scripts, list, cancel, limits,
balance and the ledger.
"""

from __future__ import annotations

import base64
import hashlib
import json

import aiohttp
import pytest
from pixelbyte_async._fake._util import parse_iso
from pixelbyte_async.testing import (
    FakePixelByte,
    Fault,
    JobScript,
    input_fingerprint,
)

from fake_helpers import (
    ECHO,
    KLING,
    KLING_INPUT,
    KLING_PRO,
    api,
    assert_error,
    get_job,
    session_fixture,  # noqa: F401 -- the session fixture
    submit,
    submit_ok,
)


pytestmark = pytest.mark.anyio

# -- job lifecycle --------------------------------------------------------------------


async def test_lifecycle_follows_the_clock(fake, session):
    """pending for 5 s, processing for 240 s, then completed; all on virtual time."""
    job_id = await submit_ok(session, fake)
    job = await get_job(session, fake, job_id)
    assert (job["status"], job["progress"], job["output"], job["completedAt"]) == (
        "pending",
        0,
        None,
        None,
    )
    assert job["model"] == KLING
    assert job["error"] is None
    fake.advance(4.999)
    assert (await get_job(session, fake, job_id))["status"] == "pending"
    fake.advance(0.001)
    job = await get_job(session, fake, job_id)
    assert (job["status"], job["progress"]) == ("processing", 50)
    fake.advance(239.99)
    assert (await get_job(session, fake, job_id))["status"] == "processing"
    fake.advance(0.01)
    job = await get_job(session, fake, job_id)
    assert (job["status"], job["progress"]) == ("completed", 100)
    created = parse_iso(job["createdAt"])
    assert parse_iso(job["completedAt"]) == pytest.approx(created + 245, abs=1e-3)
    assert fake.jobs[job_id].status == "completed"
    assert fake.jobs[job_id].status_at(created + 1) == "pending"


async def test_a_scripted_eta_can_be_wrong(fake, session):
    """JobScript(eta_seconds=): the API's ETA says 120 s, the job takes 245 s."""
    fake.script_next(JobScript(eta_seconds=120))
    answer = await submit(session, fake)
    job_id = answer.body["jobId"]
    created = parse_iso((await get_job(session, fake, job_id))["createdAt"])
    eta = parse_iso(answer.body["estimatedCompletionTime"])
    assert eta == pytest.approx(created + 120, abs=1e-3)
    fake.advance(200)
    assert (await get_job(session, fake, job_id))["status"] == "processing"
    fake.advance(45)
    job = await get_job(session, fake, job_id)
    assert job["status"] == "completed"
    assert parse_iso(job["completedAt"]) == pytest.approx(created + 245, abs=1e-3)
    assert fake.jobs[job_id].finished_at == pytest.approx(created + 245, abs=1e-3)


async def test_unknown_job_is_404(fake, session):
    """An unknown job id is JOB_NOT_FOUND."""
    r = await api(session, fake, "GET", "/v1/jobs/job_000000000000")
    assert_error(r, 404, "JOB_NOT_FOUND")


async def test_wrapped_job_carries_cost(session):
    """The wrapped (quickstart) job view also carries cost."""
    async with FakePixelByte(envelope="wrapped") as fake:
        r = await submit(session, fake)
        job_id = r.body["data"]["jobId"]
        r = await api(session, fake, "GET", f"/v1/jobs/{job_id}")
        assert r.body["data"]["cost"] == 250_000


@pytest.mark.parametrize(
    "shape",
    ["reference", "object", "video_url", "outputs_only", "image_url", "none"],
)
async def test_output_shapes(fake, session, shape):
    """Completed jobs can report every documented output shape."""
    fake.script_next(JobScript(output_shape=shape))
    job_id = await submit_ok(session, fake)
    fake.advance(245)
    job = await get_job(session, fake, job_id)
    assert job["status"] == "completed"
    url = f"{fake.cdn_url}/outputs/{job_id}/output_0.mp4"
    item = {
        "url": url,
        "type": "video",
        "thumbnail": f"{fake.cdn_url}/outputs/{job_id}/thumb_0.jpg",
        "posterImage": f"{fake.cdn_url}/outputs/{job_id}/poster_0.jpg",
    }
    expected = {
        "reference": (url, [item]),
        "object": (
            {"url": url, "contentType": "video/mp4", "durationSeconds": 5},
            None,
        ),
        "video_url": ({"videoUrl": url}, None),
        "outputs_only": (None, [item]),
        "image_url": (
            {
                "imageUrl": url,
                "metadata": {"width": 160, "height": 90, "format": "mp4"},
            },
            None,
        ),
        "none": (None, None),
    }[shape]
    assert (job["output"], job["outputs"]) == expected


async def test_image_model_output(fake, session):
    """The image model's output is a PNG served by the CDN."""
    job_id = await submit_ok(session, fake, model=ECHO, input={"prompt": "x"})
    fake.advance(10)
    job = await get_job(session, fake, job_id)
    assert job["output"] == f"{fake.cdn_url}/outputs/{job_id}/output_0.png"
    assert job["outputs"][0]["type"] == "image"
    async with session.get(job["output"]) as r:
        assert r.headers["Content-Type"] == "image/png"
        assert (await r.read()).startswith(b"\x89PNG\r\n\x1a\n")


async def test_failed_job_is_refunded(fake, session):
    """A failing script ends failed with an error, and the ledger refunds it."""
    fake.script_next(JobScript(outcome="failed", processing_seconds=10))
    job_id = await submit_ok(session, fake)
    assert fake.ledger.charged_micro_cents == 250_000
    fake.advance(15)
    assert fake.ledger.charged_micro_cents == 0
    [charge, refund] = fake.ledger.for_job(job_id)
    assert (refund.kind, refund.reason, refund.micro_cents) == (
        "refund",
        "failed",
        250_000,
    )
    assert refund.time == pytest.approx(charge.time + 15)
    job = await get_job(session, fake, job_id)
    assert (job["status"], job["progress"], job["output"], job["outputs"]) == (
        "failed",
        0,
        None,
        None,
    )
    assert job["error"] == {
        "code": "GENERATION_FAILED",
        "message": "Generation failed. Credits have been refunded.",
    }
    assert job["completedAt"] is not None
    assert len(fake.ledger) == 2


async def test_complete_now_and_fail_now(fake, session):
    """complete_now/fail_now end a running job at once; ended jobs refuse them."""
    first = await submit_ok(session, fake)
    second = await submit_ok(session, fake)
    fake.advance(1)
    done = fake.complete_now(first)
    assert done.status == "completed"
    assert (await get_job(session, fake, first))["status"] == "completed"
    fake.fail_now(second, code="INTERNAL_ERROR", message="Model inference failed")
    job = await get_job(session, fake, second)
    assert job["error"] == {
        "code": "INTERNAL_ERROR",
        "message": "Model inference failed",
    }
    assert fake.ledger.charged_micro_cents == 250_000
    with pytest.raises(ValueError, match="already completed"):
        fake.fail_now(first)
    with pytest.raises(KeyError):
        fake.complete_now("job_nope")


async def test_complete_now_rescues_a_failing_script(fake, session):
    """complete_now overrides a failing script, so no refund is entered."""
    fake.script_next(JobScript(outcome="failed"))
    job_id = await submit_ok(session, fake)
    fake.complete_now(job_id)
    fake.advance(1000)
    assert fake.jobs[job_id].status == "completed"
    assert fake.ledger.charged_micro_cents == 250_000


async def test_scripts_are_consumed_in_order(fake, session):
    """script_next feeds the next created jobs; then the default script applies."""
    fake.set_default_script(JobScript(queue_seconds=0, processing_seconds=1))
    fake.script_next(JobScript(queue_seconds=100), JobScript(outcome="failed"))
    r = await submit(session, fake, KLING, {"image_url": "https://e/a"})  # rejected
    assert r.status == 400
    a = await submit_ok(session, fake)
    b = await submit_ok(session, fake)
    c = await submit_ok(session, fake)
    fake.advance(1)
    assert [fake.jobs[j].status for j in (a, b, c)] == [
        "pending",
        "pending",
        "completed",
    ]
    assert fake.jobs[a].script.processing_seconds == 240
    assert fake.jobs[b].script.outcome == "failed"


# -- list -----------------------------------------------------------------------------


async def test_list_paginates_newest_first(fake, session):
    """Cursors walk every job once, newest first; the last page has no cursor."""
    ids = [await submit_ok(session, fake) for _ in range(5)]
    seen: list[str] = []
    cursor = None
    pages = 0
    while True:
        params = {"limit": "2"} | ({"cursor": cursor} if cursor else {})
        r = await api(session, fake, "GET", "/v1/jobs", params=params)
        assert set(r.body) == {"jobs", "nextCursor", "hasMore"}
        seen += [j["jobId"] for j in r.body["jobs"]]
        pages += 1
        if not r.body["hasMore"]:
            assert r.body["nextCursor"] is None
            break
        cursor = r.body["nextCursor"]
        json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
    assert seen == ids[::-1]
    assert pages == 3
    item = r.body["jobs"][0]
    assert set(item) == {
        "jobId",
        "status",
        "progress",
        "model",
        "createdAt",
        "completedAt",
    }


async def test_list_default_limit_is_20(fake, session):
    """Without limit a page holds 20 jobs."""
    for _ in range(21):
        await submit_ok(session, fake, model=ECHO, input={"prompt": "x"})
    r = await api(session, fake, "GET", "/v1/jobs")
    assert (len(r.body["jobs"]), r.body["hasMore"]) == (20, True)


async def test_list_filters(fake, session):
    """status and modelId (a slug) filter the list."""
    kling = await submit_ok(session, fake)
    fake.advance(10)
    echo = await submit_ok(session, fake, model=ECHO, input={"prompt": "x"})
    r = await api(session, fake, "GET", "/v1/jobs", params={"modelId": ECHO})
    assert [j["jobId"] for j in r.body["jobs"]] == [echo]
    r = await api(session, fake, "GET", "/v1/jobs", params={"status": "processing"})
    assert [j["jobId"] for j in r.body["jobs"]] == [kling]
    r = await api(session, fake, "GET", "/v1/jobs", params={"status": "completed"})
    assert r.body == {"jobs": [], "nextCursor": None, "hasMore": False}


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"limit": "0"}, "limit"),
        ({"limit": "101"}, "limit"),
        ({"limit": "ten"}, "limit"),
        ({"cursor": "!!!"}, "cursor"),
        ({"cursor": base64.b64encode(b'{"jobId":"job_x"}').decode()}, "cursor"),
        ({"status": "running"}, "status"),
    ],
    ids=[
        "limit-0",
        "limit-101",
        "limit-text",
        "cursor-garbage",
        "cursor-unknown",
        "status",
    ],
)
async def test_list_rejects_bad_parameters(fake, session, params, field):
    """Out-of-range limits, foreign cursors and unknown statuses are INVALID_INPUT."""
    r = await api(session, fake, "GET", "/v1/jobs", params=params)
    assert assert_error(r, 400, "INVALID_INPUT")["details"]["field"] == field


async def test_list_accepts_limit_100(fake, session):
    """limit=100 is the maximum and is accepted."""
    r = await api(session, fake, "GET", "/v1/jobs", params={"limit": "100"})
    assert r.status == 200


# -- cancel ---------------------------------------------------------------------------


async def test_cancel_pending_refunds(fake, session):
    """Cancelling a pending job refunds it in full, once."""
    job_id = await submit_ok(session, fake)
    r = await api(session, fake, "POST", f"/v1/jobs/{job_id}/cancel")
    assert r.body == {
        "jobId": job_id,
        "status": "cancelled",
        "refundedMicroCents": 250_000,
    }
    assert fake.ledger.charged_micro_cents == 0
    assert [e.reason for e in fake.ledger.for_job(job_id)] == ["submit", "cancelled"]
    job = await get_job(session, fake, job_id)
    assert (job["status"], job["output"]) == ("cancelled", None)
    assert job["completedAt"] is not None
    fake.advance(1000)
    assert fake.jobs[job_id].status == "cancelled"
    r = await api(session, fake, "POST", f"/v1/jobs/{job_id}/cancel")
    assert (
        assert_error(r, 400, "JOB_CANNOT_BE_CANCELLED")["details"]["status"]
        == "cancelled"
    )
    assert fake.ledger.charged_micro_cents == 0


@pytest.mark.parametrize(("seconds", "status"), [(5, "processing"), (245, "completed")])
async def test_cancel_running_or_done_is_refused(fake, session, seconds, status):
    """Only pending jobs can be cancelled."""
    job_id = await submit_ok(session, fake)
    fake.advance(seconds)
    r = await api(session, fake, "POST", f"/v1/jobs/{job_id}/cancel")
    assert (
        assert_error(r, 400, "JOB_CANNOT_BE_CANCELLED")["details"]["status"] == status
    )
    assert fake.ledger.charged_micro_cents == 250_000


async def test_cancel_unknown_job(fake, session):
    """Cancelling an unknown job is JOB_NOT_FOUND."""
    r = await api(session, fake, "POST", "/v1/jobs/job_000000000000/cancel")
    assert_error(r, 404, "JOB_NOT_FOUND")


# -- limits and balance ---------------------------------------------------------------


async def test_concurrency_limit(session):
    """Over the limit submit is 429 with retryAfter and creates no job."""
    async with FakePixelByte(concurrent_job_limit=2) as fake:
        await submit_ok(session, fake)
        await submit_ok(session, fake)
        r = await submit(session, fake)
        error = assert_error(r, 429, "CONCURRENT_JOBS_EXCEEDED")
        assert error["details"]["retryAfter"] == 30
        assert len(fake.jobs) == 2
        assert fake.ledger.charged_micro_cents == 500_000
        fake.concurrency_retry_after = 7
        assert fake.concurrency_retry_after == 7
        r = await submit(session, fake)
        assert r.body["error"]["details"]["retryAfter"] == 7
        fake.advance(245)
        await submit_ok(session, fake)
        fake.concurrent_job_limit = None
        assert fake.concurrent_job_limit is None
        await submit_ok(session, fake)


async def test_balance(session):
    """Submits beyond the balance are 402; refunds restore it."""
    async with FakePixelByte(balance_micro_cents=300_000) as fake:
        job_id = await submit_ok(session, fake)
        assert fake.balance_micro_cents == 50_000
        r = await submit(session, fake)
        assert assert_error(r, 402, "INSUFFICIENT_BALANCE")["details"] == {
            "requiredMicroCents": 250_000,
            "balanceMicroCents": 50_000,
        }
        assert len(fake.jobs) == 1
        await api(session, fake, "POST", f"/v1/jobs/{job_id}/cancel")
        assert fake.balance_micro_cents == 300_000
        fake.balance_micro_cents = 1_000_000
        assert fake.balance_micro_cents == 1_000_000
        await submit_ok(session, fake)
        assert fake.balance_micro_cents == 750_000


async def test_unlimited_balance_is_none(fake):
    """Without a starting balance there is no balance to report."""
    assert fake.balance_micro_cents is None


# -- ledger ---------------------------------------------------------------------------


def test_input_fingerprint_ignores_key_order():
    """The fingerprint is the SHA-256 of canonical JSON of model and input."""
    a = input_fingerprint(KLING, {"a": 1, "b": "é"})
    assert a == input_fingerprint(KLING, {"b": "é", "a": 1})
    assert a != input_fingerprint(KLING_PRO, {"a": 1, "b": "é"})
    canonical = '{"input":{"a":1,"b":"é"},"model":"' + KLING + '"}'
    assert a == hashlib.sha256(canonical.encode()).hexdigest()


async def test_double_charge_detection(fake, session):
    """A blind resubmit after a dropped answer is visible as a double charge."""
    fake.inject(Fault.drop_after(), method="POST", path="/v1/jobs/submit")
    with pytest.raises((aiohttp.ServerDisconnectedError, aiohttp.ClientOSError)):
        await submit(session, fake)
    await submit_ok(session, fake)
    fp = input_fingerprint(KLING, KLING_INPUT)
    assert fake.ledger.charges_by_fingerprint() == {fp: 2}
    assert fake.ledger.double_charged() == [fp]
    assert "charged_micro_cents=500000" in repr(fake.ledger)


async def test_resubmit_after_failure_is_not_double_charged(fake, session):
    """Paying again after a refunded failure is not a double charge."""
    fake.script_next(JobScript(outcome="failed", queue_seconds=0, processing_seconds=1))
    await submit_ok(session, fake)
    fake.advance(1)
    await submit_ok(session, fake)
    fp = input_fingerprint(KLING, KLING_INPUT)
    assert fake.ledger.charges_by_fingerprint() == {fp: 2}
    assert fake.ledger.double_charged() == []


async def test_finished_jobs_cost_a_submit_and_the_webhook_sender_nothing(
    session, monkeypatch
):
    """
    The fake serves long runs (10,000 jobs in bench_hub): the concurrency check
    and the webhook sender look at jobs still running or undelivered only, never
    again at every job ever made.  (Counted in `status_at` calls, not timed.)
    """
    from pixelbyte_async._fake._jobs import FakeJob
    from pixelbyte_async.webhooks import WebhookServer

    calls = 0
    status_at = FakeJob.status_at

    def counting(self, now):
        nonlocal calls
        calls += 1
        return status_at(self, now)

    async with (
        WebhookServer("whsec_test_sandbox") as hooks,
        FakePixelByte(concurrent_job_limit=1000, allow_http_webhooks=True) as fake,
    ):
        for _ in range(50):
            await submit_ok(session, fake, webhookUrl=hooks.url)
        fake.advance(300)
        delivered = await fake.deliver_webhooks()
        assert len(delivered) == 50
        assert all(d.ok for d in delivered)
        await submit_ok(session, fake, webhookUrl=hooks.url)  # forgets the 50

        monkeypatch.setattr(FakeJob, "status_at", counting)
        await submit_ok(session, fake)
        assert calls <= 3, calls  # the two jobs running, not the 50 finished
        calls = 0
        assert await fake.deliver_webhooks() == []
        assert calls <= 2, calls
