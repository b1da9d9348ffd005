"""
`WebhookReceiver(hub=...)`: the receiving side of the Redis hub, on a real redis-server.

Two hubs on one Redis server and account are two processes as far as Redis knows:
hub ``b`` sits behind the receiver that gets the HTTP delivery, hub ``a`` is another
process with a wait parked on it.  The receiver answers with the hub's verdict:
200 "ok" (new everywhere), 200 "duplicate", or 503 when the hub cannot share the
delivery (so the API retries it).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import sys
from typing import Any

import aiohttp
import anyio
import pytest
from pixelbyte_async._cli import main
from pixelbyte_async._cmdline import EXIT_CODES
from pixelbyte_async.webhooks import (
    WebhookEvent,
    WebhookReceiver,
    WebhookServer,
    signature_headers,
)

from redis_fixture import (  # noqa: F401 -- fixtures
    SECRET,
    Proxy,
    decoded_jobs,
    free_port,
    hubs_fixture,
    make_event,
    own_redis_fixture,
    prefix_fixture,
    redis_server_fixture,
    require_redis_fixture,
    until,
)


pytestmark = pytest.mark.anyio

WAIT = 5.0  # seconds any single wait may take before the test fails


def signed(job_id: str, secret: str = SECRET) -> tuple[bytes, dict[str, str]]:
    """A delivery as the API sends it: the raw body and its signature headers."""
    body = json.dumps(
        {
            "jobId": job_id,
            "requestId": "req_1",
            "status": "completed",
            "output": {"videoUrl": f"https://cdn.muvi.video/outputs/{job_id}.mp4"},
        }
    ).encode()
    return body, signature_headers(body, secret)


async def post(url: str, job_id: str) -> tuple[int, Any]:
    """POST *job_id*'s signed delivery to *url*; the status and the JSON reply."""
    body, headers = signed(job_id)
    async with (
        aiohttp.ClientSession() as http,
        http.post(url, data=body, headers=headers) as reply,
    ):
        return reply.status, json.loads(await reply.text())


class Counting:
    """An observer attached to a hub: counts the events it is fed, by job id."""

    def __init__(self) -> None:
        self.seen: dict[str, int] = {}

    def _webhook_event(self, event: WebhookEvent) -> bool:
        self.seen[event.job_id] = self.seen.get(event.job_id, 0) + 1
        return True

    def _knows_job(self, job_id: str) -> bool:
        return job_id in self.seen


OK = (200, {"ok": True, "reason": "ok"})
DUPLICATE = (200, {"ok": True, "reason": "duplicate"})
UNAVAILABLE = (503, {"ok": False, "reason": "hub_unavailable"})


# -- a delivery received here resolves a wait elsewhere ----------------------------------


async def test_a_delivery_posted_here_resolves_a_wait_in_another_process(hubs):
    a, b = hubs
    elsewhere = Counting()
    a.attach(elsewhere)
    waiting = a.future_for("job_1")
    async with WebhookServer(SECRET, hub=b) as server:
        assert server.receiver.hub is b
        assert await post(server.url, "job_1") == OK
        with anyio.fail_after(WAIT):
            event = await waiting
        assert event.job_id == "job_1"
        assert event.video_url == "https://cdn.muvi.video/outputs/job_1.mp4"
        # The API's retry of the same delivery: a duplicate, shared with nobody.
        assert await post(server.url, "job_1") == DUPLICATE
        await asyncio.sleep(0.2)
        stats = server.receiver.stats
    a.release("job_1")
    assert elsewhere.seen == {"job_1": 1}
    assert stats["accepted"] == 1
    assert stats["duplicates"] == 1
    assert b.stats["published"] == 1
    assert b.stats["duplicates"] == 1


