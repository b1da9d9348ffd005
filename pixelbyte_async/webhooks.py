"""
Webhooks: verify signed deliveries, receive them, and feed `Job.wait` with them.

The API signs each delivery (contract §8)::

    X-PixelByte-Timestamp: 1760000000
    X-PixelByte-Signature: sha256=<hex HMAC-SHA256(secret, f"{timestamp}.{raw body}")>

* `verify` checks a delivery from any framework: pass the **raw body bytes** exactly
  as received (never re-serialised JSON) and the headers.
* `WebhookReceiver` verifies, de-duplicates by job id (the API retries deliveries after
  1, 4, 16, 64 and 256 s), answers fast, and hands events to waiting jobs and your
  hooks.  Mount its aiohttp handler in your app, or run a standalone `WebhookServer`.
* ``PixelByte(webhook=server)`` (or `PixelByte.use_webhooks`) adds the ``webhookUrl``
  to every submit, and `Job.wait` then awaits the delivery, with a slow safety poll in
  case a delivery is lost.

.. versionadded:: 0.1.0
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import inspect
import json
import logging
import re
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self

import attrs

from ._clock import Clock, SystemClock
from ._errors import ResponseDecodeError, WebhookVerificationError
from ._models import JobInfo, JobStatus
from ._serde import decode_job


if TYPE_CHECKING:
    import aiohttp.web

    from ._client import PixelByte


__all__ = [
    "DEFAULT_MAX_BODY",
    "DEFAULT_TOLERANCE",
    "SIGNATURE_HEADER",
    "TIMESTAMP_HEADER",
    "WebhookEvent",
    "WebhookReceiver",
    "WebhookServer",
    "sign",
    "signature_headers",
    "verify",
]

log = logging.getLogger("pixelbyte_async.webhooks")

SIGNATURE_HEADER = "X-PixelByte-Signature"
TIMESTAMP_HEADER = "X-PixelByte-Timestamp"
#: Seconds a delivery's timestamp may differ from now, either way.
DEFAULT_TOLERANCE = 300.0
#: Largest body accepted (a job's payload is a few hundred bytes).
DEFAULT_MAX_BODY = 256 * 1024

_TIMESTAMP_RE = re.compile(r"^[0-9]{1,12}$")
_SIGNATURE_RE = re.compile(r"^sha256=([0-9a-fA-F]{64})$")

Secrets = str | bytes | Sequence[str | bytes]


@attrs.frozen(kw_only=True)
class WebhookEvent:
    """
    A verified delivery.

    Attributes:
        job_id: The job it is about.
        status: The job's status (``completed`` or ``failed``).
        job: The payload decoded like a GET of the job (output URL resolved from
            every documented shape).
        timestamp: The delivery's ``X-PixelByte-Timestamp``.
        payload: The JSON body as sent.

    .. versionadded:: 0.1.0

    """

    job_id: str
    status: JobStatus
    job: JobInfo
    timestamp: int
    payload: Mapping[str, Any] = attrs.field(repr=False)

    @property
    def video_url(self) -> str | None:
        """The output URL, when the payload carries one."""
        return self.job.video_url


def _secret_bytes(secrets: Secrets) -> list[bytes]:
    items: Iterable[str | bytes] = (
        [secrets] if isinstance(secrets, str | bytes) else secrets
    )
    out = [s.encode() if isinstance(s, str) else bytes(s) for s in items]
    if not out or any(not s for s in out):
        raise ValueError("a webhook secret must be a non-empty string")
    return out


def _body_bytes(body: bytes | bytearray | memoryview | str) -> bytes:
    if isinstance(body, str):
        # Accepted for convenience; frameworks that decode bodies may alter them, so
        # prefer the raw bytes (request.body() / request.get_data()).
        return body.encode()
    return bytes(body)


def sign(body: bytes | str, secret: str | bytes, timestamp: int | str) -> str:
    """
    Return the ``X-PixelByte-Signature`` value for *body* sent at *timestamp*.

    For your tests and fixtures (the API signs real deliveries).

    .. versionadded:: 0.1.0
    """
    key = secret.encode() if isinstance(secret, str) else secret
    message = str(timestamp).encode() + b"." + _body_bytes(body)
    return "sha256=" + hmac.new(key, message, hashlib.sha256).hexdigest()


def signature_headers(
    body: bytes | str, secret: str | bytes, *, timestamp: int | None = None
) -> dict[str, str]:
    """
    Return both signature headers for *body*, as the API would send them.

    .. versionadded:: 0.1.0
    """
    ts = int(time.time()) if timestamp is None else int(timestamp)
    return {
        TIMESTAMP_HEADER: str(ts),
        SIGNATURE_HEADER: sign(body, secret, ts),
        "Content-Type": "application/json",
    }


def _header(headers: Mapping[str, str], name: str) -> str | None:
    value = headers.get(name)
    if value is None:
        lower = name.lower()
        for key, candidate in headers.items():
            if isinstance(key, str) and key.lower() == lower:
                value = candidate
                break
    if value is None:
        return None
    return value if isinstance(value, str) else str(value)


def verify(  # noqa: C901, PLR0912 -- one check per documented reason
    body: bytes | bytearray | memoryview | str,
    headers: Mapping[str, str],
    secret: Secrets,
    *,
    tolerance: float = DEFAULT_TOLERANCE,
    now: float | None = None,
    max_body: int = DEFAULT_MAX_BODY,
) -> WebhookEvent:
    """
    Verify a delivery and return its event, or raise `WebhookVerificationError`.

    Args:
        body: The raw request body, exactly as received.
        headers: The request headers (any case-insensitive or plain mapping).
        secret: The webhook secret, or several (rotation: any may match).
        tolerance: Seconds the timestamp may be off, in the past or the future.
        now: Current Unix time (default `time.time()`), for tests.
        max_body: Larger bodies are refused (``too_large``).

    Raises:
        WebhookVerificationError: ``.reason`` is one of ``missing_header``,
            ``malformed``, ``mismatch``, ``stale``, ``future``, ``too_large`` or
            ``not_json``.  Never `TypeError`/`ValueError` on hostile input.

    .. versionadded:: 0.1.0

    """
    keys = _secret_bytes(secret)
    raw = _body_bytes(body)
    if len(raw) > max_body:
        raise WebhookVerificationError(
            f"body of {len(raw)} bytes exceeds {max_body}", reason="too_large"
        )
    ts_header = _header(headers, TIMESTAMP_HEADER)
    sig_header = _header(headers, SIGNATURE_HEADER)
    if ts_header is None or sig_header is None:
        missing = TIMESTAMP_HEADER if ts_header is None else SIGNATURE_HEADER
        raise WebhookVerificationError(f"{missing} is missing", reason="missing_header")
    ts_text = ts_header.strip()
    if not _TIMESTAMP_RE.fullmatch(ts_text):
        raise WebhookVerificationError(
            "timestamp is not Unix seconds", reason="malformed"
        )
    candidates: list[bytes] = []
    for part in sig_header.replace(" ", ",").split(","):
        if not part:
            continue
        match = _SIGNATURE_RE.fullmatch(part)
        if match is None:
            continue
        candidates.append(match.group(1).lower().encode("ascii"))
    if not candidates:
        raise WebhookVerificationError(
            "signature is not 'sha256=<64 hex digits>'", reason="malformed"
        )
    message = ts_text.encode("ascii") + b"." + raw
    matched = False
    for key in keys:
        expected = hmac.new(key, message, hashlib.sha256).hexdigest().encode("ascii")
        for candidate in candidates:
            # Bytes on both sides: compare_digest never raises here.
            matched |= hmac.compare_digest(expected, candidate)
    if not matched:
        raise WebhookVerificationError("signature does not match", reason="mismatch")
    timestamp = int(ts_text)
    current = time.time() if now is None else now
    if timestamp < current - tolerance:
        raise WebhookVerificationError(
            f"timestamp is {current - timestamp:.0f}s old (tolerance {tolerance:g}s)",
            reason="stale",
        )
    if timestamp > current + tolerance:
        raise WebhookVerificationError(
            f"timestamp is {timestamp - current:.0f}s in the future", reason="future"
        )
    try:
        payload = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise WebhookVerificationError("body is not JSON", reason="not_json") from exc
    if not isinstance(payload, dict):
        raise WebhookVerificationError("body is not a JSON object", reason="not_json")
    try:
        info = decode_job(payload)
    except ResponseDecodeError as exc:
        raise WebhookVerificationError(
            "payload has no jobId", reason="malformed"
        ) from exc
    return WebhookEvent(
        job_id=info.id,
        status=info.status,
        job=info,
        timestamp=timestamp,
        payload=payload,
    )


EventHook = Callable[[WebhookEvent], "Awaitable[None] | None"]


class WebhookReceiver:
    """
    Verifies, de-duplicates and dispatches webhook deliveries.

    Framework-agnostic core (`handle`) plus an aiohttp handler (`aiohttp_handler`,
    `aiohttp_app`).  Dispatch is synchronous and cheap, so the API gets its 2xx
    at once; your hooks run afterwards as tasks.

    Args:
        secret: The webhook secret (``$PIXELBYTE_WEBHOOK_SECRET`` is not read
            implicitly), or several during a rotation.
        tolerance: Accepted timestamp skew in seconds, both ways.
        max_body: Larger bodies get 413 without being read in full.
        clock: Time source for the timestamp check (tests pass a virtual clock).
        on_event: Called with every new verified event (after waiters are fed).
        on_unknown: Called with events for jobs no client here knows, after
            *unknown_grace* seconds (so a delivery racing its own submit is not
            reported).
        unknown_grace: See *on_unknown*.
        max_events: How many recent events are remembered for de-duplication and
            for waiters that register late.

    .. versionadded:: 0.1.0

    """

    def __init__(
        self,
        secret: Secrets,
        *,
        tolerance: float = DEFAULT_TOLERANCE,
        max_body: int = DEFAULT_MAX_BODY,
        clock: Clock | None = None,
        on_event: EventHook | None = None,
        on_unknown: EventHook | None = None,
        unknown_grace: float = 5.0,
        max_events: int = 50_000,
    ) -> None:
        self._secrets = _secret_bytes(secret)
        self.tolerance = tolerance
        self.max_body = max_body
        self.clock: Clock = clock or SystemClock()
        self.on_event = on_event
        self.on_unknown = on_unknown
        self.unknown_grace = unknown_grace
        self.max_events = max_events
        self._events: OrderedDict[str, WebhookEvent] = OrderedDict()
        self._futures: dict[str, asyncio.Future[WebhookEvent]] = {}
        self._waiters: dict[str, int] = {}
        self._clients: list[PixelByte] = []
        self._hook_tasks: set[asyncio.Task[None]] = set()
        self.stats: dict[str, int] = {
            "received": 0,
            "accepted": 0,
            "duplicates": 0,
            "rejected": 0,
            "unknown": 0,
        }

    def __repr__(self) -> str:
        return (
            f"WebhookReceiver(events={len(self._events)}, "
            f"waiting={len(self._waiters)}, stats={self.stats})"
        )

    # -- the framework-agnostic core ------------------------------------------------

    def handle(self, body: bytes, headers: Mapping[str, str]) -> tuple[int, str]:
        """
        Verify and dispatch one delivery; return ``(http_status, reason)``.

        200 for new and duplicate deliveries (the API must stop retrying), 401 for
        verification failures, 413 for oversize bodies.
        """
        self.stats["received"] += 1
        try:
            event = verify(
                body,
                headers,
                self._secrets,
                tolerance=self.tolerance,
                now=self.clock.time(),
                max_body=self.max_body,
            )
        except WebhookVerificationError as exc:
            self.stats["rejected"] += 1
            log.warning("rejected webhook delivery: %s (%s)", exc.reason, exc)
            return (413 if exc.reason == "too_large" else 401), exc.reason
        if not self.dispatch(event):
            self.stats["duplicates"] += 1
            return 200, "duplicate"
        return 200, "ok"

    def dispatch(self, event: WebhookEvent) -> bool:
        """
        Hand a verified *event* to waiters, clients and hooks; False if a duplicate.

        Exposed for frameworks where you verified with `verify` yourself.
        """
        if event.job_id in self._events:
            self._events.move_to_end(event.job_id)
            return False
        if not event.status.is_terminal:
            # Only terminal deliveries are documented; anything else is informative
            # and must not block the terminal one that follows.
            log.info("webhook for %s with status %s", event.job_id, event.status)
            return True
        self.stats["accepted"] += 1
        self._events[event.job_id] = event
        while len(self._events) > self.max_events:
            self._events.popitem(last=False)
        known = False
        future = self._futures.pop(event.job_id, None)
        if future is not None and not future.done():
            future.set_result(event)
            known = True
        for client in self._clients:
            known |= client._webhook_event(event)  # noqa: SLF001 -- client and receiver cooperate
        if self.on_event is not None:
            self._run_hook(self.on_event, event)
        if not known:
            self._later(lambda: self._maybe_unknown(event))
        return True

    def _later(self, callback: Callable[[], None]) -> None:
        """Run *callback* after the grace period, or now outside an event loop."""
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            # A synchronous framework (a Django or Flask view): no loop to wait on,
            # and no submit in this thread that the delivery could be racing.
            callback()
            return
        self.clock.call_later(self.unknown_grace, callback)

    def _is_known(self, job_id: str) -> bool:
        return job_id in self._waiters or any(
            client._knows_job(job_id)  # noqa: SLF001 -- client and receiver cooperate
            for client in self._clients
        )

    def _count_unknown(self, event: WebhookEvent) -> bool:
        if self._is_known(event.job_id):
            return False
        self.stats["unknown"] += 1
        return True

    def _maybe_unknown(self, event: WebhookEvent) -> None:
        if self._count_unknown(event) and self.on_unknown is not None:
            self._run_hook(self.on_unknown, event)

    def _run_hook(self, hook: EventHook, event: WebhookEvent) -> None:
        try:
            result = hook(event)
        except Exception:
            log.exception("webhook hook failed for %s", event.job_id)
            return
        if inspect.isawaitable(result):
            try:
                asyncio.get_running_loop()
            except RuntimeError:
                log.warning(
                    "webhook hook for %s returned an awaitable outside an event "
                    "loop; use a plain function with synchronous frameworks",
                    event.job_id,
                )
                if inspect.iscoroutine(result):
                    result.close()
                return

            async def run(awaitable: Awaitable[None]) -> None:
                try:
                    await awaitable
                except Exception:
                    log.exception("webhook hook failed for %s", event.job_id)

            task = asyncio.ensure_future(run(result))
            self._hook_tasks.add(task)
            task.add_done_callback(self._hook_tasks.discard)

    # -- waiting ----------------------------------------------------------------------

    def event_for(self, job_id: str) -> WebhookEvent | None:
        """Return the remembered event for *job_id*, if one arrived."""
        return self._events.get(job_id)

    def future_for(self, job_id: str) -> asyncio.Future[WebhookEvent]:
        """
        Return a future resolved by *job_id*'s delivery (already done if it came).

        One future per job id is shared by every waiter, and no task is made per
        job.  Call `release` with the same id when you stop waiting.
        """
        self._waiters[job_id] = self._waiters.get(job_id, 0) + 1
        event = self._events.get(job_id)
        if event is not None:
            done: asyncio.Future[WebhookEvent] = (
                asyncio.get_running_loop().create_future()
            )
            done.set_result(event)
            return done
        future = self._futures.get(job_id)
        if future is None or future.done():
            future = asyncio.get_running_loop().create_future()
            self._futures[job_id] = future
        return future

    def release(self, job_id: str) -> None:
        """Forget *job_id*'s future once its last waiter is gone (no leak)."""
        count = self._waiters.get(job_id, 0) - 1
        if count > 0:
            self._waiters[job_id] = count
            return
        self._waiters.pop(job_id, None)
        future = self._futures.pop(job_id, None)
        if future is not None and not future.done():
            future.cancel()

    @property
    def waiting(self) -> int:
        """How many job ids have a waiter right now."""
        return len(self._waiters)

    def attach(self, client: PixelByte) -> None:
        """Let *client* observe events (done by `PixelByte.use_webhooks`)."""
        if client not in self._clients:
            self._clients.append(client)

    def detach(self, client: PixelByte) -> None:
        """Stop feeding *client*."""
        if client in self._clients:
            self._clients.remove(client)

    # -- aiohttp ------------------------------------------------------------------------

    async def aiohttp_handler(
        self, request: aiohttp.web.Request
    ) -> aiohttp.web.Response:
        """
        An aiohttp handler: mount it with ``app.router.add_post(path, handler)``.

        Oversize bodies get 413 from ``Content-Length`` alone, or as soon as the
        streamed body passes the limit.
        """
        declared = request.content_length
        if declared is not None and declared > self.max_body:
            self.stats["received"] += 1
            self.stats["rejected"] += 1
            return _reply(413, "too_large")
        body = bytearray()
        async for chunk in request.content.iter_chunked(16 * 1024):
            body += chunk
            if len(body) > self.max_body:
                self.stats["received"] += 1
                self.stats["rejected"] += 1
                return _reply(413, "too_large")
        status, reason = self.handle(bytes(body), request.headers)
        return _reply(status, reason)

    def aiohttp_app(self, path: str = "/") -> aiohttp.web.Application:
        """Return a sub-application to mount: ``app.add_subapp("/hooks", r.aiohttp_app())``."""
        from aiohttp import web  # noqa: PLC0415 -- aiohttp.web is imported on first use

        app = web.Application(client_max_size=self.max_body + 1)
        app.router.add_post(path, self.aiohttp_handler)
        return app

    async def aclose(self) -> None:
        """Wait for hook tasks still running."""
        if self._hook_tasks:
            await asyncio.gather(*self._hook_tasks, return_exceptions=True)


