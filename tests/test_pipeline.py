"""The request pipeline over MockTransport: deadlines, retries, submit safety, secrets."""

from __future__ import annotations

import logging

import pytest
from pixelbyte_async import (
    AmbiguousSubmitError,
    AuthenticationError,
    ClientClosedError,
    InsufficientBalance,
    KlingO1StartEndFrame,
    MockTransport,
    PixelByte,
    RateLimited,
    Request,
    RequestTimeout,
    Response,
    RetryPolicy,
    ServerError,
    TransportError,
    ValidationError,
    VirtualClock,
    json_response,
)


pytestmark = pytest.mark.anyio

KEY = "pb_live_SECRET_value_123"
SLUG = "kling-plus/kling-o1-standard/start-end-frame-to-video"
KLING = KlingO1StartEndFrame(
    image_url="https://example.com/a.jpg",
    end_image_url="https://example.com/b.jpg",
    prompt="p",
)
SUBMITTED = {
    "jobId": "job_1",
    "status": "pending",
    "estimatedCompletionTime": "2030-01-01T00:04:05Z",
    "costMicroCents": 250000,
    "requestId": "req_1",
}


def err(status, code, message="m", details=None, headers=None):
    return json_response(
        {
            "success": False,
            "error": {"code": code, "message": message, "details": details or {}},
            "requestId": "req_e",
        },
        status,
        headers,
    )


class Script:
    """Answer requests in order from a list of responses or exceptions."""

    def __init__(self, *answers):
        self.answers = list(answers)

    def __call__(self, request: Request) -> Response:
        answer = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
        if isinstance(answer, BaseException):
            raise answer
        return answer


def client(handler, **kwargs):
    clock = kwargs.pop("clock", VirtualClock())
    mock = MockTransport(handler)
    pb = PixelByte(
        api_key=KEY, base_url="https://api.test", transport=mock, clock=clock, **kwargs
    )
    return pb, mock, clock


async def test_submit_success_sends_the_documented_body():
    """Submit posts model+input with Bearer auth and returns a pending Job."""
    pb, mock, _ = client(Script(json_response(SUBMITTED)))
    async with pb:
        job = await pb.submit(KLING, webhook_url="https://hooks.example/x")
    req = mock.requests[0]
    assert (req.method, req.url) == ("POST", "https://api.test/v1/jobs/submit")
    assert req.headers["Authorization"] == f"Bearer {KEY}"
    assert req.json == {
        "model": SLUG,
        "input": KLING.to_input(),
        "webhookUrl": "https://hooks.example/x",
    }
    assert (job.id, job.status.value, job.cost_micro_cents) == (
        "job_1",
        "pending",
        250000,
    )
    assert job.estimated_completion_time.year == 2030
    assert job.model == SLUG


async def test_enveloped_submit_response():
    """The quickstart's enveloped submit body with estimatedCost decodes too."""
    body = {
        "success": True,
        "data": {"jobId": "job_2", "status": "pending", "estimatedCost": 500000},
        "requestId": "r",
    }
    pb, _, _ = client(Script(json_response(body)))
    async with pb:
        job = await pb.submit(
            SLUG, {"image_url": "https://e/a", "end_image_url": "https://e/b"}
        )
    assert (job.id, job.cost_micro_cents, job.info.request_id) == ("job_2", 500000, "r")


@pytest.mark.parametrize(
    "failure",
    [
        TransportError("read broke", request_sent=True),
        RequestTimeout("read timed out"),
        err(500, "INTERNAL_ERROR"),
        err(502, None),
        json_response("not an object"),
        Response(status=200, headers={}, content=b"{truncated"),
    ],
    ids=["dropped", "read-timeout", "500", "502", "garbage-2xx", "truncated-2xx"],
)
async def test_submit_with_unknown_fate_is_never_resent(failure):
    """A submit whose fate is unknown raises AmbiguousSubmitError after exactly one POST."""
    pb, mock, _ = client(Script(failure, json_response(SUBMITTED)))
    async with pb:
        with pytest.raises(AmbiguousSubmitError) as info:
            await pb.submit(KLING)
    assert len(mock.requests) == 1
    assert info.value.model == SLUG
    assert info.value.input == KLING.to_input()
    assert pb.jobs_in_flight == 0


@pytest.mark.parametrize(
    "refusal",
    [
        err(429, "CONCURRENT_JOBS_EXCEEDED", details={"retryAfter": 30}),
        err(503, "PUBSUB_PUBLISH_FAILED"),
        TransportError("cannot connect", request_sent=False),
        err(429, "CONCURRENT_JOBS_EXCEEDED", headers={"Retry-After": "12"}),
    ],
    ids=["429-details", "503-pubsub", "connect", "429-header"],
)
async def test_submit_retried_when_no_job_was_created(refusal):
    """429, 503 PUBSUB_PUBLISH_FAILED and connect errors are retried safely."""
    pb, mock, clock = client(
        Script(refusal, json_response(SUBMITTED)), retry=RetryPolicy(jitter=False)
    )
    async with pb:
        job = await pb.submit(KLING)
    assert job.id == "job_1"
    assert len(mock.requests) == 2


