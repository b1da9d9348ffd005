"""
A Redis hub: webhook-fed waits and account-wide job slots across processes.

One process receives a webhook delivery, but the `Job.wait` it resolves may be
parked in another gunicorn worker, replica or bot shard; and the API's limit on
jobs in flight is per account, not per process.  `RedisHub` shares both through
one Redis server (redis-py's asyncio client, ``redis>=5``)::

    hub = RedisHub("redis://localhost:6379/0", key_prefix="pixelbyte", account="default")
    async with hub:
        first = await hub.publish(event)        # the process that got the delivery
        event = await hub.future_for(job_id)    # any process
        slots = hub.slots(20)                   # account-wide, leased
        lease = await slots.acquire(timeout=60)

**Transport.**  One pub/sub channel per account (one ``SUBSCRIBE`` per process;
messages are routed locally by job id) plus one stored key per job that carries its
terminal event for *event_ttl*.  A Lua script de-duplicates (``SET NX EX``), stores,
records the attempt → job id attribution (first wins) and publishes in one atomic
call, so a waiter that subscribes first and then reads the stored state can miss
nothing.

**Faults** (the lessons of Celery's Redis result backend).  Pub/sub is fire and
forget: while a process is disconnected it misses messages.  So `healthy` turns
false at once (one WARNING on the ``pixelbyte_async`` logger per outage, and the
*on_health* callbacks) and the client falls back to polling; on reconnect the hub
subscribes again and then re-reads the stored state of every job it has waiters
for, which resolves those whose event arrived meanwhile.  An event published while
Redis is away still reaches this process's waiters, is kept in a bounded outbox and
is published again on reconnect; `publish` raises `HubUnavailable` so that the
webhook endpoint can answer 503 and the API retries the delivery too.  Job slots
fall back to a per-process limit while Redis is away, never to "unlimited" and
never to "wait forever".

**What is stored.**  Only what a delivery carried: the JSON payload, its
timestamp and its ``pb_attempt`` nonce, and the lease ids of job slots.  Never an
API key or a webhook secret.  The URL's password is masked wherever the hub shows
its URL (`repr`, logs).

The hub belongs to the event loop it was started on, like a `PixelByte` client;
`publish_threadsafe` is the way in from another thread.

.. versionadded:: 0.3.0
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import itertools
import json
import logging
import math
import random
import re
import threading
import uuid
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Mapping
from types import TracebackType
from typing import Any, Literal, Self
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import anyio
import attrs


try:
    import redis.asyncio as aioredis
    from redis.asyncio.retry import Retry
    from redis.backoff import NoBackoff
    from redis.exceptions import RedisError
except ImportError as exc:  # pragma: no cover -- exercised only without the extra
    raise ImportError(
        "pixelbyte_async.redis needs redis-py: pip install 'pixelbyte-async[redis]'"
    ) from exc

from ._clock import Clock, SystemClock, sleep_or_until
from ._errors import PixelByteError, RequestTimeout, ResponseDecodeError
from ._serde import decode_job
from .webhooks import WebhookEvent, WebhookObserver


__all__ = ["HubUnavailable", "RedisHub", "RedisSlots"]

log = logging.getLogger("pixelbyte_async")

_Loop = asyncio.AbstractEventLoop
_NAME_RE = re.compile(r"[A-Za-z0-9_.:-]{1,64}")
_ATTEMPT_RE = re.compile(r"[A-Za-z0-9_-]{1,64}")
# What a broken or absent Redis raises through redis-py (and our own deadlines).
_FAULTS: tuple[type[BaseException], ...] = (RedisError, OSError, TimeoutError)
_BATCH = 500  # job ids per MGET when reading stored state
_MAX_PAUSE = 60.0  # longest single pause of a slot waiter (re-checks health)

# A message (and a stored event) is one kind byte and a JSON document:
#   e{"job":..,"ts":..,"attempt":..,"payload":{..}}  event, attempt attributed to it
#   c{...}                                          event, attempt names another job
#   r<slot group name>                              a job slot was released
_EVENT = b"e"
_CONFLICT = b"c"
_RELEASED = b"r"

# KEYS: event key [, attempt key]
# ARGV: message JSON, ttl s, job id, channel, terminal ("1"/"0")
_PUBLISH_LUA = """
local kind = 'e'
local owner = false
if #KEYS > 1 then
  if not redis.call('SET', KEYS[2], ARGV[3], 'NX', 'EX', ARGV[2]) then
    owner = redis.call('GET', KEYS[2])
    if owner == ARGV[3] then owner = false else kind = 'c' end
  end
end
if ARGV[5] ~= '1' then return {1, owner} end
local value = kind .. ARGV[1]
if not redis.call('SET', KEYS[1], value, 'NX', 'EX', ARGV[2]) then
  return {0, owner}
end
redis.call('PUBLISH', ARGV[4], value)
return {1, owner}
"""

# Server time in ms, so that the hosts' clocks never matter.
_NOW_LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
"""

# KEYS: leases, queue (score: arrival), queue expiry (score: ms), sequence
# ARGV: limit, lease ms, waiter id, lease id, queue ttl ms
# Returns {granted, rank in the queue, leases in use}.
_ACQUIRE_LUA = (
    _NOW_LUA
    + """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
local gone = redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', now)
for _, waiter in ipairs(gone) do
  redis.call('ZREM', KEYS[2], waiter)
  redis.call('ZREM', KEYS[3], waiter)
end
if not redis.call('ZSCORE', KEYS[2], ARGV[3]) then
  redis.call('ZADD', KEYS[2], redis.call('INCR', KEYS[4]), ARGV[3])
end
local keep = math.max(tonumber(ARGV[2]), tonumber(ARGV[5])) * 2
redis.call('ZADD', KEYS[3], now + tonumber(ARGV[5]), ARGV[3])
local used = redis.call('ZCARD', KEYS[1])
local rank = redis.call('ZRANK', KEYS[2], ARGV[3])
local granted = 0
if rank < tonumber(ARGV[1]) - used then
  redis.call('ZREM', KEYS[2], ARGV[3])
  redis.call('ZREM', KEYS[3], ARGV[3])
  redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[4])
  used = used + 1
  granted = 1
end
for i = 1, 4 do redis.call('PEXPIRE', KEYS[i], keep) end
return {granted, rank, used}
"""
)

