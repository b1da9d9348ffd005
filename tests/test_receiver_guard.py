"""
A receiver mounted in the user's own aiohttp app gets WebhookServer's guard.

Issue 24, finding 8: `WebhookReceiver.aiohttp_handler` added to a plain
`web.Application` had no slowloris protection (50 sockets trickling bytes were all
still open 40 s later).  `GuardedSite` is a drop-in for ``web.TCPSite`` with the
guard; the handler itself now bounds the time to read a body (for apps run by
``web.run_app`` or gunicorn, which cannot use the site).  Real sockets throughout, a
short read timeout, no long sleeps.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import aiohttp
import anyio
import pytest
from aiohttp import web
from pixelbyte_async import VirtualClock
from pixelbyte_async.webhooks import GuardedSite, WebhookReceiver, signature_headers

from conftest import until


pytestmark = pytest.mark.anyio

SECRET = "whsec_test"
TS = 1760000000
HEAD = b"POST /hook HTTP/1.1\r\nHost: 127.0.0.1\r\nX-PixelByte-Timestamp: 17600"


def delivery(job_id: str) -> tuple[bytes, dict[str, str]]:
    body = f'{{"jobId":"{job_id}","status":"completed"}}'.encode()
    return body, signature_headers(body, SECRET, timestamp=TS)


def user_app(receiver: WebhookReceiver) -> web.Application:
    """The user's own app: the receiver's handler and a slow route of theirs."""

    async def slow(request: web.Request) -> web.Response:
        body = await request.read()
        await asyncio.sleep(0.6)  # twice the read timeout: the app's own business
        return web.Response(text=f"slept {len(body)}")

    app = web.Application(client_max_size=receiver.max_body + 1)
    app.router.add_post("/hook", receiver.aiohttp_handler)
    app.router.add_post("/slow", slow)
    return app


@asynccontextmanager
async def serve(
    receiver: WebhookReceiver, site: Callable[[web.AppRunner], web.TCPSite]
) -> AsyncIterator[tuple[web.TCPSite, str]]:
    runner = web.AppRunner(user_app(receiver), access_log=None)
    await runner.setup()
    made = site(runner)
    await made.start()
    try:
        yield made, f"http://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()


def guarded(**kwargs: object) -> Callable[[web.AppRunner], web.TCPSite]:
    return lambda runner: GuardedSite(runner, "127.0.0.1", 0, **kwargs)


def receiver() -> WebhookReceiver:
    return WebhookReceiver(SECRET, clock=VirtualClock(start=TS))


async def trickle(port: int, n: int, data: bytes = HEAD) -> list[asyncio.Task[bool]]:
    """*n* sockets that send *data* a byte every 50 ms; each task: closed by the server."""

    async def one() -> bool:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            for byte in data:
                writer.write(bytes([byte]))
                await writer.drain()
                await asyncio.sleep(0.05)
                if reader.at_eof():
                    return True
            return await reader.read() == b""
        except ConnectionError:
            return True
        finally:
            writer.close()

    return [asyncio.ensure_future(one()) for _ in range(n)]


async def test_slow_sockets_are_dropped_by_the_guarded_site():
    """50 sockets trickling header bytes are all closed after the 0.3 s read timeout."""
    async with serve(receiver(), guarded(read_timeout=0.3)) as (site, url):
        assert isinstance(site, GuardedSite)
        port = site.port
        start = time.monotonic()
        tasks = await trickle(port, 50)
        with anyio.fail_after(2.0):
            closed = await asyncio.gather(*tasks)
        assert closed == [True] * 50
        assert time.monotonic() - start < 1.5  # HEAD alone would take 3.5 s
        assert site.stats["timed_out"] == 50
        await until(lambda: site.connections == 0, 1.0)
        body, headers = delivery("job_after")
        async with (
            aiohttp.ClientSession() as http,
            http.post(url + "/hook", data=body, headers=headers) as r,
        ):
            assert r.status == 200


async def test_a_plain_tcp_site_keeps_them_open():
    """What the guarded site is for: aiohttp's own site keeps trickling sockets."""
    async with serve(receiver(), lambda r: web.TCPSite(r, "127.0.0.1", 0)) as (
        _site,
        url,
    ):
        tasks = await trickle(int(url.rsplit(":", 1)[1]), 10)
        await asyncio.sleep(1.0)
        assert not any(task.done() for task in tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def test_a_slow_body_is_dropped_by_the_guarded_site():
    """Complete headers, then a body that never ends: closed at the read timeout."""
    hooks = receiver()
    async with serve(hooks, guarded(read_timeout=0.3)) as (site, _url):
        body, headers = delivery("job_slow")
        head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        reader, writer = await asyncio.open_connection("127.0.0.1", site.port)
        writer.write(
            f"POST /hook HTTP/1.1\r\nHost: x\r\n{head}"
            f"Content-Length: {len(body)}\r\n\r\n".encode()
            + body[:5]
        )
        start = time.monotonic()
        with anyio.fail_after(2.0):
            assert await reader.read() == b""
        writer.close()
        assert 0.2 < time.monotonic() - start < 1.0
        assert site.stats["timed_out"] == 1
        assert hooks.stats["accepted"] == 0


async def test_the_app_s_own_slow_handlers_are_not_cut():
    """The read timeout bounds receiving a request, never the app's time to answer."""
    async with (
        serve(receiver(), guarded(read_timeout=0.3)) as (site, url),
        aiohttp.ClientSession() as http,
    ):
        for _ in range(2):  # the second on the kept-alive connection
            async with http.post(url + "/slow", data=b"x" * 1000) as r:
                assert (r.status, await r.text()) == (200, "slept 1000")
        assert site.stats["timed_out"] == 0
        assert site.stats["opened"] == 1


async def test_kept_alive_deliveries_restart_the_deadline():
    """Each delivery on a kept-alive connection gets the whole read timeout."""
    hooks = receiver()
    async with (
        serve(hooks, guarded(read_timeout=0.3)) as (site, url),
        aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1)) as http,
    ):
        for n in range(4):
            if n:
                await asyncio.sleep(0.12)
            body, headers = delivery(f"job_{n}")
            async with http.post(url + "/hook", data=body, headers=headers) as r:
                assert r.status == 200
        assert (site.stats["opened"], site.stats["timed_out"]) == (1, 0)
        await until(lambda: site.connections == 0, 2.0)
        assert site.stats["timed_out"] == 1
    assert hooks.stats["accepted"] == 4


