"""Hostile answers from the API and the CDN: each one fails typed, once, and early."""

from __future__ import annotations

import gzip
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from hypothesis import given
from hypothesis import strategies as st
from pixelbyte_async import (
    AmbiguousSubmitError,
    APIError,
    Job,
    JobFailed,
    JobInfo,
    JobStatus,
    MissingOutputError,
    MockTransport,
    PixelByte,
    Request,
    Response,
    ResponseDecodeError,
    RetryPolicy,
    TransportError,
    VirtualClock,
    _serde,
    json_response,
)
from pixelbyte_async._config import mask_key
from pixelbyte_async._errors import ResponseTooLarge, UnexpectedRedirect
from pixelbyte_async._serde import decode_job
from pixelbyte_async._transport import AiohttpTransport
from pixelbyte_async.testing import Fault


pytestmark = pytest.mark.anyio

SLUG = "kling-plus/kling-o1-standard/start-end-frame-to-video"
INPUT = {"image_url": "https://e.x/a.jpg", "end_image_url": "https://e.x/b.jpg"}
GOOD = "https://cdn.example.com/out/x.mp4"

Answer = Callable[[web.Request], Awaitable[web.StreamResponse]]


class HostileServer:
    """A real HTTP server on 127.0.0.1 whose every answer the test chooses."""

    def __init__(self) -> None:
        self.hits: list[str] = []
        self.answer: Answer | None = None
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self.server = TestServer(app)

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        self.hits.append(f"{request.method} {request.path}")
        assert self.answer is not None
        return await self.answer(request)

    @property
    def url(self) -> str:
        return str(self.server.make_url("")).rstrip("/")


@pytest.fixture(name="hostile")
async def _hostile() -> AsyncIterator[HostileServer]:
    server = HostileServer()
    await server.server.start_server()
    try:
        yield server
    finally:
        await server.server.close()


def client_for(url: str, **kwargs: object) -> PixelByte:
    """A client with the real aiohttp transport, a virtual clock and no jitter."""
    return PixelByte(
        api_key="pb_test",
        base_url=url,
        clock=VirtualClock(start=1_760_000_000),
        retry=RetryPolicy(jitter=False, wait_initial=0.5),
        **kwargs,  # type: ignore[arg-type]
    )


def mock_client(handler: Callable[[Request], Response]) -> PixelByte:
    return PixelByte(
        api_key="pb_test",
        base_url="https://api.test",
        transport=MockTransport(handler),
        clock=VirtualClock(start=1_760_000_000),
        retry=RetryPolicy(jitter=False, wait_initial=0.5),
        rng=lambda a, b: b,
    )


# -- 1. redirects ----------------------------------------------------------------------


async def test_redirect_of_an_api_call_is_typed_names_target_and_is_not_followed(
    hostile,
):
    """A 307 to a GET raises UnexpectedRedirect with .location; nothing follows it."""
    target = hostile.url + "/elsewhere?sig=TOPSECRET"

    async def answer(request: web.Request) -> web.StreamResponse:
        if request.path == "/elsewhere":  # pragma: no cover -- must never be reached
            return web.json_response({"jobId": "job_1", "status": "completed"})
        return web.Response(status=307, headers={"Location": target})

    hostile.answer = answer
    async with client_for(hostile.url) as pb:
        with pytest.raises(UnexpectedRedirect) as info:
            await pb.get_job("job_1")
    error = info.value
    assert isinstance(error, APIError)
    assert (307, target, False) == (error.status, error.location, error.retryable)
    assert "307" in str(error)
    assert hostile.url + "/elsewhere?..." in str(error)
    assert "TOPSECRET" not in str(error) + repr(error)
    assert hostile.hits == ["GET /v1/jobs/job_1"]


