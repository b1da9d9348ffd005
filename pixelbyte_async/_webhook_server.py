"""
The standalone, internet-facing webhook server.

Owns `WebhookServer` (an aiohttp server around a `WebhookReceiver`), `GuardedSite`
(the same guard for a receiver mounted in the user's own aiohttp app) and what
guards them: `_ConnectionGuard` bounds each connection's time to deliver a request,
the number of connections admitted at once and the wait for a slot past that;
`_GuardedProtocol` admits each connection through it before aiohttp sees it, and
`_RequestWatch` tells it when a request is in and when it was answered.
"""

from __future__ import annotations

import asyncio
import inspect
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self, TypeVar, cast

from ._receiver import WebhookReceiver
from ._signing import Secrets


if TYPE_CHECKING:
    import aiohttp.web

    from ._sharing import PublishingHub


__all__ = ["GuardedSite", "WebhookServer"]

_Loop = asyncio.AbstractEventLoop

# Internet-facing defaults of WebhookServer and GuardedSite.  The API gives a delivery
# 30 s and sends a few hundred bytes (256 KiB at most), so a sender needs well under a
# second; 10 s leaves room for a slow path and still frees a slowloris connection soon.
# 256 connections stay far below the usual 1,024 descriptors per process.
_DEFAULT_READ_TIMEOUT = 10.0
_DEFAULT_MAX_CONNECTIONS = 256
# Past the cap a connection waits this long for a slot, reading paused, before it is
# answered 503: a burst (the API ending thousands of jobs at once) is served in turn
# instead of turning into retries, and nobody waits long.
_DEFAULT_QUEUE_WAIT = 2.0
# Connections waiting at most (a burst of 2,000 at once waits whole); fewer when the
# open-file limit would not leave room (see `_queue_bound`).
_DEFAULT_MAX_QUEUED = 2048
# An admitted connection gives way to one in line only once this long (or half the
# read timeout, if shorter) has passed since its first byte or its last answer
# (since its admission if silent, and then only as a last resort): a burst of fresh
# connections is not torn down by its own tail, while a flood of slow or idle ones
# cannot keep a delivery out for long.
_EVICT_AFTER = 1.0
# Seconds a connection refused after waiting is given to read its 503 (its request
# is still unread: closing at once would reset the connection, losing the answer).
_LINGER = 1.0
# The listen() backlog (aiohttp's TCPSite: 128): connections of a burst the loop has
# not accepted yet wait in the kernel (holding no descriptor) instead of having their
# SYN dropped and sent again a second later.  Linux caps it at net.core.somaxconn
# (4,096 since 5.4).
_BACKLOG = 1024
_BUSY = (
    b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n"
    b"Connection: close\r\nRetry-After: 1\r\n\r\n"
)


def _close_transport(transport: asyncio.Transport) -> None:
    """Close now: gracefully when nothing waits to be written, else abort."""
    if transport.get_write_buffer_size():
        transport.abort()
    else:
        transport.close()


def _check_seconds(name: str, value: object, *, zero: bool = False) -> float:
    """*value* as seconds: positive (or zero if *zero*) and finite, else ValueError."""
    if (
        not isinstance(value, int | float)
        or isinstance(value, bool)
        or not (value >= 0 if zero else value > 0)
        or not value < float("inf")
    ):
        kind = "a non-negative" if zero else "a positive"
        raise ValueError(
            f"{name} must be {kind} finite number of seconds, not {value!r}"
        )
    return float(value)


def _check_count(name: str, value: object, *, zero: bool = False) -> int:
    """*value* as a count: a positive (or zero if *zero*) integer, else ValueError."""
    if (
        not isinstance(value, int)
        or isinstance(value, bool)
        or value < (0 if zero else 1)
    ):
        kind = "a non-negative" if zero else "a positive"
        raise ValueError(f"{name} must be {kind} integer, not {value!r}")
    return value