def _reply(status: int, reason: str) -> aiohttp.web.Response:
    from aiohttp import web  # noqa: PLC0415 -- aiohttp.web is imported on first use

    return web.json_response({"ok": status < 300, "reason": reason}, status=status)  # noqa: PLR2004 -- HTTP success


class WebhookServer:
    """
    A standalone receiver: an aiohttp server that a `PixelByte` client can start.

    Args:
        secret: The webhook secret (or several), or an existing *receiver*.
        receiver: Use this receiver instead of making one from *secret*.
        host: Interface to listen on.
        port: Port (0: any free one).
        path: URL path of the endpoint.
        public_url: The https URL the API should call (behind your proxy or tunnel);
            default: the local URL (fine for `FakePixelByte`, not for the real API).
        **receiver_kwargs: More `WebhookReceiver` options.

    .. versionadded:: 0.1.0

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
        **receiver_kwargs: Any,
    ) -> None:
        if receiver is None:
            if secret is None:
                raise ValueError("pass a webhook secret or a receiver")
            receiver = WebhookReceiver(secret, **receiver_kwargs)
        self.receiver = receiver
        self.host = host
        self.port = port
        self.path = path if path.startswith("/") else "/" + path
        self._public_url = public_url
        self._runner: aiohttp.web.AppRunner | None = None
        self._url: str | None = None
        self._lock = asyncio.Lock()

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
        runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await runner.setup()
        site = web.TCPSite(runner, self.host, self.port)
        await site.start()
        server = site._server  # noqa: SLF001 -- aiohttp exposes the bound port only here
        sockets = getattr(server, "sockets", None) or []
        port = sockets[0].getsockname()[1] if sockets else self.port
        self.port = port
        self._url = f"http://{self.host}:{port}{self.path}"
        self._runner = runner

    async def close(self) -> None:
        """Stop listening (idempotent); the port is kept for a restart."""
        async with self._lock:
            runner, self._runner = self._runner, None
            if runner is not None:
                await runner.cleanup()
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
