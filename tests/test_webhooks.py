"""Webhook signatures, the receiver, and webhook-fed Job.wait (contract §8)."""

from __future__ import annotations

import asyncio
import json
import logging
import re

import aiohttp
import attrs
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from multidict import CIMultiDict
from pixelbyte_async import (
    JobFailed,
    JobStatus,
    KlingO1StartEndFrame,
    PixelByte,
    VirtualClock,
    WaitTimeout,
    WebhookVerificationError,
)
from pixelbyte_async.testing import FakePixelByte, JobScript
from pixelbyte_async.webhooks import (
    ATTEMPT_PARAM,
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    WebhookEvent,
    WebhookReceiver,
    WebhookServer,
    new_attempt_id,
    sign,
    signature_headers,
    tag_webhook_url,
    verify,
)


SECRET = "whsec_test"
TS = 1760000000
BODY = b'{"jobId":"job_abc123","status":"completed"}'
VECTOR = "sha256=3808736d8de9872ff32cb085bd9851cbad6f089e4e55195bbec1450e5295989e"
KLING = KlingO1StartEndFrame(
    image_url="https://e.x/a.jpg", end_image_url="https://e.x/b.jpg"
)


def headers(body=BODY, secret=SECRET, ts=TS):
    return {TIMESTAMP_HEADER: str(ts), SIGNATURE_HEADER: sign(body, secret, ts)}


# -- verify ---------------------------------------------------------------------------


def test_pinned_vector():
    """The contract's test vector is reproduced and verifies."""
    assert sign(BODY, SECRET, TS) == VECTOR
    assert sign(BODY.decode(), SECRET.encode(), str(TS)) == VECTOR
    event = verify(
        BODY, {TIMESTAMP_HEADER: str(TS), SIGNATURE_HEADER: VECTOR}, SECRET, now=TS
    )
    assert (event.job_id, event.status, event.timestamp) == (
        "job_abc123",
        JobStatus.COMPLETED,
        TS,
    )


def test_headers_any_case_and_multidict():
    """Header names match case-insensitively, in plain dicts and CIMultiDicts."""
    lower = {k.lower(): v for k, v in headers().items()}
    assert verify(BODY, lower, SECRET, now=TS).job_id == "job_abc123"
    assert verify(BODY, CIMultiDict(headers()), SECRET, now=TS).job_id == "job_abc123"
    assert verify(BODY.decode(), headers(), SECRET, now=TS).job_id == "job_abc123"


def test_secret_rotation():
    """Any of several secrets may match."""
    assert verify(BODY, headers(), ["whsec_new", SECRET], now=TS).job_id == "job_abc123"
    with pytest.raises(WebhookVerificationError) as info:
        verify(BODY, headers(), ["whsec_new", "whsec_other"], now=TS)
    assert info.value.reason == "mismatch"
    with pytest.raises(ValueError):
        verify(BODY, headers(), [], now=TS)