async def test_redirected_submit_is_not_ambiguous_and_not_resent(hostile):
    """A redirect answer to a submit means the handler did not run: not ambiguous."""

    async def answer(request: web.Request) -> web.StreamResponse:
        return web.Response(status=308, headers={"Location": "https://evil.example/"})

    hostile.answer = answer
    async with client_for(hostile.url) as pb:
        with pytest.raises(UnexpectedRedirect) as info:
            await pb.submit(SLUG, INPUT)
    assert not isinstance(info.value, AmbiguousSubmitError)
    assert info.value.location == "https://evil.example/"
    assert hostile.hits == ["POST /v1/jobs/submit"]


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308, 300, 304])
async def test_mock_transport_redirect_gets_the_same_class(status):
    """A MockTransport 3xx raises UnexpectedRedirect too (Location or not)."""
    location = "https://elsewhere.example/v1/jobs/job_1" if status != 304 else None
    headers = {"Location": location} if location else {}

    def handler(request: Request) -> Response:
        return Response(status=status, headers=headers, content=b"")

    async with mock_client(handler) as pb:
        with pytest.raises(UnexpectedRedirect) as info:
            await pb.get_job("job_1")
        assert len(pb._transport.requests) == 1
    assert (status, location) == (info.value.status, info.value.location)


# -- 2. bodies over the limit ------------------------------------------------------------


def job_body(pad: int) -> bytes:
    return json.dumps(
        {"jobId": "job_1", "status": "pending", "pad": "x" * pad}
    ).encode()


async def test_40mb_job_body_is_refused_once_not_retried(hostile):
    """A 40 MB job body (declared length) raises ResponseTooLarge after one GET."""
    body = job_body(40 * 1024 * 1024)

    async def answer(request: web.Request) -> web.StreamResponse:
        return web.Response(body=body, content_type="application/json")

    hostile.answer = answer
    async with client_for(hostile.url) as pb:
        with pytest.raises(ResponseTooLarge) as info:
            await pb.get_job("job_1")
    assert isinstance(info.value, ResponseDecodeError)
    assert not isinstance(info.value, TransportError)
    assert not info.value.retryable
    assert hostile.hits == ["GET /v1/jobs/job_1"]