async def test_a_receiver_with_a_hub_keeps_no_decoded_event_nobody_here_wanted(hubs):
    """
    Publishing needs the event decoded; remembering it does not.

    A receiver process keeps up to ``max_events`` deliveries (50,000) in the receiver
    and in the hub: as decoded events, some ten objects each for every full garbage
    collection to walk.  Both keep compact forms, made into events again on demand.
    """
    _, b = hubs
    receiver = WebhookReceiver(SECRET, hub=b)
    before = decoded_jobs()
    for n in range(40):
        body, headers = signed(f"job_c{n}")
        assert await receiver.handle_async(body, headers) == (200, "ok")
    assert decoded_jobs() <= before
    event = receiver.event_for("job_c3")
    assert event is not None
    assert event.video_url == "https://cdn.muvi.video/outputs/job_c3.mp4"
    assert b.event_for("job_c4").video_url.endswith("job_c4.mp4")  # type: ignore[union-attr]


async def test_the_hub_decides_what_is_a_duplicate(hubs):
    """A retry received by another process is a duplicate there too."""
    a, b = hubs
    async with (
        WebhookServer(SECRET, hub=a) as here,
        WebhookServer(SECRET, hub=b) as there,
    ):
        assert await post(here.url, "job_2") == OK
        assert await post(there.url, "job_2") == DUPLICATE
        assert there.receiver.event_for("job_2") is None  # not dispatched there
        assert here.receiver.event_for("job_2") is not None


async def test_the_receiver_s_own_waiters_and_hooks_still_get_the_delivery(hubs):
    a, b = hubs
    hooked: list[str] = []
    receiver = WebhookReceiver(
        SECRET, hub=b, on_event=lambda e: hooked.append(e.job_id)
    )
    waiting = receiver.future_for("job_3")
    body, headers = signed("job_3")
    assert await receiver.handle_async(body, headers) == (200, "ok")
    with anyio.fail_after(WAIT):
        assert (await waiting).job_id == "job_3"
    assert await receiver.handle_async(body, headers) == (200, "duplicate")
    receiver.release("job_3")
    assert hooked == ["job_3"]


async def test_verification_comes_before_the_hub(hubs):
    a, b = hubs
    receiver = WebhookReceiver(SECRET, hub=b)
    body, headers = signed("job_forged", secret="whsec_forged")
    assert await receiver.handle_async(body, headers) == (401, "mismatch")
    assert b.stats["published"] == 0


# -- Redis away: 503, and the API's retry is published --------------------------------


async def test_redis_away_answers_503_and_the_retry_is_published(own_redis, prefix):
    """The outbox is off (max_outbox=0): only the retry can publish the event."""
    from pixelbyte_async.redis import RedisHub

    async with (
        RedisHub(own_redis.url, key_prefix=prefix, reconnect_max=0.2) as a,
        RedisHub(
            own_redis.url, key_prefix=prefix, reconnect_max=0.2, max_outbox=0
        ) as b,
        WebhookServer(SECRET, hub=b) as server,
    ):
        waiting = a.future_for("job_4")
        own_redis.stop()
        await until(lambda: not b.healthy)
        assert await post(server.url, "job_4") == UNAVAILABLE
        # This process's own waiters were fed all the same.
        assert server.receiver.event_for("job_4") is not None
        own_redis.start()
        await until(lambda: a.healthy and b.healthy, 15)
        assert not waiting.done()  # nothing kept to re-publish: the retry must
        assert await post(server.url, "job_4") == OK  # not de-duplicated locally
        with anyio.fail_after(WAIT):
            assert (await waiting).job_id == "job_4"
        assert await post(server.url, "job_4") == DUPLICATE
        a.release("job_4")