@pytest.mark.parametrize(
    ("body", "hdrs", "now", "reason"),
    [
        (BODY, {SIGNATURE_HEADER: VECTOR}, TS, "missing_header"),
        (BODY, {TIMESTAMP_HEADER: str(TS)}, TS, "missing_header"),
        (BODY, {TIMESTAMP_HEADER: "soon", SIGNATURE_HEADER: VECTOR}, TS, "malformed"),
        (
            BODY,
            {TIMESTAMP_HEADER: "-1760000000", SIGNATURE_HEADER: VECTOR},
            TS,
            "malformed",
        ),
        (
            BODY,
            {TIMESTAMP_HEADER: "1760000000.5", SIGNATURE_HEADER: VECTOR},
            TS,
            "malformed",
        ),
        (
            BODY,
            {TIMESTAMP_HEADER: "١٧٦٠٠٠٠٠٠٠", SIGNATURE_HEADER: VECTOR},
            TS,
            "malformed",
        ),
        (
            BODY,
            {TIMESTAMP_HEADER: str(TS), SIGNATURE_HEADER: "sha1=" + VECTOR[7:]},
            TS,
            "malformed",
        ),
        (
            BODY,
            {TIMESTAMP_HEADER: str(TS), SIGNATURE_HEADER: VECTOR[:-1]},
            TS,
            "malformed",
        ),
        (
            BODY,
            {TIMESTAMP_HEADER: str(TS), SIGNATURE_HEADER: VECTOR[:-1] + "é"},
            TS,
            "malformed",
        ),
        (BODY + b" ", headers(), TS, "mismatch"),
        (
            BODY,
            {TIMESTAMP_HEADER: str(TS + 1), SIGNATURE_HEADER: VECTOR},
            TS,
            "mismatch",
        ),
        (BODY, headers(), TS + 301, "stale"),
        (BODY, headers(), TS - 301, "future"),
        (b"x" * 300_000, headers(b"x" * 300_000), TS, "too_large"),
        (b"not json", headers(b"not json"), TS, "not_json"),
        (b"[1, 2]", headers(b"[1, 2]"), TS, "not_json"),
        (
            b'{"status": "completed"}',
            headers(b'{"status": "completed"}'),
            TS,
            "malformed",
        ),
    ],
    ids=[
        "no-signature",
        "no-timestamp",
        "ts-words",
        "ts-negative",
        "ts-fraction",
        "ts-arabic-digits",
        "sig-sha1",
        "sig-short",
        "sig-non-ascii",
        "tampered-body",
        "tampered-ts",
        "stale",
        "future",
        "too-large",
        "not-json",
        "not-object",
        "no-job-id",
    ],
)
def test_every_reason(body, hdrs, now, reason):
    """Each failure has its machine-readable reason, and never another exception type."""
    with pytest.raises(WebhookVerificationError) as info:
        verify(body, hdrs, SECRET, now=now)
    assert reason == info.value.reason


def test_tolerance_edges_and_clock():
    """The window is inclusive both ways and the clock is injectable."""
    assert verify(BODY, headers(), SECRET, now=TS + 300).job_id
    assert verify(BODY, headers(), SECRET, now=TS - 300).job_id
    assert verify(BODY, headers(), SECRET, now=TS + 3600, tolerance=3600).job_id


def test_signature_headers_helper():
    """signature_headers builds what the API sends."""
    hdrs = signature_headers(BODY, SECRET, timestamp=TS)
    assert hdrs[SIGNATURE_HEADER] == VECTOR
    assert verify(BODY, hdrs, SECRET, now=TS).job_id == "job_abc123"


@settings(max_examples=200, deadline=None)
@given(
    body=st.binary(max_size=512),
    ts=st.text(max_size=20),
    sig=st.text(max_size=80),
    extra=st.dictionaries(st.text(max_size=20), st.text(max_size=20), max_size=3),
)
def test_arbitrary_input_is_never_accepted(body, ts, sig, extra):
    """Arbitrary bodies and headers without the right signature are always rejected."""
    hdrs = {**extra, TIMESTAMP_HEADER: ts, SIGNATURE_HEADER: sig}
    try:
        verify(body, hdrs, SECRET, now=TS)
    except WebhookVerificationError:
        return
    assert sign(body, SECRET, ts.strip()) in sig


# -- the receiver over HTTP -----------------------------------------------------------


@pytest.mark.anyio
async def test_receiver_http_answers():
    """200 for new and duplicate deliveries, 401 for bad signatures, 413 for oversize."""
    clock = VirtualClock(start=TS)
    events = []
    receiver = WebhookReceiver(
        SECRET, clock=clock, on_event=events.append, max_body=1024
    )
    async with (
        WebhookServer(receiver=receiver) as server,
        aiohttp.ClientSession() as http,
    ):
        async with http.post(server.url, data=BODY, headers=headers()) as r:
            assert (r.status, (await r.json())["reason"]) == (200, "ok")
        async with http.post(server.url, data=BODY, headers=headers()) as r:
            assert (r.status, (await r.json())["reason"]) == (200, "duplicate")
        async with http.post(
            server.url, data=BODY, headers=headers(secret="nope")
        ) as r:
            assert (r.status, (await r.json())["reason"]) == (401, "mismatch")
        big = b"{" + b" " * 4096 + b"}"
        async with http.post(server.url, data=big, headers=headers(big)) as r:
            assert r.status == 413

        async def chunks():
            for _ in range(10):
                yield b" " * 512

        async with http.post(server.url, data=chunks(), headers=headers()) as r:
            assert r.status == 413
    assert [e.job_id for e in events] == ["job_abc123"]
    assert receiver.stats == {
        "received": 5,
        "accepted": 1,
        "duplicates": 1,
        "rejected": 3,
        "unknown": 1,
    }


