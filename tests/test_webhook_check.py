"""
Issue 27, part 3: webhooks that fail loudly.

A wait that ends at its safety GET because no delivery came says so, once per cause
(rate-limited), with the URL and the likely causes; `PixelByte.check_webhooks` sends
a signed probe to the public URL and says whether it reached this process's receiver;
``use_webhooks(..., check=True)`` refuses to submit a paid job with a broken set-up.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
from collections.abc import AsyncIterator

import pytest
from aiohttp import web
from anyio.from_thread import start_blocking_portal
from pixelbyte_async import KlingO1StartEndFrame, SyncPixelByte
from pixelbyte_async._clock import VirtualClock
from pixelbyte_async._signing import probe_body
from pixelbyte_async._wiring import WARN_EVERY, WebhookWiring
from pixelbyte_async.testing import FakePixelByte
from pixelbyte_async.webhooks import (
    WebhookCheck,
    WebhookCheckError,
    WebhookReceiver,
    WebhookServer,
    signature_headers,
)

from conftest import bound_client
from redis_fixture import (  # noqa: F401 -- fixtures
    hubs_fixture,
    prefix_fixture,
    redis_server_fixture,
)


pytestmark = pytest.mark.anyio

SECRET = "whsec_check"


@pytest.fixture(name="fake")
async def _fake() -> AsyncIterator[FakePixelByte]:
    """The sandbox, taking the loopback http webhook URLs these tests serve."""
    async with FakePixelByte(allow_http_webhooks=True) as fake:
        yield fake


def kling(n: int) -> KlingO1StartEndFrame:
    return KlingO1StartEndFrame(
        image_url="https://e.x/a.jpg", end_image_url="https://e.x/b.jpg", prompt=f"p{n}"
    )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.asynccontextmanager
async def app_with(receiver: WebhookReceiver, mount: str) -> AsyncIterator[str]:
    """Serve *receiver* as the aiohttp recipe does (a sub-app at *mount*); yield the base."""
    app = web.Application()
    app.add_subapp(mount, receiver.aiohttp_app())
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    site = web.TCPSite(runner, "127.0.0.1", port)
    await site.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


def warnings_of(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]


# -- the receiving side of a probe ---------------------------------------------------


def test_a_probe_is_answered_and_dispatched_to_nobody():
    """A signed probe gets 200 probe: no event, no waiter, not accepted as a job."""
    seen = []
    receiver = WebhookReceiver(SECRET, on_event=seen.append, on_unknown=seen.append)
    body = probe_body("abc")
    assert json.loads(body) == {"jobId": "probe_abc", "status": "probe", "probe": True}
    assert receiver.handle(body, signature_headers(body, SECRET)) == (200, "probe")
    assert receiver.saw_probe("probe_abc")
    assert not receiver.saw_probe("probe_other")
    assert receiver.event_for("probe_abc") is None
    assert receiver.stats["accepted"] == 0
    assert receiver.stats["rejected"] == 0
    assert seen == []


def test_a_forged_probe_is_refused():
    """A probe is a delivery like any other: a wrong signature is 401, not remembered."""
    receiver = WebhookReceiver(SECRET)
    body = probe_body("abc")
    status, reason = receiver.handle(body, signature_headers(body, "whsec_wrong"))
    assert (status, reason) == (401, "mismatch")
    assert not receiver.saw_probe("probe_abc")


def test_a_body_that_only_looks_like_a_probe_is_a_delivery():
    """Without ``probe: true`` (or with a real job id) the body is dispatched as ever."""
    receiver = WebhookReceiver(SECRET)
    body = b'{"jobId":"job_1","status":"probe","probe":true}'
    assert receiver.handle(body, signature_headers(body, SECRET)) == (200, "ok")
    assert not receiver.saw_probe("job_1")


# -- check_webhooks ----------------------------------------------------------------------


async def test_check_passes_with_a_webhook_server(fake):
    """The client's own server verifies the probe: ok, 200, reached."""
    server = WebhookServer(fake.webhook_secret, host="127.0.0.1", port=0)
    async with bound_client(fake, webhook=server) as pb:
        check = await pb.check_webhooks(timeout=5)
    assert isinstance(check, WebhookCheck)
    assert check.ok
    assert bool(check)
    assert check.status == 200
    assert check.reached
    assert check.problem is None
    assert check.url == server.public_url
    assert server.receiver.stats["accepted"] == 0


async def test_check_catches_a_missing_trailing_slash(fake):
    """The recipe mounts at /hooks/; public_url /hooks gets 404 and says why."""
    receiver = WebhookReceiver(fake.webhook_secret)
    async with app_with(receiver, "/hooks/") as base, bound_client(fake) as pb:
        pb.use_webhooks(receiver, public_url=f"{base}/hooks")
        check = await pb.check_webhooks(timeout=5)
        assert not check.ok
        assert check.status == 404
        assert not check.reached
        assert "trailing slash" in (check.problem or "")
        pb.use_webhooks(receiver, public_url=f"{base}/hooks/")
        assert (await pb.check_webhooks(timeout=5)).ok