async def test_redis_away_then_back_the_wait_elsewhere_resolves(own_redis, prefix):
    """With the outbox (the default), the retry after the outage is answered 200."""
    from pixelbyte_async.redis import RedisHub

    async with (
        RedisHub(own_redis.url, key_prefix=prefix, reconnect_max=0.2) as a,
        RedisHub(own_redis.url, key_prefix=prefix, reconnect_max=0.2) as b,
        WebhookServer(SECRET, hub=b) as server,
    ):
        waiting = a.future_for("job_5")
        own_redis.stop()
        await until(lambda: not b.healthy)
        assert await post(server.url, "job_5") == UNAVAILABLE
        own_redis.start()
        await until(lambda: a.healthy and b.healthy, 15)
        status, reply = await post(server.url, "job_5")
        assert status == 200
        assert reply["reason"] in {"ok", "duplicate"}
        with anyio.fail_after(WAIT):
            assert (await waiting).job_id == "job_5"
        a.release("job_5")


async def test_a_hub_that_is_not_running_answers_503(redis_server, prefix):
    from pixelbyte_async.redis import RedisHub

    hub = RedisHub(redis_server.url, key_prefix=prefix)
    receiver = WebhookReceiver(SECRET, hub=hub)
    body, headers = signed("job_6")
    assert await receiver.handle_async(body, headers) == (503, "hub_unavailable")
    assert await anyio.to_thread.run_sync(receiver.handle, body, headers) == (
        503,
        "hub_unavailable",
    )
    with pytest.raises(ConnectionError):
        await anyio.to_thread.run_sync(receiver.dispatch, receiver.event_for("job_6"))


# -- threads ------------------------------------------------------------------------------


async def test_handle_from_a_plain_thread_publishes(hubs):
    """A Django or Flask view in a worker thread: no event loop of its own."""
    a, b = hubs
    receiver = WebhookReceiver(SECRET, hub=b)
    waiting = a.future_for("job_7")
    body, headers = signed("job_7")
    answer = await anyio.to_thread.run_sync(receiver.handle, body, headers)
    assert answer == (200, "ok")
    with anyio.fail_after(WAIT):
        assert (await waiting).job_id == "job_7"
    again = await anyio.to_thread.run_sync(receiver.handle, body, headers)
    assert again == (200, "duplicate")
    a.release("job_7")


async def test_dispatch_from_a_thread_returns_the_hub_s_answer(hubs):
    a, b = hubs
    receiver = WebhookReceiver(SECRET, hub=b)
    waiting = a.future_for("job_8")
    event = make_event("job_8")
    assert await anyio.to_thread.run_sync(receiver.dispatch, event) is True
    with anyio.fail_after(WAIT):
        assert (await waiting).job_id == "job_8"
    assert await anyio.to_thread.run_sync(receiver.dispatch, event) is False
    a.release("job_8")


async def test_a_hub_that_does_not_answer_in_time_is_unavailable(hubs, monkeypatch):
    a, b = hubs
    never: concurrent.futures.Future[bool] = concurrent.futures.Future()
    monkeypatch.setattr(b, "publish_threadsafe", lambda event: never)
    monkeypatch.setattr(b, "connect_timeout", 0.1)
    receiver = WebhookReceiver(SECRET, hub=b)
    body, headers = signed("job_9")
    answer = await anyio.to_thread.run_sync(receiver.handle, body, headers)
    assert answer == (503, "hub_unavailable")


async def test_handle_cannot_block_the_event_loop_it_runs_on(hubs):
    """On an event loop, with a hub: await handle_async (handle would block it)."""
    a, b = hubs
    receiver = WebhookReceiver(SECRET, hub=b)
    body, headers = signed("job_10")
    with pytest.raises(RuntimeError, match="handle_async"):
        receiver.handle(body, headers)
    assert await receiver.handle_async(body, headers) == (200, "ok")


async def test_handle_async_on_another_loop_goes_through_the_hub_s_loop(hubs):
    a, b = hubs
    receiver = WebhookReceiver(SECRET, hub=b)
    waiting = a.future_for("job_11")
    body, headers = signed("job_11")

    def on_a_loop_of_its_own() -> tuple[int, str]:
        return asyncio.run(receiver.handle_async(body, headers))

    assert await anyio.to_thread.run_sync(on_a_loop_of_its_own) == (200, "ok")
    with anyio.fail_after(WAIT):
        assert (await waiting).job_id == "job_11"
    a.release("job_11")


