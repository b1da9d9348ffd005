"""
WebhookServer faces the internet: slow and idle clients are dropped, connections capped.

Issue 13, finding 10: a client that sends its headers one byte per second used to keep
its connection (and a file descriptor) forever.  Issue 24, finding 9: a burst of 2,000
deliveries got 1,646 503s at the 256-connection cap; a connection past the cap now
waits for a slot (briefly, its reading paused, holding none).  Every wait here is
bounded; the only real pauses are a dripping client's, the gaps between keep-alive
deliveries and the short waits for a slot.
"""

from __future__ import annotations

import asyncio
import resource
import time
from collections.abc import Iterator
from urllib.parse import urlsplit

import aiohttp
import anyio
import pytest
from pixelbyte_async import VirtualClock
from pixelbyte_async.webhooks import WebhookReceiver, WebhookServer, signature_headers

from conftest import until


pytestmark = pytest.mark.anyio

SECRET = "whsec_test"
TS = 1760000000
PARTIAL = b"POST /pixelbyte/webhook HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Pixel"


def server(**kwargs: object) -> WebhookServer:
    return WebhookServer(SECRET, clock=VirtualClock(start=TS), **kwargs)


def delivery(job_id: str) -> tuple[bytes, dict[str, str]]:
    body = f'{{"jobId":"{job_id}","status":"completed"}}'.encode()
    return body, signature_headers(body, SECRET, timestamp=TS)


def job_ids() -> Iterator[str]:
    n = 0
    while True:
        n += 1
        yield f"job_{n}"


