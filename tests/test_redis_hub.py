"""RedisHub events against a real redis-server: publish, de-duplicate, wait, attribute."""

from __future__ import annotations

import asyncio
import json
import logging
import shutil
import subprocess
import threading
from pathlib import Path

import anyio
import pytest

from redis_fixture import (  # noqa: F401 -- fixtures
    SECRET,
    decoded_jobs,
    hubs_fixture,
    make_event,
    prefix_fixture,
    redis_server_fixture,
    require_redis,
    require_redis_fixture,
    until,
)


pytestmark = pytest.mark.anyio

WAIT = 5.0  # seconds any single wait may take before the test fails


async def test_a_published_event_resolves_a_waiter_of_another_hub(hubs):
    """publish() in one hub resolves future_for() in another, with the same event."""
    a, b = hubs
    future = b.future_for("job_1")
    assert not future.done()
    event = make_event("job_1", attempt="att_1")

    assert await a.publish(event) is True
    with anyio.fail_after(WAIT):
        got = await future

    assert (event.job_id, event.status, event.timestamp, event.attempt) == (
        got.job_id,
        got.status,
        got.timestamp,
        got.attempt,
    )
    assert dict(event.payload) == dict(got.payload)
    assert event.job == got.job
    assert got == b.event_for("job_1")
    assert b.job_for_attempt("att_1") == "job_1"


async def test_a_delivery_is_first_only_once_across_hubs(hubs):
    """The API retries deliveries: only the first publish anywhere returns True."""
    a, b = hubs
    event = make_event("job_dup")

    answers = [await a.publish(event), await b.publish(event), await a.publish(event)]

    assert answers == [True, False, False]
    assert (a.stats["published"], a.stats["duplicates"]) == (1, 1)
    assert (b.stats["published"], b.stats["duplicates"]) == (0, 1)


async def test_the_publisher_s_own_waiters_are_fed_at_once(hubs):
    """The publishing process does not wait for its own message to come back."""
    a, _ = hubs
    future = a.future_for("job_self")

    await a.publish(make_event("job_self"))

    assert future.done()
    assert future.result().job_id == "job_self"


async def test_a_late_waiter_sees_the_stored_event(redis_server, prefix, hubs):
    """A hub started after the delivery still resolves the wait from stored state."""
    from pixelbyte_async.redis import RedisHub

    a, _ = hubs
    await a.publish(make_event("job_late", "failed"))

    async with RedisHub(redis_server.url, key_prefix=prefix) as late:
        assert late.event_for("job_late") is None
        future = late.future_for("job_late")
        with anyio.fail_after(WAIT):
            event = await future
        assert event.status.value == "failed"
        assert event.job.error is not None
        assert event.job.error.code == "INTERNAL_ERROR"
        # Known here from now on: the next waiter gets a done future.
        assert late.future_for("job_late").done()


async def test_events_nobody_here_waits_for_are_kept_as_bytes(hubs):
    """
    The publishing process (a receiver) keeps no object graph per delivery.

    A decoded event is some ten objects for the garbage collector to walk in every
    full collection, 50,000 of them kept by default; the hub's JSON form is one
    ``bytes``, decoded again only if somebody here asks.
    """
    a, _ = hubs
    before = decoded_jobs()
    for n in range(50):
        assert await a.publish(make_event(f"job_kept_{n}", attempt=f"att_k{n}"))
    assert decoded_jobs() <= before

    event = a.event_for("job_kept_7")
    assert event is not None
    assert (event.job_id, event.attempt, event.status.value) == (
        "job_kept_7",
        "att_k7",
        "completed",
    )
    assert event.job == make_event("job_kept_7").job
    assert a.event_for("job_kept_7") is event  # made once, then kept
    assert a.future_for("job_kept_8").result().job_id == "job_kept_8"
    assert a.job_for_attempt("att_k9") == "job_kept_9"


