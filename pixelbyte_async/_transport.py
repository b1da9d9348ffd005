"""
The transport seam: the only code that touches aiohttp's client.

`AiohttpTransport` owns (or borrows) one `aiohttp.ClientSession` with a bounded
connector.  `MockTransport` answers requests from a Python function, with no socket,
for unit tests (the httpx pattern).  Both turn every failure into `TransportError` /
`RequestTimeout`, telling whether the request may have reached the server.

Hostile answers are refused here, where status and headers are seen: `send` never
follows nor returns a redirect (it raises `UnexpectedRedirect`, naming the target), and
a body over *max_body* bytes, after decompression, raises `ResponseTooLarge` without
being read (neither is retried).
"""

from __future__ import annotations

import asyncio
import collections
import inspect
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from typing import Any, Protocol, runtime_checkable

import aiohttp
import attrs

from ._errors import (
    RequestTimeout,
    ResponseTooLarge,
    TransportError,
    UnexpectedRedirect,
    loggable_url,
)


__all__ = [
    "AiohttpTransport",
    "MockTransport",
    "Request",
    "Response",
    "StreamResponse",
    "Transport",
]

_MAX_BODY = 16 * 1024 * 1024
#: ``Content-Encoding`` values under which ``Content-Length`` is the body's size.
_IDENTITY = frozenset({"", "identity"})


@attrs.frozen(kw_only=True)
class Request:
    """
    One HTTP request as the SDK builds it.

    The ``Authorization`` header lives in *headers* but never in ``repr()``.
    """

    method: str
    url: str
    headers: Mapping[str, str] = attrs.field(factory=dict, repr=False)
    params: Mapping[str, str] = attrs.field(factory=dict)
    json: Any = None
    content: bytes | None = attrs.field(default=None, repr=False)
    timeout: float | None = None


@attrs.frozen(kw_only=True)
class Response:
    """A fully read HTTP response (*headers* look up names case-insensitively)."""

    status: int
    headers: Mapping[str, str] = attrs.field(repr=False)
    content: bytes = attrs.field(repr=False)


@attrs.define
class StreamResponse:
    """A streamed HTTP response (for downloads)."""

    status: int
    headers: Mapping[str, str]
    _chunks: Callable[[int], AsyncIterator[bytes]] = attrs.field(alias="chunks")

    def iter_chunks(self, size: int = 64 * 1024) -> AsyncIterator[bytes]:
        """Yield the body in chunks of at most *size* bytes."""
        return self._chunks(size)


@runtime_checkable
class Transport(Protocol):
    """What the client needs from a transport."""

    async def send(self, request: Request) -> Response:
        """
        Send *request* and return the whole response.

        Raises `TransportError` when the API cannot be reached, `UnexpectedRedirect`
        instead of following or returning a 3xx, and `ResponseTooLarge` for a body
        over the transport's limit.
        """
        ...

    def stream(self, request: Request) -> Any:
        """Return an async context manager yielding a `StreamResponse`."""
        ...

    async def aclose(self) -> None:
        """Release resources (idempotent)."""
        ...


def _lower(headers: Mapping[str, str]) -> dict[str, str]:
    return {k.lower(): v for k, v in headers.items()}


def _is_redirect(status: int) -> bool:
    return 300 <= status < 400  # noqa: PLR2004 -- HTTP's redirection class


def _what(method: str, url: str) -> str:
    """``METHOD URL`` without the query, for error messages."""
    return f"{method} {url.split('?', 1)[0]}"


def _redirect_error(
    method: str, url: str, status: int, headers: Mapping[str, str]
) -> UnexpectedRedirect:
    """The error for a 3xx answer to a request that must not follow redirects."""
    what = _what(method, url)
    location = headers.get("location", headers.get("Location"))
    target = (
        "without a Location"
        if location is None
        else f"to {loggable_url(location)!r}"  # .location keeps all of it
    )
    return UnexpectedRedirect(
        f"{what} was redirected {target}; API calls never follow "
        "redirects (check base_url)",
        status=status,
        location=location,
        request_id=headers.get("x-request-id", headers.get("X-Request-Id")),
    )


