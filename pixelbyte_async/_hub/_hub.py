"""
`RedisHub`: the public face of the hub, composing its parts.

The hub keeps its settings and its public methods; the work is done by its parts,
each of which reads the settings from the hub as they are now: the `RedisLink`
(connection, subscription, health), the `EventMemory` (events seen here, waiters,
observers), the `EventExchange` (publishing and reading events in Redis) and the
`SlotGroups` (its `RedisSlots` by name).  The hub wires them together: health goes
to the slot groups first, a release message wakes a group's waiters, and each
subscription is followed by the exchange's catch-up.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import random
import uuid
from collections.abc import Callable, Mapping
from types import TracebackType
from typing import Any, Self

from pixelbyte_async._clock import Clock, SystemClock
from pixelbyte_async._handoff import WebhookObserver
from pixelbyte_async._signing import WebhookEvent

from ._codec import check_name
from ._events import EventExchange
from ._ledger import RedisLedger
from ._link import RedisLink
from ._memory import EventMemory
from ._slots import DEFAULT_SETTLE, RedisSlots, SlotGroups


__all__ = ["RedisHub"]

# The counters of `RedisHub.stats`, all 0 at first.
_STATS = (
    "published",
    "duplicates",
    "delivered",
    "reconnects",
    "caught_up",
    "undecodable",
)


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
        account: The PixelByte account the processes share (one set of keys and
            channels, one set of job slots per account).
        event_ttl: Seconds Redis keeps a job's terminal event and an attempt's
            attribution (default 24 h).  A waiter that starts within it still
            sees the event.  Also how long a process stays registered for the
            event of a job it watches (it is sent only to those).
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
        publish_timeout: Seconds a `publish` may take (default 2): well inside a
            webhook receiver's read timeout, so a partition from Redis is answered
            503 (the API retries) and not with a dropped connection.  While the
            hub knows Redis is away, a publish fails at once.
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
        publish_timeout: float = 2.0,
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
        self.key_prefix = check_name("key_prefix", key_prefix)
        self.account = check_name("account", account)
        self.event_ttl = float(event_ttl)
        self.retention = float(retention)
        self.max_events = max_events
        self.clock: Clock = clock or SystemClock()
        self.ping_interval = ping_interval
        self.connect_timeout = connect_timeout
        if not publish_timeout > 0:
            raise ValueError("publish_timeout must be a positive number of seconds")
        self.publish_timeout = float(publish_timeout)
        self.reconnect_initial = reconnect_initial
        self.reconnect_max = reconnect_max
        self.max_outbox = max_outbox
        #: A random id of this hub (this process), in its lease and waiter ids.
        self.instance_id = uuid.uuid4().hex[:12]
        self.stats: dict[str, int] = dict.fromkeys(_STATS, 0)
        self._slot_groups = SlotGroups()
        self._link = RedisLink(
            self,
            url,
            # Hash tag: every key of an account lives in one cluster slot.
            base=f"{key_prefix}:{{{account}}}",
            redis_options=redis_options or {},
            uniform=rng or random.uniform,
            health_changed=self._slot_groups.health_changed,
            outage_note=self._outage_note,
        )
        if on_health is not None:
            self._link.add_health_callback(on_health)
        self._memory = EventMemory(self, self._link)
        self._exchange = EventExchange(
            self, self._link, self._memory, released=self._slot_groups.released
        )
        self._ledgers: dict[str, RedisLedger] = {}

    def __repr__(self) -> str:
        return (
            f"RedisHub(url={self.url!r}, account={self.account!r}, "
            f"state={self._link.state!r}, healthy={self._link.healthy}, "
            f"waiting={self._memory.waiting})"
        )

    @property
    def url(self) -> str:
        """The Redis URL with its password masked."""
        return self._link.url

    @property
    def healthy(self) -> bool:
        """
        Whether Redis is reachable and this process is subscribed.

        While false, waits should poll (events may be missed until the re-read
        that follows the reconnection) and job slots admit nothing new (unless
        their *fallback_limit* says otherwise).
        """
        return self._link.healthy

    @property
    def config_error(self) -> BaseException | None:
        """
        Why Redis refuses this process, when it is the configuration's fault.

        A wrong password or user, missing ACL rights, or a TLS failure: logged
        as an ERROR (not as an outage), and kept here until a command works.

        .. versionadded:: 0.3.0
        """
        return self._link.config_error

    def describe(self, exc: BaseException) -> str:
        """*exc* (a Redis fault) in a few words, never empty; no password."""
        return self._link.describe(exc)

    def _outage_note(self) -> str:
        """What this process does while Redis is away, as the outage message says."""
        parts = []
        if self._memory.waiting or self._memory.observed():
            parts.append("webhook-fed waits fall back to polling")
        parts += self._slot_groups.outage_note()
        if not parts or self.stats["published"] or self.stats["duplicates"]:
            parts.append("deliveries are answered 503 (the API sends them again)")
        return "; ".join(parts)

    @property
    def running(self) -> bool:
        """Whether the hub was started and not closed (healthy or not)."""
        return self._link.running()

    @property
    def waiting(self) -> int:
        """How many job ids have a waiter in this process right now."""
        return self._memory.waiting

    def outage(self) -> asyncio.Future[None]:
        """
        Return a future that is resolved when Redis becomes unreachable.

        Already done while the hub is unhealthy.  A wait parked on `future_for`
        can watch it too, to go back to polling at once (``sleep_or_until`` on
        either); it is only ever resolved, never cancelled or failed.
        """
        return self._link.outage()

    def add_health_callback(self, callback: Callable[[bool], object]) -> None:
        """Call *callback(healthy)* on the hub's loop whenever `healthy` changes."""
        self._link.add_health_callback(callback)

    def remove_health_callback(self, callback: Callable[[bool], object]) -> None:
        """Stop calling *callback* (no-op if it was not added)."""
        self._link.remove_health_callback(callback)

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
        await self._link.start(
            catch_up=self._catch_up, on_message=self._exchange.on_message
        )

    async def _catch_up(self) -> None:
        """
        Subscribed again, before turning healthy: events, slots, then ledgers.

        The exchange catches up on events; each slot group gives back what was
        released meanwhile and registers every lease held (so nobody is admitted
        on a count that misses them); each ledger writes what it kept.
        """
        await self._exchange.catch_up()
        await self._slot_groups.resync()
        for ledger in self._ledgers.values():
            await ledger.flush()

    async def aclose(self) -> None:
        """
        Release this process's job slots, stop listening and disconnect; idempotent.

        Pending futures are cancelled (like `release`).
        """
        link = self._link
        if not link.running():
            link.close_unstarted()
            return
        await self._slot_groups.close(self.connect_timeout)
        for ledger in self._ledgers.values():
            await ledger.aclose()
        await link.stop(self._exchange.checker)
        self._memory.cancel_waits()
        await link.disconnect()

    # -- waiting ---------------------------------------------------------------------------

    def future_for(self, job_id: str) -> asyncio.Future[WebhookEvent]:
        """
        Return a future resolved by *job_id*'s terminal event from any process.

        One future per job id is shared by every waiter of this process, and no
        task is made per job: new job ids are watched (from then on, Redis sends
        their event to this process) and checked against the stored state, in
        batches.  Already done if the event is known.  Call `release` with the
        same id when you stop waiting.

        Raises:
            RuntimeError: The hub is not started, or runs on another event loop.

        """
        return self._exchange.future_for(job_id)

    def release(self, job_id: str) -> None:
        """Forget *job_id*'s future once its last waiter is gone (no leak)."""
        self._memory.release(job_id)

    def event_for(self, job_id: str) -> WebhookEvent | None:
        """Return the event this process has seen for *job_id*, if it is kept."""
        return self._memory.event_for(job_id)

    def job_for_attempt(self, attempt: str) -> str | None:
        """
        Return the job id that an event seen here attributed *attempt* to.

        The first delivery naming an attempt wins, across all processes.  A process
        that started after the delivery can ask Redis with `fetch_attempt`.
        """
        return self._memory.job_for_attempt(attempt)

    async def fetch_event(self, job_id: str) -> WebhookEvent | None:
        """Return *job_id*'s event from this process's memory, else from Redis."""
        return await self._exchange.fetch_event(job_id)

    async def fetch_attempt(self, attempt: str) -> str | None:
        """Return the job id *attempt* is attributed to, from memory or Redis."""
        return await self._exchange.fetch_attempt(attempt)

    async def refresh(self) -> int:
        """
        Watch again, and re-read the stored state of, every job with a waiter here.

        The hub does this by itself after each reconnection.  Returns how many of
        those jobs turned out to have ended.
        """
        return await self._exchange.refresh()

    def attach(self, client: WebhookObserver) -> None:
        """
        Let *client* observe every event that reaches this process.

        That is, ``client._webhook_event(event)`` for the events this process
        publishes, and for those of the jobs it watches (`future_for`), which
        are the only ones Redis sends it.
        """
        self._memory.attach(client)

    def detach(self, client: WebhookObserver) -> None:
        """Stop feeding *client*."""
        self._memory.detach(client)

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
        return await self._exchange.publish(event)

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
        loop = self._link.loop
        if self._link.state != "started" or loop is None or loop.is_closed():
            raise RuntimeError("RedisHub is not running")
        return asyncio.run_coroutine_threadsafe(self.publish(event), loop)

    # -- job slots -------------------------------------------------------------------------

    def slots(
        self,
        limit: int,
        *,
        name: str = "jobs",
        lease: float | None = None,
        fallback_limit: int | None = None,
        retry_interval: float = 1.0,
        settle: float = DEFAULT_SETTLE,
    ) -> RedisSlots:
        """
        Return the account-wide job slots *name* (one object per name and hub).

        See `RedisSlots` for the arguments.  Without *lease*, an existing group is
        taken with its own lease (so ``hub.slots(20, lease=10)`` made first is the
        group ``PixelByte(hub=hub, max_concurrent_jobs=20)`` then uses); a new one
        gets 60 s.

        Raises:
            ValueError: The group exists here with another limit or lease.

        """
        return self._slot_groups.slots(
            self,
            limit,
            name=name,
            lease=lease,
            fallback_limit=fallback_limit,
            retry_interval=retry_interval,
            settle=settle,
        )

    # -- the ledger --------------------------------------------------------------------

    def ledger(self, *, account: str = "", retention: float = 86_400.0) -> RedisLedger:
        """
        Return the ledger of every machine sharing this hub (one per *account*).

        ``PixelByte(hub=hub)`` uses ``hub.ledger(account=<a hash of its key>)``
        unless given another *ledger*: every submit, and whose job is whose, is then
        known to every process on every machine that uses the hub, so a lost
        submit's job is told from theirs (see `RedisLedger`).

        Args:
            account: Keeps the entries of several API keys apart under one hub
                account (the client passes a hash of its key, never the key).
            retention: Seconds entries are kept (the first call for an account
                sets it).

        .. versionadded:: 0.3.0

        """
        name = check_name("account", account) if account else self.account
        found = self._ledgers.get(name)
        if found is None:
            found = self._ledgers[name] = RedisLedger(
                self._link,
                account=name,
                retention=retention,
                max_outbox=self.max_outbox,
            )
        return found