async def test_a_server_given_a_receiver_takes_the_receiver_s_hub(hubs):
    a, b = hubs
    receiver = WebhookReceiver(SECRET, hub=b)
    assert WebhookServer(receiver=receiver, hub=b).receiver is receiver
    with pytest.raises(ValueError, match="hub"):
        WebhookServer(receiver=receiver, hub=a)
    assert WebhookReceiver(SECRET).hub is None


# -- the command line ---------------------------------------------------------------------


async def run_listen(capsys, *argv: str) -> tuple[int, str, str]:
    """Run ``webhook listen`` with *argv*, POST one delivery to it, return its output."""
    port = free_port()
    args = ["webhook", "listen", "--port", str(port), "--max-events", "1", *argv]
    running = asyncio.ensure_future(anyio.to_thread.run_sync(main, args))
    err = ""

    def listening() -> bool:
        nonlocal err
        err += capsys.readouterr().err
        return "Listening on" in err or running.done()

    await until(listening)
    assert not running.done(), err
    assert await post(f"http://127.0.0.1:{port}/pixelbyte/webhook", "job_cli") == OK
    with anyio.fail_after(WAIT):
        code = await running
    captured = capsys.readouterr()
    return code, captured.out, err + captured.err


@pytest.mark.parametrize("how", ["option", "environment"])
async def test_webhook_listen_publishes_through_redis(
    own_redis, prefix, capsys, monkeypatch, how
):
    from pixelbyte_async.redis import RedisHub

    async with own_redis.client() as plain:
        await plain.config_set("requirepass", "s3cret-pw")
    url = f"redis://:s3cret-pw@127.0.0.1:{own_redis.port}/0"
    monkeypatch.setenv("PIXELBYTE_WEBHOOK_SECRET", SECRET)
    argv = ["--redis-prefix", prefix, "--redis-account", "acct"]
    if how == "option":
        argv += ["--redis", url]
    else:
        monkeypatch.setenv("PIXELBYTE_REDIS_URL", url)
    async with RedisHub(url, key_prefix=prefix, account="acct") as elsewhere:
        assert elsewhere.healthy
        waiting = elsewhere.future_for("job_cli")
        code, out, err = await run_listen(capsys, *argv)
        with anyio.fail_after(WAIT):
            assert (await waiting).job_id == "job_cli"
        elsewhere.release("job_cli")
    assert code == 0
    assert out.strip() == "job_cli completed https://cdn.muvi.video/outputs/job_cli.mp4"
    assert f"redis://:***@127.0.0.1:{own_redis.port}/0" in err
    assert "Listening on http://127.0.0.1:" in err
    assert "s3cret-pw" not in out + err


async def test_webhook_listen_closes_its_hub(redis_server, prefix, capsys, monkeypatch):
    import pixelbyte_async.redis

    made: list[Any] = []

    class Recorded(pixelbyte_async.redis.RedisHub):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            made.append(self)

    monkeypatch.setattr(pixelbyte_async.redis, "RedisHub", Recorded)
    monkeypatch.setenv("PIXELBYTE_WEBHOOK_SECRET", SECRET)
    code, _out, _err = await run_listen(
        capsys, "--redis", redis_server.url, "--redis-prefix", prefix
    )
    assert code == 0
    (hub,) = made
    assert hub.key_prefix == prefix
    assert hub.account == "default"  # RedisHub's own default
    assert not hub.running