async def test_a_burst_past_the_cap_waits_its_turn():
    """100 deliveries at once on their own connections, 4 slots: all answered 200."""
    hooks = receiver()
    async with (
        serve(hooks, guarded(read_timeout=2.0, max_connections=4)) as (site, url),
        aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=100, force_close=True)
        ) as http,
    ):

        async def post(n: int) -> int:
            body, headers = delivery(f"job_{n}")
            async with http.post(url + "/hook", data=body, headers=headers) as r:
                return r.status

        with anyio.fail_after(5.0):
            statuses = await asyncio.gather(*(post(n) for n in range(100)))
        assert statuses == [200] * 100
        assert site.stats["refused"] == 0
        assert site.stats["queued"] > 0
    assert hooks.stats["accepted"] == 100


async def test_the_guarded_site_is_a_tcp_site():
    """Same arguments as web.TCPSite plus the limits; stopped by runner.cleanup()."""
    runner = web.AppRunner(user_app(receiver()), access_log=None)
    await runner.setup()
    try:
        site = GuardedSite(runner, "127.0.0.1", 0, read_timeout=1.5, backlog=64)
        assert isinstance(site, web.TCPSite)
        assert isinstance(site, GuardedSite)
        assert (site.read_timeout, site.max_connections) == (1.5, 256)
        await site.start()
        assert site.port == runner.addresses[0][1] != 0
        assert site.name == f"http://127.0.0.1:{site.port}"
        assert runner.sites == {site}
        with pytest.raises(ValueError, match="read_timeout"):
            GuardedSite(runner, "127.0.0.1", 0, read_timeout=0)
        with pytest.raises(ValueError, match="max_queued"):
            GuardedSite(runner, "127.0.0.1", 0, max_queued=-1)
    finally:
        await runner.cleanup()
    assert runner.sites == set()


# -- without the site: the handler bounds its body ------------------------------------


async def test_the_handler_answers_408_to_a_slow_body_on_any_site():
    """On aiohttp's own site (web.run_app, gunicorn) a slow body gets 408, not forever."""
    hooks = WebhookReceiver(SECRET, clock=VirtualClock(start=TS), body_timeout=0.3)
    assert hooks.body_timeout == 0.3
    async with serve(hooks, lambda r: web.TCPSite(r, "127.0.0.1", 0)) as (_site, url):
        body, headers = delivery("job_slow")
        head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", int(url.rsplit(":", 1)[1])
        )
        writer.write(
            f"POST /hook HTTP/1.1\r\nHost: x\r\n{head}"
            f"Content-Length: {len(body)}\r\n\r\n".encode()
            + body[:5]
        )
        start = time.monotonic()
        with anyio.fail_after(2.0):
            answer = await reader.read()  # answered, then closed
        writer.close()
        assert 0.2 < time.monotonic() - start < 1.0
        assert answer.startswith(b"HTTP/1.1 408 ")
        assert b"\r\nConnection: close\r\n" in answer
        assert answer.endswith(b'{"ok": false, "reason": "timeout"}')
    assert hooks.stats == {
        "received": 1,
        "accepted": 0,
        "duplicates": 0,
        "rejected": 1,
        "unknown": 0,
    }


@pytest.mark.parametrize("value", [0, -1, float("inf"), float("nan"), True])
def test_a_body_timeout_that_would_disable_the_bound_is_refused(value):
    with pytest.raises(ValueError, match="body_timeout"):
        WebhookReceiver(SECRET, body_timeout=value)


async def test_sites_of_one_runner_guard_their_own_connections():
    """Two guarded sites and a plain one on one runner; a site started again."""
    hooks = receiver()
    runner = web.AppRunner(user_app(hooks), access_log=None)
    await runner.setup()
    first = GuardedSite(runner, "127.0.0.1", 0, read_timeout=0.3)
    second = GuardedSite(runner, "127.0.0.1", 0, read_timeout=5.0)
    plain = web.TCPSite(runner, "127.0.0.1", 0)
    try:
        for site in (first, second, plain):
            await site.start()
        await first.stop()
        await first.start()  # wrapped once, not twice
        async with aiohttp.ClientSession() as http:
            for n, site in enumerate((first, second, plain)):
                body, headers = delivery(f"job_{n}")
                url = f"http://127.0.0.1:{site.port}/hook"
                async with http.post(url, data=body, headers=headers) as r:
                    assert r.status == 200
        assert [first.stats["opened"], second.stats["opened"]] == [1, 1]
        _reader, writer = await asyncio.open_connection("127.0.0.1", first.port)
        await until(lambda: first.stats["timed_out"] == 1, 2.0)
        writer.close()
        assert second.stats["timed_out"] == 0
    finally:
        await runner.cleanup()
    assert hooks.stats["accepted"] == 3