# KEYS: leases, processes   ARGV: lease ms, process id, lease ids...
# (Re-)registers every lease this process holds, so leases admitted while Redis
# was away, or lost to a long outage, count again.  Returns {re-added, processes}.
_RENEW_LUA = (
    _NOW_LUA
    + """
local expiry = now + tonumber(ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
local added = 0
for i = 3, #ARGV do
  added = added + redis.call('ZADD', KEYS[1], expiry, ARGV[i])
end
redis.call('ZADD', KEYS[2], expiry, ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
local keep = tonumber(ARGV[1]) * 2
redis.call('PEXPIRE', KEYS[1], keep)
redis.call('PEXPIRE', KEYS[2], keep)
return {added, redis.call('ZCARD', KEYS[2])}
"""
)

# KEYS: leases   ARGV: channel, message, lease ids...
_RELEASE_LUA = """
local removed = 0
for i = 3, #ARGV do
  removed = removed + redis.call('ZREM', KEYS[1], ARGV[i])
end
if removed > 0 then redis.call('PUBLISH', ARGV[1], ARGV[2]) end
return removed
"""

# KEYS: queue, queue expiry   ARGV: waiter id
_LEAVE_LUA = """
redis.call('ZREM', KEYS[1], ARGV[1])
return redis.call('ZREM', KEYS[2], ARGV[1])
"""

# KEYS: leases   Returns the leases not yet expired.
_IN_USE_LUA = _NOW_LUA + "return redis.call('ZCOUNT', KEYS[1], now, '+inf')\n"


class HubUnavailable(PixelByteError, ConnectionError):
    """
    Redis could not be reached, so the hub could not share an event.

    The event still reached this process's waiters and is published again once
    Redis is back; answer the webhook delivery with a 5xx so the API retries it.

    .. versionadded:: 0.3.0
    """

    retryable = True


def _mask_url(url: str) -> str:
    """Return *url* with its password (netloc or ``?password=``) masked."""
    try:
        parts = urlsplit(url)
        netloc = parts.netloc
        if "@" in netloc:
            userinfo, _, hostport = netloc.rpartition("@")
            user, colon, _password = userinfo.partition(":")
            netloc = f"{user}:***@{hostport}" if colon else f"{user}@{hostport}"
        query = parts.query
        if query:
            pairs = parse_qsl(query, keep_blank_values=True)
            query = urlencode(
                [(k, "***" if k.lower() == "password" else v) for k, v in pairs],
                safe="*",
            )
        return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))
    except ValueError:
        return "<redis url>"


def _encode(event: WebhookEvent) -> bytes:
    """The hub's JSON form of *event*: only what the delivery carried."""
    try:
        return json.dumps(
            {
                "job": event.job_id,
                "ts": event.timestamp,
                "attempt": event.attempt,
                "payload": dict(event.payload),
            },
            separators=(",", ":"),
            ensure_ascii=False,
        ).encode()
    except (TypeError, ValueError) as exc:
        raise ValueError(f"the payload of {event.job_id} is not JSON") from exc


@attrs.frozen
class _Raw:
    """An event as Redis carries it, parsed but not decoded (that costs ~20 µs)."""

    job_id: str
    timestamp: int
    attempt: str | None
    payload: dict[str, Any]


def _parse(raw: bytes) -> _Raw | None:
    """Parse `_encode`'s form; None if it is not one."""
    try:
        obj = json.loads(raw)
        job_id = obj["job"]
        timestamp = int(obj["ts"])
        attempt = obj.get("attempt")
        payload = obj["payload"]
    except (ValueError, KeyError, TypeError, AttributeError):
        return None
    if not isinstance(job_id, str) or not isinstance(payload, dict):
        return None
    if not isinstance(attempt, str) or not _ATTEMPT_RE.fullmatch(attempt):
        attempt = None
    return _Raw(job_id=job_id, timestamp=timestamp, attempt=attempt, payload=payload)


def _build(raw: _Raw) -> WebhookEvent | None:
    """Decode the payload as `verify` does; None unless a terminal event of its job."""
    try:
        info = decode_job(raw.payload)
    except (ResponseDecodeError, ValueError, TypeError):
        return None
    if info.id != raw.job_id or not info.status.is_terminal:
        return None
    return WebhookEvent(
        job_id=info.id,
        status=info.status,
        job=info,
        timestamp=raw.timestamp,
        payload=raw.payload,
        attempt=raw.attempt,
    )


def _check_name(what: str, value: str) -> str:
    if not isinstance(value, str) or not _NAME_RE.fullmatch(value):
        raise ValueError(f"{what} must be 1-64 characters of [A-Za-z0-9_.:-]")
    return value


def _ms(seconds: float) -> int:
    return max(1, math.ceil(seconds * 1000))


@attrs.frozen
class _HubLink:
    """What a `RedisSlots` uses of its hub (bound methods of the hub)."""

    call: Callable[[str, list[str], list[Any]], Awaitable[Any]]
    require_loop: Callable[[], _Loop]
    running: Callable[[], bool]
    key: Callable[[str, str], str]
    channel: str
    uniform: Callable[[float, float], float]


