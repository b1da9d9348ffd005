"""
The webhook receiver keeps nothing per finished job for longer than it needs.

Remembered events (for de-duplication and late waiters) and attempt attributions
live for ``retention`` seconds of the receiver's clock, with ``max_events`` as a hard
cap; a job's waiter state goes with its last waiter.
"""

from __future__ import annotations

import asyncio
import gc
import json
import weakref

import pytest
from pixelbyte_async import VirtualClock, _signing
from pixelbyte_async.webhooks import (
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    WebhookReceiver,
    sign,
)


SECRET = "whsec_test"
TS = 1760000000
RETENTION = 1800.0


def delivery(job_id: str, clock: VirtualClock) -> tuple[bytes, dict[str, str]]:
    body = json.dumps({"jobId": job_id, "status": "completed"}).encode()
    ts = int(clock.time())
    return body, {TIMESTAMP_HEADER: str(ts), SIGNATURE_HEADER: sign(body, SECRET, ts)}


def deliver(
    receiver: WebhookReceiver, clock: VirtualClock, job_id: str, **kw: str
) -> tuple[int, str]:
    body, hdrs = delivery(job_id, clock)
    return receiver.handle(body, hdrs, **kw)


def test_default_retention_covers_the_documented_retries():
    """The default retention outlasts every retry (~341 s) plus tolerance and settle."""
    receiver = WebhookReceiver(SECRET)
    assert receiver.retention == RETENTION
    assert receiver.retention >= 1 + 4 + 16 + 64 + 256 + receiver.tolerance + 300


@pytest.mark.parametrize("retention", [0, -1.0, float("nan")])
def test_retention_must_be_positive(retention):
    """A receiver that forgets at once could not de-duplicate."""
    with pytest.raises(ValueError, match="retention"):
        WebhookReceiver(SECRET, retention=retention)


@pytest.mark.anyio
async def test_per_job_state_returns_to_baseline_after_retention():
    """2,000 deliveries, retention passes, one more delivery: per-job state is gone."""
    clock = VirtualClock(start=TS, autojump=False)
    unknown: list[str] = []
    receiver = WebhookReceiver(
        SECRET,
        clock=clock,
        unknown_grace=5,
        on_unknown=lambda e: unknown.append(e.job_id),
    )
    baseline = receiver._sizes()
    assert all(size == 0 for size in baseline.values())
    for n in range(2000):
        assert deliver(receiver, clock, f"job_{n}", url=f"?pb_attempt=a{n}") == (
            200,
            "ok",
        )
    first = weakref.ref(receiver.event_for("job_0"))
    sizes = receiver._sizes()
    assert sizes["events"] == 2000
    assert sizes["attempts"] == 2000
    clock.advance(RETENTION + 1)
    assert len(unknown) == 2000
    assert deliver(receiver, clock, "job_last", url="?pb_attempt=z") == (200, "ok")
    assert all(size <= 1 for size in receiver._sizes().values()), receiver._sizes()
    assert receiver.event_for("job_0") is None
    assert receiver.job_for_attempt("a0") is None
    assert receiver.job_for_attempt("z") == "job_last"
    unknown.clear()
    gc.collect()
    # Neither the unknown_grace timers nor anything else keeps an old event alive.
    assert first() is None


@pytest.mark.anyio
async def test_events_are_remembered_for_the_retention_only():
    """Within retention a retry is a duplicate and a late waiter finds the event."""
    clock = VirtualClock(start=TS, autojump=False)
    receiver = WebhookReceiver(SECRET, clock=clock, retention=600)
    assert deliver(receiver, clock, "job_a", url="?pb_attempt=n") == (200, "ok")
    clock.advance(341)
    assert deliver(receiver, clock, "job_a") == (200, "duplicate")
    assert receiver.job_for_attempt("n") == "job_a"
    clock.advance(260)
    # The attribution is kept for retention after it was made (t=0) ...
    assert receiver.job_for_attempt("n") is None
    # ... and the event for retention after its last delivery (t=341).
    clock.advance(339)
    assert receiver.event_for("job_a") is not None
    future = receiver.future_for("job_a")
    assert future.done()
    receiver.release("job_a")
    clock.advance(2)
    assert receiver.event_for("job_a") is None
    assert receiver._sizes()["events"] == 0


@pytest.mark.anyio
async def test_max_events_stays_a_hard_cap():
    """However young they are, at most max_events events and attempts are kept."""
    clock = VirtualClock(start=TS, autojump=False)
    receiver = WebhookReceiver(SECRET, clock=clock, max_events=3)
    for n in range(5):
        deliver(receiver, clock, f"job_{n}", url=f"?pb_attempt=a{n}")
    sizes = receiver._sizes()
    assert (sizes["events"], sizes["attempts"]) == (3, 3)
    assert receiver.event_for("job_1") is None
    assert receiver.event_for("job_4") is not None
    assert receiver.job_for_attempt("a1") is None
    assert receiver.job_for_attempt("a4") == "job_4"


@pytest.mark.anyio
async def test_waiter_state_goes_with_the_last_waiter():
    """Futures and waiter counts are dropped when the last waiter releases."""
    clock = VirtualClock(start=TS, autojump=False)
    receiver = WebhookReceiver(SECRET, clock=clock)
    pending = [receiver.future_for(f"job_{n}") for n in range(100)]
    shared = receiver.future_for("job_0")
    assert shared is pending[0]
    assert (receiver._sizes()["futures"], receiver._sizes()["waiters"]) == (100, 100)
    deliver(receiver, clock, "job_1")
    assert pending[1].done()
    assert receiver._sizes()["futures"] == 99
    for n in range(100):
        receiver.release(f"job_{n}")
    assert receiver._sizes()["waiters"] == 1
    receiver.release("job_0")
    await asyncio.sleep(0)
    sizes = receiver._sizes()
    assert (sizes["futures"], sizes["waiters"]) == (0, 0)
    assert all(f.done() for f in pending)
    assert receiver.waiting == 0