async def test_check_catches_connection_refused(fake):
    """Nothing listens at the public URL: no status, and the causes in words."""
    url = f"http://127.0.0.1:{free_port()}/hooks/"
    async with bound_client(fake) as pb:
        pb.use_webhooks(WebhookReceiver(fake.webhook_secret), public_url=url)
        check = await pb.check_webhooks(timeout=5)
    assert not check.ok
    assert check.status is None
    assert check.url == url
    assert "could not connect" in (check.problem or "")
    assert "reverse proxy" in (check.problem or "")


async def test_check_catches_a_wrong_secret(fake):
    """The receiver at the URL has another secret: 401 names the secret."""
    other = WebhookReceiver("whsec_other")
    async with app_with(other, "/hooks/") as base, bound_client(fake) as pb:
        pb.use_webhooks(WebhookReceiver(SECRET), public_url=f"{base}/hooks/")
        check = await pb.check_webhooks(timeout=5)
    assert (check.ok, check.status) == (False, 401)
    assert "secret" in (check.problem or "")


async def test_check_sees_a_receiver_of_another_process(fake):
    """A receiver that is not this client's answers 200 probe: not reached here."""
    elsewhere = WebhookReceiver(SECRET)
    async with app_with(elsewhere, "/hooks/") as base, bound_client(fake) as pb:
        pb.use_webhooks(WebhookReceiver(SECRET), public_url=f"{base}/hooks/")
        check = await pb.check_webhooks(timeout=5)
    assert (check.ok, check.status, check.reached) == (False, 200, False)
    assert "another process" in (check.problem or "")
    assert elsewhere.stats["accepted"] == 0


async def test_check_true_refuses_to_submit_with_a_broken_set_up(fake):
    """use_webhooks(check=True): the first submit raises and nothing is paid for."""
    receiver = WebhookReceiver(fake.webhook_secret)
    async with app_with(receiver, "/hooks/") as base, bound_client(fake) as pb:
        pb.use_webhooks(receiver, public_url=f"{base}/hooks", check=True)
        with pytest.raises(WebhookCheckError, match="404") as caught:
            await pb.submit(kling(0))
        assert caught.value.check.status == 404
        assert fake.jobs == {}
        pb.use_webhooks(receiver, public_url=f"{base}/hooks/", check=True)
        job = await pb.submit(kling(1))
        assert job.id in fake.jobs


async def test_check_true_passes_silently(fake):
    """A good set-up: the check runs once, then submits go out as ever."""
    server = WebhookServer(fake.webhook_secret, host="127.0.0.1", port=0)
    async with bound_client(fake) as pb:
        pb.use_webhooks(server, check=True)
        await pb.submit(kling(0))
        await pb.submit(kling(1))
    assert server.receiver.stats["received"] == 1  # one probe, no deliveries yet


async def test_check_without_webhooks_says_so(fake):
    async with bound_client(fake) as pb:
        check = await pb.check_webhooks(timeout=1)
    assert not check.ok
    assert "use_webhooks" in (check.problem or "")


def test_the_sync_client_checks_too():
    """SyncPixelByte.check_webhooks is the twin."""
    with (
        start_blocking_portal() as portal,
        portal.wrap_async_context_manager(FakePixelByte()) as fake,
    ):
        server = WebhookServer(fake.webhook_secret, host="127.0.0.1", port=0)
        with SyncPixelByte(api_key=fake.api_key, base_url=fake.url) as pb:
            pb.use_webhooks(server)
            check = pb.check_webhooks(timeout=5)
    assert check.ok
    assert check.reached


# -- the WARNING when deliveries never come ----------------------------------------------


async def test_a_404_receiver_path_is_said_once_for_several_jobs(caplog):
    """The newcomer's missing trailing slash: every delivery 404s; one WARNING."""
    caplog.set_level(logging.DEBUG, "pixelbyte_async")
    clock = VirtualClock(autojump=False)
    async with FakePixelByte(clock=clock, allow_http_webhooks=True) as fake:
        receiver = WebhookReceiver(fake.webhook_secret, clock=clock)
        async with app_with(receiver, "/hooks/") as base, bound_client(fake) as pb:
            url = f"{base}/hooks"
            pb.use_webhooks(receiver, public_url=url)
            jobs = [await pb.submit(kling(n)) for n in range(3)]
            waits = asyncio.gather(*(job.wait() for job in jobs))
            await asyncio.sleep(0.01)
            fake.advance(245)
            assert len(await fake.deliver_webhooks()) == 3
            for _ in range(100):
                if waits.done():
                    break
                fake.advance(10)
                await asyncio.sleep(0.01)
            await waits
        assert receiver.stats["received"] == 0
        assert {d.status for d in fake.webhook_deliveries} == {404}
    said = [w for w in warnings_of(caplog) if "delivery never arrived" in w]
    assert len(said) == 1, warnings_of(caplog)
    assert url in said[0]
    assert "trailing slash" in said[0]
    assert "reverse proxy" in said[0]
    assert "hub" in said[0]
    assert fake.webhook_secret not in said[0]