async def test_one_shared_future_per_job_and_release_forgets_it(hubs):
    """future_for shares one future per job id; the last release cancels it."""
    _, b = hubs
    first = b.future_for("job_shared")
    second = b.future_for("job_shared")
    assert first is second
    assert b.waiting == 1

    b.release("job_shared")
    assert not first.done()
    b.release("job_shared")

    assert first.cancelled()
    assert b.waiting == 0
    assert b._memory._futures == {}


async def test_a_waiter_never_misses_an_event_published_meanwhile(hubs):
    """Subscribe first, then read: events racing the registration are never lost."""
    a, b = hubs
    ids = [f"job_race_{i}" for i in range(200)]

    async def publish_all():
        for job_id in ids:
            await a.publish(make_event(job_id))

    async def wait_all():
        futures = []
        for job_id in ids:
            futures.append(b.future_for(job_id))
            await asyncio.sleep(0)
        with anyio.fail_after(WAIT):
            return await asyncio.gather(*futures)

    async with anyio.create_task_group() as tg:
        tg.start_soon(publish_all)
        events = await wait_all()

    assert ids == [e.job_id for e in events]


async def test_the_first_attempt_attribution_wins_everywhere(
    redis_server, prefix, hubs, caplog
):
    """An attempt names the job of the first delivery; a conflicting one is ignored."""
    from pixelbyte_async.redis import RedisHub

    a, b = hubs
    for hub in hubs:  # both wait for both jobs, so both see both events
        hub.future_for("job_x")
        hub.future_for("job_y")
        await hub.refresh()
    await a.publish(make_event("job_x", attempt="att_same"))
    with caplog.at_level(logging.WARNING, logger="pixelbyte_async"):
        assert await b.publish(make_event("job_y", attempt="att_same")) is True

    await until(lambda: a.event_for("job_y") is not None)
    await until(lambda: b.event_for("job_x") is not None)
    assert a.job_for_attempt("att_same") == "job_x"
    assert b.job_for_attempt("att_same") == "job_x"
    assert "already attributed to job_x" in caplog.text
    async with RedisHub(redis_server.url, key_prefix=prefix) as late:
        assert late.job_for_attempt("att_same") is None
        assert await late.fetch_attempt("att_same") == "job_x"
        assert await late.fetch_attempt("att_unknown") is None
        event = await late.fetch_event("job_y")
        assert event is not None
        assert event.attempt == "att_same"  # what the delivery carried


async def test_attached_clients_observe_the_events_that_reach_their_process(hubs):
    """An attached client gets _webhook_event(event) on its loop for each event here."""
    a, b = hubs
    loop = asyncio.get_running_loop()
    seen = []

    class Client:
        def _webhook_event(self, event):
            seen.append((event.job_id, asyncio.get_running_loop() is loop))
            return True

    client = Client()
    b.attach(client)
    watched = [b.future_for("job_obs_1"), b.future_for("job_obs_2")]
    await b.refresh()  # both registered with Redis
    await a.publish(make_event("job_obs_1"))
    await until(lambda: len(seen) == 1)
    b.detach(client)
    await a.publish(make_event("job_obs_2"))
    with anyio.fail_after(WAIT):
        await asyncio.gather(*watched)

    assert seen == [("job_obs_1", True)]


async def test_an_event_reaches_only_the_processes_waiting_for_its_job(
    redis_server, prefix, hubs
):
    """
    Events are routed: a process that waits for nothing of a job is not woken by
    its delivery (with one channel for all, every process would decode every event
    and compete for the cores just when the waiting process has to run).
    """
    from pixelbyte_async.redis import RedisHub

    a, b = hubs
    async with RedisHub(redis_server.url, key_prefix=prefix) as idle:
        future_a, future_b = a.future_for("job_r1"), b.future_for("job_r2")
        both = [a.future_for("job_r3"), b.future_for("job_r3")]
        await a.refresh()
        await b.refresh()
        for job in ("job_r1", "job_r2", "job_r3"):
            await idle.publish(make_event(job))
        with anyio.fail_after(WAIT):
            await asyncio.gather(future_a, future_b, *both)
        await idle.publish(make_event("job_nobody"))
        await asyncio.sleep(0.05)  # what would have reached them, has

        assert a.event_for("job_r2") is None
        assert b.event_for("job_r1") is None
        assert a.event_for("job_nobody") is None
        assert b.event_for("job_nobody") is None
        assert (a.stats["delivered"], b.stats["delivered"]) == (2, 2)
        async with redis_server.client() as raw:
            left = [k.decode() async for k in raw.scan_iter(f"{prefix}:*:w:*")]
        assert left == []  # a terminal event ends its routing entry


