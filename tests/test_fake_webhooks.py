"""
`FakePixelByte` webhooks: signatures, deliveries, retries, and the auto sender.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import hashlib
import hmac
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import NamedTuple

import pytest
from aiohttp import web
from pixelbyte_async import VirtualClock
from pixelbyte_async._fake._webhooks import MAX_IN_FLIGHT, REAL_TIMEOUT_FLOOR, sign
from pixelbyte_async.testing import (
    FakePixelByte,
    JobScript,
    WebhookDelivery,
)
from pixelbyte_async.webhooks import WebhookReceiver, signature_headers

from conftest import until
from fake_helpers import (
    api,
    session_fixture,  # noqa: F401 -- the session fixture
    submit_ok,
)


pytestmark = pytest.mark.anyio

# -- webhooks -------------------------------------------------------------------------


class Receiver(NamedTuple):
    url: str
    hits: list[tuple[dict[str, str], bytes]]
    statuses: list[int]


Handler = Callable[[web.Request], Awaitable[web.Response]]


@contextlib.asynccontextmanager
async def serve_hook(hook: Handler) -> AsyncIterator[str]:
    """Serve *hook* at ``POST /hook`` on a free local port; yield its URL."""
    async with serve_routes({"/hook": hook}) as base:
        yield base + "/hook"


@contextlib.asynccontextmanager
async def serve_routes(routes: dict[str, Handler]) -> AsyncIterator[str]:
    """Serve each handler at its path (any method) on a free port; yield the base URL."""
    app = web.Application()
    for path, handler in routes.items():
        app.router.add_route("*", path, handler)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()


@pytest.fixture(name="receiver")
async def _receiver():
    hits: list[tuple[dict[str, str], bytes]] = []
    statuses: list[int] = []

    async def hook(request: web.Request) -> web.Response:
        hits.append((dict(request.headers), await request.read()))
        return web.Response(status=statuses.pop(0) if statuses else 200)

    async with serve_hook(hook) as url:
        yield Receiver(url, hits, statuses)


def test_signature_test_vector():
    """The fake signs webhooks as the contract's test vector says."""
    body = b'{"jobId":"job_abc123","status":"completed"}'
    assert sign("whsec_test", "1760000000", body) == (
        "sha256=3808736d8de9872ff32cb085bd9851cbad6f089e4e55195bbec1450e5295989e"
    )


async def test_webhook_delivery(session, receiver):
    """A finished job's webhook is POSTed once, signed over the exact body."""
    async with FakePixelByte(allow_http_webhooks=True) as fake:
        job_id = await submit_ok(session, fake, webhookUrl=receiver.url)
        assert await fake.deliver_webhooks() == []
        fake.advance(245)
        [delivery] = await fake.deliver_webhooks()
        assert delivery.ok
        assert await fake.deliver_webhooks() == []
        [(headers, body)] = receiver.hits
        assert body == delivery.body
        ts = headers["X-PixelByte-Timestamp"]
        assert int(ts) == int(fake.clock.time())
        expected = hmac.new(
            fake.webhook_secret.encode(), ts.encode() + b"." + body, hashlib.sha256
        ).hexdigest()
        assert headers["X-PixelByte-Signature"] == f"sha256={expected}"
        payload = json.loads(body)
        assert payload["jobId"] == job_id
        assert payload["status"] == "completed"
        assert payload["requestId"] == fake.jobs[job_id].request_id
        assert payload["output"].endswith("/output_0.mp4")
        assert payload["completedAt"].endswith("Z")
        assert fake.webhook_deliveries == [delivery]