@pytest.mark.anyio
async def test_mount_in_user_app():
    """The receiver mounts as a sub-app in the user's own aiohttp application."""
    from aiohttp import web
    from aiohttp.test_utils import TestClient, TestServer

    receiver = WebhookReceiver(SECRET, clock=VirtualClock(start=TS))
    app = web.Application()
    app.add_subapp("/hooks/", receiver.aiohttp_app())
    async with TestClient(TestServer(app)) as client:
        resp = await client.post("/hooks/", data=BODY, headers=headers())
        assert resp.status == 200
    assert receiver.event_for("job_abc123") is not None


# -- webhook-fed waiting against FakePixelByte ----------------------------------------


@pytest.fixture(name="rig")
async def _rig():
    """A fake whose time moves only when told, a receiver and a client using it."""
    clock = VirtualClock(autojump=False)
    async with FakePixelByte(clock=clock, allow_http_webhooks=True) as fake:
        server = WebhookServer(fake.webhook_secret, clock=clock, unknown_grace=5)
        async with PixelByte(
            api_key=fake.api_key,
            base_url=fake.url,
            clock=clock,
            webhook=server,
            max_concurrent_jobs=None,
        ) as pb:
            yield fake, server, pb
        assert not server.running


def gets(fake):
    return fake.count("GET", "/v1/jobs/*")


async def settle():
    for _ in range(20):
        await asyncio.sleep(0)


def split_attempt(url):
    """Split a submitted webhookUrl into the receiver's URL and its pb_attempt."""
    base, _, attempt = url.rpartition(f"?{ATTEMPT_PARAM}=")
    assert re.fullmatch(r"[A-Za-z0-9_-]{16}", attempt), url
    return base, attempt


@pytest.mark.anyio
async def test_wait_resolves_from_the_delivery(rig):
    """Submit sends the receiver's URL; wait() returns on the delivery with no GET."""
    fake, server, pb = rig
    job = await pb.submit(KLING)
    url, attempt = split_attempt(fake.jobs[job.id].webhook_url)
    assert url == server.public_url
    waiter = asyncio.ensure_future(job.wait())
    await settle()
    fake.advance(245)
    await fake.deliver_webhooks()
    done = await waiter
    assert done.status is JobStatus.COMPLETED
    assert done.video_url is not None
    assert gets(fake) == 0
    assert server.receiver.waiting == 0
    assert server.receiver.job_for_attempt(attempt) == job.id


@pytest.mark.anyio
async def test_500_jobs_complete_via_webhooks(rig):
    """500 concurrent waits finish from deliveries: at most one GET per job (here none)."""
    fake, server, pb = rig
    fake.webhook_order = "shuffle"
    jobs = await asyncio.gather(
        *(
            pb.submit(
                KlingO1StartEndFrame(
                    image_url="https://e.x/a.jpg",
                    end_image_url="https://e.x/b.jpg",
                    prompt=str(i),
                )
            )
            for i in range(500)
        )
    )
    waits = asyncio.gather(*(job.wait() for job in jobs))
    await settle()
    fake.advance(245)
    await fake.deliver_webhooks()
    done = await waits
    assert all(j.status is JobStatus.COMPLETED for j in done)
    assert gets(fake) <= 500
    assert gets(fake) == 0
    assert server.receiver.waiting == 0
    assert fake.ledger.double_charged() == []


@pytest.mark.anyio
async def test_early_delivery_before_submit_returns(rig):
    """A delivery that beats the submit response is not lost."""
    fake, server, pb = rig
    fake.inject_webhook("early")
    job = await pb.submit(KLING)
    assert job.status is JobStatus.COMPLETED
    await job.wait()
    assert gets(fake) == 0
    assert server.receiver.stats["unknown"] == 0