async def test_events_that_are_not_terminal_resolve_nothing(hubs):
    """Only terminal events are stored and shared (the API documents no others)."""
    a, b = hubs
    future = b.future_for("job_run")

    assert await a.publish(make_event("job_run", "processing")) is True
    await a.publish(make_event("job_run", "completed"))
    with anyio.fail_after(WAIT):
        event = await future

    assert event.status.value == "completed"


async def test_what_redis_holds_is_the_delivery_and_expires(redis_server, prefix):
    """Stored: job id, timestamp, attempt and payload, with event_ttl; no secret."""
    from pixelbyte_async.redis import RedisHub

    async with RedisHub(redis_server.url, key_prefix=prefix, event_ttl=120) as hub:
        await hub.publish(make_event("job_kept", attempt="att_kept"))
        async with redis_server.client() as raw:
            keys = sorted([k.decode() async for k in raw.scan_iter(f"{prefix}:*")])
            assert [
                f"{prefix}:{{default}}:at:att_kept",
                f"{prefix}:{{default}}:ev:job_kept",
            ] == keys
            stored = await raw.get(keys[1])
            assert 0 < await raw.ttl(keys[0]) <= 120
            assert 0 < await raw.ttl(keys[1]) <= 120
            values = [await raw.get(k) for k in keys]

    assert stored[:1] == b"e"
    document = json.loads(stored[1:])
    assert {"job", "ts", "attempt", "payload"} == set(document)
    assert document["payload"]["jobId"] == "job_kept"
    for value in values:
        assert SECRET.encode() not in value


async def test_accounts_do_not_see_each_other(redis_server, prefix):
    """Two accounts on one Redis share nothing."""
    from pixelbyte_async.redis import RedisHub

    async with (
        RedisHub(redis_server.url, key_prefix=prefix, account="one") as one,
        RedisHub(redis_server.url, key_prefix=prefix, account="two") as two,
    ):
        future = two.future_for("job_acc")
        assert await one.publish(make_event("job_acc")) is True
        assert await two.publish(make_event("job_acc")) is True
        with anyio.fail_after(WAIT):
            await future
        assert two.stats["delivered"] == 1


async def test_publish_threadsafe_serves_a_synchronous_view(hubs):
    """A sync framework's worker thread publishes through the hub's loop."""
    a, b = hubs
    future = b.future_for("job_thread")
    answers = []

    def view():
        answers.append(a.publish_threadsafe(make_event("job_thread")).result(WAIT))
        answers.append(a.publish_threadsafe(make_event("job_thread")).result(WAIT))

    thread = threading.Thread(target=view)
    thread.start()
    with anyio.fail_after(WAIT):
        await future
    await anyio.to_thread.run_sync(thread.join, WAIT)

    assert answers == [True, False]


async def test_the_hub_belongs_to_its_loop_and_must_be_started(redis_server, prefix):
    """Using a hub before start() or from another loop is a clear RuntimeError."""
    from pixelbyte_async.redis import RedisHub

    hub = RedisHub(redis_server.url, key_prefix=prefix)
    with pytest.raises(RuntimeError, match="not started"):
        hub.future_for("job")
    with pytest.raises(RuntimeError, match="not running"):
        hub.publish_threadsafe(make_event("job"))
    async with hub:

        def elsewhere():
            async def use():
                hub.future_for("job")

            asyncio.run(use())

        with pytest.raises(RuntimeError, match="event loop it was started on"):
            await anyio.to_thread.run_sync(elsewhere)
    with pytest.raises(RuntimeError, match="closed"):
        await hub.start()