async def test_webhook_failure_payload_and_retries(session, receiver):
    """Failed jobs send error; non-2xx answers are retried after 1, 4, ... s."""
    async with FakePixelByte(
        allow_http_webhooks=True, webhook_secret="whsec_x"
    ) as fake:
        fake.script_next(
            JobScript(outcome="failed", queue_seconds=0, processing_seconds=1)
        )
        await submit_ok(session, fake, webhookUrl=receiver.url)
        receiver.statuses.extend([500, 503])
        fake.advance(1)
        [first] = await fake.deliver_webhooks()
        assert (first.attempt, first.status, first.ok) == (1, 500, False)
        assert await fake.deliver_webhooks() == []
        fake.advance(1)
        [second] = await fake.deliver_webhooks()
        assert (second.attempt, second.status) == (2, 503)
        fake.advance(4)
        [third] = await fake.deliver_webhooks()
        assert third.ok
        payload = json.loads(third.body)
        assert payload["status"] == "failed"
        assert payload["error"]["code"] == "GENERATION_FAILED"
        assert "output" not in payload
        ts = third.headers["X-PixelByte-Timestamp"]
        assert third.headers["X-PixelByte-Signature"] == sign("whsec_x", ts, third.body)


async def test_webhook_unreachable_gives_up(session):
    """An unreachable receiver is retried five times and then abandoned."""
    async with FakePixelByte(allow_http_webhooks=True) as fake:
        fake.script_next(JobScript(queue_seconds=0, processing_seconds=0))
        await submit_ok(session, fake, webhookUrl="http://127.0.0.1:9/hook")
        attempts = []
        for delay in (0, 1, 4, 16, 64, 256, 1000):
            fake.advance(delay)
            attempts += await fake.deliver_webhooks()
        assert [a.attempt for a in attempts] == [1, 2, 3, 4, 5, 6]
        assert all(a.status is None and a.error for a in attempts)


async def test_cancelled_jobs_send_no_webhook(session, receiver):
    """Cancellation sends no webhook."""
    async with FakePixelByte(allow_http_webhooks=True) as fake:
        job_id = await submit_ok(session, fake, webhookUrl=receiver.url)
        await api(session, fake, "POST", f"/v1/jobs/{job_id}/cancel")
        fake.advance(1000)
        assert await fake.deliver_webhooks() == []


async def test_auto_webhooks(session, receiver):
    """With auto_webhooks a background task delivers without being asked."""
    async with FakePixelByte(allow_http_webhooks=True, auto_webhooks=True) as fake:
        await submit_ok(session, fake, webhookUrl=receiver.url)
        fake.advance(245)
        for _ in range(100):
            if receiver.hits:
                break
            await asyncio.sleep(0.01)
        assert len(receiver.hits) == 1


# -- the auto sender's timing (real time, a sender that would otherwise sleep) ------


class Arrivals:
    """A webhook endpoint that notes which jobs' deliveries arrived."""

    def __init__(self) -> None:
        self.url = ""
        self.jobs: list[str] = []
        self.changed = asyncio.Event()

    async def hook(self, request: web.Request) -> web.Response:
        self.jobs.append(json.loads(await request.read())["jobId"])
        self.changed.set()
        return web.Response(text="ok")

    async def until(self, count: int) -> list[str]:
        async with asyncio.timeout(10):
            while len(self.jobs) < count:
                self.changed.clear()
                await self.changed.wait()
        return self.jobs


@pytest.fixture(name="arrivals")
async def _arrivals():
    arrivals = Arrivals()
    async with serve_hook(arrivals.hook) as arrivals.url:
        yield arrivals


@pytest.fixture(name="lazy_sender")
def _lazy_sender(monkeypatch):
    """Make the auto sender's idle poll an hour: only a due time can wake it."""
    monkeypatch.setattr("pixelbyte_async._fake._server._AUTO_WEBHOOK_INTERVAL", 3600.0)


def realtime_fake() -> FakePixelByte:
    return FakePixelByte(time_scale=1.0, allow_http_webhooks=True, auto_webhooks=True)


@pytest.mark.usefixtures("lazy_sender")
async def test_auto_webhooks_go_out_when_the_job_ends(session, arrivals):
    """The sender sleeps until the next delivery is due, not until its next poll."""
    async with realtime_fake() as fake:
        fake.script_next(JobScript(queue_seconds=0, processing_seconds=0.02))
        job_id = await submit_ok(session, fake, webhookUrl=arrivals.url)
        assert await arrivals.until(1) == [job_id]
        assert fake.jobs[job_id].status == "completed"