class RedisHub:
    """
    Shares webhook events and job slots between the processes of one account.

    Waiting side (the same shape as `WebhookReceiver`'s, so a client can use
    either): `future_for`, `release`, `event_for`, `job_for_attempt`, `attach`,
    `detach` and `waiting`.  Publishing side: `publish` (and `publish_threadsafe`).
    Slots: `slots`.

    Args:
        url: A redis-py URL: ``redis://``, ``rediss://`` (TLS), with an ACL user
            and password (``redis://user:password@host:6379/0``) if need be.
        key_prefix: The first part of every key and channel name.
        account: The PixelByte account the processes share (one channel, one
            set of job slots per account).
        event_ttl: Seconds Redis keeps a job's terminal event and an attempt's
            attribution (default 24 h).  A waiter that starts within it still
            sees the event.
        retention: Seconds this process remembers an event it has seen (for
            `event_for`), as `WebhookReceiver`'s *retention*.
        max_events: A hard cap on the events remembered in this process.
        clock: Paces the hub's own pauses (reconnect backoff, slot retries,
            lease renewal) and ages the local memory; I/O timeouts are real.
        on_health: Called with ``True`` once connected and subscribed, with
            ``False`` when Redis becomes unreachable, and with ``True`` again when
            it is back and caught up (see `add_health_callback`).
        ping_interval: Seconds of silence on the subscription after which the hub
            pings Redis; no answer within as long again counts as an outage.
        connect_timeout: Seconds a connection attempt or command may take.
        reconnect_initial: First pause between reconnection attempts; it doubles
            up to *reconnect_max*, with jitter.
        reconnect_max: Longest pause between reconnection attempts.
        max_outbox: Events kept for re-publication while Redis is away.
        redis_options: More keyword arguments for ``redis.asyncio.Redis.from_url``
            (``ssl_ca_certs`` and so on).
        rng: ``uniform(a, b)`` used for jitter; default `random.uniform`.

    .. versionadded:: 0.3.0

    """

    def __init__(
        self,
        url: str,
        *,
        key_prefix: str = "pixelbyte",
        account: str = "default",
        event_ttl: float = 86_400.0,
        retention: float = 1800.0,
        max_events: int = 50_000,
        clock: Clock | None = None,
        on_health: Callable[[bool], object] | None = None,
        ping_interval: float = 5.0,
        connect_timeout: float = 5.0,
        reconnect_initial: float = 0.1,
        reconnect_max: float = 5.0,
        max_outbox: int = 10_000,
        redis_options: Mapping[str, Any] | None = None,
        rng: Callable[[float, float], float] | None = None,
    ) -> None:
        if not isinstance(url, str) or not url:
            raise ValueError("url must be a redis:// or rediss:// URL")
        if not event_ttl >= 1:
            raise ValueError("event_ttl must be at least 1 second")
        if not retention > 0:
            raise ValueError("retention must be a positive number of seconds")
        self._url = url
        self.key_prefix = _check_name("key_prefix", key_prefix)
        self.account = _check_name("account", account)
        self.event_ttl = float(event_ttl)
        self.retention = float(retention)
        self.max_events = max_events
        self.clock: Clock = clock or SystemClock()
        self.ping_interval = ping_interval
        self.connect_timeout = connect_timeout
        self.reconnect_initial = reconnect_initial
        self.reconnect_max = reconnect_max
        self.max_outbox = max_outbox
        self._redis_options = dict(redis_options or {})
        self._uniform = rng or random.uniform
        #: A random id of this hub (this process), in its lease and waiter ids.
        self.instance_id = uuid.uuid4().hex[:12]
        # Hash tag: every key of an account lives in one cluster slot.
        self._base = f"{key_prefix}:{{{account}}}"
        self._channel = f"{self._base}:bus"
        self._state: Literal["new", "started", "closed"] = "new"
        self._loop: _Loop | None = None
        self._redis: aioredis.Redis | None = None
        self._bus: aioredis.Redis | None = None
        self._scripts: dict[str, Any] = {}
        self._listener: asyncio.Task[None] | None = None
        self._checker: asyncio.Task[None] | None = None
        self._first_attempt: asyncio.Future[None] | None = None
        self._outage: asyncio.Future[None] | None = None
        self._healthy = False
        self._subscribed = False
        self._warned = False
        self._down_since: float | None = None
        self._health_callbacks: list[Callable[[bool], object]] = []
        if on_health is not None:
            self._health_callbacks.append(on_health)
        # Guards the structures below: event_for / job_for_attempt may be read
        # from any thread.  Never held while calling out.
        self._lock = threading.Lock()
        # job id -> (clock.monotonic() when seen, its event); an event nobody here
        # waits for is kept parsed but not decoded until asked for.
        self._events: OrderedDict[str, tuple[float, WebhookEvent | _Raw]] = (
            OrderedDict()
        )
        self._attempts: OrderedDict[str, tuple[float, str]] = OrderedDict()
        self._prune_after = math.inf  # when the oldest entry expires
        self._futures: dict[str, asyncio.Future[WebhookEvent]] = {}
        self._waiters: dict[str, int] = {}
        self._clients: dict[WebhookObserver, _Loop | None] = {}
        self._to_check: set[str] = set()
        self._outbox: OrderedDict[str, bytes] = OrderedDict()
        self._slot_groups: dict[str, RedisSlots] = {}
        self.stats: dict[str, int] = {
            "published": 0,
            "duplicates": 0,
            "delivered": 0,
            "reconnects": 0,
            "caught_up": 0,
            "undecodable": 0,
        }

    def __repr__(self) -> str:
        return (
            f"RedisHub(url={self.url!r}, account={self.account!r}, "
            f"state={self._state!r}, healthy={self._healthy}, "
            f"waiting={len(self._waiters)})"
        )

    @property
    def url(self) -> str:
        """The Redis URL with its password masked."""
        return _mask_url(self._url)

    @property
    def healthy(self) -> bool:
        """
        Whether Redis is reachable and this process is subscribed.

        While false, waits should poll (events may be missed until the re-read
        that follows the reconnection) and job slots use their per-process limit.
        """
        return self._healthy

    @property
    def waiting(self) -> int:
        """How many job ids have a waiter in this process right now."""
        return len(self._waiters)

    def outage(self) -> asyncio.Future[None]:
        """
        Return a future that is resolved when Redis becomes unreachable.

        Already done while the hub is unhealthy.  A wait parked on `future_for`
        can watch it too, to go back to polling at once (``sleep_or_until`` on
        either); it is only ever resolved, never cancelled or failed.
        """
        loop = self._require_loop()
        if not self._healthy:
            done: asyncio.Future[None] = loop.create_future()
            done.set_result(None)
            return done
        if self._outage is None:
            self._outage = loop.create_future()
        return self._outage

    def add_health_callback(self, callback: Callable[[bool], object]) -> None:
        """Call *callback(healthy)* on the hub's loop whenever `healthy` changes."""
        self._health_callbacks.append(callback)

    def remove_health_callback(self, callback: Callable[[bool], object]) -> None:
        """Stop calling *callback* (no-op if it was not added)."""
        with contextlib.suppress(ValueError):
            self._health_callbacks.remove(callback)

    # -- lifecycle ---------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def start(self) -> None:
        """
        Connect and subscribe; idempotent.

        Returns after the first connection attempt, whether it worked or not: an
        unreachable Redis is an outage like any other (`healthy` stays false, one
        WARNING is logged, and the hub keeps trying in the background), so an
        application still starts while Redis is down.
        """
        if self._state == "started":
            return
        if self._state == "closed":
            raise RuntimeError("this RedisHub is closed; create a new one")
        loop = asyncio.get_running_loop()
        options: dict[str, Any] = {
            "socket_connect_timeout": self.connect_timeout,
            "socket_timeout": self.connect_timeout,
            # One quick retry on a fresh connection (a pooled one may be stale
            # after a Redis restart); the hub owns longer recoveries.
            "retry": Retry(NoBackoff(), 1),
            **self._redis_options,
            "decode_responses": False,
        }
        client = aioredis.Redis.from_url(self._url, **options)
        self._redis = client
        # The subscription has a client of its own that never reconnects behind
        # our back: redis-py would re-subscribe silently, and the messages sent
        # meanwhile would be lost without the re-read that our reconnect does.
        self._bus = aioredis.Redis.from_url(
            self._url, **{**options, "retry": Retry(NoBackoff(), 0)}
        )
        self._scripts = {
            "publish": client.register_script(_PUBLISH_LUA),
            "acquire": client.register_script(_ACQUIRE_LUA),
            "renew": client.register_script(_RENEW_LUA),
            "release": client.register_script(_RELEASE_LUA),
            "in_use": client.register_script(_IN_USE_LUA),
            "leave": client.register_script(_LEAVE_LUA),
        }
        self._loop = loop
        self._state = "started"
        self._first_attempt = loop.create_future()
        self._listener = loop.create_task(
            self._listen_forever(), name=f"pixelbyte-redis-hub-{self.instance_id}"
        )
        await asyncio.shield(self._first_attempt)

    async def aclose(self) -> None:
        """
        Release this process's job slots, stop listening and disconnect; idempotent.

        Pending futures are cancelled (like `release`).
        """
        if self._state != "started":
            self._state = "closed"
            return
        for group in list(self._slot_groups.values()):
            with anyio.move_on_after(self.connect_timeout):
                await group._close()  # noqa: SLF001 -- the hub owns its slot groups
        self._state = "closed"
        tasks = [t for t in (self._listener, self._checker) if t is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, *_FAULTS):
                await task
        self._healthy = False
        self._subscribed = False
        outage, self._outage = self._outage, None
        if outage is not None and not outage.done():
            outage.set_result(None)  # nothing feeds the waits any more
        with self._lock:
            futures = list(self._futures.values())
            self._futures.clear()
            self._waiters.clear()
            self._clients.clear()
        for future in futures:
            if not future.done():
                future.cancel()
        for client in (self._bus, self._redis):
            if client is not None:
                with contextlib.suppress(*_FAULTS):
                    await client.aclose()

    def _require_loop(self) -> _Loop:
        if self._state != "started" or self._loop is None:
            raise RuntimeError(
                "RedisHub is not started; use 'async with hub:' or 'await hub.start()'"
            )
        loop = asyncio.get_running_loop()
        if loop is not self._loop:
            raise RuntimeError("a RedisHub belongs to the event loop it was started on")
        return loop

    def _running(self) -> bool:
        return self._state == "started"

    def _client(self) -> aioredis.Redis:
        if self._redis is None:  # pragma: no cover -- guarded by _require_loop
            raise RuntimeError("RedisHub is not started")
        return self._redis

    def _key(self, kind: str, name: str) -> str:
        return f"{self._base}:{kind}:{name}"

    async def _call(self, script: str, keys: list[str], args: list[Any]) -> Any:
        """Run one of the hub's Lua scripts; a fault makes the hub unhealthy."""
        try:
            result = await self._scripts[script](keys=keys, args=args)
        except _FAULTS as exc:
            self._trouble(exc)
            raise
        self._command_ok()
        return result

    def _link(self) -> _HubLink:
        """What a slot group needs of its hub."""
        return _HubLink(
            call=self._call,
            require_loop=self._require_loop,
            running=self._running,
            key=self._key,
            channel=self._channel,
            uniform=self._uniform,
        )

    def _jitter(self, seconds: float) -> float:
        return seconds * self._uniform(0.5, 1.0)

    # -- health ------------------------------------------------------------------------

    def _trouble(self, exc: BaseException) -> None:
        """Redis failed us: turn unhealthy (one WARNING per outage)."""
        was = self._healthy
        self._healthy = False
        if self._state != "started":
            return
        if not self._warned:
            self._warned = True
            self._down_since = self.clock.monotonic()
            slots = "".join(
                f"; job slots {g.name!r} fall back to a per-process limit of "
                f"{g.fallback_limit}"
                for g in self._slot_groups.values()
            )
            log.warning(
                "Redis hub %s is unreachable (%s: %s): webhook-fed waits fall back "
                "to polling%s until it is back",
                self.url,
                type(exc).__name__,
                exc,
                slots,
            )
        if was:
            outage, self._outage = self._outage, None
            if outage is not None and not outage.done():
                outage.set_result(None)
            self._tell_health(healthy=False)

    def _command_ok(self) -> None:
        """A command worked: healthy again if the subscription is up too."""
        if self._subscribed and not self._healthy and self._state == "started":
            self._healthy = True
            if self._warned:
                self._warned = False
                down = self.clock.monotonic() - (self._down_since or 0.0)
                log.info("Redis hub %s is back after %.1f s", self.url, down)
            self._tell_health(healthy=True)

    def _tell_health(self, *, healthy: bool) -> None:
        for group in list(self._slot_groups.values()):
            group._health_changed(healthy=healthy)  # noqa: SLF001 -- the hub owns its slot groups
        for callback in list(self._health_callbacks):
            try:
                callback(healthy)
            except Exception:
                log.exception("Redis hub health callback failed")

    # -- the subscription ----------------------------------------------------------------

    def _first_attempt_done(self) -> None:
        if self._first_attempt is not None and not self._first_attempt.done():
            self._first_attempt.set_result(None)

    async def _listen_forever(self) -> None:
        """The hub's one background task: subscribe, catch up, route; reconnect."""
        delay = self.reconnect_initial
        client = self._bus
        if client is None:  # pragma: no cover -- made by start()
            return
        try:
            while self._running():
                pubsub: Any = client.pubsub()
                try:
                    await self._subscribe(pubsub)
                    delay = self.reconnect_initial
                    await self._catch_up()
                    self._first_attempt_done()
                    await self._pump(pubsub)
                except Exception as exc:
                    self._subscribed = False
                    if not isinstance(exc, _FAULTS):
                        log.exception("Redis hub listener failed; reconnecting")
                    self._trouble(exc)
                finally:
                    self._subscribed = False
                    with contextlib.suppress(*_FAULTS, RuntimeError):
                        await pubsub.aclose()
                self._first_attempt_done()
                if not self._running():
                    break
                await self.clock.sleep(self._jitter(delay))
                delay = min(delay * 2, self.reconnect_max)
                self.stats["reconnects"] += 1
        finally:
            self._first_attempt_done()

    async def _subscribe(self, pubsub: Any) -> None:
        with anyio.fail_after(self.connect_timeout):
            await pubsub.subscribe(self._channel)
            while True:
                message = await pubsub.get_message(timeout=self.connect_timeout)
                if message is not None and message.get("type") == "subscribe":
                    return

    async def _catch_up(self) -> None:
        """
        Catch up once subscribed: re-read, publish the outbox, turn healthy.

        The stored state of every job with a waiter is read again (events that
        came while this process was away), the events kept while Redis was away
        are published, and only then is the hub declared healthy.
        """
        self._subscribed = True
        with self._lock:
            ids = [j for j in self._waiters if j not in self._events]
            self._to_check.clear()
        resolved = await self._read_stored(ids)
        self.stats["caught_up"] += resolved
        await self._flush_outbox()
        if resolved:
            log.info(
                "Redis hub %s: %d waiting jobs ended while it was away",
                self.url,
                resolved,
            )
        self._command_ok()

    async def _pump(self, pubsub: Any) -> None:
        """Route messages until the connection fails (ping when it is quiet)."""
        pinged = False
        while True:
            message = await pubsub.get_message(timeout=self.ping_interval)
            if message is None:
                if pinged:
                    raise TimeoutError(
                        f"no answer to PING within {self.ping_interval:g}s"
                    )
                await pubsub.ping()
                pinged = True
                continue
            pinged = False
            kind = message.get("type")
            if kind == "message":
                data = message.get("data")
                if isinstance(data, bytes):
                    self._on_message(data)
            elif kind == "subscribe":
                # Subscribed again without us (cannot happen with no retries,
                # but if it does, what was sent meanwhile must be read).
                await self._catch_up()

    def _on_message(self, data: bytes) -> None:
        kind, body = data[:1], data[1:]
        if kind == _RELEASED:
            group = self._slot_groups.get(body.decode("utf-8", "replace"))
            if group is not None:
                group._notify()  # noqa: SLF001 -- the hub owns its slot groups
            return
        if kind not in {_EVENT, _CONFLICT}:
            return
        raw = _parse(body)
        if raw is None:
            self._undecodable()
            return
        self._deliver(raw, attributed=kind == _EVENT)

    def _undecodable(self) -> None:
        self.stats["undecodable"] += 1
        log.warning("undecodable event in the Redis hub; ignored")

    async def _read_stored(self, job_ids: list[str]) -> int:
        """Deliver the stored events of *job_ids*; return how many were found."""
        found = 0
        client = self._client()
        for start in range(0, len(job_ids), _BATCH):
            batch = job_ids[start : start + _BATCH]
            values = await client.mget([self._key("ev", j) for j in batch])
            for job_id, raw in zip(batch, values, strict=True):
                if isinstance(raw, bytes) and raw[:1] in {_EVENT, _CONFLICT}:
                    parsed = _parse(raw[1:])
                    if parsed is None or parsed.job_id != job_id:
                        self._undecodable()
                    elif self._deliver(parsed, attributed=raw[:1] == _EVENT):
                        found += 1
        return found

    def _ensure_checker(self) -> None:
        if self._checker is None or self._checker.done():
            loop = self._loop
            if loop is not None and self._state == "started":
                self._checker = loop.create_task(self._check_stored())

    async def _check_stored(self) -> None:
        """
        Read the stored state of new waiters' jobs (one task at a time, MGET batches).

        The subscription is up before the read, so an event published after it
        arrives as a message: no gap.  If the subscription is down, the re-read
        after the reconnection covers these jobs.
        """
        delay = self.reconnect_initial
        while self._to_check and self._state == "started" and self._subscribed:
            with self._lock:
                chunk = list(itertools.islice(self._to_check, _BATCH))
                self._to_check.difference_update(chunk)
                batch = [
                    j for j in chunk if j in self._waiters and j not in self._events
                ]
            if not batch:
                continue
            try:
                await self._read_stored(batch)
            except _FAULTS as exc:
                self._to_check.update(batch)
                self._trouble(exc)
                await self.clock.sleep(self._jitter(delay))
                delay = min(delay * 2, self.reconnect_max)
                continue
            self._command_ok()

    # -- waiting ---------------------------------------------------------------------------

    def _prune(self, now: float) -> None:
        """Forget what is older than *retention* or over *max_events* (lock held)."""
        events, attempts = self._events, self._attempts
        if now < self._prune_after and max(len(events), len(attempts)) <= (
            self.max_events
        ):
            return  # nothing is old enough yet: amortised O(1)
        horizon = now - self.retention
        oldest = math.inf
        for entries in (events, attempts):
            while entries and (
                len(entries) > self.max_events
                or next(iter(entries.values()))[0] <= horizon
            ):
                entries.popitem(last=False)
            if entries:
                oldest = min(oldest, next(iter(entries.values()))[0])
        self._prune_after = oldest + self.retention

    def _deliver(self, item: WebhookEvent | _Raw, *, attributed: bool) -> bool:
        """Record a terminal event and feed this process's waiters and clients."""
        if isinstance(item, WebhookEvent) and not item.status.is_terminal:
            return False
        job_id = item.job_id
        with self._lock:
            now = self.clock.monotonic()
            self._prune(now)
            attempt = item.attempt
            if attributed and attempt is not None and attempt not in self._attempts:
                self._attempts[attempt] = (now, job_id)
                self._prune_after = min(self._prune_after, now + self.retention)
            if job_id in self._events:
                return False
            self._prune_after = min(self._prune_after, now + self.retention)
            wanted = job_id in self._futures or bool(self._clients)
            if not wanted:
                # Nobody here waits: keep it (decoded when asked for) and go.
                self._events[job_id] = (now, item)
                self._to_check.discard(job_id)
                self.stats["delivered"] += 1
                return True
        event = item
        if wanted and isinstance(item, _Raw):
            built = _build(item)
            if built is None:
                self._undecodable()
                return False
            event = built
        with self._lock:
            if job_id in self._events:
                return False
            self._events[job_id] = (now, event)
            future = self._futures.pop(job_id, None)
            self._to_check.discard(job_id)
            clients = list(self._clients.items())
            self._prune(now)
        self.stats["delivered"] += 1
        if isinstance(event, WebhookEvent):
            self._fan_out(event, future, clients)
        return True

    def _fan_out(
        self,
        event: WebhookEvent,
        future: asyncio.Future[WebhookEvent] | None,
        clients: list[tuple[WebhookObserver, _Loop | None]],
    ) -> None:
        if future is not None and not future.done():
            future.set_result(event)
        here = self._loop
        for client, loop in clients:
            if loop is None or loop is here:
                self._feed(client, event)
            else:
                with contextlib.suppress(RuntimeError):  # that loop is closed
                    loop.call_soon_threadsafe(self._feed, client, event)

    @staticmethod
    def _feed(client: WebhookObserver, event: WebhookEvent) -> None:
        try:
            client._webhook_event(event)  # noqa: SLF001 -- client and hub cooperate
        except Exception:
            log.exception("client failed to take the event of %s", event.job_id)

    def future_for(self, job_id: str) -> asyncio.Future[WebhookEvent]:
        """
        Return a future resolved by *job_id*'s terminal event from any process.

        One future per job id is shared by every waiter of this process, and no
        task is made per job (new job ids are checked against the stored state in
        batches).  Already done if the event is known.  Call `release` with the
        same id when you stop waiting.

        Raises:
            RuntimeError: The hub is not started, or runs on another event loop.

        """
        loop = self._require_loop()
        known = self.event_for(job_id)
        new = False
        with self._lock:
            self._waiters[job_id] = self._waiters.get(job_id, 0) + 1
            future = self._futures.get(job_id)
            if known is None and (future is None or future.done()):
                future = self._futures[job_id] = loop.create_future()
                new = True
        if known is not None or future is None:
            done: asyncio.Future[WebhookEvent] = loop.create_future()
            if known is not None:
                done.set_result(known)
            return done
        if new and self._subscribed:
            self._to_check.add(job_id)
            self._ensure_checker()
        return future

    def release(self, job_id: str) -> None:
        """Forget *job_id*'s future once its last waiter is gone (no leak)."""
        with self._lock:
            count = self._waiters.get(job_id, 0) - 1
            if count > 0:
                self._waiters[job_id] = count
                return
            self._waiters.pop(job_id, None)
            future = self._futures.pop(job_id, None)
            self._to_check.discard(job_id)
        if future is not None and not future.done():
            future.cancel()

    def event_for(self, job_id: str) -> WebhookEvent | None:
        """Return the event this process has seen for *job_id*, if it is kept."""
        with self._lock:
            self._prune(self.clock.monotonic())
            entry = self._events.get(job_id)
        if entry is None:
            return None
        seen, value = entry
        if isinstance(value, WebhookEvent):
            return value
        event = _build(value)
        with self._lock:
            if self._events.get(job_id) is entry:
                if event is None:
                    del self._events[job_id]
                else:
                    self._events[job_id] = (seen, event)
        if event is None:
            self._undecodable()
        return event

    def job_for_attempt(self, attempt: str) -> str | None:
        """
        Return the job id that an event seen here attributed *attempt* to.

        The first delivery naming an attempt wins, across all processes.  A process
        that started after the delivery can ask Redis with `fetch_attempt`.
        """
        with self._lock:
            self._prune(self.clock.monotonic())
            entry = self._attempts.get(attempt)
        return None if entry is None else entry[1]

    async def fetch_event(self, job_id: str) -> WebhookEvent | None:
        """Return *job_id*'s event from this process's memory, else from Redis."""
        self._require_loop()
        event = self.event_for(job_id)
        if event is not None or not self._healthy:
            return event
        await self._read_stored([job_id])
        return self.event_for(job_id)

    async def fetch_attempt(self, attempt: str) -> str | None:
        """Return the job id *attempt* is attributed to, from memory or Redis."""
        self._require_loop()
        job_id = self.job_for_attempt(attempt)
        if job_id is not None or not self._healthy:
            return job_id
        if not _ATTEMPT_RE.fullmatch(attempt):
            return None
        raw = await self._client().get(self._key("at", attempt))
        return raw.decode() if isinstance(raw, bytes) else None

    async def refresh(self) -> int:
        """
        Re-read the stored state of every job with a waiter here.

        The hub does this by itself after each reconnection.  Returns how many of
        those jobs turned out to have ended.
        """
        self._require_loop()
        with self._lock:
            ids = [j for j in self._waiters if j not in self._events]
        return await self._read_stored(ids)

    def attach(self, client: WebhookObserver) -> None:
        """Let *client* observe every event (``client._webhook_event``)."""
        try:
            loop: _Loop | None = asyncio.get_running_loop()
        except RuntimeError:
            loop = None
        with self._lock:
            if self._clients.get(client) is None:
                self._clients[client] = loop

    def detach(self, client: WebhookObserver) -> None:
        """Stop feeding *client*."""
        with self._lock:
            self._clients.pop(client, None)

    # -- publishing ------------------------------------------------------------------------

    async def publish(self, event: WebhookEvent) -> bool:
        """
        Share a verified *event* with every process; True if it is new everywhere.

        De-duplicated by job id across processes (``SET NX`` with *event_ttl*), the
        terminal event is stored for late waiters, ``event.attempt`` is attributed
        to the job (first wins), and this process's waiters are fed at once.
        Events that are not terminal are only attributed (the API documents none).

        Raises:
            HubUnavailable: Redis could not be reached.  The event was handed to
                this process's waiters anyway and is published again on
                reconnection; answer the delivery with a 5xx so the API retries.
            ValueError: The payload cannot be serialised to JSON.

        """
        self._require_loop()
        message = _encode(event)
        terminal = event.status.is_terminal
        keys = [self._key("ev", event.job_id)]
        attempt = event.attempt
        if attempt is not None and _ATTEMPT_RE.fullmatch(attempt):
            keys.append(self._key("at", attempt))
        try:
            first, owner = await self._scripts["publish"](
                keys=keys,
                args=[
                    message,
                    math.ceil(self.event_ttl),
                    event.job_id,
                    self._channel,
                    "1" if terminal else "0",
                ],
            )
        except _FAULTS as exc:
            self._trouble(exc)
            fresh = self._deliver(event, attributed=True)
            if terminal:
                with self._lock:
                    self._outbox[event.job_id] = message
                    while len(self._outbox) > self.max_outbox:
                        self._outbox.popitem(last=False)
            raise HubUnavailable(
                f"Redis hub {self.url} is unreachable; the event of {event.job_id} "
                f"reached this process{'' if fresh else ' (again)'} and is kept for "
                "re-publication"
            ) from exc
        self._command_ok()
        if owner is not None:
            log.warning(
                "webhook for %s names attempt %s, already attributed to %s; ignored",
                event.job_id,
                attempt,
                owner.decode() if isinstance(owner, bytes) else owner,
            )
        if not terminal:
            log.info("webhook for %s with status %s", event.job_id, event.status)
            return True
        if first:
            self.stats["published"] += 1
            self._deliver(event, attributed=owner is None)
        else:
            self.stats["duplicates"] += 1
        if self._outbox:
            try:
                await self._flush_outbox()
            except _FAULTS as exc:
                self._trouble(exc)
        return bool(first)

    def publish_threadsafe(
        self, event: WebhookEvent
    ) -> concurrent.futures.Future[bool]:
        """
        Schedule `publish` on the hub's event loop from any thread.

        For synchronous frameworks (a Django or Flask view in a worker thread): the
        returned future gives `publish`'s answer (or raises `HubUnavailable`), so
        the view can wait a bounded time for it, e.g. ``.result(timeout=5)``.
        Never block on it from the hub's own loop; ``await hub.publish`` there.

        Raises:
            RuntimeError: The hub is not started, or its loop is closed.

        """
        loop = self._loop
        if self._state != "started" or loop is None or loop.is_closed():
            raise RuntimeError("RedisHub is not running")
        return asyncio.run_coroutine_threadsafe(self.publish(event), loop)

    async def _flush_outbox(self) -> None:
        """Publish the events kept while Redis was away (stops at the first fault)."""
        while self._outbox:
            with self._lock:
                job_id, message = next(iter(self._outbox.items()))
            parsed = _parse(message)
            if parsed is not None:
                keys = [self._key("ev", job_id)]
                if parsed.attempt is not None:
                    keys.append(self._key("at", parsed.attempt))
                await self._scripts["publish"](
                    keys=keys,
                    args=[
                        message,
                        math.ceil(self.event_ttl),
                        job_id,
                        self._channel,
                        "1",
                    ],
                )
            with self._lock:
                if self._outbox.get(job_id) is message:
                    del self._outbox[job_id]

    # -- job slots -------------------------------------------------------------------------

    def slots(
        self,
        limit: int,
        *,
        name: str = "jobs",
        lease: float = 60.0,
        fallback_limit: int | None = None,
        retry_interval: float = 1.0,
    ) -> RedisSlots:
        """
        Return the account-wide job slots *name* (one object per name and hub).

        See `RedisSlots` for the arguments.

        Raises:
            ValueError: The group exists here with other settings.

        """
        group = self._slot_groups.get(name)
        if group is None:
            group = RedisSlots(
                self,
                limit,
                name=name,
                lease=lease,
                fallback_limit=fallback_limit,
                retry_interval=retry_interval,
            )
            self._slot_groups[name] = group
        elif (group.limit, group.lease) != (limit, lease):
            raise ValueError(
                f"job slots {name!r} exist with limit={group.limit}, "
                f"lease={group.lease:g}"
            )
        return group