async def test_an_unreachable_public_url_is_said_once_for_several_jobs(fake, caplog):
    """Nothing listens at the public URL: one WARNING for three jobs, then DEBUG."""
    caplog.set_level(logging.DEBUG, "pixelbyte_async")
    url = f"http://127.0.0.1:{free_port()}/hooks/"
    async with bound_client(fake) as pb:
        pb.use_webhooks(WebhookReceiver(fake.webhook_secret), public_url=url)
        jobs = [await pb.submit(kling(n)) for n in range(3)]
        await asyncio.gather(*(job.wait() for job in jobs))
    said = [w for w in warnings_of(caplog) if "delivery never arrived" in w]
    assert len(said) == 1, warnings_of(caplog)
    assert url in said[0]
    assert "not reachable from the internet" in said[0]
    muted = [
        r
        for r in caplog.records
        if r.levelno == logging.DEBUG and "delivery never arrived" in r.getMessage()
    ]
    assert len(muted) == 2


def test_the_warning_comes_back_after_ten_minutes_with_a_count(caplog):
    """Rate-limited per cause: one WARNING per WARN_EVERY seconds, then the count."""
    caplog.set_level(logging.DEBUG, "pixelbyte_async")
    clock = VirtualClock(autojump=False)

    class Observer:
        def _webhook_event(self, event: object) -> bool:
            return False

        def _knows_job(self, job_id: str) -> bool:
            return False

    wiring = WebhookWiring(Observer(), None, clock)  # type: ignore[arg-type]
    wiring.use(WebhookReceiver(SECRET), "https://hooks.example.com/pb/")
    for n in range(4):
        wiring.undelivered(f"job_{n}", 60)
    clock.advance(WARN_EVERY)
    wiring.undelivered("job_9", 60)
    said = warnings_of(caplog)
    assert len(said) == 2, said
    assert "3 more such jobs" in said[1]
    assert "https://hooks.example.com/pb/" in said[0]


# -- through a hub: the receiver runs in another process -------------------------------


async def test_check_reaches_a_receiver_of_another_process_through_the_hub(fake, hubs):
    """
    Hub ``b`` is behind the receiver of another process; this client uses hub ``a``.

    The probe reaches it and is published (its attempt attributed, nobody fed): the
    check is ok.  The same receiver without the hub: 200 probe, not reached.
    """
    a, b = hubs
    elsewhere = Counting()
    a.attach(elsewhere)
    server = WebhookServer(SECRET, hub=b)
    lone = WebhookServer(SECRET)
    async with server, lone, bound_client(fake) as pb:
        pb.use_webhooks(a, public_url=server.public_url, secret=SECRET)
        check = await pb.check_webhooks(timeout=5)
        assert (check.ok, check.status, check.reached) == (True, 200, True)
        assert server.receiver.stats["accepted"] == 0
        pb.use_webhooks(a, public_url=lone.public_url, secret=SECRET)
        check = await pb.check_webhooks(timeout=5)
        assert (check.ok, check.status, check.reached) == (False, 200, False)
        assert "another process" in (check.problem or "")
    assert elsewhere.seen == {}


async def test_a_hub_without_a_secret_cannot_sign_the_probe(fake, hubs):
    a, _ = hubs
    async with bound_client(fake) as pb:
        pb.use_webhooks(a, public_url="https://hooks.example.com/pb/")
        check = await pb.check_webhooks(timeout=1)
    assert not check.ok
    assert "secret" in (check.problem or "")


class Counting:
    """An observer attached to a hub: what it is fed, by job id."""

    def __init__(self) -> None:
        self.seen: dict[str, int] = {}

    def _webhook_event(self, event: object) -> bool:
        job_id = str(getattr(event, "job_id", ""))
        self.seen[job_id] = self.seen.get(job_id, 0) + 1
        return True

    def _knows_job(self, job_id: str) -> bool:
        return job_id in self.seen


async def test_the_cli_checks_a_url_in_one_line(capsys):
    """`pixelbyte-async webhook check URL`: 0 and 'ok' for a receiver, 14 and why for a 404."""
    import anyio
    from pixelbyte_async._cli import EXIT_CODES, main
    from pixelbyte_async.webhooks import WebhookServer

    secret = "whsec_cli_check"
    async with WebhookServer(secret) as server:
        argv = ["webhook", "check", server.url, "--webhook-secret", secret]
        code = await anyio.to_thread.run_sync(main, argv)
        assert (code, capsys.readouterr().out.split(":")[0]) == (0, "ok")
        wrong = server.url.rstrip("/") + "/"  # a trailing slash the server lacks
        code = await anyio.to_thread.run_sync(
            main, ["webhook", "check", wrong, "--webhook-secret", secret, "--json"]
        )
        out = capsys.readouterr().out
        assert code == EXIT_CODES["webhook_invalid"]
        assert '"status": 404' in out
        assert "trailing slash" in out
        assert secret not in out
        code = await anyio.to_thread.run_sync(
            main, ["webhook", "check", "not-a-url", "--webhook-secret", secret]
        )
        assert code == EXIT_CODES["validation"]
        assert capsys.readouterr().err.startswith("error: URL must be an https:// URL")
