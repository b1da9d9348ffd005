"""
The hub's link to Redis: its clients and scripts, the subscription, and health.

`RedisLink` connects (one client for commands, one for the subscription that never
reconnects behind the hub's back), runs the hub's one listener task (subscribe,
catch up, route messages; reconnect with jittered backoff), and owns health:
unhealthy at the first fault (one WARNING per outage, the outage future resolved,
the health callbacks told) and healthy again once subscribed and caught up.  It
also holds the import of redis-py (a missing extra fails with one clear message),
the faults that count as Redis being away, and `HubUnavailable`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Literal, Protocol

import anyio


try:
    import redis.asyncio as aioredis
    from redis.asyncio.retry import Retry
    from redis.backoff import NoBackoff
    from redis.exceptions import (
        AuthenticationError,
        AuthenticationWrongNumberOfArgsError,
        NoPermissionError,
        RedisError,
    )
except ImportError as exc:  # pragma: no cover -- exercised only without the extra
    raise ImportError(
        "pixelbyte_async.redis needs redis-py: pip install 'pixelbyte-async[redis]'"
    ) from exc

from pixelbyte_async._clock import Clock
from pixelbyte_async._errors import PixelByteError

from ._codec import PUBLISH_LUA, WATCH_LUA, mask_url
from ._slot_lua import (
    ACQUIRE_LUA,
    BIND_LUA,
    IN_USE_LUA,
    LEAVE_LUA,
    RELEASE_LUA,
    RENEW_LUA,
)


__all__ = ["FAULTS", "HubSettings", "HubUnavailable", "Loop", "RedisLink"]

log = logging.getLogger("pixelbyte_async")

Loop = asyncio.AbstractEventLoop
# What a broken or absent Redis raises through redis-py (and our own deadlines).
FAULTS: tuple[type[BaseException], ...] = (RedisError, OSError, TimeoutError)


class HubUnavailable(PixelByteError, ConnectionError):
    """
    Redis could not be reached, so the hub could not share an event.

    The event still reached this process's waiters and is published again once
    Redis is back; answer the webhook delivery with a 5xx so the API retries it.

    .. versionadded:: 0.3.0
    """

    retryable = True


class HubSettings(Protocol):
    """The settings of a `RedisHub` that its parts read, as the hub has them now."""

    instance_id: str
    clock: Clock
    event_ttl: float
    retention: float
    max_events: int
    max_outbox: int
    ping_interval: float
    connect_timeout: float
    publish_timeout: float
    reconnect_initial: float
    reconnect_max: float
    stats: dict[str, int]


#: Connections of the hub's client for commands (``redis_options`` may say more).
_MAX_CONNECTIONS = 32


def _connect(
    url: str, redis_options: Mapping[str, Any], timeout: float
) -> tuple[aioredis.Redis, aioredis.Redis, dict[str, Any]]:
    """Make the client for commands, the one for the subscription, and the scripts."""
    options: dict[str, Any] = {
        "socket_connect_timeout": timeout,
        "socket_timeout": timeout,
        # One quick retry on a fresh connection (a pooled one may be stale
        # after a Redis restart); the hub owns longer recoveries.
        "retry": Retry(NoBackoff(), 1),
        **redis_options,
        "decode_responses": False,
    }
    # Callers wait for a free connection (bounded by *timeout*) instead of failing:
    # redis-py's default pool raises at its 100th concurrent command, which would
    # turn a burst of submits into a false outage.
    pool = aioredis.BlockingConnectionPool.from_url(
        url, **{"max_connections": _MAX_CONNECTIONS, "timeout": timeout, **options}
    )
    client = aioredis.Redis.from_pool(pool)
    # The subscription has a client of its own that never reconnects behind
    # our back: redis-py would re-subscribe silently, and the messages sent
    # meanwhile would be lost without the re-read that our reconnect does.
    bus = aioredis.Redis.from_url(url, **{**options, "retry": Retry(NoBackoff(), 0)})
    scripts = {
        "publish": client.register_script(PUBLISH_LUA),
        "acquire": client.register_script(ACQUIRE_LUA),
        "renew": client.register_script(RENEW_LUA),
        "release": client.register_script(RELEASE_LUA),
        "bind": client.register_script(BIND_LUA),
        "in_use": client.register_script(IN_USE_LUA),
        "leave": client.register_script(LEAVE_LUA),
        "watch": client.register_script(WATCH_LUA),
    }
    return client, bus, scripts


def _configuration(exc: BaseException) -> str | None:
    """What to check when *exc* is the configuration's fault, not an outage."""
    seen: set[int] = set()
    todo: list[BaseException | None] = [exc]
    while todo:
        found = todo.pop()
        if found is None or id(found) in seen:
            continue
        seen.add(id(found))
        if isinstance(
            found, AuthenticationError | AuthenticationWrongNumberOfArgsError
        ):
            return "the user and password in the URL"
        if isinstance(found, NoPermissionError):
            return "the ACL rights of the URL's user (see the deploying guide)"
        if isinstance(found, ssl.SSLError):
            return "the TLS settings (rediss://, ssl_ca_certs in redis_options)"
        todo += [found.__cause__, found.__context__]
    return None