@pytest.mark.anyio
@pytest.mark.parametrize("kind", ["duplicate", "stale_status", "bad_signature"])
async def test_duplicate_stale_and_forged_deliveries(rig, kind):
    """Duplicates are acknowledged once, stale statuses never undo the end, forgeries are refused."""
    fake, server, pb = rig
    fake.inject_webhook(kind)
    job = await pb.submit(KLING)
    waiter = asyncio.ensure_future(job.wait())
    await settle()
    fake.advance(245)
    deliveries = await fake.deliver_webhooks()
    await waiter
    assert job.status is JobStatus.COMPLETED
    assert gets(fake) == 0
    statuses = [d.status for d in deliveries]
    if kind == "bad_signature":
        assert statuses == [401, 200]
        assert server.receiver.stats["rejected"] == 1
    else:
        assert statuses == [200, 200]
    if kind == "duplicate":
        assert server.receiver.stats["duplicates"] == 1


@pytest.mark.anyio
async def test_lost_delivery_is_caught_by_one_safety_poll(rig):
    """A dropped delivery costs one GET, made webhook_grace after the ETA."""
    fake, server, pb = rig
    fake.inject_webhook("drop")
    job = await pb.submit(KLING)
    waiter = asyncio.ensure_future(job.wait())
    await settle()
    fake.advance(245)
    await fake.deliver_webhooks()
    await settle()
    assert not waiter.done()
    fake.advance(60)
    await waiter
    assert job.status is JobStatus.COMPLETED
    assert gets(fake) == 1


@pytest.mark.anyio
async def test_receiver_down_for_a_while(rig):
    """Deliveries to a stopped receiver are retried by the API; the wait still ends."""
    fake, server, pb = rig
    job = await pb.submit(KLING)
    port = server.port
    await server.close()
    waiter = asyncio.ensure_future(job.wait())
    await settle()
    fake.advance(245)
    first = await fake.deliver_webhooks()
    assert first[0].status is None
    server.port = port
    await server.start()
    fake.advance(1)
    second = await fake.deliver_webhooks()
    assert second[0].status == 200
    await waiter
    assert gets(fake) == 0


@pytest.mark.anyio
async def test_failed_delivery_raises(rig):
    """A failed delivery raises JobFailed with the code, without a GET."""
    fake, server, pb = rig
    fake.script_next(JobScript(outcome="failed", error_code="INTERNAL_ERROR"))
    job = await pb.submit(KLING)
    waiter = asyncio.ensure_future(job.wait())
    await settle()
    fake.advance(245)
    await fake.deliver_webhooks()
    with pytest.raises(JobFailed) as info:
        await waiter
    assert info.value.code == "INTERNAL_ERROR"
    assert gets(fake) == 0


@pytest.mark.anyio
async def test_payload_without_url_fetches_once(rig):
    """A completed delivery with no usable URL leads to exactly one GET."""
    fake, server, pb = rig
    fake.script_next(JobScript(output_shape="none"))
    job = await pb.submit(KLING)
    waiter = asyncio.ensure_future(job.wait())
    await settle()
    fake.advance(245)
    await fake.deliver_webhooks()
    await waiter
    assert gets(fake) == 1


@pytest.mark.anyio
async def test_unknown_job_goes_to_the_hook(rig):
    """A delivery for a job nobody here knows reaches on_unknown after the grace period."""
    fake, server, pb = rig
    unknown = []
    server.receiver.on_unknown = unknown.append
    await server.start()
    body = json.dumps(
        {
            "jobId": "job_elsewhere",
            "status": "completed",
            "output": "https://cdn.example/o.mp4",
        }
    ).encode()
    now = int(fake.clock.time())
    async with (
        aiohttp.ClientSession() as http,
        http.post(
            server.url,
            data=body,
            headers=signature_headers(body, fake.webhook_secret, timestamp=now),
        ) as r,
    ):
        assert r.status == 200
    assert unknown == []
    fake.advance(5)
    await settle()
    assert [e.job_id for e in unknown] == ["job_elsewhere"]
    assert server.receiver.stats["unknown"] == 1