def _map_aiohttp_error(exc: BaseException, method: str, url: str) -> TransportError:
    what = _what(method, url)
    if isinstance(exc, aiohttp.ConnectionTimeoutError):
        return RequestTimeout(f"{what}: connect timed out", request_sent=False)
    if isinstance(exc, asyncio.TimeoutError | aiohttp.ServerTimeoutError):
        return RequestTimeout(f"{what}: timed out")
    if isinstance(exc, aiohttp.ClientConnectorError):
        return TransportError(
            f"{what}: cannot connect: {exc.os_error}", request_sent=False
        )
    return TransportError(f"{what}: {type(exc).__name__}: {exc}")


class _Gate:
    """
    At most *limit* requests inside aiohttp at once; the others wait, in order.

    A free place is taken without a coroutine (``free -= 1``): cheaper than
    `asyncio.Semaphore` on the path every request takes.  A place given back
    while others wait is handed to the first of them, so ``waiters`` is never
    non-empty while ``free`` is above 0 (a waiter gone meanwhile is skipped).
    """

    __slots__ = ("free", "waiters")

    def __init__(self, limit: int) -> None:
        self.free = limit
        self.waiters: collections.deque[asyncio.Future[None]] = collections.deque()

    async def wait(self, timeout: float | None) -> None:
        """Wait for a place (only when `free` is 0); `TimeoutError` after *timeout*."""
        place = asyncio.get_running_loop().create_future()
        self.waiters.append(place)
        try:
            async with asyncio.timeout(timeout):
                await place
        except BaseException:
            if place.done() and not place.cancelled():
                self.release()  # handed a place too late to use it: pass it on
            else:
                place.cancel()  # skipped by `release`
            raise

    def release(self) -> None:
        """Give a place back: to the first live waiter, else to `free`."""
        waiters = self.waiters
        while waiters:
            place = waiters.popleft()
            if not place.done():
                place.set_result(None)
                return
        self.free += 1