@pytest.mark.usefixtures("lazy_sender")
async def test_a_job_ending_sooner_wakes_the_sleeping_sender(session, arrivals):
    """A job due before the sender's planned wake-up wakes it (and a force-ended one)."""
    async with realtime_fake() as fake:
        fake.script_next(
            JobScript(queue_seconds=0, processing_seconds=3000),
            JobScript(queue_seconds=0, processing_seconds=0.02),
            JobScript(queue_seconds=0, processing_seconds=3000),
        )
        slow = await submit_ok(session, fake, webhookUrl=arrivals.url)
        await asyncio.sleep(0)  # the sender now sleeps until the slow job's end
        quick = await submit_ok(session, fake, webhookUrl=arrivals.url)
        assert await arrivals.until(1) == [quick]
        forced = await submit_ok(session, fake, webhookUrl=arrivals.url)
        fake.complete_now(forced)
        assert await arrivals.until(2) == [quick, forced]
        assert slow not in arrivals.jobs


async def test_a_cancelled_job_is_no_longer_awaited(session, receiver):
    """Cancelling a job drops it from the sender's list (no webhook, no rescans)."""
    async with FakePixelByte(allow_http_webhooks=True) as fake:
        job_id = await submit_ok(session, fake, webhookUrl=receiver.url)
        await api(session, fake, "POST", f"/v1/jobs/{job_id}/cancel")
        assert job_id not in fake._state.awaiting_webhook


# -- under load: each job on its own schedule (issue 24, items 10 and 11) -------------

#: A frozen clock at a whole second: every virtual time below is exact.
START = 1_760_000_000.0


class Receivers:
    """
    Webhook endpoints that note when (virtual time) each POST arrived.

    ``/slow`` answers 200 only after 35 virtual seconds (past the API's 30 s),
    ``/flaky`` always answers 500, ``/script`` answers the statuses queued in
    ``script`` (200 when empty; 0 means: take 35 s, then 200).
    """

    def __init__(self, clock: VirtualClock) -> None:
        self.clock = clock
        self.arrivals: dict[str, list[float]] = collections.defaultdict(list)
        self.script: list[int] = []

    def routes(self) -> dict[str, Handler]:
        return {"/slow": self.slow, "/flaky": self.flaky, "/script": self.scripted}

    def note(self, request: web.Request) -> None:
        self.arrivals[request.path].append(self.clock.time() - START)

    async def slow(self, request: web.Request) -> web.Response:
        self.note(request)
        await self.clock.sleep(35)
        return web.Response(text="too late")

    async def flaky(self, request: web.Request) -> web.Response:
        self.note(request)
        return web.Response(status=500)

    async def scripted(self, request: web.Request) -> web.Response:
        self.note(request)
        status = self.script.pop(0) if self.script else 200
        if status == 0:
            await self.clock.sleep(35)
            status = 200
        return web.Response(status=status)


@contextlib.asynccontextmanager
async def frozen_rig(
    *, auto: bool
) -> AsyncIterator[tuple[FakePixelByte, Receivers, str]]:
    """A fake on a frozen clock that only `advance` moves, and the receivers."""
    clock = VirtualClock(start=START, autojump=False)
    receivers = Receivers(clock)
    async with serve_routes(receivers.routes()) as base:
        try:
            async with FakePixelByte(
                clock=clock, allow_http_webhooks=True, auto_webhooks=auto
            ) as fake:
                yield fake, receivers, base
        finally:
            clock.advance(3600)  # the slow answers end, so the server stops at once


def offsets(deliveries: list[WebhookDelivery], job_id: str) -> list[float]:
    """When (virtual seconds after START) *job_id*'s attempts began."""
    return [d.time - START for d in deliveries if d.job_id == job_id]


def count_upto(times: list[float], now: float) -> int:
    return sum(1 for t in times if t <= now)


#: The documented schedule: attempts that fail at once start 0, 1, 5, 21, 85, 341 s
#: after the job ends.
SCHEDULE = [0.0, 1.0, 5.0, 21.0, 85.0, 341.0]
#: Attempts cut after 30 s: each retry's delay runs from the cut.
SLOW_STARTS = [0.0, 31.0, 65.0, 111.0, 205.0, 491.0]
SLOW_CUTS = [t + 30 for t in SLOW_STARTS]