@pytest.mark.anyio
async def test_webhook_frees_slots_without_waiters(rig):
    """Deliveries free job slots by themselves: no GETs, no deadlock."""
    fake, server, pb = rig
    pb._slots.limit = 2
    await pb.submit(KLING)
    await pb.submit(
        KlingO1StartEndFrame(
            image_url="https://e.x/a.jpg", end_image_url="https://e.x/c.jpg"
        )
    )
    third = asyncio.ensure_future(
        pb.submit(
            KlingO1StartEndFrame(
                image_url="https://e.x/a.jpg", end_image_url="https://e.x/d.jpg"
            )
        )
    )
    await settle()
    assert not third.done()
    fake.advance(245)
    await fake.deliver_webhooks()
    job = await asyncio.wait_for(third, 5)
    assert job.status is JobStatus.PENDING
    assert gets(fake) == 0


@pytest.mark.anyio
async def test_timeout_and_cancellation_in_webhook_mode(rig):
    """Deadlines hold and cancelled waiters leave nothing behind."""
    fake, server, pb = rig
    job = await pb.submit(KLING)
    waiter = asyncio.ensure_future(job.wait(timeout=100))
    await settle()
    fake.advance(100)
    with pytest.raises(WaitTimeout):
        await waiter
    other = asyncio.ensure_future(job.wait())
    await settle()
    assert server.receiver.waiting == 1
    other.cancel()
    with pytest.raises(asyncio.CancelledError):
        await other
    assert server.receiver.waiting == 0


@pytest.mark.anyio
async def test_use_webhooks_with_a_mounted_receiver():
    """use_webhooks(receiver, public_url=...) works with a receiver mounted elsewhere."""
    clock = VirtualClock(autojump=False)
    async with FakePixelByte(clock=clock, allow_http_webhooks=True) as fake:
        receiver = WebhookReceiver(fake.webhook_secret, clock=clock)
        async with (
            WebhookServer(receiver=receiver, path="/mounted") as server,
            PixelByte(api_key=fake.api_key, base_url=fake.url, clock=clock) as pb,
        ):
            pb.use_webhooks(receiver, public_url=server.url)
            job = await pb.submit(KLING)
            url, attempt = split_attempt(fake.jobs[job.id].webhook_url)
            assert url == server.url
            waiter = asyncio.ensure_future(job.wait())
            await settle()
            fake.advance(245)
            await fake.deliver_webhooks()
            await waiter
            assert gets(fake) == 0
            assert receiver.job_for_attempt(attempt) == job.id
        with pytest.raises(Exception, match="public_url"):
            PixelByte(api_key="pb_x").use_webhooks(receiver)


def test_receiver_works_in_synchronous_frameworks(caplog):
    """Outside an event loop (Django, Flask) handle() works and hooks run at once."""
    unknown = []
    receiver = WebhookReceiver(
        SECRET, clock=VirtualClock(start=TS), on_unknown=unknown.append
    )
    assert receiver.handle(BODY, headers()) == (200, "ok")
    assert [e.job_id for e in unknown] == ["job_abc123"]

    async def async_hook(event):
        unknown.append(event)

    other = WebhookReceiver(SECRET, clock=VirtualClock(start=TS), on_event=async_hook)
    assert other.handle(BODY, headers()) == (200, "ok")
    assert "outside an event loop" in caplog.text
    assert len(unknown) == 1


# -- attribution: the pb_attempt nonce ------------------------------------------------


def body_for(job_id):
    return json.dumps({"jobId": job_id, "status": "completed"}).encode()


@pytest.mark.parametrize(
    "url",
    [
        "https://hooks.example.com/pb?pb_attempt=7f3c_A-9&x=1",
        "https://hooks.example.com/pb?x=1&pb_attempt=7f3c_A-9#frag",
        "/pb?pb_attempt=7f3c_A-9",
        "?pb_attempt=7f3c_A-9",
        "pb_attempt=7f3c_A-9",
        "x=%20&pb_attempt=7f3c_A-9",
        "pb_attempt=7f3c_A-9&pb_attempt=7f3c_A-9",
    ],
    ids=["url", "url-fragment", "path", "query-mark", "query", "escaped", "repeated"],
)
def test_attempt_is_read_from_the_url(url):
    """handle(url=...) takes pb_attempt from a URL, a path or a bare query string."""
    receiver = WebhookReceiver(SECRET, clock=VirtualClock(start=TS))
    assert receiver.handle(BODY, headers(), url=url) == (200, "ok")
    assert receiver.event_for("job_abc123").attempt == "7f3c_A-9"
    assert receiver.job_for_attempt("7f3c_A-9") == "job_abc123"