@pytest.mark.anyio
async def test_hook_tasks_are_not_kept():
    """Finished coroutine hooks leave no task behind."""
    clock = VirtualClock(start=TS, autojump=False)
    seen: list[str] = []

    async def on_event(event):
        seen.append(event.job_id)

    receiver = WebhookReceiver(SECRET, clock=clock, on_event=on_event)
    for n in range(50):
        deliver(receiver, clock, f"job_{n}")
    assert receiver._sizes()["hook_tasks"] == 50
    await receiver.aclose()
    await asyncio.sleep(0)
    assert len(seen) == 50
    assert receiver._sizes()["hook_tasks"] == 0


@pytest.mark.anyio
async def test_a_cancelled_shared_future_is_replaced():
    """A future cancelled by its caller (a wait_for timeout) is not handed out again."""
    clock = VirtualClock(start=TS, autojump=False)
    receiver = WebhookReceiver(SECRET, clock=clock)
    first = receiver.future_for("job_a")
    assert receiver.future_for("job_a") is first  # a second waiter stays registered
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(first, 0)
    receiver.release("job_a")
    second = receiver.future_for("job_a")
    assert second is not first
    assert not second.done()
    deliver(receiver, clock, "job_a")
    assert (await second).job_id == "job_a"
    receiver.release("job_a")
    receiver.release("job_a")
    sizes = receiver._sizes()
    assert (sizes["futures"], sizes["waiters"]) == (0, 0)


@pytest.fixture
def decodes(monkeypatch) -> list[str]:
    """The job ids the receiver decodes into a JobInfo (the costly step)."""
    seen: list[str] = []
    real = _signing.decode_job

    def spy(payload, *args, **kwargs):
        seen.append(payload["jobId"])
        return real(payload, *args, **kwargs)

    monkeypatch.setattr(_signing, "decode_job", spy)
    return seen


@pytest.mark.anyio
async def test_a_delivery_is_decoded_only_for_whoever_receives_it(decodes):
    """Nobody waiting: no decoding until asked; retries are never decoded."""
    clock = VirtualClock(start=TS, autojump=False)
    receiver = WebhookReceiver(SECRET, clock=clock)
    assert deliver(receiver, clock, "job_a", url="?pb_attempt=n") == (200, "ok")
    assert deliver(receiver, clock, "job_a") == (200, "duplicate")
    assert decodes == []
    event = receiver.event_for("job_a")
    assert event is not None
    assert (event.job_id, event.status.value, event.attempt) == (
        "job_a",
        "completed",
        "n",
    )
    assert event.timestamp == TS
    assert event.payload == {"jobId": "job_a", "status": "completed"}
    # Made once, then remembered: the same event for every later asker.
    assert receiver.event_for("job_a") is event
    assert (await receiver.future_for("job_a")) is event
    assert deliver(receiver, clock, "job_a") == (200, "duplicate")
    assert decodes == ["job_a"]
    assert receiver.stats["duplicates"] == 2


@pytest.mark.anyio
async def test_a_waiter_gets_the_event_it_would_have_got(decodes):
    """A waited-on job is decoded once, and waiters and event_for share the event."""
    clock = VirtualClock(start=TS, autojump=False)
    seen: list[object] = []
    receiver = WebhookReceiver(SECRET, clock=clock, on_event=seen.append)
    future = receiver.future_for("job_w")
    assert deliver(receiver, clock, "job_w") == (200, "ok")
    assert deliver(receiver, clock, "job_w") == (200, "duplicate")
    event = await future
    assert seen == [event]
    assert receiver.event_for("job_w") is event
    assert decodes == ["job_w"]


@pytest.mark.anyio
async def test_unknown_checks_share_one_timer_and_keep_their_grace():
    """Many deliveries nobody knows: one pending timer; each counted after its grace."""
    clock = VirtualClock(start=TS, autojump=False)
    receiver = WebhookReceiver(SECRET, clock=clock, unknown_grace=5)
    for n in range(100):
        deliver(receiver, clock, f"job_{n}")
    clock.advance(3)
    deliver(receiver, clock, "job_late")
    assert len(clock._timers) == 1
    clock.advance(2)
    assert receiver.stats["unknown"] == 100
    clock.advance(2.9)
    assert receiver.stats["unknown"] == 100
    clock.advance(0.1)
    assert receiver.stats["unknown"] == 101
    assert clock._timers == []


def test_a_dispatch_of_a_subclass_sees_every_handled_delivery():
    """The fast path is taken only when dispatch is the receiver's own."""
    seen: list[str] = []

    class Recording(WebhookReceiver):
        def dispatch(self, event):
            seen.append(event.job_id)
            return super().dispatch(event)

    clock = VirtualClock(start=TS, autojump=False)
    receiver = Recording(SECRET, clock=clock)
    assert deliver(receiver, clock, "job_s") == (200, "ok")
    assert deliver(receiver, clock, "job_s") == (200, "duplicate")
    assert seen == ["job_s", "job_s"]
    assert receiver.stats["duplicates"] == 1
