"""
The webhook receiver is safe from any thread.

A synchronous framework (a Django view, a stdlib ``http.server``) calls
`WebhookReceiver.handle` in a worker thread while ``job.wait()`` is parked on the
application's event loop.  Every test here runs its loop in asyncio debug mode, which
raises on any loop operation made from the wrong thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from pixelbyte_async import (
    JobStatus,
    KlingO1StartEndFrame,
    PixelByte,
    VirtualClock,
)
from pixelbyte_async.testing import FakePixelByte
from pixelbyte_async.webhooks import (
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    WebhookEvent,
    WebhookReceiver,
    sign,
)


SECRET = "whsec_test"
TS = 1760000000
JOB = "job_abc123"
BODY = b'{"jobId":"job_abc123","status":"completed"}'
KLING = KlingO1StartEndFrame(
    image_url="https://e.x/a.jpg", end_image_url="https://e.x/b.jpg"
)


def headers(body: bytes = BODY, ts: int = TS) -> dict[str, str]:
    return {TIMESTAMP_HEADER: str(ts), SIGNATURE_HEADER: sign(body, SECRET, ts)}


def run_debug(main: Callable[[], Awaitable[Any]]) -> tuple[Any, list[str]]:
    """Run *main* with asyncio debug mode on; return its result and loop errors."""
    errors: list[str] = []

    async def wrapper() -> Any:
        loop = asyncio.get_running_loop()
        assert loop.get_debug()
        loop.set_exception_handler(
            lambda _loop, context: errors.append(str(context.get("exception")))
        )
        return await main()

    return asyncio.run(wrapper(), debug=True), errors


def deliver_in_thread(
    receiver: WebhookReceiver, answers: list[object], body: bytes = BODY, **kw: Any
) -> threading.Thread:
    """Start a plain thread that hands one delivery to *receiver*, like a sync view."""

    def view() -> None:
        try:
            answers.append(receiver.handle(body, headers(body), **kw))
        except Exception as exc:
            answers.append(exc)

    thread = threading.Thread(target=view)
    thread.start()
    return thread


class StubClient:
    """Stands in for an attached PixelByte: records where it was called from."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, int]] = []
        self.known: set[str] = set()

    def _webhook_event(self, event: WebhookEvent) -> bool:
        asyncio.get_running_loop()  # raises unless called on a loop thread
        self.calls.append((event.job_id, threading.get_ident()))
        return event.job_id in self.known

    def _knows_job(self, job_id: str) -> bool:
        return job_id in self.known


async def settle() -> None:
    for _ in range(20):
        await asyncio.sleep(0)


def no_thread_errors(caplog: pytest.LogCaptureFixture, errors: list[str]) -> None:
    assert errors == []
    assert "Non-thread-safe" not in caplog.text
    assert [r for r in caplog.records if r.levelno >= logging.ERROR] == []


def test_delivery_from_a_thread_wakes_a_parked_future_at_once(caplog):
    """handle() in a plain thread resolves a future parked on the loop within 100 ms."""
    receiver = WebhookReceiver(SECRET, clock=VirtualClock(start=TS))
    answers: list[object] = []

    async def main() -> tuple[WebhookEvent, float]:
        future = receiver.future_for(JOB)
        waiter = asyncio.ensure_future(asyncio.wait_for(future, 1.0))
        await settle()  # the waiter is parked on the future
        started = time.monotonic()
        thread = deliver_in_thread(receiver, answers)
        try:
            event = await waiter
        finally:
            thread.join(1.0)
        elapsed = time.monotonic() - started
        receiver.release(JOB)
        return event, elapsed

    (event, elapsed), errors = run_debug(main)
    assert answers == [(200, "ok")]
    assert event.job_id == JOB
    assert elapsed < 0.1
    assert receiver.waiting == 0
    no_thread_errors(caplog, errors)


