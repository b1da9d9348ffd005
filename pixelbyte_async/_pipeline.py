"""
The request pipeline: build → send → unwrap the envelope → map errors → retry.

One `RequestPipeline` per client owns the transport, the shared headers (the API key
goes only to the API's own origin) and the one retry loop, in which a single
deadline covers every attempt and every pause, so retries never multiply a timeout.
"""

from __future__ import annotations

import json
import logging
import types
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Literal, Protocol, TypeVar
from urllib.parse import urlsplit

from ._clock import Clock, ServerOffset
from ._config import ClientConfig
from ._errors import (
    APIError,
    PixelByteError,
    RequestTimeout,
    TransportError,
    ValidationError,
    error_class_for,
)
from ._retry import (
    is_submit_safe_to_retry,
    parse_retry_after,
    retry_after_from_details,
)
from ._serde import decode_json, error_fields, unwrap
from ._telemetry import http_call, kind_of
from ._telemetry._record import quiet
from ._transport import AiohttpTransport, Request, Response, Transport


__all__ = ["Auth", "Mode", "RequestPipeline", "origin", "short"]

log = logging.getLogger("pixelbyte_async")

_NO_PARAMS: Mapping[str, str] = types.MappingProxyType({})
_T = TypeVar("_T")
#: How many paths `RequestPipeline` remembers the URL and kind of, and how many
#: jobs the last GET body of; past that each starts afresh.
_ROUTES = 1024
_BODIES = 256


class _Route:
    """What a call's method and path give: its URL and its kind (telemetry's)."""

    __slots__ = ("kind", "method", "path", "url")

    def __init__(self, method: str, path: str, base_url: str) -> None:
        self.method = method
        self.path = path
        self.url = base_url + path
        self.kind: str = kind_of(method, path)


class _Exchange(Protocol):
    """`AiohttpTransport.exchange`'s shape: ``(status, headers, body)`` of a request."""

    def __call__(
        self,
        method: str,
        url: str,
        headers: Mapping[str, str],
        *,
        params: Mapping[str, str] | None = None,
        json: Any = None,
        content: bytes | None = None,
        timeout: float | None = None,
    ) -> Awaitable[tuple[int, Mapping[str, str], bytes]]: ...


#: How a call authenticates: the Bearer key, Bearer plus ``x-api-key`` (the models
#: pages), the key if there is one (the public catalogue), or none.
Auth = Literal["bearer", "both", "optional", "none"]
#: ``"submit"`` calls are retried only when the server provably created nothing.
Mode = Literal["safe", "submit"]


def _reached(error: PixelByteError) -> bool:
    """
    Whether a failed earlier try may have acted unseen: sent, then lost.

    An answered try (a 429, a 503) did not act beyond its answer; a submit is only
    tried again after such a failure, so its earlier tries made no job.
    """
    return isinstance(error, TransportError) and error.request_sent