async def connect(url: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    parts = urlsplit(url)
    assert parts.hostname == "127.0.0.1"
    return await asyncio.open_connection(parts.hostname, parts.port)


async def closed_within(reader: asyncio.StreamReader, seconds: float) -> bytes:
    """Read until the server closes the connection; fail after *seconds*."""
    data = b""
    with anyio.fail_after(seconds):
        try:
            while chunk := await reader.read(4096):
                data += chunk
        except ConnectionResetError:
            pass
    return data


def close_all(writers: list[asyncio.StreamWriter]) -> None:
    for writer in writers:
        writer.close()


# -- configuration --------------------------------------------------------------------


async def test_defaults():
    """10 s per request, 256 connections, then a 2 s wait for a slot, 2,048 waiting."""
    hooks = server()
    assert (hooks.read_timeout, hooks.max_connections) == (10.0, 256)
    assert hooks.queue_wait == 2.0
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    room = 2048 if soft == resource.RLIM_INFINITY else soft // 2 - 256
    assert hooks.max_queued == max(0, min(2048, room))
    assert hooks.connections == 0
    assert hooks.stats == {
        "opened": 0,
        "queued": 0,
        "timed_out": 0,
        "evicted": 0,
        "refused": 0,
    }


def test_the_line_leaves_half_the_descriptors_free(monkeypatch):
    """By default slots and the line take at most half the open-file limit."""
    monkeypatch.setattr(resource, "getrlimit", lambda _which: (1024, 4096))
    assert server().max_queued == 1024 // 2 - 256
    assert server(max_connections=600).max_queued == 0
    assert server(max_queued=3).max_queued == 3


@pytest.mark.parametrize(
    "kwargs",
    [
        {"read_timeout": 0},
        {"read_timeout": -1.0},
        {"read_timeout": float("inf")},
        {"read_timeout": float("nan")},
        {"read_timeout": True},
        {"max_connections": 0},
        {"max_connections": 2.5},
    ],
    ids=["zero", "negative", "inf", "nan", "bool", "no-connections", "fraction"],
)
async def test_bad_limits_are_refused(kwargs):
    """A limit that would disable the guard is a ValueError, not a silent default."""
    with pytest.raises(ValueError, match=r"read_timeout|max_connections"):
        server(**kwargs)


async def test_receiver_keeps_its_options():
    """Other keyword arguments still go to the WebhookReceiver it makes."""
    hooks = server(read_timeout=1.0, max_connections=3, max_body=1024)
    assert isinstance(hooks.receiver, WebhookReceiver)
    assert hooks.receiver.max_body == 1024


# -- slow clients -----------------------------------------------------------------------


async def test_slowloris_headers_are_dropped_after_read_timeout():
    """A client that sends part of its headers and then nothing is disconnected."""
    async with server(read_timeout=0.2) as hooks:
        reader, writer = await connect(hooks.url)
        start = time.monotonic()
        writer.write(PARTIAL)
        await writer.drain()
        assert await closed_within(reader, 2.0) == b""
        elapsed = time.monotonic() - start
        writer.close()
        assert 0.15 <= elapsed < 1.5
        assert hooks.stats["timed_out"] == 1
        assert hooks.connections == 0
        assert hooks.receiver.stats["received"] == 0


async def test_dripping_client_is_dropped_despite_activity():
    """Bytes trickling in do not extend the deadline: headers+body must be complete."""
    async with server(read_timeout=0.2) as hooks:
        reader, writer = await connect(hooks.url)

        async def drip() -> None:
            for byte in PARTIAL:
                writer.write(bytes([byte]))
                await writer.drain()
                await asyncio.sleep(0.02)

        dripping = asyncio.ensure_future(drip())
        start = time.monotonic()
        try:
            await closed_within(reader, 2.0)
        finally:
            dripping.cancel()
            writer.close()
        # The header alone would take len(PARTIAL) * 20 ms ≈ 1.1 s to drip in.
        assert time.monotonic() - start < 0.8
        assert hooks.stats["timed_out"] == 1
        assert hooks.connections == 0


async def test_slow_body_is_dropped_and_the_server_keeps_serving():
    """Complete headers and a body that never ends count against the same deadline."""
    ids = job_ids()
    async with server(read_timeout=0.2) as hooks:
        reader, writer = await connect(hooks.url)
        body, headers = delivery(next(ids))
        head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        writer.write(
            f"POST /pixelbyte/webhook HTTP/1.1\r\nHost: 127.0.0.1\r\n{head}"
            f"Content-Length: {len(body)}\r\n\r\n".encode()
            + body[:10]
        )
        await writer.drain()
        assert await closed_within(reader, 2.0) == b""
        writer.close()
        assert hooks.stats["timed_out"] == 1
        assert hooks.receiver.stats["received"] == 0

        body, headers = delivery(next(ids))
        async with (
            aiohttp.ClientSession() as http,
            http.post(hooks.url, data=body, headers=headers) as r,
        ):
            assert r.status == 200
        assert hooks.receiver.stats["accepted"] == 1


# -- the connection cap -------------------------------------------------------------------


async def test_idle_flood_is_capped():
    """Twenty idle connections against max_connections=5, no line: 15 closed at once."""
    async with server(read_timeout=1.0, max_connections=5, queue_wait=0) as hooks:
        pairs = [await connect(hooks.url) for _ in range(20)]
        reads = [asyncio.ensure_future(reader.read()) for reader, _ in pairs]
        try:
            # Every connection past the cap closed either itself (503 and close,
            # while the others were younger than the eviction grace) or the oldest
            # idle one.  Either way 15 close and 5 stay, long before the timeout.
            await until(lambda: sum(read.done() for read in reads) == 15, 0.5)
            assert hooks.connections == 5
            assert hooks.stats["refused"] + hooks.stats["evicted"] == 15
            assert hooks.stats["timed_out"] == 0
        finally:
            for read in reads:
                read.cancel()
            close_all([writer for _, writer in pairs])
        await asyncio.gather(*reads, return_exceptions=True)


async def test_idle_flood_holds_the_cap_and_the_line_at_most():
    """Twenty idle connections against 5 slots and a line of 5: 10 closed at once."""
    async with server(read_timeout=1.0, max_connections=5, max_queued=5) as hooks:
        pairs = [await connect(hooks.url) for _ in range(20)]
        reads = [asyncio.ensure_future(reader.read()) for reader, _ in pairs]
        try:
            await until(lambda: sum(read.done() for read in reads) == 10, 0.4)
            assert hooks.connections == 10
            assert hooks.stats["queued"] == 5
            assert hooks.stats["refused"] == 10
            assert hooks.stats["timed_out"] + hooks.stats["evicted"] == 0
        finally:
            for read in reads:
                read.cancel()
            close_all([writer for _, writer in pairs])
        await asyncio.gather(*reads, return_exceptions=True)


async def test_refused_connections_get_a_503():
    """A connection refused at the cap is told so before it is closed."""
    async with server(read_timeout=1.0, max_connections=1, queue_wait=0) as hooks:
        _, first = await connect(hooks.url)
        reader, second = await connect(hooks.url)
        try:
            answer = await closed_within(reader, 0.4)
        finally:
            close_all([first, second])
        assert answer.startswith(b"HTTP/1.1 503 ")
        assert b"\r\nRetry-After: 1\r\n" in answer
        assert hooks.stats["refused"] == 1


async def test_flood_cannot_lock_out_a_delivery():
    """
    With the cap held by idle connections, a signed delivery gets through anyway.

    It replaces the connection that has waited longest once that one has waited
    half the read timeout, well before any of them time out; then the idle ones
    time out too and the server is empty again.
    """
    ids = job_ids()
    async with server(read_timeout=1.0, max_connections=5, queue_wait=0) as hooks:
        pairs = [await connect(hooks.url) for _ in range(20)]
        for _, writer in pairs:
            writer.write(PARTIAL)
        start = time.monotonic()
        status = 0
        try:
            async with aiohttp.ClientSession() as http:
                with anyio.fail_after(2.0):
                    while status != 200:
                        body, headers = delivery(next(ids))
                        try:
                            async with http.post(
                                hooks.url, data=body, headers=headers
                            ) as r:
                                status = r.status
                        except aiohttp.ClientError:
                            status = 0
                        if status != 200:
                            # The API would retry after 1 s; a test need not wait.
                            await asyncio.sleep(0.05)
                assert time.monotonic() - start < 1.0
                assert hooks.stats["timed_out"] == 0
                assert hooks.stats["evicted"] >= 1
                assert hooks.receiver.stats["accepted"] == 1
                for reader, _ in pairs:
                    await closed_within(reader, 2.0)
            await until(lambda: hooks.connections == 0, 2.0)
        finally:
            close_all([writer for _, writer in pairs])
        assert hooks.stats["timed_out"] >= 1


async def test_flood_in_line_cannot_lock_out_a_delivery():
    """
    Behind fifteen idle connections in line, a delivery is served within its wait.

    Each idle connection admitted gives way to the next in line once it has waited
    half the read timeout (0.3 s), five at a time: the delivery, 16th in line, is
    admitted after about 1.2 s, before its 2 s wait ends.  Nobody holds a slot
    while waiting, and every idle connection is gone within the read timeout of
    its admission.
    """
    ids = job_ids()
    async with server(read_timeout=0.6, max_connections=5) as hooks:
        pairs = [await connect(hooks.url) for _ in range(20)]
        for _, writer in pairs:
            writer.write(PARTIAL)
        await until(lambda: hooks.stats["queued"] == 15, 0.5)
        start = time.monotonic()
        try:
            async with aiohttp.ClientSession() as http:
                body, headers = delivery(next(ids))
                with anyio.fail_after(3.0):
                    async with http.post(hooks.url, data=body, headers=headers) as r:
                        assert r.status == 200
                assert 0.6 < time.monotonic() - start < 2.0
                assert hooks.stats["evicted"] >= 15
                assert hooks.stats["refused"] == 0
                assert hooks.receiver.stats["accepted"] == 1
                for reader, _ in pairs:
                    await closed_within(reader, 2.0)
            await until(lambda: hooks.connections == 0, 2.0)
        finally:
            close_all([writer for _, writer in pairs])


# -- the line past the cap -----------------------------------------------------------


def raw_delivery(job_id: str) -> bytes:
    """A whole delivery request as it goes on the wire (one per connection)."""
    body, headers = delivery(job_id)
    head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    return (
        f"POST /pixelbyte/webhook HTTP/1.1\r\nHost: 127.0.0.1\r\n{head}"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    ).encode() + body


async def test_a_connection_past_the_cap_waits_for_a_slot():
    """A delivery past the cap waits, reading paused, and is served once one frees."""
    async with server(read_timeout=5.0, max_connections=1) as hooks:
        _, holder = await connect(hooks.url)  # holds the one slot, idle
        await until(lambda: hooks.connections == 1, 1.0)
        reader, writer = await connect(hooks.url)
        writer.write(raw_delivery("job_waited"))
        await until(lambda: hooks.stats["queued"] == 1, 1.0)
        await asyncio.sleep(0.1)
        assert hooks.receiver.stats["received"] == 0  # not read while waiting
        assert hooks.connections == 2
        holder.close()  # the slot frees: the waiting delivery is admitted
        answer = await closed_within(reader, 1.0)
        writer.close()
        assert answer.startswith(b"HTTP/1.1 200 ")
        assert hooks.stats["refused"] == 0
        assert hooks.receiver.stats["accepted"] == 1


async def test_a_connection_that_waited_too_long_reads_its_503():
    """After queue_wait, a 503 the client can read: its request is read and dropped."""
    async with server(read_timeout=5.0, max_connections=1, queue_wait=0.2) as hooks:
        _, holder = await connect(hooks.url)
        await until(lambda: hooks.connections == 1, 1.0)
        reader, writer = await connect(hooks.url)
        writer.write(raw_delivery("job_late"))
        await writer.drain()
        start = time.monotonic()
        try:
            answer = await closed_within(reader, 2.0)
        finally:
            close_all([holder, writer])
        assert 0.15 < time.monotonic() - start < 1.0
        assert answer.startswith(b"HTTP/1.1 503 ")
        assert b"\r\nRetry-After: 1\r\n" in answer
        assert (hooks.stats["queued"], hooks.stats["refused"]) == (1, 1)
        assert hooks.receiver.stats["received"] == 0
        await until(lambda: hooks.connections == 0, 2.0)


async def test_silent_connections_keep_their_slot_until_someone_would_be_refused():
    """
    A connection that has sent nothing yet is not evicted for the line at once.

    A burst's first connections are often slow to send (the client is busy opening
    the others).  They keep their slot past evict_after while the line can wait;
    when the first in line would be refused instead, the longest silent one gives
    way.
    """
    async with server(read_timeout=2.0, max_connections=1, queue_wait=1.5) as hooks:
        slow_reader, slow = await connect(hooks.url)  # admitted, silent for 1.2 s
        await until(lambda: hooks.connections == 1, 1.0)
        reader, writer = await connect(hooks.url)
        writer.write(raw_delivery("job_waiting"))
        await until(lambda: hooks.stats["queued"] == 1, 1.0)
        await asyncio.sleep(1.2)  # past evict_after (1 s): still not evicted
        assert hooks.stats["evicted"] == 0
        slow.write(raw_delivery("job_slow_start"))
        first = await closed_within(slow_reader, 1.0)
        second = await closed_within(reader, 1.0)
        close_all([slow, writer])
        assert first.startswith(b"HTTP/1.1 200 ")
        assert second.startswith(b"HTTP/1.1 200 ")
        assert hooks.stats["evicted"] + hooks.stats["refused"] == 0

        _, idle = await connect(hooks.url)  # silent for good
        await until(lambda: hooks.connections == 1, 1.0)
        reader, writer = await connect(hooks.url)
        writer.write(raw_delivery("job_last_resort"))
        start = time.monotonic()
        answer = await closed_within(reader, 3.0)
        close_all([idle, writer])
        assert answer.startswith(b"HTTP/1.1 200 ")
        assert 1.3 < time.monotonic() - start < 2.5  # at the end of its 1.5 s wait
        assert (hooks.stats["evicted"], hooks.stats["refused"]) == (1, 0)


async def test_a_burst_past_the_cap_is_served_in_turn():
    """
    200 deliveries at once, each on its own connection, against 8 slots: all 200 OK.

    Before the line, 192 or so of them were answered 503 (the API would have
    retried them a second later).
    """
    ids = job_ids()
    async with server(read_timeout=2.0, max_connections=8) as hooks:
        connector = aiohttp.TCPConnector(limit=200, force_close=True)
        async with aiohttp.ClientSession(connector=connector) as http:

            async def post(job_id: str) -> int:
                body, headers = delivery(job_id)
                async with http.post(hooks.url, data=body, headers=headers) as r:
                    return r.status

            with anyio.fail_after(5.0):
                statuses = await asyncio.gather(*(post(next(ids)) for _ in range(200)))
        assert statuses == [200] * 200
        assert hooks.stats["refused"] == 0
        assert hooks.stats["queued"] > 0
        assert hooks.receiver.stats["accepted"] == 200
        await until(lambda: hooks.connections == 0, 2.0)


async def test_answers_close_their_connection_while_others_wait():
    """Kept-alive connections give their slot to the line instead of idling on it."""
    ids = job_ids()
    async with server(read_timeout=5.0, max_connections=2) as hooks:
        connector = aiohttp.TCPConnector(limit=40)
        async with aiohttp.ClientSession(connector=connector) as http:

            async def post(job_id: str) -> int:
                body, headers = delivery(job_id)
                async with http.post(hooks.url, data=body, headers=headers) as r:
                    return r.status

            with anyio.fail_after(5.0):
                statuses = await asyncio.gather(*(post(next(ids)) for _ in range(40)))
        assert statuses == [200] * 40
        # Served two at a time, each slot freed by its answer: nobody waited for an
        # idle connection to be evicted or to time out.
        assert hooks.stats["refused"] + hooks.stats["evicted"] == 0
        assert hooks.stats["timed_out"] == 0


# -- normal traffic ---------------------------------------------------------------------


async def test_keepalive_deliveries_restart_the_deadline():
    """
    Deliveries on one kept-alive connection each get the full read timeout.

    Four deliveries 80 ms apart span more than the 0.2 s timeout and all succeed on
    the same connection; once idle for the timeout, the connection is closed.
    """
    ids = job_ids()
    async with server(read_timeout=0.2) as hooks:
        connector = aiohttp.TCPConnector(limit=1)
        async with aiohttp.ClientSession(connector=connector) as http:
            for n in range(4):
                if n:
                    await asyncio.sleep(0.08)
                body, headers = delivery(next(ids))
                async with http.post(hooks.url, data=body, headers=headers) as r:
                    assert (r.status, (await r.json())["reason"]) == (200, "ok")
            assert hooks.stats["opened"] == 1
            assert hooks.stats["timed_out"] == 0
            await until(lambda: hooks.connections == 0, 2.0)
            assert hooks.stats["timed_out"] == 1
        # A new connection (reusing the closed one would race with its FIN, as
        # with any server's idle timeout) is served as usual.
        body, headers = delivery(next(ids))
        async with (
            aiohttp.ClientSession() as http,
            http.post(hooks.url, data=body, headers=headers) as r,
        ):
            assert r.status == 200
        assert hooks.receiver.stats["accepted"] == 5


async def test_concurrent_deliveries_under_the_cap():
    """Deliveries on as many connections as the cap allows are all answered."""
    ids = job_ids()
    async with server(read_timeout=2.0, max_connections=8) as hooks:
        connector = aiohttp.TCPConnector(limit=8)
        async with aiohttp.ClientSession(connector=connector) as http:

            async def post(job_id: str) -> int:
                body, headers = delivery(job_id)
                async with http.post(hooks.url, data=body, headers=headers) as r:
                    return r.status

            with anyio.fail_after(5.0):
                statuses = await asyncio.gather(*(post(next(ids)) for _ in range(64)))
        assert statuses == [200] * 64
        assert hooks.stats["refused"] + hooks.stats["evicted"] == 0
        assert hooks.receiver.stats["accepted"] == 64


async def test_close_does_not_wait_for_a_stuck_client():
    """close() returns within the read timeout even while a body is stuck half-way."""
    hooks = server(read_timeout=0.3)
    await hooks.start()
    reader, writer = await connect(hooks.url)
    writer.write(
        b"POST /pixelbyte/webhook HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        b"Content-Length: 100\r\n\r\n{"
    )
    await writer.drain()
    await until(lambda: hooks.connections == 1, 1.0)
    with anyio.fail_after(2.0):
        await hooks.close()
    assert await closed_within(reader, 1.0) == b""
    writer.close()
    assert hooks.connections == 0


async def test_webhook_listen_is_guarded(monkeypatch):
    """`pixelbyte-async webhook listen` runs a guarded server."""
    import argparse
    import io

    from pixelbyte_async._cli import _webhook_commands

    chosen: dict[str, object] = {}
    built: list[WebhookServer] = []

    class Recorded(WebhookServer):
        def __init__(self, *args, **kwargs):
            chosen.update(kwargs)
            # A short deadline, to see it act within the test.
            kwargs["read_timeout"] = 0.2
            super().__init__(*args, **kwargs)
            built.append(self)

    monkeypatch.setattr(_webhook_commands, "WebhookServer", Recorded)
    args = argparse.Namespace(
        host="127.0.0.1",
        port=0,
        path="/hook",
        json=False,
        max_events=1,
        webhook_secret=[SECRET],
    )
    out, err = io.StringIO(), io.StringIO()
    task = asyncio.ensure_future(_webhook_commands._webhook_listen(args, out, err))
    try:
        await until(lambda: "Listening on" in err.getvalue(), 5.0)
        (hooks,) = built
        # The CLI keeps the defaults (10 s, 256) or sets limits of its own.
        assert chosen.get("read_timeout", 10.0) <= 30.0
        assert hooks.max_connections <= 1024
        reader, writer = await connect(hooks.url)
        writer.write(PARTIAL)
        await closed_within(reader, 2.0)
        writer.close()
        assert hooks.stats["timed_out"] == 1
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