@contextlib.contextmanager
def sync_view_server(receiver: WebhookReceiver) -> Iterator[str]:
    """A threaded stdlib HTTP server whose view calls handle(): a sync framework."""

    class View(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            try:
                status, reason = receiver.handle(
                    body, dict(self.headers.items()), url=self.path
                )
            except Exception as exc:
                status, reason = 500, type(exc).__name__
            payload = reason.encode()
            self.send_response(status)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), View)
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True
    )
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/pixelbyte/webhook"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(1.0)


def test_sync_view_resolves_a_parked_job_wait(caplog):
    """A real client's wait() resolves from a delivery handled in a worker thread."""

    async def main() -> tuple[Any, ...]:
        clock = VirtualClock(autojump=False)
        async with FakePixelByte(clock=clock, allow_http_webhooks=True) as fake:
            receiver = WebhookReceiver(fake.webhook_secret, clock=clock)
            with sync_view_server(receiver) as url:
                async with PixelByte(
                    api_key=fake.api_key,
                    base_url=fake.url,
                    clock=clock,
                    max_concurrent_jobs=None,
                ) as pb:
                    pb.use_webhooks(receiver, public_url=url)
                    job = await pb.submit(KLING)
                    waiter = asyncio.ensure_future(job.wait())
                    await settle()
                    assert not waiter.done()
                    fake.advance(245)
                    started = time.monotonic()
                    deliveries = await fake.deliver_webhooks()
                    done = await asyncio.wait_for(waiter, 1.0)
                    elapsed = time.monotonic() - started
                    gets = fake.count("GET", "/v1/jobs/*")
                    # The client tagged its webhookUrl: the delivery names its attempt.
                    attempt = receiver.event_for(job.id).attempt
                    assert attempt is not None
                    assert receiver.job_for_attempt(attempt) == job.id
                    return deliveries, done.status, elapsed, gets, receiver.waiting

    (deliveries, status, elapsed, gets, waiting), errors = run_debug(main)
    assert [d.status for d in deliveries] == [200]
    assert JobStatus.COMPLETED is status
    assert elapsed < 0.1
    assert gets == 0
    assert waiting == 0
    no_thread_errors(caplog, errors)