@pytest.mark.parametrize(
    "url",
    [
        None,
        "https://hooks.example.com/pb",
        "https://hooks.example.com/pb?x=1",
        "pb_attempt=",
        "pb_attempt=a%20b",
        "pb_attempt=a/b",
        "pb_attempt=" + "a" * 65,
        "pb_attempt=a&pb_attempt=b",
        "pb_attempt=%C3%A9",
        "PB_ATTEMPT=abc",
    ],
    ids=[
        "none",
        "no-query",
        "other-param",
        "empty",
        "space",
        "slash",
        "too-long",
        "ambiguous",
        "non-ascii",
        "wrong-case",
    ],
)
def test_invalid_or_missing_attempts_are_ignored(url):
    """A missing, malformed, over-long or ambiguous pb_attempt leaves attempt None."""
    receiver = WebhookReceiver(SECRET, clock=VirtualClock(start=TS))
    assert receiver.handle(BODY, headers(), url=url) == (200, "ok")
    assert receiver.event_for("job_abc123").attempt is None
    assert receiver._sizes()["attempts"] == 0


def test_attempt_of_64_characters_is_accepted():
    """The longest accepted nonce is 64 characters."""
    nonce = "A" * 64
    receiver = WebhookReceiver(SECRET, clock=VirtualClock(start=TS))
    receiver.handle(BODY, headers(), url=f"?{ATTEMPT_PARAM}={nonce}")
    assert receiver.job_for_attempt(nonce) == "job_abc123"


def test_first_verified_delivery_for_an_attempt_wins(caplog):
    """A later delivery naming a known attempt with another job id is logged and ignored."""
    receiver = WebhookReceiver(SECRET, clock=VirtualClock(start=TS))
    first, second = body_for("job_first"), body_for("job_second")
    assert receiver.handle(first, headers(first), url="?pb_attempt=n1") == (200, "ok")
    with caplog.at_level(logging.WARNING, logger="pixelbyte_async.webhooks"):
        answer = receiver.handle(second, headers(second), url="?pb_attempt=n1")
    assert answer == (200, "ok")
    assert receiver.job_for_attempt("n1") == "job_first"
    assert "n1" in caplog.text
    assert "job_second" in caplog.text
    assert [r.levelno for r in caplog.records] == [logging.WARNING]
    # A retry of the first delivery is a duplicate and changes nothing.
    assert receiver.handle(first, headers(first), url="?pb_attempt=n1") == (
        200,
        "duplicate",
    )
    assert receiver.job_for_attempt("n1") == "job_first"


def test_unverified_deliveries_are_never_attributed():
    """A forged delivery naming an attempt is refused and claims nothing."""
    receiver = WebhookReceiver(SECRET, clock=VirtualClock(start=TS))
    forged = body_for("job_forged")
    answer = receiver.handle(
        forged, headers(forged, secret="whsec_wrong"), url="?pb_attempt=n1"
    )
    assert answer == (401, "mismatch")
    assert receiver.job_for_attempt("n1") is None
    real = body_for("job_real")
    receiver.handle(real, headers(real), url="?pb_attempt=n1")
    assert receiver.job_for_attempt("n1") == "job_real"


def test_dispatch_uses_the_events_attempt():
    """dispatch() after your own verify() attributes by event.attempt."""
    receiver = WebhookReceiver(SECRET, clock=VirtualClock(start=TS))
    event = verify(
        BODY, headers(), SECRET, now=TS, url="https://h.example/?pb_attempt=v1"
    )
    assert event.attempt == "v1"
    assert receiver.dispatch(event)
    assert receiver.job_for_attempt("v1") == "job_abc123"
    other = attrs.evolve(
        verify(body_for("job_b"), headers(body_for("job_b")), SECRET, now=TS),
        attempt="v2",
    )
    assert receiver.dispatch(other)
    assert receiver.job_for_attempt("v2") == "job_b"
    assert receiver.job_for_attempt("v3") is None