async def test_aclose_cancels_pending_futures(redis_server, prefix):
    """Closing the hub leaves no waiter hanging."""
    from pixelbyte_async.redis import RedisHub

    async with RedisHub(redis_server.url, key_prefix=prefix) as hub:
        future = hub.future_for("job_open")

    assert future.cancelled()
    assert not hub.healthy


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redis://user:s3cr3t@127.0.0.1:6379/0", "redis://user:***@127.0.0.1:6379/0"),
        ("redis://:s3cr3t@127.0.0.1:6379/0", "redis://:***@127.0.0.1:6379/0"),
        ("rediss://user:s3cr3t@h:6380/1", "rediss://user:***@h:6380/1"),
        (
            "redis://127.0.0.1:6379/0?password=s3cr3t&db=1",
            "redis://127.0.0.1:6379/0?password=***&db=1",
        ),
        ("redis://127.0.0.1:6379/0", "redis://127.0.0.1:6379/0"),
        ("redis://u:s3cr#3t@h:6379/0", "redis://u:***@h:6379/0"),
        ("redis://u:s3c?r3t@h:6379/0", "redis://u:***@h:6379/0"),
        ("redis://u:s3/cr3t@h:6379/0", "redis://u:***@h:6379/0"),
        ("redis://:s3cr@3t@h:6379/0", "redis://:***@h:6379/0"),
        ("unix://:s3cr3t@/run/redis.sock?db=0", "unix://:***@/run/redis.sock?db=0"),
        (
            "redis://h:6379/0?db=1&password=s3c%23r3t",
            "redis://h:6379/0?db=1&password=***",
        ),
    ],
    ids=[
        *("acl", "password-only", "tls", "query", "plain", "hash", "question"),
        *("slash", "at", "unix", "encoded"),
    ],
)
def test_the_url_password_is_masked(url, shown):
    """url and repr never show a password."""
    from pixelbyte_async.redis import RedisHub

    hub = RedisHub(url)

    assert shown == hub.url
    for part in ("s3cr3t", "s3c", "3t"):
        assert part not in repr(hub)


def ledger_attempt(n: int):
    from pixelbyte_async._ledger import Attempt

    return Attempt(
        id=f"a{n}", model="m", started_at=0.0, ends_by=9.0, state="unknown", owner="x"
    )


async def test_an_acl_user_url_works_and_its_password_stays_hidden(
    redis_server, prefix, caplog
):
    """
    redis://user:password@ connects as that ACL user, with no more rights than
    docs/deploying.md asks for; logs never show the password.
    """
    from pixelbyte_async.redis import RedisHub

    user, password = f"u{prefix}", f"pw-{prefix}"
    rules = (
        "+@read +@write +@scripting +@transaction +@pubsub +@connection +time "
        "-@dangerous"
    )
    documented = (Path(__file__).parent.parent / "docs" / "deploying.md").read_text()
    assert f"&pixelbyte:* {rules}\n" in documented
    async with redis_server.client() as raw:
        await raw.execute_command(
            "ACL", "SETUSER", user, "on", f">{password}", f"~{prefix}:*",
            f"&{prefix}:*", *rules.split(),
        )  # fmt: skip
    url = redis_server.url.replace("redis://", f"redis://{user}:{password}@")
    bad = redis_server.url.replace("redis://", f"redis://{user}:wrong-{password}@")
    try:
        with caplog.at_level(logging.DEBUG, logger="pixelbyte_async"):
            async with RedisHub(url, key_prefix=prefix) as hub:
                assert hub.healthy
                future = hub.future_for("job_acl_late")
                assert await hub.publish(make_event("job_acl", attempt="att_acl"))
                assert await hub.fetch_attempt("att_acl") == "job_acl"
                slots = hub.slots(2)
                lease = await slots.acquire(timeout=1)
                await slots.renew(lease)
                assert await slots.in_use() == 1
                await slots.release(lease)
                await hub.publish(make_event("job_acl_late"))
                await future
                # The ledger: its scripts, and a claim contested by another.
                ledger = hub.ledger(account="acl")
                for n in (1, 2):
                    await ledger.begin(ledger_attempt(n))
                claim = ledger.claim
                assert await claim("job_x", how="list", at=1.0, attempt="a1") is None
                taken = await claim("job_x", how="list", at=2.0, attempt="a2")
                assert taken is not None  # decided in a transaction: refused
                assert hub.healthy
            async with RedisHub(bad, key_prefix=prefix, connect_timeout=2) as wrong:
                assert not wrong.healthy
                assert wrong.config_error is not None
                assert password not in repr(wrong)
    finally:
        async with redis_server.client() as raw:
            await raw.execute_command("ACL", "DELUSER", user)

    # A wrong password is a configuration error, not an outage.
    assert "refused" in caplog.text
    assert "unreachable" not in caplog.text
    assert password not in caplog.text