def test_many_threads_deliver_the_same_job_at_once():
    """Of many simultaneous deliveries of one job, exactly one is "ok"."""
    old = sys.getswitchinterval()
    # Switch threads as often as possible so an unlocked check-then-insert shows.
    sys.setswitchinterval(1e-6)
    try:
        for _ in range(50):
            receiver = WebhookReceiver(SECRET, clock=VirtualClock(start=TS))
            barrier = threading.Barrier(8)
            answers: list[tuple[int, str]] = []

            def view(receiver: WebhookReceiver = receiver, b=barrier, out=answers):
                b.wait(1.0)
                out.append(receiver.handle(BODY, headers()))

            threads = [threading.Thread(target=view) for _ in range(8)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(5.0)
            assert sorted(answers) == [(200, "duplicate")] * 7 + [(200, "ok")]
            assert receiver.stats == {
                "received": 8,
                "accepted": 1,
                "duplicates": 7,
                "rejected": 0,
                "unknown": 1,
            }
    finally:
        sys.setswitchinterval(old)


def test_clients_and_coroutine_hooks_run_on_the_owning_loop(caplog):
    """An attached client and coroutine hooks are called on their loop, not the thread."""
    clock = VirtualClock(start=TS, autojump=False)
    ran: list[tuple[str, int]] = []
    receiver = WebhookReceiver(SECRET, clock=clock, unknown_grace=5)
    client = StubClient()
    answers: list[object] = []

    async def main() -> int:
        receiver.attach(client)  # type: ignore[arg-type]
        loop = asyncio.get_running_loop()
        hooked = loop.create_future()

        async def on_event(event: WebhookEvent) -> None:
            ran.append(("event", threading.get_ident()))
            hooked.set_result(None)

        async def on_unknown(event: WebhookEvent) -> None:
            ran.append(("unknown", threading.get_ident()))

        receiver.on_event = on_event
        receiver.on_unknown = on_unknown
        deliver_in_thread(receiver, answers).join(1.0)
        await asyncio.wait_for(hooked, 1.0)
        clock.advance(5)
        await asyncio.wait_for(receiver.aclose(), 1.0)
        return threading.get_ident()

    loop_thread, errors = run_debug(main)
    assert answers == [(200, "ok")]
    assert [(JOB, loop_thread)] == client.calls
    assert [("event", loop_thread), ("unknown", loop_thread)] == ran
    assert receiver.stats["unknown"] == 1
    no_thread_errors(caplog, errors)


def test_coroutine_hook_from_a_thread_runs_on_the_loop(caplog):
    """A coroutine on_event given a delivery from a thread runs as a task on the loop."""
    ran: list[int] = []

    async def on_event(event: WebhookEvent) -> None:
        ran.append(threading.get_ident())

    receiver = WebhookReceiver(SECRET, clock=VirtualClock(start=TS), on_event=on_event)
    answers: list[object] = []

    async def main() -> int:
        future = receiver.future_for(JOB)
        deliver_in_thread(receiver, answers).join(1.0)
        await asyncio.wait_for(future, 1.0)
        receiver.release(JOB)
        await asyncio.wait_for(receiver.aclose(), 1.0)
        return threading.get_ident()

    loop_thread, errors = run_debug(main)
    assert answers == [(200, "ok")]
    assert [loop_thread] == ran
    assert "outside an event loop" not in caplog.text
    no_thread_errors(caplog, errors)


def test_unknown_grace_applies_to_deliveries_from_threads():
    """A delivery from a thread racing its own submit is not reported as unknown."""
    clock = VirtualClock(start=TS, autojump=False)
    unknown: list[str] = []
    receiver = WebhookReceiver(
        SECRET,
        clock=clock,
        on_unknown=lambda e: unknown.append(e.job_id),
        unknown_grace=5,
    )
    client = StubClient()

    async def main() -> None:
        receiver.attach(client)  # type: ignore[arg-type]
        answers: list[object] = []
        deliver_in_thread(receiver, answers).join(1.0)
        assert answers == [(200, "ok")]
        # The submit response arrives now: the client learns the job id.
        client.known.add(JOB)
        await settle()
        clock.advance(5)

    _, errors = run_debug(main)
    assert unknown == []
    assert receiver.stats["unknown"] == 0
    assert errors == []


def test_waiter_on_a_closed_loop_is_dropped_silently(caplog):
    """Deliveries for waiters and clients whose loop has closed are dropped quietly."""
    events: list[str] = []
    receiver = WebhookReceiver(
        SECRET, clock=VirtualClock(start=TS), on_event=lambda e: events.append(e.job_id)
    )
    client = StubClient()

    async def park() -> asyncio.Future[WebhookEvent]:
        receiver.attach(client)  # type: ignore[arg-type]
        future = receiver.future_for(JOB)
        future.add_done_callback(lambda _: None)
        return future

    loop = asyncio.new_event_loop()
    future = loop.run_until_complete(park())
    loop.close()
    assert receiver.handle(BODY, headers()) == (200, "ok")
    assert not future.done()
    assert client.calls == []
    assert events == [JOB]
    assert [r for r in caplog.records if r.levelno >= logging.ERROR] == []


def test_waiters_on_two_loops_both_wake():
    """Waiters for one job on two loops in two threads are both resolved."""
    receiver = WebhookReceiver(SECRET, clock=VirtualClock(start=TS))
    parked = threading.Barrier(3)
    results: list[object] = []

    def waiter() -> None:
        async def main() -> str:
            future = receiver.future_for(JOB)
            await asyncio.get_running_loop().run_in_executor(None, parked.wait, 1.0)
            try:
                return (await asyncio.wait_for(future, 1.0)).job_id
            finally:
                receiver.release(JOB)

        try:
            results.append(asyncio.run(main(), debug=True))
        except Exception as exc:
            results.append(exc)

    threads = [threading.Thread(target=waiter) for _ in range(2)]
    for thread in threads:
        thread.start()
    parked.wait(1.0)
    assert receiver.handle(BODY, headers()) == (200, "ok")
    for thread in threads:
        thread.join(2.0)
    assert results == [JOB, JOB]
    assert receiver.waiting == 0