@pytest.mark.usefixtures("lazy_sender")
async def test_a_slow_receiver_does_not_hold_up_other_jobs_deliveries(session):
    """Three receivers taking 35 s delay nobody: a failing job keeps 0, 1, 5, 21, 85 s."""
    async with frozen_rig(auto=True) as (fake, receivers, base):
        fake.script_next(*[JobScript(queue_seconds=0, processing_seconds=0)] * 4)
        slow = [
            await submit_ok(session, fake, webhookUrl=base + "/slow") for _ in range(3)
        ]
        flaky = await submit_ok(session, fake, webhookUrl=base + "/flaky")
        end = 345.0
        events = sorted({*SCHEDULE, *SLOW_STARTS, *SLOW_CUTS} - {0.0})
        for now in [0.0, *(t for t in events if t <= end)]:
            fake.advance(START + now - fake.clock.time())

            def caught_up(now: float = now) -> bool:
                records = fake.webhook_deliveries
                return (
                    len(receivers.arrivals["/flaky"]) == count_upto(SCHEDULE, now)
                    and len(receivers.arrivals["/slow"])
                    == 3 * count_upto(SLOW_STARTS, now)
                    and len(records)
                    == count_upto(SCHEDULE, now) + 3 * count_upto(SLOW_CUTS, now)
                )

            await until(caught_up, timeout=5)
        deliveries = fake.webhook_deliveries
    assert offsets(deliveries, flaky) == SCHEDULE
    assert receivers.arrivals["/flaky"] == SCHEDULE
    for job_id in slow:
        cut = [d for d in deliveries if d.job_id == job_id]
        assert offsets(deliveries, job_id) == [t for t in SLOW_STARTS if t + 30 <= end]
        assert all(d.status is None and "TimeoutError" in (d.error or "") for d in cut)
        assert all(d.ended_at == d.time + 30 for d in cut)


async def test_the_retry_delay_runs_from_the_end_of_a_timed_out_attempt(session):
    """A 30 s timeout, then the 4 s delay: the next attempt is 34 s after it began."""
    async with frozen_rig(auto=False) as (fake, receivers, base):
        fake.script_next(JobScript(queue_seconds=0, processing_seconds=0))
        await submit_ok(session, fake, webhookUrl=base + "/script")
        receivers.script.extend([500, 0])  # fails at once, then takes 35 s
        [first] = await fake.deliver_webhooks()
        assert (first.status, first.time - START) == (500, 0)
        fake.advance(1)
        sending = asyncio.ensure_future(fake.deliver_webhooks())
        await until(lambda: len(receivers.arrivals["/script"]) == 2, timeout=5)
        fake.advance(30)  # the API stops waiting
        [second] = await asyncio.wait_for(sending, 5)
        assert (second.attempt, second.status, second.ok) == (2, None, False)
        assert "TimeoutError" in (second.error or "")
        assert (second.time - START, (second.ended_at or 0) - START) == (1, 31)
        fake.advance(3)
        assert await fake.deliver_webhooks() == []
        fake.advance(1)
        [third] = await fake.deliver_webhooks()
        assert (third.attempt, third.ok, third.time - second.time) == (3, True, 34)


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
async def test_a_redirect_is_a_failed_attempt_and_is_not_followed(session, status):
    """Any 3xx is retried on schedule like any non-2xx; the Location is never called."""
    landed: list[str] = []

    async def hook(request: web.Request) -> web.Response:
        return web.Response(status=status, headers={"Location": "/landing"})

    async def landing(request: web.Request) -> web.Response:
        landed.append(request.method)
        return web.Response(text="ok")

    async with (
        serve_routes({"/hook": hook, "/landing": landing}) as base,
        FakePixelByte(allow_http_webhooks=True) as fake,
    ):
        fake.script_next(JobScript(queue_seconds=0, processing_seconds=0))
        await submit_ok(session, fake, webhookUrl=base + "/hook")
        [first] = await fake.deliver_webhooks()
        assert (first.status, first.ok) == (status, False)
        fake.advance(1)
        [second] = await fake.deliver_webhooks()
        assert (second.attempt, second.status) == (2, status)
    assert landed == []