async def test_chunked_body_over_the_limit_is_refused_once(hostile):
    """A body without Content-Length is cut off at the limit, typed, sent once."""

    async def answer(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        await response.prepare(request)
        try:
            for _ in range(64):
                await response.write(b" " * 16 * 1024)
            await response.write_eof()
        except (ConnectionError, RuntimeError):  # the client hung up: expected
            pass
        return response

    hostile.answer = answer
    transport = AiohttpTransport(max_body=64 * 1024)
    try:
        async with client_for(hostile.url, transport=transport) as pb:
            with pytest.raises(ResponseTooLarge):
                await pb.get_job("job_1")
    finally:
        await transport.aclose()
    assert hostile.hits == ["GET /v1/jobs/job_1"]


async def test_compressed_body_is_limited_after_decompression(hostile):
    """A small gzip body that inflates past the limit is refused (no gzip bomb)."""
    compressed = gzip.compress(job_body(512 * 1024))
    assert len(compressed) < 16 * 1024

    async def answer(request: web.Request) -> web.StreamResponse:
        return web.Response(
            body=compressed,
            headers={"Content-Type": "application/json", "Content-Encoding": "gzip"},
        )

    hostile.answer = answer
    transport = AiohttpTransport(max_body=64 * 1024)
    try:
        async with client_for(hostile.url, transport=transport) as pb:
            with pytest.raises(ResponseTooLarge):
                await pb.get_job("job_1")
    finally:
        await transport.aclose()
    assert hostile.hits == ["GET /v1/jobs/job_1"]


async def test_small_compressed_body_still_decodes(hostile):
    """Compressed bodies under the limit are read as before."""
    compressed = gzip.compress(job_body(10))

    async def answer(request: web.Request) -> web.StreamResponse:
        return web.Response(
            body=compressed,
            headers={"Content-Type": "application/json", "Content-Encoding": "gzip"},
        )

    hostile.answer = answer
    async with client_for(hostile.url) as pb:
        job = await pb.get_job("job_1")
    assert job.status == JobStatus.PENDING


# -- 3. unusable output URLs -------------------------------------------------------------

BAD_URLS = [
    "https://cdn.example.com:99999/x.mp4",
    "https://cdn.example.com:abc/x.mp4",
    "https://[cdn.example.com/x.mp4",
    "https:///x.mp4",
    "ftp://cdn.example.com/x.mp4",
    "javascript:alert(1)",
    "https://cdn.example.com/x\n.mp4",
]


@pytest.mark.parametrize("bad", BAD_URLS)
async def test_download_of_unusable_url_is_typed_and_sends_nothing(bad, tmp_path):
    """An unusable output URL raises MissingOutputError naming it, before any request."""

    def handler(request: Request) -> Response:
        assert request.method == "GET"
        assert request.url.endswith("/v1/jobs/job_1")
        return json_response({"jobId": "job_1", "status": "completed", "output": bad})

    async with mock_client(handler) as pb:
        job = await pb.get_job("job_1")
        with pytest.raises(MissingOutputError) as info:
            await job.download(tmp_path / "x.mp4")
        assert len(pb._transport.requests) == 1
    assert repr(bad) in str(info.value)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("bad", BAD_URLS[:2])
async def test_download_checks_a_hand_made_snapshot_too(bad, tmp_path):
    """Job.download validates video_url itself, whatever built the snapshot."""
    async with mock_client(lambda r: json_response({})) as pb:
        info = JobInfo(id="job_1", status=JobStatus.COMPLETED, video_url=bad)
        job = Job(pb._job_link, info)
        with pytest.raises(MissingOutputError, match="job_1"):
            await job.download(tmp_path / "x.mp4")
        assert pb._transport.requests == []


@pytest.mark.parametrize("bad", BAD_URLS)
def test_video_url_skips_unusable_urls(bad):
    """The video URL is the first usable candidate; the raw one stays visible."""
    info = decode_job(
        {"jobId": "j", "status": "completed", "output": bad, "outputs": [{"url": GOOD}]}
    )
    assert (GOOD, bad) == (info.video_url, info.raw_output_url)
    alone = decode_job({"jobId": "j", "status": "completed", "output": {"url": bad}})
    assert (None, bad) == (alone.video_url, alone.raw_output_url)


def test_usable_urls_are_kept():
    """Ordinary http(s) URLs, ports included, are untouched."""
    for url in (GOOD, "https://cdn.example.com:8443/x.mp4", "http://127.0.0.1:81/o"):
        info = decode_job({"jobId": "j", "status": "completed", "output": url})
        assert (url, url) == (info.video_url, info.raw_output_url)


PNG = b"\x89PNG\r\n\x1a\n" + b"\0" * 64


@pytest.mark.parametrize("key", ["uploadUrl", "fileUrl"])
async def test_unusable_presign_url_is_a_decode_error(key):
    """A presign answer with an unusable URL is a ResponseDecodeError, not ValueError."""
    body = {
        "id": "up_1",
        "fileUrl": "https://files.example.com/up_1.png",
        "uploadUrl": "https://up.example.com/up_1",
        key: "https://up.example.com:99999/up_1",
    }
    async with mock_client(lambda request: json_response(body)) as pb:
        with pytest.raises(ResponseDecodeError, match="99999"):
            await pb.upload(PNG)
        assert len(pb._transport.requests) == 1


# -- 4. status synonyms ------------------------------------------------------------------


def sequence_client(statuses: list[str]) -> tuple[PixelByte, list[str]]:
    """A client whose job reports *statuses* in turn (the last one forever)."""
    seen: list[str] = []

    def handler(request: Request) -> Response:
        if request.url.endswith("/submit"):
            return json_response({"jobId": "job_s", "status": "pending"})
        status = statuses[min(len(seen), len(statuses) - 1)]
        seen.append(status)
        body = {"jobId": "job_s", "status": status}
        if status.lower() in {"succeeded", "done"}:
            body["output"] = GOOD
        return json_response(body)

    return mock_client(handler), seen


async def test_wait_returns_on_a_success_synonym():
    """'SUCCEEDED' ends wait() as completed instead of polling for 30 minutes."""
    pb, seen = sequence_client(["queued", "in-progress", "SUCCEEDED"])
    async with pb:
        job = await pb.submit(SLUG, INPUT)
        start = pb.clock.monotonic()
        await job.wait()
    assert job.status == JobStatus.COMPLETED
    assert job.info.raw_status == "SUCCEEDED"
    assert len(seen) == 3
    assert pb.clock.monotonic() - start < 600


async def test_wait_raises_job_failed_on_expired():
    """'expired' is a failure: JobFailed at once, and the message names the status."""
    pb, seen = sequence_client(["expired"])
    async with pb:
        job = await pb.submit(SLUG, INPUT)
        with pytest.raises(JobFailed, match="expired"):
            await job.wait()
    assert len(seen) == 1


@pytest.fixture(name="fresh_status_memory")
def _fresh_status_memory(monkeypatch):
    """Forget which unknown statuses were already warned about."""
    monkeypatch.setattr(_serde, "_UNKNOWN_STATUSES_SEEN", set())


async def test_unknown_status_is_warned_once_per_value(caplog, fresh_status_memory):
    """An unknown status is logged once at WARNING, not on every poll."""
    caplog.set_level(logging.WARNING, logger="pixelbyte_async")
    pb, seen = sequence_client(["hibernating-a7"])
    async with pb:
        job = await pb.submit(SLUG, INPUT)
        with pytest.raises(TimeoutError):
            await job.wait(timeout=600)
        decode_job({"jobId": "j", "status": "hibernating-b7"})
        decode_job({"jobId": "j", "status": "hibernating-b7"})
    assert len(seen) > 3
    assert job.status == JobStatus.UNKNOWN
    warned = [
        r
        for r in caplog.records
        if r.levelno == logging.WARNING and "hibernating" in r.getMessage()
    ]
    assert len(warned) == 2
    assert "hibernating-a7" in warned[0].getMessage()
    assert "hibernating-b7" in warned[1].getMessage()


def test_unknown_status_warning_is_short(caplog, fresh_status_memory):
    """A huge unknown status is logged truncated and repr-escaped."""
    caplog.set_level(logging.WARNING, logger="pixelbyte_async")
    decode_job({"jobId": "j", "status": "zz\n" + "z" * 100_000})
    (record,) = [r for r in caplog.records if "zz" in r.getMessage()]
    assert "\n" not in record.getMessage()
    assert len(record.getMessage()) < 400


def test_unknown_status_warnings_are_bounded(caplog, fresh_status_memory):
    """A server inventing a status per poll cannot flood the log (or memory)."""
    caplog.set_level(logging.WARNING, logger="pixelbyte_async")
    for n in range(500):
        decode_job({"jobId": "j", "status": f"state-{n}"})
    warned = [r for r in caplog.records if "state-" in r.getMessage()]
    assert len(warned) == _serde._UNKNOWN_STATUSES_MAX
    assert len(_serde._UNKNOWN_STATUSES_SEEN) == _serde._UNKNOWN_STATUSES_MAX


# -- 5. key masking ----------------------------------------------------------------------

MASKS = {"<none>", "pb_***", "***"}


@pytest.mark.parametrize(
    ("key", "masked"),
    [
        ("pb_live_abcdef", "pb_***"),
        ("sk_live_abcdef", "***"),
        ("abcdefg_xyz", "***"),
        ("a_b", "***"),
        ("PB_upper", "***"),
        ("pb_", "pb_***"),
        ("secret", "***"),
        ("", "<none>"),
        (None, "<none>"),
    ],
)
def test_mask_key_examples(key, masked):
    """Only the pb_ prefix is ever shown."""
    assert masked == mask_key(key)


@given(st.text(), st.text())
def test_mask_key_reveals_at_most_three_characters(key, other_tail):
    """mask_key is one of three fixed strings and depends on key[:3] alone."""
    masked = mask_key(key)
    assert masked in MASKS
    if key[:3]:
        assert masked == mask_key(key[:3] + other_tail)


# -- 6. fault helpers ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "header"),
    [(1, "1"), (2.0, "2"), (1.5, "1.5"), ("3", "3"), ("soon", "soon")],
)
async def test_retry_after_header_accepts_numbers_and_strings(fake, value, header):
    """Fault.status(retry_after_header=int|float|str) sends the header, no crash."""
    fake.inject(
        Fault.status(503, "INTERNAL_ERROR", retry_after_header=value), path="/v1/jobs"
    )
    async with (
        aiohttp.ClientSession() as session,
        session.get(
            fake.url + "/v1/jobs",
            headers={"Authorization": f"Bearer {fake.api_key}"},
        ) as r,
    ):
        assert (503, header) == (r.status, r.headers["Retry-After"])
        assert (await r.json())["error"]["code"] == "INTERNAL_ERROR"