def _queue_bound(max_connections: int, max_queued: int | None) -> int:
    """
    The connections allowed to wait: *max_queued*, or by default 2,048 or fewer.

    By default slots and queue together take at most half the process's open-file
    limit (``ulimit -n``; 1,024 is common), so that a burst never makes ``accept``
    fail for want of descriptors.
    """
    if max_queued is not None:
        return max_queued
    try:
        import resource  # noqa: PLC0415 -- POSIX only; read once per guard

        soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    except (ImportError, OSError, ValueError):  # pragma: no cover -- not POSIX
        return _DEFAULT_MAX_QUEUED
    if soft == resource.RLIM_INFINITY:
        return _DEFAULT_MAX_QUEUED
    return max(0, min(_DEFAULT_MAX_QUEUED, soft // 2 - max_connections))


class _ConnectionGuard:
    """
    Bound each connection's time to deliver a request, their number, and the wait.

    A connection has *read_timeout* seconds from its admission, and again from the
    answer to each request it delivered, to deliver a complete request (headers and
    body); time idle on keep-alive counts, bytes trickling in do not extend it.  The
    time its request is being answered is not counted (the app decides).

    At most *max_connections* are admitted at once.  Past that a connection waits in
    line, its reading paused and holding no slot, first come first served, for
    *queue_wait* seconds at most; at most *max_queued* wait.  While any wait, answers
    close their connection, so slots turn over at once.  An admitted connection gives
    way to the first in line once `evict_after` has passed since its first byte or
    its previous answer (a slow sender, an idle kept-alive one); one that has sent
    nothing yet (a client may be slow to start: a burst's first connections often
    are) only when someone would otherwise be refused, if admitted `evict_after`
    ago.  Whoever finds no slot then is answered 503.  Without a line (*queue_wait* or *max_queued*
    0) a new connection takes the slot of one that has waited `evict_after`, or gets
    503 at once.

    Windows are kept oldest first, so one timer (for the oldest, and the first in
    line, and the next to give way) serves them all.  Uses the event loop's clock: this is network time, never
    the receiver's (possibly virtual) clock.
    """

    def __init__(
        self,
        *,
        read_timeout: float,
        max_connections: int,
        queue_wait: float = _DEFAULT_QUEUE_WAIT,
        max_queued: int | None = None,
    ) -> None:
        self.read_timeout = _check_seconds("read_timeout", read_timeout)
        self.max_connections = _check_count("max_connections", max_connections)
        self.queue_wait = _check_seconds("queue_wait", queue_wait, zero=True)
        if max_queued is not None:
            _check_count("max_queued", max_queued, zero=True)
        self.max_queued = _queue_bound(self.max_connections, max_queued)
        self.evict_after = min(_EVICT_AFTER, self.read_timeout / 2)
        self.loop: _Loop | None = None
        # Admitted, waiting for a request: transport -> loop.time() its current
        # window started, oldest first.
        self._windows: OrderedDict[asyncio.Transport, float] = OrderedDict()
        # Of those, the ones that sent a byte since they were admitted, or were
        # answered: transport -> loop.time() of that, in that order (oldest first).
        self._heard: OrderedDict[asyncio.Transport, float] = OrderedDict()
        # Admitted, its request in and being answered: no deadline.
        self._busy: set[asyncio.Transport] = set()
        # Waiting for a slot, reading paused: transport -> (since, its protocol).
        self._queue: OrderedDict[asyncio.Transport, tuple[float, _GuardedProtocol]] = (
            OrderedDict()
        )
        # Dropped or refused, until the loop reports them closed.
        self._closing: set[asyncio.Transport] = set()
        self._timer: asyncio.TimerHandle | None = None
        self.stats: dict[str, int] = {
            "opened": 0,
            "queued": 0,
            "timed_out": 0,
            "evicted": 0,
            "refused": 0,
        }

    @property
    def connections(self) -> int:
        """Descriptors held: admitted, waiting and closing connections."""
        return (
            len(self._windows) + len(self._busy) + len(self._queue) + len(self._closing)
        )

    @property
    def crowded(self) -> bool:
        """Connections wait for a slot: answers close theirs, to free it."""
        return bool(self._queue)

    def holds(self, transport: asyncio.Transport) -> bool:
        """Whether *transport* is admitted here (it may deliver requests)."""
        return transport in self._windows or transport in self._busy

    def _used(self) -> int:
        return len(self._windows) + len(self._busy)

    def _lined(self) -> bool:
        """Whether connections past the cap may wait in line."""
        return self.queue_wait > 0 and self.max_queued > 0

    def _now(self) -> float:
        assert self.loop is not None  # noqa: S101 -- set when listening starts
        return self.loop.time()

    # -- what the protocol and the request handler report --------------------------

    def arrive(self, transport: asyncio.Transport, protocol: _GuardedProtocol) -> None:
        """A new connection: admit it, put it in line, or refuse it (503 and close)."""
        now = self._now()
        self.stats["opened"] += 1
        lined = self._lined()
        if not self._queue and self._room(now, last_resort=not lined):
            self._admit(transport, protocol, now)
        elif lined and len(self._queue) < self.max_queued:
            self.stats["queued"] += 1
            transport.pause_reading()
            self._queue[transport] = (now, protocol)
        elif lined and self._room(now, last_resort=True):
            # The line is full: the newcomer is in line last, and some admitted
            # connection idle long enough gives way to the first in line.
            self.stats["queued"] += 1
            transport.pause_reading()
            self._queue[transport] = (now, protocol)
            head, (_since, first) = self._queue.popitem(last=False)
            self._admit(head, first, now)
        else:
            self.stats["refused"] += 1
            self._closing.add(transport)
            transport.write(_BUSY)
            _close_transport(transport)
            return
        self._arm()

    def heard(self, transport: asyncio.Transport) -> None:
        """*transport* sent its first bytes since it was admitted."""
        if transport in self._windows and transport not in self._heard:
            self._heard[transport] = self._now()
            if self._queue:
                self._arm()

    def received(self, transport: asyncio.Transport) -> None:
        """*transport*'s request is in (headers and body): no deadline while answered."""
        if self._windows.pop(transport, None) is not None:
            self._heard.pop(transport, None)
            self._busy.add(transport)

    def answered(self, transport: asyncio.Transport) -> None:
        """A request was answered: a new window for the next one."""
        if transport in self._busy or transport in self._windows:
            self._busy.discard(transport)
            now = self._now()
            for started in (self._windows, self._heard):
                started[transport] = now
                started.move_to_end(transport)
            self._arm()

    def lost(self, transport: asyncio.Transport) -> None:
        """*transport* is closed: its slot (or its place in line) is free."""
        self._closing.discard(transport)
        if self._queue.pop(transport, None) is not None:
            return
        self._heard.pop(transport, None)
        if self._windows.pop(transport, None) is None:
            if transport not in self._busy:
                return
            self._busy.discard(transport)
        if self._queue:
            self._serve(self._now())
            self._arm()

    def refuse_waiting(self) -> None:
        """Answer 503 to every waiting connection (no more slots will come)."""
        while self._queue:
            transport, (_since, protocol) = self._queue.popitem(last=False)
            self._refuse(transport, protocol)

    def close(self) -> None:
        """Drop every connection (the server is closing)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.refuse_waiting()
        for transport in [*self._windows, *self._busy]:
            self._drop(transport)

    # -- slots, the line, the timer ---------------------------------------------------

    def _admit(
        self, transport: asyncio.Transport, protocol: _GuardedProtocol, now: float
    ) -> None:
        self._windows[transport] = now
        protocol.admit()

    def _room(self, now: float, *, last_resort: bool) -> bool:
        """
        Whether a slot is free, evicting an admitted connection that waited long.

        The one that has waited longest, `evict_after` at least, since its first byte
        (or its previous answer); or, as a *last_resort* (someone would be refused),
        the one admitted longest ago, if `evict_after` ago, even if silent so far.
        """
        if self._used() < self.max_connections:
            return True
        # A millisecond of slack: the loop may run a timer marginally early.
        horizon = now - self.evict_after + 0.001
        for started in (self._heard, self._windows) if last_resort else (self._heard,):
            if started:
                transport, since = next(iter(started.items()))
                if since <= horizon:
                    self.stats["evicted"] += 1
                    self._drop(transport)
                    return True
        return False

    def _serve(self, now: float) -> None:
        """Admit waiting connections, first come first served, while slots free up."""
        while self._queue and self._room(now, last_resort=False):
            transport, (_since, protocol) = self._queue.popitem(last=False)
            self._admit(transport, protocol, now)

    def _drop(self, transport: asyncio.Transport) -> None:
        self._windows.pop(transport, None)
        self._heard.pop(transport, None)
        self._busy.discard(transport)
        self._closing.add(transport)
        _close_transport(transport)

    def _refuse(self, transport: asyncio.Transport, protocol: _GuardedProtocol) -> None:
        """503 to a connection that waited: it may read it before it is closed."""
        self.stats["refused"] += 1
        self._closing.add(transport)
        protocol.refuse()
        assert self.loop is not None  # noqa: S101 -- set when listening starts
        self.loop.call_later(_LINGER, transport.abort)

    def _due(self) -> float | None:
        """When the timer must run next: a deadline, a wait's end, an eviction."""
        due: float | None = None
        if self._windows:
            due = next(iter(self._windows.values())) + self.read_timeout
        if self._queue:
            since, _protocol = next(iter(self._queue.values()))
            ends = since + self.queue_wait
            due = ends if due is None else min(due, ends)
            if self._heard and self._used() >= self.max_connections:
                # When an admitted connection may give way to the line.
                due = min(due, next(iter(self._heard.values())) + self.evict_after)
        return due

    def _arm(self) -> None:
        """Run the timer when next due (earlier than planned: planned again)."""
        due = self._due()
        timer = self._timer
        if due is None or (timer is not None and timer.when() <= due):
            return
        if timer is not None:
            timer.cancel()
        assert self.loop is not None  # noqa: S101 -- set when listening starts
        self._timer = self.loop.call_at(due, self._sweep)

    def _sweep(self) -> None:
        self._timer = None
        now = self._now()
        # A millisecond of slack: the loop may run a timer marginally early.
        horizon = now - self.read_timeout + 0.001
        while self._windows:
            transport, since = next(iter(self._windows.items()))
            if since > horizon:
                break
            self.stats["timed_out"] += 1
            self._drop(transport)
        self._serve(now)
        # Whoever has waited queue_wait: a slot as a last resort, or 503.
        horizon = now - self.queue_wait + 0.001
        while self._queue:
            transport, (since, protocol) = next(iter(self._queue.items()))
            if since > horizon:
                break
            del self._queue[transport]
            if self._room(now, last_resort=True):
                self._admit(transport, protocol, now)
            else:
                self._refuse(transport, protocol)
        self._arm()


class _GuardedProtocol(asyncio.Protocol):
    """Admit a connection through the guard, then hand it to aiohttp's protocol."""

    __slots__ = (
        "_early",
        "_factory",
        "_guard",
        "_inner",
        "_refused",
        "_silent",
        "_transport",
    )

    def __init__(
        self, guard: _ConnectionGuard, factory: Callable[[], asyncio.Protocol]
    ) -> None:
        self._guard = guard
        self._factory = factory
        self._inner: asyncio.Protocol | None = None
        self._transport: asyncio.Transport | None = None
        self._refused = False
        # No byte came since this connection was admitted (told the guard once).
        self._silent = True
        # Bytes that came while waiting for a slot (reading is paused then, so
        # normally none), for aiohttp once admitted.
        self._early: list[bytes] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)  # noqa: S101 -- TCP only
        self._transport = transport
        self._guard.arrive(transport, self)

    def admit(self) -> None:
        """The guard gave this connection a slot: aiohttp takes it from here."""
        transport = self._transport
        assert transport is not None  # noqa: S101 -- after connection_made
        self._inner = self._factory()
        self._inner.connection_made(transport)
        early, self._early = self._early, []
        for data in early:
            self.data_received(data)
        if not transport.is_reading() and not transport.is_closing():
            transport.resume_reading()

    def refuse(self) -> None:
        """503, after waiting: read (and drop) the request while the answer goes out."""
        transport = self._transport
        assert transport is not None  # noqa: S101 -- after connection_made
        self._refused = True
        self._early = []
        transport.write(_BUSY)
        try:
            if transport.can_write_eof():
                transport.write_eof()
        except OSError:  # the client is gone already
            transport.abort()
            return
        transport.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._transport is not None:
            self._guard.lost(self._transport)
        if self._inner is not None:
            self._inner.connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        inner = self._inner
        if inner is not None:
            if self._silent and self._transport is not None:
                self._silent = False
                self._guard.heard(self._transport)
            inner.data_received(data)
        elif not self._refused:
            self._early.append(data)

    def eof_received(self) -> bool | None:
        return None if self._inner is None else self._inner.eof_received()

    def pause_writing(self) -> None:
        if self._inner is not None:
            self._inner.pause_writing()

    def resume_writing(self) -> None:
        if self._inner is not None:
            self._inner.resume_writing()


class _RequestWatch:
    """
    Wraps an aiohttp server's request handler to tell the guard about each request.

    A request whose body is in (at once, or when its stream ends) stops its
    connection's deadline while it is answered; its answer starts a new window (and
    closes the connection if others wait for a slot).  Requests on connections this
    guard does not hold (another site of the same runner) pass through untouched.
    """

    __slots__ = ("guard", "handler")

    def __init__(
        self,
        guard: _ConnectionGuard,
        handler: Callable[
            [aiohttp.web.BaseRequest], Awaitable[aiohttp.web.StreamResponse]
        ],
    ) -> None:
        self.guard = guard
        self.handler = handler

    async def __call__(
        self, request: aiohttp.web.BaseRequest
    ) -> aiohttp.web.StreamResponse:
        transport = request.transport
        guard = self.guard
        if transport is None or not guard.holds(transport):
            return await self.handler(request)
        answering = True

        def body_in() -> None:
            if answering:  # not a body read after the answer (aiohttp drains it)
                guard.received(transport)

        content = request.content
        if content.is_eof():
            guard.received(transport)
        else:
            content.on_eof(body_in)
        try:
            response = await self.handler(request)
        finally:
            answering = False
            guard.answered(transport)
        if guard.crowded:
            response.force_close()
        return response


async def _listen(
    server: aiohttp.web.Server,
    guard: _ConnectionGuard,
    host: str | None,
    port: int | None,
    **kwargs: Any,
) -> asyncio.Server:
    """Listen on *host*:*port* for *server* (a runner's), each connection guarded."""
    loop = asyncio.get_running_loop()
    guard.loop = loop
    # Wrapped once per guard (a site started again, or several sites of a runner).
    handler: Any = server.request_handler
    while isinstance(handler, _RequestWatch) and handler.guard is not guard:
        handler = handler.handler
    if not isinstance(handler, _RequestWatch):
        server.request_handler = _RequestWatch(guard, server.request_handler)
    return await loop.create_server(
        lambda: _GuardedProtocol(guard, server), host, port, **kwargs
    )


if TYPE_CHECKING:
    _TCPSite = aiohttp.web.TCPSite
else:
    _TCPSite = object


class GuardedSite(_TCPSite):
    r"""
    An `aiohttp.web.TCPSite` whose connections are guarded like `WebhookServer`'s.

    For a `WebhookReceiver` mounted in your own aiohttp app: use it where you would
    use ``web.TCPSite(runner, host, port)``.  Each connection must deliver a
    complete request (headers and body) within *read_timeout* seconds of its
    admission or of its previous answer, or it is closed: slow, stuck and idle
    clients cannot hold descriptors (an aiohttp middleware cannot do this: it runs
    once the headers are in).  The time your handlers take to answer is not
    counted, so long requests and websockets elsewhere in the app are not cut.
    At most *max_connections* are admitted at once; past that a connection waits
    up to *queue_wait* seconds, reading paused and holding no slot, first come
    first served, and is answered 503 when the wait ends or *max_queued* already
    wait (who gives way to the line: see `WebhookServer`).  `connections` and
    `stats` tell what the guard did.

    Instances are `aiohttp.web.TCPSite`\\ s (the class is completed with aiohttp's
    on first use, so that importing this module does not import ``aiohttp.web``).

    Args:
        runner: A set-up `aiohttp.web.AppRunner`.
        host: Interface to listen on (None: all).
        port: Port (None: 8080, or 8443 with *ssl_context*; 0: any free one).
        read_timeout: Seconds a connection has to deliver each complete request,
            idle keep-alive time included.
        max_connections: Connections admitted at once.
        queue_wait: Seconds a connection past the cap waits for a slot (0: none,
            refused at once).
        max_queued: Connections waiting at most (default: 2,048, or fewer so that
            slots and waiters take at most half the open-file limit).
        backlog: The ``listen()`` backlog (aiohttp's default: 128): a burst's
            connections not accepted yet wait in the kernel, holding no
            descriptor, instead of having their SYN dropped and sent again a
            second later.
        **kwargs: `aiohttp.web.TCPSite`'s other options (``ssl_context``,
            ``reuse_address``, ``reuse_port``).

    Raises:
        ValueError: A limit is not a positive finite number (*queue_wait*,
            *max_queued*: not a non-negative one).

    .. versionadded:: 0.3.0

    """

    def __new__(cls, *args: Any, **kwargs: Any) -> Self:  # noqa: ARG004 -- __init__'s
        return object.__new__(_with_tcp_site(cls))

    def __init__(
        self,
        runner: aiohttp.web.BaseRunner,
        host: str | None = None,
        port: int | None = None,
        *,
        read_timeout: float = _DEFAULT_READ_TIMEOUT,
        max_connections: int = _DEFAULT_MAX_CONNECTIONS,
        queue_wait: float = _DEFAULT_QUEUE_WAIT,
        max_queued: int | None = None,
        backlog: int = _BACKLOG,
        **kwargs: Any,
    ) -> None:
        self._guard = _ConnectionGuard(
            read_timeout=read_timeout,
            max_connections=max_connections,
            queue_wait=queue_wait,
            max_queued=max_queued,
        )
        super().__init__(runner, host, port, backlog=backlog, **kwargs)
        self._listening_port: int | None = None

    @property
    def read_timeout(self) -> float:
        """Seconds a connection has to deliver each complete request."""
        return self._guard.read_timeout

    @property
    def max_connections(self) -> int:
        """Connections admitted at once, at most."""
        return self._guard.max_connections

    @property
    def connections(self) -> int:
        """How many connections are open now (admitted, waiting, or being closed)."""
        return self._guard.connections

    @property
    def stats(self) -> dict[str, int]:
        """Connections ``opened``, ``queued``, and closed as ``timed_out``, ``evicted`` or ``refused``."""
        return dict(self._guard.stats)

    @property
    def port(self) -> int:
        """The port listened on (after `start`; before, the one asked for)."""
        if self._listening_port is not None:
            return self._listening_port
        return self._port

    @property
    def name(self) -> str:
        scheme = "https" if self._ssl_context else "http"
        return f"{scheme}://{self._host or '0.0.0.0'}:{self.port}"  # noqa: S104 -- a name

    async def start(self) -> None:
        """Listen, each connection admitted through the guard."""
        from aiohttp import web  # noqa: PLC0415 -- imported already (see __new__)

        await web.BaseSite.start(self)  # registers the site with its runner
        server = self._runner.server
        assert server is not None  # noqa: S101 -- BaseSite checked it was set up
        self._server = listener = await _listen(
            server,
            self._guard,
            self._host,
            self._port,
            ssl=self._ssl_context,
            backlog=self._backlog,
            reuse_address=self._reuse_address,
            reuse_port=self._reuse_port,
        )
        sockets = listener.sockets
        self._listening_port = sockets[0].getsockname()[1] if sockets else self._port

    async def stop(self) -> None:
        """Stop listening; connections still waiting for a slot are answered 503."""
        await super().stop()
        self._guard.refuse_waiting()


# What help() and the reference show: __init__'s parameters, not __new__'s.
_INIT = inspect.signature(GuardedSite.__init__)
GuardedSite.__signature__ = _INIT.replace(  # type: ignore[attr-defined]
    parameters=list(_INIT.parameters.values())[1:]
)

_Site = TypeVar("_Site", bound=GuardedSite)
# Each GuardedSite class (and subclass) completed with aiohttp's TCPSite.
_COMPLETED: dict[type[GuardedSite], type[GuardedSite]] = {}


def _with_tcp_site(cls: type[_Site]) -> type[_Site]:
    """*cls* completed with `aiohttp.web.TCPSite` (aiohttp.web imported on first use)."""
    done = _COMPLETED.get(cls)
    if done is None:
        from aiohttp import web  # noqa: PLC0415 -- aiohttp.web is imported on first use

        if web.TCPSite in cls.__mro__:  # a subclass of a completed class
            done = cls
        else:
            namespace = {
                "__module__": cls.__module__,
                "__qualname__": cls.__qualname__,
                "__doc__": cls.__doc__,
            }
            done = type(cls.__name__, (cls, web.TCPSite), namespace)
        _COMPLETED[cls] = done
    return cast("type[_Site]", done)


class WebhookServer:
    """
    A standalone receiver: an aiohttp server that a `PixelByte` client can start.

    It faces the internet, so each connection must deliver a complete request
    (headers and body) within *read_timeout* seconds of its admission, or of its
    previous answer; slow, stuck and idle connections are closed then.  At most
    *max_connections* are admitted at once.  Past that a connection waits in line
    for a slot, first come first served, its reading paused and holding no slot,
    for *queue_wait* seconds at most (a burst of deliveries is served in turn
    instead of being turned into retries), and is answered 503 when the wait ends
    or *max_queued* connections already wait.  While any wait, each answer closes
    its connection, so slots turn over at once, and an admitted connection gives
    way to the line once a second (or half the read timeout, if shorter) has
    passed since its first byte or its previous answer; one that has sent nothing
    yet, only when someone would otherwise be refused.  A flood of slow or idle
    connections holds no more than *max_connections* + *max_queued* descriptors
    and cannot keep a delivery out for long.  `connections` and `stats` tell what
    the guard did.  The same guard serves a receiver mounted in your own aiohttp
    app: `GuardedSite`.

    Args:
        secret: The webhook secret (or several), or an existing *receiver*.
        receiver: Use this receiver instead of making one from *secret*.
        host: Interface to listen on.
        port: Port (0: any free one).
        path: URL path of the endpoint.
        public_url: The https URL the API should call (behind your proxy or tunnel);
            default: the local URL (fine for `FakePixelByte`, not for the real API).
        read_timeout: Seconds a connection has to deliver each complete request,
            idle keep-alive time included.  The API allows a delivery 30 s and sends
            a few hundred bytes.
        max_connections: Connections admitted at once.
        queue_wait: Seconds a connection past the cap waits for a slot (0: none,
            refused at once).
        max_queued: Connections waiting at most (default: 2,048, or fewer so that
            slots and waiters take at most half the open-file limit, ``ulimit
            -n``).
        hub: A hub shared by several processes (`pixelbyte_async.redis.RedisHub`)
            that the receiver publishes every verified delivery to; the answer is
            200 ``ok``, 200 ``duplicate`` or 503 ``hub_unavailable`` (see
            `WebhookReceiver`).  With *receiver*, it must be that receiver's hub.
        **receiver_kwargs: More `WebhookReceiver` options.

    Raises:
        ValueError: *read_timeout* is not a positive finite number,
            *max_connections* not a positive integer, *queue_wait* not a
            non-negative finite number, *max_queued* not a non-negative integer,
            or *hub* not *receiver*'s.

    .. versionadded:: 0.1.0
    .. versionchanged:: 0.2.0 *read_timeout* and *max_connections*.
    .. versionchanged:: 0.3.0 *hub*; *queue_wait* and *max_queued*: a connection
       past the cap waits for a slot instead of being refused at once.

    """

    def __init__(
        self,
        secret: Secrets | None = None,
        *,
        receiver: WebhookReceiver | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        path: str = "/pixelbyte/webhook",
        public_url: str | None = None,
        read_timeout: float = _DEFAULT_READ_TIMEOUT,
        max_connections: int = _DEFAULT_MAX_CONNECTIONS,
        queue_wait: float = _DEFAULT_QUEUE_WAIT,
        max_queued: int | None = None,
        hub: PublishingHub | None = None,
        **receiver_kwargs: Any,
    ) -> None:
        guard = _ConnectionGuard(
            read_timeout=read_timeout,
            max_connections=max_connections,
            queue_wait=queue_wait,
            max_queued=max_queued,
        )
        if receiver is None:
            if secret is None:
                raise ValueError("pass a webhook secret or a receiver")
            receiver = WebhookReceiver(secret, hub=hub, **receiver_kwargs)
        elif hub is not None and receiver.hub is not hub:
            raise ValueError("pass hub= to the receiver, or give no receiver")
        self.receiver = receiver
        self.host = host
        self.port = port
        self.path = path if path.startswith("/") else "/" + path
        self._public_url = public_url
        self._guard = guard
        self._runner: aiohttp.web.AppRunner | None = None
        self._listener: asyncio.Server | None = None
        self._url: str | None = None
        self._lock = asyncio.Lock()

    @property
    def read_timeout(self) -> float:
        """Seconds a connection has to deliver each complete request."""
        return self._guard.read_timeout

    @property
    def max_connections(self) -> int:
        """Connections admitted at once, at most."""
        return self._guard.max_connections

    @property
    def queue_wait(self) -> float:
        """
        Seconds a connection past the cap waits for a slot.

        .. versionadded:: 0.3.0
        """
        return self._guard.queue_wait

    @property
    def max_queued(self) -> int:
        """
        Connections waiting for a slot, at most.

        .. versionadded:: 0.3.0
        """
        return self._guard.max_queued

    @property
    def connections(self) -> int:
        """
        How many connections are open now (admitted, waiting, or being closed).

        .. versionadded:: 0.2.0
        """
        return self._guard.connections

    @property
    def stats(self) -> dict[str, int]:
        """
        Connections ``opened``, ``queued``, closed as ``timed_out``, ``evicted`` or ``refused``.

        ``queued``: connections that waited for a slot; ``refused``: answered 503,
        at once or when their wait ended.

        .. versionadded:: 0.2.0
        .. versionchanged:: 0.3.0 ``queued``.
        """
        return dict(self._guard.stats)

    @property
    def running(self) -> bool:
        """Whether the server is listening."""
        return self._runner is not None

    @property
    def url(self) -> str:
        """The local URL of the endpoint (after `start`)."""
        if self._url is None:
            raise RuntimeError("WebhookServer is not started")
        return self._url

    @property
    def public_url(self) -> str:
        """The URL given to the API as ``webhookUrl``."""
        return self._public_url or self.url

    async def start(self) -> None:
        """Start listening (idempotent, also when called concurrently)."""
        async with self._lock:
            if self._runner is None:
                await self._start()

    async def _start(self) -> None:
        from aiohttp import web  # noqa: PLC0415 -- aiohttp.web is imported on first use

        app = web.Application(client_max_size=self.receiver.max_body + 1)
        app.router.add_post(self.path, self.receiver.aiohttp_handler)
        # handler_cancellation: a connection the guard drops mid-body ends its
        # handler quietly (a cancellation, not a logged ConnectionResetError).
        runner = web.AppRunner(
            app, access_log=None, handle_signals=False, handler_cancellation=True
        )
        await runner.setup()
        server = runner.server
        assert server is not None  # noqa: S101 -- set by setup()
        try:
            listener = await _listen(
                server, self._guard, self.host, self.port, backlog=_BACKLOG
            )
        except BaseException:
            await runner.cleanup()
            raise
        sockets = listener.sockets
        port = sockets[0].getsockname()[1] if sockets else self.port
        self.port = port
        self._url = f"http://{self.host}:{port}{self.path}"
        self._listener = listener
        self._runner = runner

    async def close(self) -> None:
        """
        Stop listening (idempotent); the port is kept for a restart.

        Requests in progress may finish within their read timeout; then every
        connection is closed.
        """
        async with self._lock:
            runner, self._runner = self._runner, None
            listener, self._listener = self._listener, None
            if listener is not None:
                listener.close()
            if runner is not None:
                await runner.cleanup()
            self._guard.close()
            if listener is not None:
                await listener.wait_closed()
        await self.receiver.aclose()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()
