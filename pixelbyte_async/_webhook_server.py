"""
The standalone, internet-facing webhook server.

Owns `WebhookServer` (an aiohttp server around a `WebhookReceiver`) and what guards
it: `_ConnectionGuard` bounds each connection's time to deliver a request and the
number of connections open at once, and `_GuardedProtocol` admits each connection
through it before aiohttp sees it.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Callable
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self

from ._receiver import WebhookReceiver
from ._signing import Secrets


if TYPE_CHECKING:
    import aiohttp.web

    from ._sharing import PublishingHub


__all__ = ["WebhookServer"]

_Loop = asyncio.AbstractEventLoop

# Internet-facing defaults of WebhookServer.  The API gives a delivery 30 s and sends a
# few hundred bytes (256 KiB at most), so a sender needs well under a second; 10 s
# leaves room for a slow path and still frees a slowloris connection soon.  256
# connections stay far below the usual 1,024 descriptors per process.
_DEFAULT_READ_TIMEOUT = 10.0
_DEFAULT_MAX_CONNECTIONS = 256
# At the cap, the longest-waiting connection gives way to a new one only after it has
# waited this long (or half the read timeout, if shorter): a burst of fresh
# connections is not torn down by its own tail, while a flood of idle ones cannot
# keep a delivery out for longer than this.
_EVICT_AFTER = 1.0
# The listen() backlog aiohttp's TCPSite uses by default.
_BACKLOG = 128
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


class _ConnectionGuard:
    """
    Bound each connection's time to deliver a request, and their number.

    A connection has *read_timeout* seconds from its opening, and again from the end
    of each request it delivered, to deliver a complete request (headers and body);
    time idle on keep-alive counts, bytes trickling in do not extend it.  Windows are
    kept oldest first, so one timer (for the oldest) serves them all and the
    connection to evict at the cap is found in O(1).  Uses the event loop's clock:
    this is network time, never the receiver's (possibly virtual) clock.
    """

    def __init__(self, *, read_timeout: float, max_connections: int) -> None:
        self.read_timeout = read_timeout
        self.max_connections = max_connections
        self.loop: _Loop | None = None
        # transport -> loop.time() its current window started, oldest first.
        self._windows: OrderedDict[asyncio.Transport, float] = OrderedDict()
        # Dropped or refused, until the loop reports them closed.
        self._closing: set[asyncio.Transport] = set()
        self._timer: asyncio.TimerHandle | None = None
        self.stats: dict[str, int] = {
            "opened": 0,
            "timed_out": 0,
            "evicted": 0,
            "refused": 0,
        }

    @property
    def connections(self) -> int:
        return len(self._windows) + len(self._closing)

    def _now(self) -> float:
        assert self.loop is not None  # noqa: S101 -- set by WebhookServer._start
        return self.loop.time()

    def admit(self, transport: asyncio.Transport) -> bool:
        """Take a new connection; False if it was refused (503 and closed)."""
        now = self._now()
        self.stats["opened"] += 1
        if len(self._windows) >= self.max_connections:
            oldest, since = next(iter(self._windows.items()))
            if now - since < min(_EVICT_AFTER, self.read_timeout / 2):
                self.stats["refused"] += 1
                self._closing.add(transport)
                transport.write(_BUSY)
                _close_transport(transport)
                return False
            self.stats["evicted"] += 1
            self._drop(oldest)
        self._windows[transport] = now
        if self._timer is None:
            self._timer = self._schedule(now + self.read_timeout)
        return True

    def restart(self, transport: asyncio.Transport) -> None:
        """A request was answered: a new window for the next one."""
        if transport in self._windows:
            self._windows[transport] = self._now()
            self._windows.move_to_end(transport)

    def lost(self, transport: asyncio.Transport) -> None:
        self._windows.pop(transport, None)
        self._closing.discard(transport)

    def close(self) -> None:
        """Drop every connection (the server is closing)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        for transport in list(self._windows):
            self._drop(transport)

    def _drop(self, transport: asyncio.Transport) -> None:
        del self._windows[transport]
        self._closing.add(transport)
        _close_transport(transport)

    def _schedule(self, when: float) -> asyncio.TimerHandle:
        assert self.loop is not None  # noqa: S101 -- set by WebhookServer._start
        return self.loop.call_at(when, self._sweep)

    def _sweep(self) -> None:
        self._timer = None
        # A millisecond of slack: the loop may run a timer marginally early.
        horizon = self._now() - self.read_timeout + 0.001
        while self._windows:
            transport, since = next(iter(self._windows.items()))
            if since > horizon:
                self._timer = self._schedule(since + self.read_timeout)
                return
            self.stats["timed_out"] += 1
            self._drop(transport)