async def test_concurrency_429_waits_retry_after():
    """CONCURRENT_JOBS_EXCEEDED waits details.retryAfter, beyond the attempt count."""
    answers = [err(429, "CONCURRENT_JOBS_EXCEEDED", details={"retryAfter": 30})] * 7
    pb, mock, clock = client(Script(*answers, json_response(SUBMITTED)))
    async with pb:
        await pb.submit(KLING)
    assert len(mock.requests) == 8
    assert clock.monotonic() == pytest.approx(7 * 30)


async def test_concurrency_429_bounded_by_submit_deadline():
    """Endless 429s end at the submit deadline with RateLimited."""
    pb, mock, clock = client(
        Script(err(429, "CONCURRENT_JOBS_EXCEEDED", details={"retryAfter": 30}))
    )
    async with pb:
        with pytest.raises(RateLimited) as info:
            await pb.submit(KLING, timeout=100)
    assert clock.monotonic() <= 100
    assert info.value.retry_after == 30


@pytest.mark.parametrize(
    ("answer", "cls"),
    [
        (err(402, "INSUFFICIENT_BALANCE"), InsufficientBalance),
        (err(401, "INVALID_API_KEY"), AuthenticationError),
    ],
)
async def test_definite_refusals_are_not_retried(answer, cls):
    """4xx answers raise their class at once."""
    pb, mock, _ = client(Script(answer))
    async with pb:
        with pytest.raises(cls) as info:
            await pb.submit(KLING)
    assert len(mock.requests) == 1
    assert info.value.request_id == "req_e"


async def test_one_deadline_for_retried_gets():
    """timeout=30 bounds all GET attempts and backoffs together (never 91 s)."""
    pb, mock, clock = client(
        Script(err(503, "INTERNAL_ERROR")),
        retry=RetryPolicy(attempts=50, wait_initial=4, wait_max=8, jitter=False),
    )
    async with pb:
        with pytest.raises(ServerError):
            await pb.get_job("job_1", timeout=30)
    assert clock.monotonic() <= 30
    assert len(mock.requests) >= 3


async def test_gets_retry_transport_errors_and_5xx():
    """GET survives a reset and a 500 and returns the job."""
    pb, mock, _ = client(
        Script(
            TransportError("reset"),
            err(500, "INTERNAL_ERROR"),
            json_response({"jobId": "job_1", "status": "processing"}),
        )
    )
    async with pb:
        job = await pb.get_job("job_1")
    assert job.status.value == "processing"
    assert len(mock.requests) == 3


async def test_retry_after_over_cap_is_not_waited():
    """A Retry-After beyond max_retry_after is raised, not slept."""
    pb, mock, clock = client(Script(err(429, None, headers={"Retry-After": "3600"})))
    async with pb:
        with pytest.raises(RateLimited):
            await pb.get_job("job_1")
    assert clock.monotonic() == 0
    assert len(mock.requests) == 1


async def test_html_error_page_is_an_api_error():
    """A proxy's HTML 502 page becomes ServerError with an excerpt, retried then raised."""
    page = Response(
        status=502,
        headers={"content-type": "text/html"},
        content=b"<html>Bad Gateway</html>",
    )
    pb, mock, _ = client(Script(page), retry=RetryPolicy(attempts=2, jitter=False))
    async with pb:
        with pytest.raises(ServerError, match="Bad Gateway"):
            await pb.get_job("job_1")
    assert len(mock.requests) == 2


async def test_success_false_in_200_is_an_error():
    """A 200 carrying success:false raises the mapped error."""
    pb, _, _ = client(
        Script(
            json_response(
                {"success": False, "error": {"code": "JOB_NOT_FOUND", "message": "no"}}
            )
        )
    )
    async with pb:
        with pytest.raises(Exception, match="JOB_NOT_FOUND"):
            await pb.get_job("job_x")


async def test_validation_sends_nothing():
    """Bad input raises ValidationError with no request made."""
    pb, mock, _ = client(Script(json_response(SUBMITTED)))
    async with pb:
        with pytest.raises(ValidationError):
            await pb.submit(KLING, webhook_url="http://insecure.example/hook")
        with pytest.raises(ValidationError):
            await pb.submit("bad slug", {})
        with pytest.raises(ValidationError):
            await pb.submit(SLUG, {"x": float("nan")})
        with pytest.raises(ValidationError):
            await pb.submit(SLUG)
        with pytest.raises(ValidationError):
            await pb.submit(KLING, {"also": "raw"})
        with pytest.raises(ValidationError):
            await pb.get_job("")
    assert mock.requests == []