class RequestPipeline:
    """
    Send one API call under one deadline; decode its envelope; map its errors.

    Args:
        config: The client's configuration (base URL, key, timeouts, retry policy).
        clock: The time source of deadlines and back-offs.
        transport: Where requests go (`AiohttpTransport`, `MockTransport` ...).
        rng: ``uniform(a, b)`` for retry jitter.
        guard: Called before every request (raises when the client is closed or
            used from another event loop).

    """

    def __init__(
        self,
        config: ClientConfig,
        clock: Clock,
        transport: Transport,
        rng: Callable[[float, float], float],
        guard: Callable[[], None],
    ) -> None:
        self.config = config
        self.clock = clock
        self.transport = transport
        self._uniform = rng
        self.guard = guard
        self._header_cache: dict[str, dict[str, str]] = {}
        self._api_origin = origin(config.base_url)
        #: The API's clock against ours, from the ``Date`` of every answer.
        self.server_offset = ServerOffset()
        #: Each call's `_Route` by ``(method, path)``: a job's GETs repeat its path.
        self._routes: dict[tuple[str, str], _Route] = {}
        #: The last answer to each job's GET: ``(body, payload, request id)``.
        #: An unchanged body (a job polled while nothing happens) is not parsed
        #: again; the payload is shared, and its readers never change it.
        self._bodies: dict[str, tuple[bytes, Any, str | None]] = {}

    @property
    def transport(self) -> Transport:
        """Where requests go."""
        return self._transport

    @transport.setter
    def transport(self, transport: Transport) -> None:
        self._transport = transport
        # Our own transport is called without building `Request`/`Response`
        # objects, unless a subclass changed how it sends.
        self._exchange: _Exchange = (
            transport.exchange
            if isinstance(transport, AiohttpTransport)
            and type(transport).send is AiohttpTransport.send
            else self._send_request
        )

    def _shared_headers(self, auth: Auth) -> Mapping[str, str]:
        """The headers for *auth*, built once; never mutate the result."""
        cached = self._header_cache.get(auth)
        if cached is None:
            cached = self._header_cache[auth] = self._build_headers(auth)
        return cached

    def headers(self, auth: Auth) -> dict[str, str]:
        """A fresh copy of the headers for *auth*, for callers that add to them."""
        return dict(self._shared_headers(auth))

    def headers_for(self, url: str) -> dict[str, str]:
        """Headers for a URL outside the API pipeline: the key only to the API's origin."""
        if origin(url) == self._api_origin:
            return self.headers("bearer")
        return {"User-Agent": self.config.user_agent}

    def _build_headers(self, auth: Auth) -> dict[str, str]:
        headers = {"User-Agent": self.config.user_agent, "Accept": "application/json"}
        key = self.config.api_key
        if auth == "none":
            return headers
        if not key:
            if auth == "optional":
                return headers
            raise ValidationError(
                "no API key: pass PixelByte(api_key=...) or set PIXELBYTE_API_KEY",
                field="api_key",
            )
        headers["Authorization"] = f"Bearer {key}"
        if auth == "both":
            # The models/providers pages show x-api-key instead of Bearer (§1).
            headers["x-api-key"] = str(key)
        return headers

    async def request(
        self,
        method: str,
        path: str,
        *,
        json_body: Any = None,
        params: Mapping[str, str] | None = None,
        timeout: float | None = None,
        deadline: float | None = None,
        mode: Mode = "safe",
        auth: Auth = "bearer",
        on_send: Callable[[], None] | None = None,
    ) -> tuple[Any, str | None]:
        """
        Send one API call under one deadline; return ``(payload, request_id)``.

        *on_send* is called as each try goes out (a submit's lost try is its last).
        """
        self.guard()
        now = self.clock.monotonic()
        if deadline is None:
            first = timeout or self.config.timeout
            deadline = now + first
        else:
            first = deadline - now
        headers = self._shared_headers(auth)
        if json_body is not None:
            headers = {**headers, "Content-Type": "application/json"}
        route = self._route(method, path)
        query: Mapping[str, str] = dict(params) if params else _NO_PARAMS
        # The first attempt inline: the common case pays for no retry machinery.
        first_error: PixelByteError | None = None
        sends = 0
        if first > 0:
            try:
                if on_send is not None:
                    on_send()
                sends = 1
                return await self._attempt(route, headers, query, json_body, first)
            except PixelByteError as exc:
                first_error = exc
        return await self._retry(
            route,
            headers,
            query,
            json_body,
            deadline=deadline,
            mode=mode,
            on_send=on_send,
            sends=sends,
            first_error=first_error,
        )

    def _route(self, method: str, path: str) -> _Route:
        """*method* and *path*'s `_Route`, remembered (a bounded number of them)."""
        routes = self._routes
        route = routes.get((method, path))
        if route is not None:
            return route
        if len(routes) >= _ROUTES:
            routes.clear()
        route = routes[method, path] = _Route(method, path, self.config.base_url)
        return route

    async def _retry(
        self,
        route: _Route,
        headers: Mapping[str, str],
        query: Mapping[str, str],
        json_body: Any,
        *,
        deadline: float,
        mode: Mode,
        on_send: Callable[[], None] | None,
        sends: int,
        first_error: PixelByteError | None,
    ) -> tuple[Any, str | None]:
        """The tries after the first (or all of them when it never went out)."""
        sent = [sends]

        async def attempt(remaining: float) -> tuple[Any, str | None]:
            if on_send is not None:
                on_send()
            resend = sent[0]
            sent[0] += 1
            return await self._attempt(
                route, headers, query, json_body, remaining, resend=resend
            )

        decide = self.decide_submit if mode == "submit" else self.decide_safe
        return await self.retrying(
            attempt,
            deadline=deadline,
            decide=decide,
            what=f"{route.method} {route.path}",
            first_error=first_error,
        )

    async def _attempt(
        self,
        route: _Route,
        headers: Mapping[str, str],
        query: Mapping[str, str],
        json_body: Any,
        timeout: float,
        *,
        resend: int = 0,
    ) -> tuple[Any, str | None]:
        """One try: its client span (when telemetry records), its answer handled."""
        sent = self.clock.time()
        if quiet():
            answer = await self._exchange(
                route.method,
                route.url,
                headers,
                params=query,
                json=json_body,
                timeout=timeout,
            )
        else:
            answer = await self._traced(
                route, headers, query, json_body, timeout, resend=resend
            )
        return self._answered(route, sent, answer)

    async def _traced(
        self,
        route: _Route,
        headers: Mapping[str, str],
        query: Mapping[str, str],
        json_body: Any,
        timeout: float,
        *,
        resend: int = 0,
    ) -> tuple[int, Mapping[str, str], bytes]:
        """Send within a client span (when telemetry records)."""
        method, url = route.method, route.url
        with http_call(
            method, url, kind=route.kind, params=query, resend=resend
        ) as call:
            answer = await self._exchange(
                method, url, headers, params=query, json=json_body, timeout=timeout
            )
            call.response(answer[0])
        return answer

    def _answered(
        self,
        route: _Route,
        sent: float,
        answer: tuple[int, Mapping[str, str], bytes],
    ) -> tuple[Any, str | None]:
        """Learn the API's clock from the answer's ``Date``; handle the answer."""
        status, headers, content = answer
        self.server_offset.observe(
            headers.get("date"), sent=sent, received=self.clock.time()
        )
        result = self._handle_answer(status, headers, content, route)
        if log.isEnabledFor(logging.DEBUG):
            log.debug(
                "%s %s -> %d request_id=%s", route.method, route.path, status, result[1]
            )
        return result

    async def _send_request(
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
        """Any other transport: through its `Transport.send`."""
        response = await self._transport.send(
            Request(
                method=method,
                url=url,
                headers=headers,
                params=params if params is not None else _NO_PARAMS,
                json=json,
                content=content,
                timeout=timeout,
            )
        )
        return response.status, response.headers, response.content

    def decide_safe(self, exc: PixelByteError, attempt: int) -> float | None:
        return self.config.retry.delay_for(exc, attempt, self._uniform)

    def decide_submit(self, exc: PixelByteError, attempt: int) -> float | None:
        if not is_submit_safe_to_retry(exc):
            return None
        policy = self.config.retry
        delay = policy.delay_for(exc, attempt, self._uniform)
        if (
            delay is None
            and isinstance(exc, APIError)
            and exc.code == "CONCURRENT_JOBS_EXCEEDED"
            and exc.retry_after is not None
            and exc.retry_after <= policy.max_retry_after
        ):
            # The plan's concurrency limit: waiting is the answer, bounded by the
            # submit deadline rather than by the attempt count.
            delay = exc.retry_after
        return delay

    async def retrying(
        self,
        attempt_once: Callable[[float], Awaitable[_T]],
        *,
        deadline: float,
        decide: Callable[[PixelByteError, int], float | None],
        what: str,
        first_error: PixelByteError | None = None,
    ) -> _T:
        """
        Call *attempt_once(remaining)* until it succeeds or *decide* gives up.

        The one retry loop of the client: one deadline covers every attempt and
        every pause, so retries never multiply a timeout.
        """
        clock = self.clock
        error = first_error
        earlier = first_error  # the last try's failure, for the deadline's error
        attempt = 0 if error is None else 1
        while True:
            if error is None:
                attempt += 1
                remaining = deadline - clock.monotonic()
                if remaining <= 0:
                    # Not sent: only an earlier try may have reached the server
                    # (and a retried submit's earlier tries made no job).
                    raise RequestTimeout(
                        f"{what}: deadline passed before attempt {attempt}",
                        request_sent=earlier is not None and _reached(earlier),
                    )
                try:
                    return await attempt_once(remaining)
                except PixelByteError as exc:
                    error = earlier = exc
            delay = decide(error, attempt)
            if delay is None or delay >= deadline - clock.monotonic():
                raise error
            log.info(
                "%s: %s; retrying in %.2fs (attempt %d)",
                what,
                short(error),
                delay,
                attempt + 1,
            )
            error = None
            await clock.sleep(delay)

    def _handle_answer(
        self,
        status: int,
        headers: Mapping[str, str],
        content: bytes,
        route: _Route,
    ) -> tuple[Any, str | None]:
        header_rid = headers.get("x-request-id")
        poll = route.kind == "poll"
        if 200 <= status < 300:  # noqa: PLR2004 -- HTTP success class
            if not content or content.isspace():
                return {}, header_rid
            if poll:
                seen = self._bodies.get(route.path)
                if seen is not None and seen[0] == content:
                    return seen[1], seen[2] or header_rid
            body = decode_json(content, status=status)
            if isinstance(body, dict) and body.get("success") is False:
                raise self._api_error(
                    status, body, headers, content, method=route.method, path=route.path
                )
            data, rid = unwrap(body)
            if poll:
                bodies = self._bodies
                if len(bodies) >= _BODIES:
                    bodies.clear()
                bodies[route.path] = (content, data, rid)
            return data, rid or header_rid
        try:
            body = json.loads(content) if content else None
        except (ValueError, UnicodeDecodeError):
            body = None
        raise self._api_error(
            status, body, headers, content, method=route.method, path=route.path
        )

    def api_error(
        self, status: int, body: Any, response: Response, method: str, path: str
    ) -> APIError:
        """The `APIError` for an error answer (*body* its parsed JSON, if any)."""
        return self._api_error(
            status, body, response.headers, response.content, method=method, path=path
        )

    def _api_error(
        self,
        status: int,
        body: Any,
        headers: Mapping[str, str],
        content: bytes,
        *,
        method: str,
        path: str,
    ) -> APIError:
        code, message, details, rid = error_fields(body)
        if message is None:
            excerpt = content[:200].decode("utf-8", "replace").strip()
            message = excerpt or f"{method} {path} failed"
        if 200 <= status < 300:  # noqa: PLR2004 -- a 2xx carrying success:false
            status = 400 if code is None else status
        retry_after = parse_retry_after(
            headers.get("retry-after"), now=self.clock.time()
        )
        if retry_after is None:
            retry_after = retry_after_from_details(details)
        if retry_after is None and code == "CONCURRENT_JOBS_EXCEEDED":
            retry_after = 30.0  # the docs' sample default when retryAfter is absent
        cls = error_class_for(status, code)
        return cls(
            message,
            status=status,
            code=code,
            details=details,
            request_id=rid or headers.get("x-request-id"),
            retry_after=retry_after,
        )


def origin(url: str) -> tuple[str, str, int | None]:
    """``(scheme, host, port)`` of *url*; an invalid port is an origin of its own."""
    parts = urlsplit(url)
    try:
        port = parts.port or {"https": 443, "http": 80}.get(parts.scheme)
    except ValueError:  # an invalid port: an origin of its own, never the API's
        return (parts.scheme, parts.netloc.lower(), -1)
    return (parts.scheme, (parts.hostname or "").lower(), port)


def short(exc: BaseException) -> str:
    """``Type: message`` of *exc*, for one-line logs and messages."""
    return f"{type(exc).__name__}: {exc}"