async def test_a_rediss_url_uses_tls(prefix):
    """rediss:// goes to redis-py as it is: its connections use TLS."""
    from pixelbyte_async.redis import RedisHub
    from redis.asyncio.connection import SSLConnection

    from redis_fixture import free_port

    url = f"rediss://user:pw@127.0.0.1:{free_port()}/0"
    async with RedisHub(
        url, key_prefix=prefix, connect_timeout=1, reconnect_initial=30
    ) as hub:
        assert not hub.healthy
        assert hub._link._redis.connection_pool.connection_class is SSLConnection


async def test_this_process_forgets_old_events(redis_server, prefix):
    """Seen events are kept for *retention* seconds and at most *max_events*."""
    from pixelbyte_async import VirtualClock
    from pixelbyte_async.redis import RedisHub

    clock = VirtualClock(autojump=False)
    async with RedisHub(
        redis_server.url, key_prefix=prefix, clock=clock, retention=60, max_events=3
    ) as hub:
        for i in range(5):
            await hub.publish(make_event(f"job_m{i}", attempt=f"att_m{i}"))
        assert [hub.event_for(f"job_m{i}") is not None for i in range(5)] == [
            False,
            False,
            True,
            True,
            True,
        ]
        assert hub.job_for_attempt("att_m4") == "job_m4"

        clock.advance(61)

        assert hub.event_for("job_m4") is None
        assert hub.job_for_attempt("att_m4") is None
        assert (hub._memory._events, hub._memory._attempts) == ({}, {})


async def test_foreign_or_broken_data_in_redis_is_ignored(redis_server, prefix, hubs):
    """Garbage in a process's inbox or a stored key is counted and ignored, no crash."""
    _, b = hubs
    async with redis_server.client() as raw:
        await raw.set(f"{prefix}:{{default}}:ev:job_bad", b"e{not json")
        await raw.set(
            f"{prefix}:{{default}}:ev:job_odd",
            b'e{"job":"job_x","ts":1,"payload":{"jobId":"job_y","status":"completed"}}',
        )
        future = b.future_for("job_bad")
        odd = b.future_for("job_odd")
        inbox = f"{prefix}:{{default}}:to:{b.instance_id}"
        await raw.publish(inbox, b"e[1, 2]")
        await raw.publish(inbox, b"zzz")
        await until(lambda: b.stats["undecodable"] >= 2)
        await b.refresh()

    assert not future.done()
    assert not odd.done()
    assert b.healthy


@pytest.fixture(name="tls_server")
def _tls_server(tmp_path):
    """A TLS-only redis-server with a self-signed certificate (made by openssl)."""
    from redis_fixture import RedisServer

    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("openssl is needed to make a certificate")
    pem = tmp_path / "server.pem"
    subprocess.run(  # noqa: S603 -- fixed argv
        [openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
         "-keyout", str(pem), "-out", str(pem)],
        check=True,
        capture_output=True,
    )  # fmt: skip
    server = RedisServer(tmp_path, tls=pem)
    server.start()
    try:
        yield server
    finally:
        server.stop()