class RedisLink:
    """
    One hub's connection to Redis, its subscription and its health.

    Healthy means that a command worked and the subscription is up.  What the link
    tells the rest of its hub goes through callables: *health_changed* (before the
    health callbacks), *outage_note* (what this process does meanwhile), and, given
    to `start`, *catch_up* (after each subscription) and *on_message*.
    """

    def __init__(
        self,
        hub: HubSettings,
        url: str,
        *,
        base: str,
        redis_options: Mapping[str, Any],
        uniform: Callable[[float, float], float],
        health_changed: Callable[[bool], None],
        outage_note: Callable[[], str],
    ) -> None:
        self._hub = hub
        self._url = url
        self._redis_options = dict(redis_options)
        #: ``uniform(a, b)`` used for jitter.
        self.uniform = uniform
        self._base = base
        #: Prefix of each process's inbox channel (add its `instance_id`).
        self.inbox_prefix = f"{base}:to:"
        #: This process's one channel: the events of the jobs it watches, and the
        #: turns of its slot waiters.  No message goes to every process.
        self.inbox = self.inbox_prefix + hub.instance_id
        self._health_changed = health_changed
        self._outage_note = outage_note
        self._catch_up: Callable[[], Awaitable[None]] | None = None
        self._on_message: Callable[[bytes], None] | None = None
        self._state: Literal["new", "started", "closed"] = "new"
        self._loop: Loop | None = None
        self._redis: aioredis.Redis | None = None
        self._bus: aioredis.Redis | None = None
        #: The hub's Lua scripts by name (registered by `start`).
        self.scripts: dict[str, Any] = {}
        self._listener: asyncio.Task[None] | None = None
        self._first_attempt: asyncio.Future[None] | None = None
        self._outage: asyncio.Future[None] | None = None
        self._healthy = False
        self._subscribed = False
        self._catching_up = False
        self._warned = False
        self._config_said = False
        self._config_error: BaseException | None = None
        self._down_since: float | None = None
        self._health_callbacks: list[Callable[[bool], object]] = []

    @property
    def url(self) -> str:
        """The Redis URL with its password masked."""
        return mask_url(self._url)

    @property
    def state(self) -> Literal["new", "started", "closed"]:
        """Whether the hub is new, started or closed."""
        return self._state

    @property
    def loop(self) -> Loop | None:
        """The event loop the hub was started on."""
        return self._loop

    @property
    def healthy(self) -> bool:
        """Whether Redis is reachable and this process is subscribed."""
        return self._healthy

    @property
    def subscribed(self) -> bool:
        """Whether the subscription is up (the hub may still be catching up)."""
        return self._subscribed

    def outage(self) -> asyncio.Future[None]:
        """Return a future resolved when Redis becomes unreachable (see the hub's)."""
        loop = self.require_loop()
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

    async def start(
        self,
        *,
        catch_up: Callable[[], Awaitable[None]],
        on_message: Callable[[bytes], None],
    ) -> None:
        """Connect and subscribe (see the hub's `start`), feeding *on_message*."""
        if self._state == "started":
            return
        if self._state == "closed":
            raise RuntimeError("this RedisHub is closed; create a new one")
        self._catch_up = catch_up
        self._on_message = on_message
        loop = asyncio.get_running_loop()
        self._redis, self._bus, self.scripts = _connect(
            self._url, self._redis_options, self._hub.connect_timeout
        )
        self._loop = loop
        self._state = "started"
        self._first_attempt = loop.create_future()
        self._listener = loop.create_task(
            self._listen_forever(), name=f"pixelbyte-redis-hub-{self._hub.instance_id}"
        )
        await asyncio.shield(self._first_attempt)

    def close_unstarted(self) -> None:
        """Close a hub that is not running (a no-op on one closed already)."""
        self._state = "closed"

    async def stop(self, *others: asyncio.Task[None] | None) -> None:
        """Stop listening (and cancel *others*, the hub's other tasks); unhealthy."""
        self._state = "closed"
        tasks = [t for t in (self._listener, *others) if t is not None]
        for task in tasks:
            task.cancel()
        if tasks:
            _, late = await asyncio.wait(tasks, timeout=self._hub.connect_timeout)
            if late:
                # A redis-py read can swallow the cancellation: closing the
                # connections ends it (the listener sees the hub closed after it).
                await self.disconnect()
                for task in late:
                    task.cancel()
                await asyncio.wait(late, timeout=self._hub.connect_timeout)
        for task in tasks:
            if task.done() and not task.cancelled():
                task.exception()  # retrieved: a fault while closing is no news
        self._healthy = False
        self._subscribed = False
        outage, self._outage = self._outage, None
        if outage is not None and not outage.done():
            outage.set_result(None)  # nothing feeds the waits any more

    async def disconnect(self) -> None:
        """Close both clients."""
        for client in (self._bus, self._redis):
            if client is not None:
                with contextlib.suppress(*FAULTS):
                    await client.aclose()

    def require_loop(self) -> Loop:
        """Return the hub's loop; raise unless started and running on it."""
        if self._state != "started" or self._loop is None:
            raise RuntimeError(
                "RedisHub is not started; use 'async with hub:' or 'await hub.start()'"
            )
        loop = asyncio.get_running_loop()
        if loop is not self._loop:
            raise RuntimeError("a RedisHub belongs to the event loop it was started on")
        return loop

    def running(self) -> bool:
        """Whether the hub is started and not closed."""
        return self._state == "started"

    def client(self) -> aioredis.Redis:
        """The client for commands."""
        if self._redis is None:  # pragma: no cover -- guarded by require_loop
            raise RuntimeError("RedisHub is not started")
        return self._redis

    def key(self, kind: str, name: str) -> str:
        """The key of *kind* for *name* (every key of an account in one slot)."""
        return f"{self._base}:{kind}:{name}"

    async def call(self, script: str, keys: list[str], args: list[Any]) -> Any:
        """Run one of the hub's Lua scripts; a fault makes the hub unhealthy."""
        try:
            result = await self.scripts[script](keys=keys, args=args)
        except FAULTS as exc:
            self.trouble(exc)
            raise
        self.command_ok()
        return result

    def jitter(self, seconds: float) -> float:
        """*seconds* shortened by up to half, at random."""
        return seconds * self.uniform(0.5, 1.0)

    # -- health ------------------------------------------------------------------------

    @property
    def config_error(self) -> BaseException | None:
        """The last refusal that is the configuration's fault, until a command works."""
        return self._config_error

    def describe(self, exc: BaseException) -> str:
        """*exc* in a few words, never empty (a timeout says how long it waited)."""
        text = str(exc).strip()
        if not text and isinstance(exc, TimeoutError):
            text = f"no answer within {self._hub.connect_timeout:g} s"
            if self._url.startswith("rediss:"):
                text += " (a rediss:// URL against a server without TLS?)"
        return f"{type(exc).__name__}: {text or 'no detail'}"

    def trouble(self, exc: BaseException) -> None:
        """Redis failed us: turn unhealthy (one WARNING per outage, or one ERROR)."""
        was = self._healthy
        self._healthy = False
        if self._state != "started":
            return
        check = _configuration(exc)
        if not (self._warned or self._config_said):
            self._down_since = self._hub.clock.monotonic()
        if check is not None:
            self._config_error = exc
            if not self._config_said:
                self._config_said = True
                log.error(
                    "Redis hub %s refused this process (%s): check %s; it keeps "
                    "trying, and %s meanwhile",
                    self.url,
                    self.describe(exc),
                    check,
                    self._outage_note(),
                )
        elif not self._warned:
            self._warned = True
            log.warning(
                "Redis hub %s is unreachable (%s): %s until it is back",
                self.url,
                self.describe(exc),
                self._outage_note(),
            )
        if was:
            outage, self._outage = self._outage, None
            if outage is not None and not outage.done():
                outage.set_result(None)
            self._tell_health(healthy=False)

    def command_ok(self) -> None:
        """A command worked: healthy again if the subscription is up too."""
        if (
            self._subscribed
            and not self._catching_up
            and not self._healthy
            and self._state == "started"
        ):
            self._healthy = True
            self._config_error = None
            if self._warned or self._config_said:
                self._warned = self._config_said = False
                down = self._hub.clock.monotonic() - (self._down_since or 0.0)
                # A WARNING like the one that said it was away: whoever saw
                # that one (a command line shows warnings) sees this one.
                log.warning("Redis hub %s is back after %.1f s", self.url, down)
            self._tell_health(healthy=True)

    def _tell_health(self, *, healthy: bool) -> None:
        self._health_changed(healthy)
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
        hub = self._hub
        delay = hub.reconnect_initial
        client = self._bus
        if client is None:  # pragma: no cover -- made by start()
            return
        try:
            while self.running():
                pubsub: Any = client.pubsub()
                try:
                    await self._subscribe(pubsub)
                    delay = hub.reconnect_initial
                    await self._subscribed_now()
                    self._first_attempt_done()
                    await self._pump(pubsub)
                except Exception as exc:
                    self._subscribed = False
                    if not isinstance(exc, FAULTS):
                        log.exception("Redis hub listener failed; reconnecting")
                    self.trouble(exc)
                finally:
                    self._subscribed = False
                    with contextlib.suppress(*FAULTS, RuntimeError):
                        await pubsub.aclose()
                self._first_attempt_done()
                if not self.running():
                    break
                await hub.clock.sleep(self.jitter(delay))
                delay = min(delay * 2, hub.reconnect_max)
                hub.stats["reconnects"] += 1
        finally:
            self._first_attempt_done()

    async def _subscribe(self, pubsub: Any) -> None:
        with anyio.fail_after(self._hub.connect_timeout):
            await pubsub.subscribe(self.inbox)
            while True:
                message = await pubsub.get_message(timeout=self._hub.connect_timeout)
                if message is not None and message.get("type") == "subscribe":
                    return

    async def _subscribed_now(self) -> None:
        """Subscribed: catch up (see the hub's), and only then turn healthy."""
        self._subscribed = True
        if self._catch_up is not None:
            # Healthy only once caught up: a command meanwhile does not say so.
            self._catching_up = True
            try:
                await self._catch_up()
            finally:
                self._catching_up = False
        self.command_ok()

    async def _pump(self, pubsub: Any) -> None:
        """Route messages until the connection fails (ping when it is quiet)."""
        pinged = False
        while self.running():  # checked after each read: it may outlive a cancel
            message = await pubsub.get_message(timeout=self._hub.ping_interval)
            if message is None:
                if pinged:
                    raise TimeoutError(
                        f"no answer to PING within {self._hub.ping_interval:g}s"
                    )
                await pubsub.ping()
                pinged = True
                continue
            pinged = False
            kind = message.get("type")
            if kind == "message":
                data = message.get("data")
                if isinstance(data, bytes) and self._on_message is not None:
                    self._on_message(data)
                    # A turn for the waits this message woke, before redis-py
                    # reads the next one.
                    await asyncio.sleep(0)
            elif kind == "subscribe":
                # Subscribed again without us (cannot happen with no retries,
                # but if it does, what was sent meanwhile must be read).
                await self._subscribed_now()