def test_webhook_event_attempt_is_optional():
    """Code that builds a WebhookEvent without an attempt keeps working."""
    event = verify(BODY, headers(), SECRET, now=TS)
    built = WebhookEvent(
        job_id=event.job_id,
        status=event.status,
        job=event.job,
        timestamp=event.timestamp,
        payload=event.payload,
    )
    assert built.attempt is None
    assert event == built


@pytest.mark.anyio
async def test_aiohttp_handler_reads_the_attempt_from_the_query():
    """The aiohttp handler passes the request's query string to handle()."""
    receiver = WebhookReceiver(SECRET, clock=VirtualClock(start=TS))
    async with (
        WebhookServer(receiver=receiver) as server,
        aiohttp.ClientSession() as http,
        http.post(
            tag_webhook_url(server.url, "n_aio"), data=BODY, headers=headers()
        ) as r,
    ):
        assert r.status == 200
    assert receiver.job_for_attempt("n_aio") == "job_abc123"


@pytest.mark.parametrize(
    ("url", "tagged"),
    [
        ("https://h.example/pb", "https://h.example/pb?pb_attempt=N"),
        ("https://h.example/pb?", "https://h.example/pb?pb_attempt=N"),
        ("https://h.example/pb?a=1", "https://h.example/pb?a=1&pb_attempt=N"),
        (
            "https://h.example/pb?a=%20b+c&z",
            "https://h.example/pb?a=%20b+c&z&pb_attempt=N",
        ),
        (
            "https://h.example/pb?pb_attempt=old&a=1&pb_attempt=older",
            "https://h.example/pb?a=1&pb_attempt=N",
        ),
        ("https://h.example/pb?a=1#top", "https://h.example/pb?a=1&pb_attempt=N#top"),
        (
            "https://h.example/pb?pb_attemptx=1",
            "https://h.example/pb?pb_attemptx=1&pb_attempt=N",
        ),
    ],
    ids=["bare", "empty-query", "param", "escaped", "replace", "fragment", "prefix"],
)
def test_tag_webhook_url(url, tagged):
    """tag_webhook_url adds or replaces pb_attempt and keeps everything else as is."""
    assert tagged == tag_webhook_url(url, "N")


@pytest.mark.parametrize("attempt", ["", "a b", "a/b", "é", "a" * 65, "a&b=c"])
def test_tag_webhook_url_refuses_bad_attempts(attempt):
    """Only short [A-Za-z0-9_-] tokens can be tagged."""
    with pytest.raises(ValueError, match="attempt"):
        tag_webhook_url("https://h.example/pb", attempt)


def test_new_attempt_id_round_trips():
    """new_attempt_id makes distinct short tokens that survive tag, send and receive."""
    ids = {new_attempt_id() for _ in range(200)}
    assert len(ids) == 200
    assert all(re.fullmatch(r"[A-Za-z0-9_-]{16}", i) for i in ids)
    nonce = ids.pop()
    url = tag_webhook_url("https://h.example/pb?a=1", nonce)
    receiver = WebhookReceiver(SECRET, clock=VirtualClock(start=TS))
    receiver.handle(BODY, headers(), url=url)
    assert receiver.job_for_attempt(nonce) == "job_abc123"


@pytest.mark.anyio
async def test_a_delivery_that_never_arrives_is_said_once(fake, caplog):
    """The API cannot reach the webhook URL: waits end at their safety GET, and say why."""
    from conftest import bound_client

    receiver = WebhookReceiver(fake.webhook_secret)
    async with bound_client(fake) as pb:
        pb.use_webhooks(receiver, public_url="https://hooks.example.com/nowhere")
        for n in range(2):
            job = await pb.submit(
                KlingO1StartEndFrame(
                    image_url="https://e.x/a.jpg",
                    end_image_url="https://e.x/b.jpg",
                    prompt=f"p{n}",
                )
            )
            await job.wait()
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    said = [w for w in warnings if "delivery never arrived" in w]
    assert len(said) == 1, warnings
    assert "https://hooks.example.com/nowhere" in said[0]