async def test_deliveries_in_flight_are_bounded(session):
    """At most MAX_IN_FLIGHT POSTs are out at once; the rest wait for a free slot."""
    async with frozen_rig(auto=False) as (fake, receivers, base):
        jobs = MAX_IN_FLIGHT + 8
        fake.script_next(*[JobScript(queue_seconds=0, processing_seconds=0)] * jobs)
        for _ in range(jobs):
            await submit_ok(session, fake, webhookUrl=base + "/slow")
        sending = asyncio.ensure_future(fake.deliver_webhooks())
        await until(lambda: len(receivers.arrivals["/slow"]) == MAX_IN_FLIGHT)
        await asyncio.sleep(0.05)
        assert len(receivers.arrivals["/slow"]) == MAX_IN_FLIGHT
        fake.advance(30)  # the first ones are cut: the others go out
        await until(lambda: len(receivers.arrivals["/slow"]) == jobs)
        fake.advance(30)
        made = await asyncio.wait_for(sending, 5)
    assert len(made) == jobs
    assert [d.time - START for d in made].count(30) == 8


async def test_a_fast_clock_gives_an_attempt_half_a_real_second_at_least(session):
    """At x1000, 30 virtual s are 30 ms: a busy loop must not look like a slow receiver."""
    release = asyncio.Event()
    async with FakePixelByte(time_scale=1000, allow_http_webhooks=True) as fake:

        async def late(request: web.Request) -> web.Response:
            await fake.clock.sleep(35)  # 35 ms of real time
            return web.Response(text="ok")

        async def hung(request: web.Request) -> web.Response:
            await release.wait()
            return web.Response(text="too late")

        async with serve_routes({"/late": late, "/hung": hung}) as base:
            fake.script_next(*[JobScript(queue_seconds=0, processing_seconds=0)] * 2)
            await submit_ok(session, fake, webhookUrl=base + "/late")
            await submit_ok(session, fake, webhookUrl=base + "/hung")
            await asyncio.sleep(0.01)
            made = await fake.deliver_webhooks()
            release.set()
    took = {d.url.rsplit("/", 1)[1]: (d.ended_at or 0) - d.time for d in made}
    assert {d.url.rsplit("/", 1)[1]: d.ok for d in made} == {
        "late": True,
        "hung": False,
    }
    assert 35 <= took["late"] < REAL_TIMEOUT_FLOOR * 1000
    assert REAL_TIMEOUT_FLOOR * 1000 <= took["hung"] < 3 * REAL_TIMEOUT_FLOOR * 1000


@pytest.mark.parametrize("scale", [0.0, 60.0, 6000.0])
async def test_receiver_options_judge_a_fast_sandboxs_deliveries_in_real_time(scale):
    """At x6,000 the API's 300 s are 50 ms: the options stretch them by 5 real s."""
    async with FakePixelByte(time_scale=scale) as fake:
        options = fake.receiver_options
        assert options["clock"] is fake.clock
        assert options["tolerance"] == 300 + 5 * max(1.0, scale)
        assert options["retention"] > options["tolerance"]
        stretched = WebhookReceiver(fake.webhook_secret, **options)
        plain = WebhookReceiver(fake.webhook_secret, clock=fake.clock)
        body = json.dumps({"jobId": "job_late", "status": "completed"})
        # Sent a real 1.5 s ago: 9,000 virtual seconds at x6,000.
        late = int(fake.clock.time() - 300 - 1.5 * max(1.0, scale))
        headers = signature_headers(body, fake.webhook_secret, timestamp=late)
        assert stretched.handle(body, headers)[0] == 200
        assert plain.handle(body, headers)[0] == 401


def test_the_sandboxs_receiver_defaults_are_the_receivers():
    """`receiver_options` starts from the receiver's own defaults."""
    from pixelbyte_async import _receiver, _signing
    from pixelbyte_async._fake import _server

    assert _server._API_TOLERANCE == _signing.DEFAULT_TOLERANCE
    assert _server._RETENTION == _receiver._DEFAULT_RETENTION
