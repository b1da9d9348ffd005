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
from typing import Any, Literal, TypeVar
from urllib.parse import urlsplit

import attrs

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
from ._transport import Request, Response, Transport


__all__ = ["Auth", "Mode", "RequestPipeline", "origin", "short"]

log = logging.getLogger("pixelbyte_async")

_NO_PARAMS: Mapping[str, str] = types.MappingProxyType({})
_T = TypeVar("_T")

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
        clock = self.clock
        if deadline is None:
            deadline = clock.monotonic() + (timeout or self.config.timeout)
        headers = self._shared_headers(auth)
        if json_body is not None:
            headers = {**headers, "Content-Type": "application/json"}
        url = self.config.base_url + path
        query: Mapping[str, str] = dict(params) if params else _NO_PARAMS
        request = Request(
            method=method,
            url=url,
            headers=headers,
            params=query,
            json=json_body,
            timeout=deadline - clock.monotonic(),
        )
        kind = kind_of(method, path)
        # The first attempt inline: the common case pays for no retry machinery.
        first_error: PixelByteError | None = None
        sends = [0]
        if request.timeout is not None and request.timeout > 0:
            try:
                if on_send is not None:
                    on_send()
                sends[0] += 1
                response = await self._send(request, kind)
                result = self._handle(response, method, path)
            except PixelByteError as exc:
                first_error = exc
            else:
                if log.isEnabledFor(logging.DEBUG):
                    log.debug(
                        "%s %s -> %d request_id=%s",
                        method,
                        path,
                        response.status,
                        result[1],
                    )
                return result

        async def attempt(remaining: float) -> tuple[Any, str | None]:
            if on_send is not None:
                on_send()
            resend = sends[0]
            sends[0] += 1
            response = await self._send(
                attrs.evolve(request, timeout=remaining), kind, resend=resend
            )
            return self._handle(response, method, path)

        decide = self.decide_submit if mode == "submit" else self.decide_safe
        return await self.retrying(
            attempt,
            deadline=deadline,
            decide=decide,
            what=f"{method} {path}",
            first_error=first_error,
        )

    async def _send(self, request: Request, kind: str, *, resend: int = 0) -> Response:
        """Send *request* (a client span); learn the API's clock from its ``Date``."""
        sent = self.clock.time()
        with http_call(
            request.method,
            request.url,
            kind=kind,
            params=request.params,
            resend=resend,
        ) as call:
            response = await self.transport.send(request)
            call.response(response.status)
        self.server_offset.observe(
            response.headers.get("date"), sent=sent, received=self.clock.time()
        )
        return response

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

    def _handle(
        self, response: Response, method: str, path: str
    ) -> tuple[Any, str | None]:
        status = response.status
        header_rid = response.headers.get("x-request-id")
        if 200 <= status < 300:  # noqa: PLR2004 -- HTTP success class
            if not response.content or response.content.isspace():
                return {}, header_rid
            body = decode_json(response.content, status=status)
            if isinstance(body, dict) and body.get("success") is False:
                raise self.api_error(status, body, response, method, path)
            data, rid = unwrap(body)
            return data, rid or header_rid
        try:
            body = json.loads(response.content) if response.content else None
        except (ValueError, UnicodeDecodeError):
            body = None
        raise self.api_error(status, body, response, method, path)

    def api_error(
        self, status: int, body: Any, response: Response, method: str, path: str
    ) -> APIError:
        code, message, details, rid = error_fields(body)
        if message is None:
            excerpt = response.content[:200].decode("utf-8", "replace").strip()
            message = excerpt or f"{method} {path} failed"
        if 200 <= status < 300:  # noqa: PLR2004 -- a 2xx carrying success:false
            status = 400 if code is None else status
        retry_after = parse_retry_after(
            response.headers.get("retry-after"), now=self.clock.time()
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
            request_id=rid or response.headers.get("x-request-id"),
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