# -- issue 24, finding 5: a signed body nested too deep ---------------------------------


def nested(depth: int) -> bytes:
    """A signed-looking delivery whose ``extra`` field nests *depth* objects deep."""
    return (
        b'{"jobId":"job_deep","status":"completed","extra":'
        + b'{"a":' * depth
        + b"1"
        + b"}" * depth
        + b"}"
    )


DEEP = b'{"a":' * 10_000 + b"1" + b"}" * 10_000


@pytest.mark.parametrize(
    "body", [DEEP, nested(10_000), b"[" * 5_000 + b"]" * 5_000, nested(65)]
)
def test_deep_nesting_is_malformed_not_a_recursion_error(body):
    """verify() and handle() refuse a correctly signed body nested too deep, typed."""
    with pytest.raises(WebhookVerificationError) as info:
        verify(body, headers(body), SECRET, now=TS)
    assert info.value.reason == "malformed"
    receiver = WebhookReceiver(SECRET, clock=VirtualClock(start=TS))
    status, reason = receiver.handle(body, headers(body))
    assert 400 <= status < 500
    assert reason == "malformed"
    assert receiver.stats["rejected"] == 1


def test_nesting_up_to_the_limit_and_wide_bodies_are_accepted():
    """64 levels still verify; so do thousands of brackets side by side, or in strings."""
    assert verify(nested(63), headers(nested(63)), SECRET, now=TS).job_id == "job_deep"
    wide = json.dumps(
        {
            "jobId": "job_wide",
            "status": "completed",
            "outputs": [{"url": f"https://cdn.example/{i}.mp4"} for i in range(2000)],
            "note": "[{" * 5000,
        }
    ).encode()
    assert verify(wide, headers(wide), SECRET, now=TS).job_id == "job_wide"
    utf16 = wide.decode().encode("utf-16")
    assert verify(utf16, headers(utf16), SECRET, now=TS).job_id == "job_wide"


@pytest.mark.anyio
async def test_deep_nesting_over_a_socket_is_400_malformed_never_500():
    """Through WebhookServer and a receiver mounted in a plain aiohttp app alike."""
    from aiohttp import web

    plain = WebhookReceiver(SECRET, clock=VirtualClock(start=TS))
    app = web.Application(client_max_size=plain.max_body + 1)
    app.router.add_post("/hook", plain.aiohttp_handler)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        async with (
            WebhookServer(SECRET, clock=VirtualClock(start=TS)) as server,
            aiohttp.ClientSession() as http,
        ):
            for url in (server.url, f"http://127.0.0.1:{port}/hook"):
                async with http.post(url, data=DEEP, headers=headers(DEEP)) as r:
                    answer = (r.status, (await r.json())["reason"])
                assert answer[0] == 400, (url, answer)  # signed: the body is bad
                assert answer[1] == "malformed"
                async with http.post(url, data=BODY, headers=headers()) as r:
                    assert r.status == 200  # and the server goes on serving
    finally:
        await runner.cleanup()


@pytest.mark.anyio
async def test_deep_nesting_is_refused_before_the_hub():
    """With a hub, handle_async refuses the body before anything is published."""
    from pixelbyte_async._hub._codec import encode_event

    class Hub:
        running = True
        connect_timeout = 1.0

        def __init__(self):
            self.published: list[bytes] = []

        async def publish(self, event):
            self.published.append(encode_event(event))  # what RedisHub sends
            return True

        def publish_threadsafe(self, event):  # pragma: no cover -- same loop here
            raise AssertionError

    hub = Hub()
    receiver = WebhookReceiver(SECRET, clock=VirtualClock(start=TS), hub=hub)
    status, reason = await receiver.handle_async(DEEP, headers(DEEP))
    assert (400 <= status < 500, reason) == (True, "malformed")
    assert hub.published == []
    deepest = nested(63)
    assert await receiver.handle_async(deepest, headers(deepest)) == (200, "ok")
    assert len(hub.published) == 1