async def test_int_retry_after_header_is_honoured_by_the_client(fake):
    """The client waits the injected Retry-After (1 s), not its own backoff."""
    fake.inject(Fault.status(503, "INTERNAL_ERROR", retry_after_header=1))
    async with PixelByte(
        api_key=fake.api_key,
        base_url=fake.url,
        clock=fake.clock,
        retry=RetryPolicy(jitter=False, wait_initial=0.25),
    ) as pb:
        start = fake.clock.monotonic()
        _ = [job async for job in pb.list_jobs()]
        elapsed = fake.clock.monotonic() - start
    assert fake.count("GET", "/v1/jobs") == 2
    assert pytest.approx(elapsed, abs=0.01) == 1.0


@pytest.mark.parametrize(
    ("build", "result"),
    [
        (lambda: Fault.status(503, "X", retry_after=2), 2.0),
        (lambda: Fault.status(503, "X", retry_after="2.5"), 2.5),
        (lambda: Fault.status(503, "X", retry_after=0), 0.0),
    ],
)
def test_fault_retry_after_numbers(build, result):
    """details.retryAfter takes ints, floats and numeric strings."""
    assert result == build().retry_after


def test_fault_statuses_accept_number_like_values():
    """HTTP statuses may be given as ints, integral floats or digit strings."""
    assert Fault.html("502").http_status == 502
    assert Fault.status(503.0, "X").http_status == 503
    assert Fault.garbage("200").http_status == 200
    assert Fault.delay("0.01").seconds == 0.01
    assert Fault.delay(1).seconds == 1