async def test_a_rediss_url_talks_tls_to_a_real_server(tls_server, prefix):
    """A TLS-only redis-server: publish and wait work over rediss://."""
    from pixelbyte_async.redis import RedisHub

    options = {"ssl_ca_certs": str(tls_server.tls)}
    async with (
        RedisHub(tls_server.url, key_prefix=prefix, redis_options=options) as a,
        RedisHub(tls_server.url, key_prefix=prefix, redis_options=options) as b,
    ):
        assert a.healthy
        assert b.healthy
        future = b.future_for("job_tls")
        assert await a.publish(make_event("job_tls")) is True
        with anyio.fail_after(WAIT):
            assert (await future).job_id == "job_tls"


async def test_a_woken_wait_runs_before_the_attached_client_is_fed(hubs):
    """
    The wait that needs an event runs first; the attached client (which only
    updates its bookkeeping) is fed after it, in the same loop turn.
    """
    from pixelbyte_async._clock import SystemClock, sleep_or_until

    a, b = hubs
    order: list[str] = []

    class Client:
        def _webhook_event(self, event):
            order.append("client fed")
            return True

    b.attach(Client())
    future = b.future_for("job_first")
    await b.refresh()

    async def wait() -> None:
        await sleep_or_until(SystemClock(), 60, future)
        order.append("wait resumed")

    waiting = asyncio.ensure_future(wait())
    await asyncio.sleep(0)
    await a.publish(make_event("job_first"))
    with anyio.fail_after(WAIT):
        await waiting
    await until(lambda: len(order) == 2)
    assert order == ["wait resumed", "client fed"]


async def test_a_woken_wait_runs_before_the_next_message_is_read(
    redis_server, prefix, hubs
):
    """
    Two deliveries arrive together: the wait the first one woke runs before the
    hub goes on to read (and decode) the second.
    """
    from pixelbyte_async._clock import SystemClock, sleep_or_until
    from pixelbyte_async._hub._codec import EVENT, encode_event

    _, b = hubs
    first, second = b.future_for("job_n1"), b.future_for("job_n2")
    await b.refresh()
    seen_when_resumed = []

    async def wait() -> None:
        await sleep_or_until(SystemClock(), 60, first)
        seen_when_resumed.append(b.event_for("job_n2"))

    waiting = asyncio.ensure_future(wait())
    await asyncio.sleep(0)
    inbox = f"{prefix}:{{default}}:to:{b.instance_id}"
    async with redis_server.client() as raw:
        async with raw.pipeline(transaction=False) as both:  # one write, one read
            for job in ("job_n1", "job_n2"):
                both.publish(inbox, EVENT + encode_event(make_event(job)))
            await both.execute()
        with anyio.fail_after(WAIT):
            await asyncio.gather(waiting, second)
    assert seen_when_resumed == [None]


@pytest.mark.parametrize("given", ["wrong", "none"])
async def test_a_refused_password_is_a_configuration_error(prefix, caplog, given):
    """An ERROR that says what to check, once; never the outage WARNING."""
    from pixelbyte_async.redis import RedisHub

    from redis_fixture import running_server

    with running_server(password="right-password") as server:
        url = server.url.replace(
            "right-password", "wrong-password" if given == "wrong" else ""
        ).replace(":@", "")
        with caplog.at_level(logging.INFO, logger="pixelbyte_async"):
            async with RedisHub(url, key_prefix=prefix, reconnect_max=0.05) as hub:
                await asyncio.sleep(0.3)  # it keeps trying: one ERROR all the same
                assert not hub.healthy
                assert hub.config_error is not None
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1, errors
    assert "refused" in errors[0]
    assert "password" in errors[0]
    assert "wrong-password" not in caplog.text
    assert not [r for r in caplog.records if r.levelname == "WARNING"]


async def test_a_tls_url_against_a_plain_server_says_what_happened(
    redis_server, prefix, caplog
):
    from pixelbyte_async.redis import RedisHub

    url = redis_server.url.replace("redis://", "rediss://")
    async with RedisHub(url, key_prefix=prefix, connect_timeout=0.5) as hub:
        assert not hub.healthy
    message = " ".join(r.getMessage() for r in caplog.records)
    assert "TimeoutError: )" not in message
    assert "TimeoutError: :" not in message
    assert "no answer within 0.5 s" in message
    assert "TLS" in message