class RedisSlots:
    """
    An account-wide counting semaphore with leases, kept in Redis.

    A lease is a member of a sorted set scored by its expiry (Redis server time),
    admitted by a Lua script that first drops expired leases, so a process that
    dies (even ``kill -9``) frees its slots when its leases expire.  One task per
    process renews all of its leases every *lease*/3 seconds.

    **Fairness.**  Waiters queue in Redis in arrival order (FIFO across all
    processes): a waiter is admitted only when fewer waiters are ahead of it than
    there are free slots.  A release wakes the waiters of every process at once
    (a pub/sub message); a slot freed by an expired lease is noticed within
    *retry_interval* (jittered).  A waiter whose process died leaves the queue
    after ``max(2 s, 5 × retry_interval)``.

    **Redis away.**  Admission falls back to a per-process limit, *fallback_limit*
    (default: *limit* divided by the number of processes last seen renewing
    leases, at least 1), counting every lease this process holds.  When Redis is
    back, every lease held is registered again, so the account-wide count is true
    again even if it briefly exceeds *limit*.

    Made by `RedisHub.slots`.

    Args:
        hub: The `RedisHub`.
        limit: Slots for the whole account (use the same value in every process).
        name: Several independent groups may share an account.
        lease: Seconds a lease lives without renewal.
        fallback_limit: The per-process limit while Redis is away.
        retry_interval: Mean pause between a waiter's attempts (jittered).

    .. versionadded:: 0.3.0

    """

    def __init__(
        self,
        hub: RedisHub,
        limit: int,
        *,
        name: str = "jobs",
        lease: float = 60.0,
        fallback_limit: int | None = None,
        retry_interval: float = 1.0,
    ) -> None:
        if not isinstance(limit, int) or limit < 1:
            raise ValueError("limit must be a positive integer")
        if not lease > 0:
            raise ValueError("lease must be a positive number of seconds")
        if fallback_limit is not None and fallback_limit < 1:
            raise ValueError("fallback_limit must be a positive integer")
        if not retry_interval > 0:
            raise ValueError("retry_interval must be a positive number of seconds")
        self.hub = hub
        self.limit = limit
        self.name = _check_name("name", name)
        self.lease = float(lease)
        self.retry_interval = float(retry_interval)
        self._fallback = fallback_limit
        self._link = hub._link()  # noqa: SLF001 -- a slot group is part of its hub
        key = self._link.key
        self._keys = [
            key("slots", name),
            key("slots-queue", name),
            key("slots-queue-expiry", name),
            key("slots-seq", name),
        ]
        self._procs_key = key("slots-procs", name)
        self._queue_ttl = max(2.0, 5 * self.retry_interval)
        # lease id -> the job id it is bound to (None until `bind`).
        self._held: dict[str, str | None] = {}
        self._by_job: dict[str, str] = {}
        self._ids = itertools.count()
        self._wake: asyncio.Future[None] | None = None
        self._kick: asyncio.Future[None] | None = None
        self._renewer: asyncio.Task[None] | None = None
        self._releaser: asyncio.Task[None] | None = None
        self._to_release: list[str] = []
        # Renewals and releases are serialised, so a renewal never re-adds a
        # lease that a release has just removed.
        self._sync = asyncio.Lock()
        self._processes = 1
        #: The most leases seen in use account-wide right after an admission.
        self.peak = 0
        #: Admissions made under the per-process fallback limit.
        self.fallback_admissions = 0

    def __repr__(self) -> str:
        return (
            f"RedisSlots(name={self.name!r}, limit={self.limit}, "
            f"held={len(self._held)}, lease={self.lease:g})"
        )

    @property
    def fallback_limit(self) -> int:
        """The per-process limit used while Redis is away."""
        if self._fallback is not None:
            return self._fallback
        return max(1, self.limit // max(1, self._processes))

    @property
    def held(self) -> int:
        """How many leases this process holds."""
        return len(self._held)

    def leases(self) -> dict[str, str | None]:
        """Return this process's leases, each with the job id bound to it."""
        return dict(self._held)

    # -- waking ----------------------------------------------------------------------------

    def _notify(self) -> None:
        wake, self._wake = self._wake, None
        if wake is not None and not wake.done():
            wake.set_result(None)

    def _wake_future(self) -> asyncio.Future[None]:
        if self._wake is None or self._wake.done():
            self._wake = asyncio.get_running_loop().create_future()
        return self._wake

    def _health_changed(self, *, healthy: bool) -> None:
        self._notify()
        if healthy:
            self._kick_renewer()

    def _kick_renewer(self) -> None:
        # The renewer makes a new future before each renewal, so a kick during
        # one is not lost: it renews again at once.
        if self._kick is not None and not self._kick.done():
            self._kick.set_result(None)

    def _spawn(self, coro: Coroutine[Any, Any, None], what: str) -> asyncio.Task[None]:
        loop = self._link.require_loop()
        return loop.create_task(coro, name=f"pixelbyte-redis-slots-{self.name}-{what}")

    # -- acquiring ------------------------------------------------------------------------

    def _new_id(self, kind: str) -> str:
        return f"{self.hub.instance_id}:{kind}{next(self._ids)}"

    async def acquire(self, timeout: float | None = None) -> str:
        """
        Wait for a slot and return its lease id.

        Args:
            timeout: Seconds to wait at most (None: until a slot frees).  One
                attempt is always made, even with 0.

        Raises:
            RequestTimeout: No slot freed in time.
            RuntimeError: The hub is not started (or was closed meanwhile).

        """
        link = self._link
        link.require_loop()
        self._ensure_renewer()
        clock = self.hub.clock
        deadline = clock.monotonic() + (math.inf if timeout is None else timeout)
        waiter = self._new_id("w")
        lease = self._new_id("l")
        queued = False
        try:
            while True:
                if not link.running():
                    raise RuntimeError("the RedisHub of these job slots is closed")
                pause = _MAX_PAUSE
                if self.hub.healthy:
                    args = [
                        self.limit,
                        _ms(self.lease),
                        waiter,
                        lease,
                        _ms(self._queue_ttl),
                    ]
                    try:
                        granted, _rank, used = await link.call(
                            "acquire", self._keys, args
                        )
                    except _FAULTS:
                        continue  # the hub is unhealthy now: fall back below
                    if granted:
                        queued = False
                        self.peak = max(self.peak, int(used))
                        self._held[lease] = None
                        return lease
                    queued = True
                    pause = self.retry_interval * link.uniform(0.5, 1.5)
                elif len(self._held) < self.fallback_limit:
                    self.fallback_admissions += 1
                    self._held[lease] = None
                    return lease
                remaining = deadline - clock.monotonic()
                if remaining <= 0:
                    raise RequestTimeout(
                        f"no job slot freed within {timeout}s ({self.limit} slots "
                        f"of account {self.hub.account!r}; {len(self._held)} held "
                        "by this process)",
                        request_sent=False,
                    )
                await sleep_or_until(clock, min(pause, remaining), self._wake_future())
        finally:
            if queued:
                # Leave the queue at once rather than block it until expiry.
                with (
                    anyio.move_on_after(self.hub.connect_timeout, shield=True),
                    contextlib.suppress(*_FAULTS),
                ):
                    await link.call("leave", self._keys[1:3], [waiter])

    def bind(self, lease: str, job_id: str) -> None:
        """Note that *lease* is the slot of *job_id* (see `release_job`)."""
        if lease in self._held:
            self._held[lease] = job_id
            self._by_job[job_id] = lease

    def adopt(self, job_id: str) -> str:
        """
        Count a job already in flight (found after a restart) without waiting.

        The lease is registered in Redis at once by the renewal task, even past
        *limit*.
        """
        self._link.require_loop()
        self._ensure_renewer()
        existing = self._by_job.get(job_id)
        if existing is not None:
            return existing
        lease = self._new_id("a")
        self._held[lease] = job_id
        self._by_job[job_id] = lease
        self._kick_renewer()
        return lease

    # -- releasing ------------------------------------------------------------------------

    def _forget(self, lease: str) -> bool:
        if lease not in self._held:
            return False
        job_id = self._held.pop(lease)
        if job_id is not None and self._by_job.get(job_id) == lease:
            del self._by_job[job_id]
        self._notify()
        return True

    async def release(self, lease: str) -> None:
        """Give *lease* back (no-op if this process does not hold it)."""
        if self._forget(lease):
            await self._release_in_redis([lease])

    def release_soon(self, lease: str) -> None:
        """Give *lease* back now, and to Redis from a background task (sync code)."""
        if not self._forget(lease):
            return
        self._to_release.append(lease)
        if (self._releaser is None or self._releaser.done()) and self._link.running():
            self._releaser = self._spawn(self._drain_releases(), "release")

    def release_job(self, job_id: str) -> bool:
        """Give back the lease bound to *job_id* (`release_soon`); False if none."""
        lease = self._by_job.get(job_id)
        if lease is None:
            return False
        self.release_soon(lease)
        return True

    async def _drain_releases(self) -> None:
        while self._to_release:
            batch, self._to_release = self._to_release, []
            await self._release_in_redis(batch)

    async def _release_in_redis(self, leases: list[str]) -> None:
        """ZREM *leases* and tell every process; a lease Redis misses expires."""
        if not self.hub.healthy:
            return
        message = _RELEASED + self.name.encode()
        async with self._sync:
            with contextlib.suppress(*_FAULTS):
                await self._link.call(
                    "release", self._keys[:1], [self._link.channel, message, *leases]
                )

    # -- renewing ------------------------------------------------------------------------

    def _ensure_renewer(self) -> None:
        if self._renewer is None or self._renewer.done():
            self._renewer = self._spawn(self._renew_forever(), "renew")

    async def _renew_forever(self) -> None:
        """This process's one renewal task for all of its leases."""
        clock = self.hub.clock
        loop = asyncio.get_running_loop()
        while True:
            kick = self._kick = loop.create_future()
            with contextlib.suppress(*_FAULTS):
                await self._renew(list(self._held))
            await sleep_or_until(clock, self.lease / 3, kick)

    async def _renew(self, leases: Iterable[str]) -> int:
        async with self._sync:
            held = [lease for lease in leases if lease in self._held]
            added, processes = await self._link.call(
                "renew",
                [self._keys[0], self._procs_key],
                [_ms(self.lease), self.hub.instance_id, *held],
            )
        self._processes = max(1, int(processes))
        if added:
            log.info(
                "job slots %r: registered %d leases of this process again",
                self.name,
                added,
            )
        return int(added)

    async def renew(self, lease: str) -> None:
        """
        Extend *lease* by *lease* seconds now (the background task does it for all).

        Raises:
            HubUnavailable: Redis could not be reached.

        """
        self._link.require_loop()
        try:
            await self._renew([lease])
        except _FAULTS as exc:
            raise HubUnavailable(f"could not renew lease {lease}") from exc

    async def in_use(self) -> int:
        """Return how many leases are alive account-wide (read from Redis)."""
        self._link.require_loop()
        try:
            used = await self._link.call("in_use", self._keys[:1], [])
        except _FAULTS as exc:
            raise HubUnavailable("could not count the job slots in use") from exc
        return int(used)

    async def _close(self) -> None:
        """Stop renewing and give back every lease of this process."""
        tasks = [t for t in (self._renewer, self._releaser) if t is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, *_FAULTS):
                await task
        leases = list(self._held) + self._to_release
        self._held.clear()
        self._by_job.clear()
        self._to_release = []
        if leases:
            await self._release_in_redis(leases)
        self._notify()