class _GuardedProtocol(asyncio.Protocol):
    """Admit a connection through the guard, then hand it to aiohttp's protocol."""

    __slots__ = ("_factory", "_guard", "_inner", "_transport")

    def __init__(
        self, guard: _ConnectionGuard, factory: Callable[[], asyncio.Protocol]
    ) -> None:
        self._guard = guard
        self._factory = factory
        self._inner: asyncio.Protocol | None = None
        self._transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)  # noqa: S101 -- TCP only
        self._transport = transport
        if self._guard.admit(transport):
            self._inner = self._factory()
            self._inner.connection_made(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._transport is not None:
            self._guard.lost(self._transport)
        if self._inner is not None:
            self._inner.connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._inner is not None:
            self._inner.data_received(data)

    def eof_received(self) -> bool | None:
        return None if self._inner is None else self._inner.eof_received()

    def pause_writing(self) -> None:
        if self._inner is not None:
            self._inner.pause_writing()

    def resume_writing(self) -> None:
        if self._inner is not None:
            self._inner.resume_writing()


class WebhookServer:
    """
    A standalone receiver: an aiohttp server that a `PixelByte` client can start.

    It faces the internet, so each connection must deliver a complete request
    (headers and body) within *read_timeout* seconds of opening, or of its previous
    request; slow, stuck and idle connections are closed then.  At most
    *max_connections* are open at once: past that, a new connection replaces the one
    that has waited longest for a request if that one has waited a second (or half
    the read timeout, if shorter), and is otherwise answered 503 and closed, so a
    flood of idle connections holds no more than *max_connections* descriptors and
    cannot keep a delivery out for long.  `connections` and `stats` tell what the
    guard did.

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
        max_connections: Connections open at once.
        hub: A hub shared by several processes (`pixelbyte_async.redis.RedisHub`)
            that the receiver publishes every verified delivery to; the answer is
            200 ``ok``, 200 ``duplicate`` or 503 ``hub_unavailable`` (see
            `WebhookReceiver`).  With *receiver*, it must be that receiver's hub.
        **receiver_kwargs: More `WebhookReceiver` options.

    Raises:
        ValueError: *read_timeout* is not a positive finite number,
            *max_connections* not a positive integer, or *hub* not *receiver*'s.

    .. versionadded:: 0.1.0
    .. versionchanged:: 0.2.0 *read_timeout* and *max_connections*.
    .. versionchanged:: 0.3.0 *hub*.

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
        hub: PublishingHub | None = None,
        **receiver_kwargs: Any,
    ) -> None:
        if (
            not isinstance(read_timeout, int | float)
            or isinstance(read_timeout, bool)
            or not 0 < read_timeout < float("inf")
        ):
            raise ValueError(
                "read_timeout must be a positive finite number of seconds, "
                f"not {read_timeout!r}"
            )
        if (
            not isinstance(max_connections, int)
            or isinstance(max_connections, bool)
            or max_connections < 1
        ):
            raise ValueError(
                f"max_connections must be a positive integer, not {max_connections!r}"
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
        self._guard = _ConnectionGuard(
            read_timeout=float(read_timeout), max_connections=max_connections
        )
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
        """Connections open at once, at most."""
        return self._guard.max_connections

    @property
    def connections(self) -> int:
        """
        Connections open now, those being closed included.

        .. versionadded:: 0.2.0
        """
        return self._guard.connections

    @property
    def stats(self) -> dict[str, int]:
        """
        Connections ``opened``, closed as ``timed_out``, ``evicted`` or ``refused``.

        .. versionadded:: 0.2.0
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
        app.router.add_post(self.path, self._handle)
        # handler_cancellation: a connection the guard drops mid-body ends its
        # handler quietly (a cancellation, not a logged ConnectionResetError).
        runner = web.AppRunner(
            app, access_log=None, handle_signals=False, handler_cancellation=True
        )
        await runner.setup()
        server = runner.server
        assert server is not None  # noqa: S101 -- set by setup()
        loop = asyncio.get_running_loop()
        guard = self._guard
        guard.loop = loop
        try:
            listener = await loop.create_server(
                lambda: _GuardedProtocol(guard, server),
                self.host,
                self.port,
                backlog=_BACKLOG,
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

    async def _handle(self, request: aiohttp.web.Request) -> aiohttp.web.Response:
        try:
            return await self.receiver.aiohttp_handler(request)
        finally:
            transport = request.transport
            if transport is not None:
                self._guard.restart(transport)

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