@pytest.mark.parametrize(
    ("build", "error"),
    [
        (lambda: Fault.status(503, "X", retry_after_header=-1), ValueError),
        (lambda: Fault.status(503, "X", retry_after_header=float("nan")), ValueError),
        (
            lambda: Fault.status(503, "X", retry_after_header="1\r\nX-Evil: 1"),
            ValueError,
        ),
        (lambda: Fault.status(503, "X", retry_after_header=True), TypeError),
        (lambda: Fault.status(503, "X", retry_after_header=[1]), TypeError),
        (lambda: Fault.status(503, "X", retry_after=-1), ValueError),
        (lambda: Fault.status(503, "X", retry_after="soon"), ValueError),
        (lambda: Fault.status(503, "X", retry_after=float("inf")), ValueError),
        (lambda: Fault.status(503, "X", retry_after=True), TypeError),
        (lambda: Fault.status(99, "X"), ValueError),
        (lambda: Fault.status(1000, "X"), ValueError),
        (lambda: Fault.status(503.5, "X"), ValueError),
        (lambda: Fault.status("five", "X"), ValueError),
        (lambda: Fault.status(True, "X"), TypeError),
        (lambda: Fault.status(None, "X"), TypeError),
        (lambda: Fault.status(503, 42), TypeError),
        (lambda: Fault.status(503, "X", 42), TypeError),
        (lambda: Fault.html(None), TypeError),
        (lambda: Fault.garbage(-200), ValueError),
        (lambda: Fault.delay(float("nan")), ValueError),
        (lambda: Fault.delay(float("inf")), ValueError),
        (lambda: Fault.delay("later"), ValueError),
        (lambda: Fault.delay(None), TypeError),
        (lambda: Fault(kind="explode"), ValueError),
        (lambda: Fault(kind="delay", seconds=-1), ValueError),
    ],
)
def test_nonsense_fault_arguments_fail_at_construction(build, error):
    """Bad fault arguments raise at construction, not inside the fake's handler."""
    with pytest.raises(error):
        build()


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"method": None}, TypeError),
        ({"path": 5}, TypeError),
        ({"origin": "ftp"}, ValueError),
    ],
)
async def test_nonsense_inject_arguments_fail_at_inject(fake, kwargs, error):
    """fake.inject rejects arguments that would crash request matching later."""
    with pytest.raises(error):
        fake.inject(Fault.drop_before(), **kwargs)
    assert fake._state.faults.handles == []