class AiohttpTransport:
    """
    The real transport: one `aiohttp.ClientSession` for the whole client.

    Args:
        session: An existing session to borrow (it is never closed by us).
        max_connections: Connector limit when we make the session ourselves.
        connect_timeout: Seconds to establish a connection.
        max_body: Largest non-streamed response body accepted, in bytes after
            decompression; a larger one raises `ResponseTooLarge`.

    """

    def __init__(
        self,
        *,
        session: aiohttp.ClientSession | None = None,
        max_connections: int = 20,
        connect_timeout: float = 10.0,
        max_body: int = _MAX_BODY,
    ) -> None:
        self._session = session
        self._owns_session = session is None
        self._max_connections = max_connections
        self._connect_timeout = connect_timeout
        self._max_body = max_body
        self._closed = False
        self._gate: _Gate | None = None
        #: The last `aiohttp.ClientTimeout` made, by its total (most requests
        #: are first tries with the client's whole timeout: one object serves).
        self._last_timeout: tuple[float | None, aiohttp.ClientTimeout] | None = None

    @property
    def max_connections(self) -> int:
        """The connector's limit on open connections."""
        if self._session is not None and not self._owns_session:
            return self._session.connector.limit if self._session.connector else 0
        return self._max_connections

    def _get_session(self) -> aiohttp.ClientSession:
        if self._closed:
            msg = "transport is closed"
            raise RuntimeError(msg)
        if self._session is None:
            connector = aiohttp.TCPConnector(
                limit=self._max_connections, ttl_dns_cache=300
            )
            self._session = aiohttp.ClientSession(
                connector=connector,
                timeout=aiohttp.ClientTimeout(total=None),
                auto_decompress=True,
                raise_for_status=False,
            )
        return self._session

    def _timeout(self, request: Request) -> aiohttp.ClientTimeout:
        return self._timeout_for(request.timeout)

    def _timeout_for(self, total: float | None) -> aiohttp.ClientTimeout:
        last = self._last_timeout
        if last is not None and last[0] == total:
            return last[1]
        connect = self._connect_timeout
        if total is not None:
            connect = min(connect, total)
        made = aiohttp.ClientTimeout(total=total, sock_connect=connect)
        self._last_timeout = (total, made)
        return made

    def _make_gate(self) -> _Gate:
        """
        Admit at most as many requests into aiohttp as there are connections.

        A request queued inside aiohttp for a free connection holds dozens of
        objects (its coroutines, closures, headers); one queued here holds a future.
        With thousands of jobs polling at once that is the difference between a
        small heap and garbage collections that stall the event loop.
        """
        limit = self.max_connections
        self._gate = _Gate(limit if limit > 0 else sys.maxsize)
        return self._gate

    async def send(self, request: Request) -> Response:
        """
        Send *request* and read the body (at most *max_body* bytes).

        Redirects are never followed: a 3xx raises `UnexpectedRedirect`.
        """
        status, headers, body = await self.exchange(
            request.method,
            request.url,
            request.headers,
            params=request.params,
            json=request.json,
            content=request.content,
            timeout=request.timeout,
        )
        # aiohttp's headers are already a case-insensitive mapping.
        return Response(status=status, headers=headers, content=body)

    async def exchange(
        self,
        method: str,
        url: str,
        headers: Mapping[str, str],
        *,
        params: Mapping[str, str] | None = None,
        json: Any = None,
        content: bytes | None = None,
        timeout: float | None = None,
    ) -> tuple[int, Mapping[str, str], bytes]:
        """
        `send` without the `Request` and `Response` objects: ``(status, headers, body)``.

        The request pipeline's path for every API call (*headers* are aiohttp's,
        case-insensitive); the same checks and errors as `send`.
        """
        session = self._session
        if session is None or self._closed:
            session = self._get_session()
        gate = self._gate
        if gate is None:
            gate = self._make_gate()
        if gate.free > 0:
            gate.free -= 1
        else:
            # Waiting for a connection counts against the request's deadline,
            # and nothing has been sent while we wait.
            loop = asyncio.get_running_loop()
            entered = loop.time()
            try:
                await gate.wait(timeout)
            except TimeoutError as exc:
                raise RequestTimeout(
                    f"{_what(method, url)}: no free connection before the deadline",
                    request_sent=False,
                ) from exc
            if timeout is not None:
                timeout = max(0.001, timeout - (loop.time() - entered))
        try:
            async with session.request(
                method,
                url,
                headers=headers,
                params=params or None,
                json=json if content is None else None,
                data=content,
                timeout=self._timeout_for(timeout),
                allow_redirects=False,
            ) as resp:
                status = resp.status
                answer = resp.headers
                if 300 <= status < 400:  # noqa: PLR2004 -- HTTP's redirection class
                    raise _redirect_error(method, url, status, answer)
                declared = answer.get("Content-Length")
                encoding = answer.get("Content-Encoding")
                if (
                    declared is not None
                    and int(declared) <= self._max_body
                    and (encoding is None or encoding.strip().lower() in _IDENTITY)
                ):
                    body = await resp.read()  # known and bounded: one read
                else:
                    # Unknown size, or compressed (its Content-Length says nothing
                    # of the inflated size): count what is actually read.
                    body = await self._read_limited(resp, method, url)
                return status, answer, body
        except TransportError:
            raise
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            raise _map_aiohttp_error(exc, method, url) from exc
        finally:
            gate.release()

    async def _read_limited(
        self, resp: aiohttp.ClientResponse, method: str, url: str
    ) -> bytes:
        """
        Read at most *max_body* bytes, or raise `ResponseTooLarge`.

        Too large is final, not a network hiccup: fetching the body again would
        only download it again, so the error is not retryable.
        """
        limit = self._max_body
        what = _what(method, url)
        declared = resp.content_length
        if declared is not None and declared > limit:
            resp.close()  # do not read it, and do not reuse the connection
            raise ResponseTooLarge(
                f"{what}: response body of {declared} bytes is over the {limit} "
                "byte limit",
                status=resp.status,
                limit=limit,
                size=declared,
            )
        buf = bytearray()
        async for chunk in resp.content.iter_chunked(64 * 1024):
            buf += chunk
            if len(buf) > limit:
                resp.close()
                raise ResponseTooLarge(
                    f"{what}: response body is over the {limit} byte limit",
                    status=resp.status,
                    limit=limit,
                )
        return bytes(buf)

    @asynccontextmanager
    async def stream(self, request: Request) -> AsyncIterator[StreamResponse]:
        """Send *request* and stream the body; a 3xx is returned, not followed."""
        session = self._get_session()
        try:
            async with session.request(
                request.method,
                request.url,
                headers=dict(request.headers),
                timeout=self._timeout(request),
                # The caller follows redirects, checking each target.
                allow_redirects=False,
            ) as resp:

                async def chunks(size: int) -> AsyncIterator[bytes]:
                    try:
                        async for chunk in resp.content.iter_chunked(size):
                            yield chunk
                    except (TimeoutError, aiohttp.ClientError, OSError) as exc:
                        raise _map_aiohttp_error(
                            exc, request.method, request.url
                        ) from exc

                yield StreamResponse(
                    status=resp.status, headers=_lower(resp.headers), chunks=chunks
                )
        except TransportError:
            raise
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            raise _map_aiohttp_error(exc, request.method, request.url) from exc

    async def aclose(self) -> None:
        """Close the session if we made it; a borrowed session is left open."""
        if self._closed:
            return
        self._closed = True
        if self._session is not None and self._owns_session:
            await self._session.close()
        self._session = None


