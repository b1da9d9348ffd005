"""
`FakePixelByte` webhooks: signatures, deliveries, retries, and the auto sender.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import NamedTuple

import pytest
from aiohttp import web
from pixelbyte_async._fake._webhooks import sign
from pixelbyte_async.testing import (
    FakePixelByte,
    JobScript,
)

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


@contextlib.asynccontextmanager
async def serve_hook(
    hook: Callable[[web.Request], Awaitable[web.Response]],
) -> AsyncIterator[str]:
    """Serve *hook* at ``POST /hook`` on a free local port; yield its URL."""
    app = web.Application()
    app.router.add_post("/hook", hook)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        yield f"http://127.0.0.1:{runner.addresses[0][1]}/hook"
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