async def test_lifecycle():
    """Closing twice is harmless; use after close raises ClientClosedError."""
    pb, _, _ = client(Script(json_response(SUBMITTED)))
    async with pb:
        pass
    await pb.aclose()
    assert pb.closed
    with pytest.raises(ClientClosedError):
        await pb.get_job("job_1")
    with pytest.raises(ClientClosedError):
        async with pb:
            pass


async def test_missing_key_is_a_clear_error(monkeypatch):
    """Without a key, authenticated calls fail locally and say how to fix it."""
    monkeypatch.delenv("PIXELBYTE_API_KEY", raising=False)
    mock = MockTransport(Script(json_response(SUBMITTED)))
    async with PixelByte(transport=mock) as pb:
        with pytest.raises(ValidationError, match="PIXELBYTE_API_KEY"):
            await pb.get_job("job_1")
    assert mock.requests == []


async def test_env_configuration(monkeypatch):
    """api_key and base_url come from the environment when not given."""
    monkeypatch.setenv("PIXELBYTE_API_KEY", KEY)
    monkeypatch.setenv("PIXELBYTE_BASE_URL", "https://alt.test/v1/")
    mock = MockTransport(Script(json_response({"jobId": "j", "status": "pending"})))
    async with PixelByte(transport=mock) as pb:
        await pb.get_job("j")
    assert mock.requests[0].url == "https://alt.test/v1/jobs/j"
    assert mock.requests[0].headers["Authorization"] == f"Bearer {KEY}"


async def test_key_never_in_reprs_logs_or_errors(caplog):
    """The API key appears in no repr, log record or exception text."""
    caplog.set_level(logging.DEBUG, logger="pixelbyte_async")
    pb, mock, _ = client(
        Script(
            err(500, "INTERNAL_ERROR"),
            json_response(SUBMITTED),
            err(401, "INVALID_API_KEY", message="bad key"),
        )
    )
    texts = [repr(pb), repr(pb.config), str(pb.config)]
    async with pb:
        with pytest.raises(AmbiguousSubmitError) as ambiguous:
            await pb.submit(KLING)
        texts += [
            str(ambiguous.value),
            repr(ambiguous.value),
            str(ambiguous.value.__cause__),
        ]
        job = await pb.submit(KLING)
        texts.append(repr(job))
        with pytest.raises(AuthenticationError) as auth:
            await pb.get_job("job_1")
        texts += [str(auth.value), repr(auth.value)]
    texts += [r.getMessage() for r in caplog.records]
    texts += [repr(r) for r in mock.requests]
    assert caplog.records
    for text in texts:
        assert KEY not in text
        assert "SECRET" not in text


async def test_unchanged_poll_bodies_are_not_decoded_again():
    """A GET body identical to the last one keeps the snapshot; a changed one replaces it."""
    bodies = [
        json_response({"jobId": "job_1", "status": "processing", "progress": 50}),
        json_response({"jobId": "job_1", "status": "processing", "progress": 50}),
        json_response(
            {"jobId": "job_1", "status": "completed", "output": "https://cdn.x/v.mp4"}
        ),
    ]
    pb, mock, clock = client(Script(json_response(SUBMITTED), *bodies))
    async with pb:
        job = await pb.submit(KLING)
        await job.refresh()
        first = job.info
        clock.advance(5)
        await job.refresh()
        assert job.info is first
        assert job.cost_micro_cents == 250000
        again = await pb.get_job("job_1")
        assert again is job
        assert job.info is not first
        assert job.video_url == "https://cdn.x/v.mp4"
        assert pb.jobs_in_flight == 0


async def test_a_submit_whose_deadline_passed_before_sending_is_not_ambiguous():
    """
    The call's one deadline spent before the first try (here by slow uploads of
    local frames): nothing was sent, so it is a plain RequestTimeout, never an
    AmbiguousSubmitError that would send the caller to wait a settle horizon.
    """
    from pixelbyte_async import AmbiguousSubmitError, RequestTimeout

    clock = VirtualClock(autojump=False)
    png = b"\x89PNG\r\n\x1a\n" + b"\0" * 64

    def answer(request: Request) -> Response:
        if request.url.endswith("/v1/uploads/presign"):
            return json_response(
                {
                    "id": "up_1",
                    "fileUrl": "https://cdn.example/up_1.png",
                    "uploadUrl": "https://cdn.example/put/up_1",
                }
            )
        if request.method == "PUT":
            clock.advance(200)  # a slow upload spends the whole deadline
            return Response(status=200, headers={}, content=b"")
        return json_response(SUBMITTED)

    pb, mock, _ = client(answer, clock=clock)
    async with pb:
        request = KlingO1StartEndFrame(
            image_url=png, end_image_url="https://example.com/b.jpg"
        )
        with pytest.raises(RequestTimeout) as info:
            await pb.submit(request, timeout=100)
    assert not isinstance(info.value, AmbiguousSubmitError)
    assert info.value.request_sent is False
    assert not any(r.url.endswith("/v1/jobs/submit") for r in mock.requests)