Handler = Callable[[Request], "Response | Awaitable[Response]"]


class MockTransport:
    """
    A transport that answers from a function: no sockets, for unit tests.

    *handler* receives each `Request` and returns a `Response` (or an awaitable of
    one), or raises `TransportError` to simulate a network failure.  Every request is
    kept in ``requests``.

    .. versionadded:: 0.1.0

    """

    def __init__(self, handler: Handler) -> None:
        self._handler = handler
        self.requests: list[Request] = []
        self.closed = False

    async def _answer(self, request: Request) -> Response:
        if self.closed:
            msg = "transport is closed"
            raise RuntimeError(msg)
        self.requests.append(request)
        result = self._handler(request)
        if inspect.isawaitable(result):
            result = await result
        # Hand-made responses may spell header names any way: look-ups are by
        # lower-case name, as with aiohttp's case-insensitive headers.
        return attrs.evolve(result, headers=_lower(result.headers))

    async def send(self, request: Request) -> Response:
        """Answer *request* with the handler; a 3xx raises `UnexpectedRedirect`."""
        response = await self._answer(request)
        if _is_redirect(response.status):
            raise _redirect_error(
                request.method, request.url, response.status, response.headers
            )
        return response

    @asynccontextmanager
    async def stream(self, request: Request) -> AsyncIterator[StreamResponse]:
        """Answer *request* with the handler, streaming its content."""
        response = await self._answer(request)

        async def chunks(size: int) -> AsyncIterator[bytes]:
            for i in range(0, len(response.content), size):
                yield response.content[i : i + size]

        yield StreamResponse(
            status=response.status, headers=_lower(response.headers), chunks=chunks
        )

    async def aclose(self) -> None:
        """Mark the transport closed."""
        self.closed = True


def json_response(
    body: Any, status: int = 200, headers: Mapping[str, str] | None = None
) -> Response:
    """Build a JSON `Response` (for `MockTransport` handlers)."""
    import json  # noqa: PLC0415 -- only handlers in tests need it

    return Response(
        status=status,
        headers={"content-type": "application/json", **_lower(headers or {})},
        content=json.dumps(body).encode(),
    )