def test_webhook_listen_redis_without_redis_py(capsys, monkeypatch):
    """No redis extra: one line naming it, the usage exit code, no traceback."""
    for name in list(sys.modules):
        if name == "redis" or name.startswith(
            ("redis.", "pixelbyte_async.redis", "pixelbyte_async._hub")
        ):
            monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "redis", None)
    argv = ["webhook", "listen", "--port", "0", "--webhook-secret", "whsec_x"]
    code = main([*argv, "--redis", "redis://127.0.0.1:6379/0"])
    captured = capsys.readouterr()
    assert code == EXIT_CODES["usage"]
    assert captured.out == ""
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, captured.err
    assert "pip install 'pixelbyte-async[redis]'" in lines[0]
    assert "Traceback" not in captured.err


def test_webhook_listen_refuses_a_url_that_is_not_redis(capsys, monkeypatch):
    monkeypatch.setenv("PIXELBYTE_REDIS_URL", "http://user:pw-in-env@example.com/")
    argv = ["webhook", "listen", "--port", "0", "--webhook-secret", "whsec_x"]
    code = main(argv)
    captured = capsys.readouterr()
    assert code == EXIT_CODES["validation"]
    assert "PIXELBYTE_REDIS_URL" in captured.err
    assert "pw-in-env" not in captured.err
    assert len(captured.err.strip().splitlines()) == 1


# -- a silent partition between the receiver and Redis -----------------------------------


async def test_publish_fails_fast_through_a_silent_partition(redis_server, prefix):
    """
    Packets to Redis are dropped (no refusal): a publish gives up within the hub's
    *publish_timeout*, and at once once the hub knows Redis is away, so the
    receiver answers 503 well inside its own read timeout (10 s).
    """
    import time

    from pixelbyte_async.redis import HubUnavailable, RedisHub

    async with Proxy(redis_server.port) as proxy:
        hub = RedisHub(
            proxy.url(), key_prefix=prefix, publish_timeout=1.0, ping_interval=0.5
        )
        async with hub, WebhookServer(SECRET, hub=hub) as server:
            assert hub.healthy
            proxy.freeze()
            began = time.monotonic()
            with pytest.raises(HubUnavailable):
                await hub.publish(make_event("job_p1"))
            assert time.monotonic() - began < 2.5
            await until(lambda: not hub.healthy, WAIT)
            began = time.monotonic()
            with pytest.raises(HubUnavailable):
                await hub.publish(make_event("job_p2"))
            assert time.monotonic() - began < 0.2  # known unhealthy: no wait
            began = time.monotonic()
            assert await post(server.url, "job_p3") == UNAVAILABLE
            assert time.monotonic() - began < 2.5
            proxy.thaw()
            await until(lambda: hub.healthy, 3 * WAIT)
        async with RedisHub(redis_server.url, key_prefix=prefix) as other:
            # Kept and published again once Redis was back.
            for job_id in ("job_p1", "job_p2", "job_p3"):
                assert await other.fetch_event(job_id) is not None


def test_webhook_listen_with_a_refused_password_exits_2(capsys, monkeypatch):
    """A wrong password is a configuration error: one line, exit 2, no 503s."""
    from redis_fixture import running_server

    monkeypatch.setenv("PIXELBYTE_WEBHOOK_SECRET", SECRET)
    with running_server(password="right-pw") as server:
        url = server.url.replace("right-pw", "wrong-pw")
        code = main(["webhook", "listen", "--port", "0", "--redis", url])
    captured = capsys.readouterr()
    assert code == EXIT_CODES["usage"] == 2
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, captured.err
    assert "refused" in lines[0]
    assert "password" in lines[0]
    assert "wrong-pw" not in captured.err + captured.out
    assert "Listening" not in captured.err


async def test_a_receivers_outage_warning_speaks_of_deliveries(
    own_redis, prefix, caplog
):
    from pixelbyte_async.redis import RedisHub

    async with (
        RedisHub(own_redis.url, key_prefix=prefix, reconnect_max=0.1) as hub,
        WebhookServer(SECRET, hub=hub),
    ):
        own_redis.stop()
        await until(lambda: not hub.healthy, WAIT)
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert any("answered 503" in w for w in warnings), warnings
    assert not any("waits fall back" in w for w in warnings), warnings
