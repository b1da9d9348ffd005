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

**Threads.**  `WebhookReceiver.handle` and `WebhookReceiver.dispatch` may be called
from any thread, e.g. a synchronous Django or Flask view in a worker thread while
``job.wait()`` is parked on your application's event loop.  Verification and
de-duplication happen at once in the calling thread (so the HTTP answer is
immediate); waiters, attached clients and coroutine hooks are then handed to the
event loop they belong to with ``loop.call_soon_threadsafe``.  Nothing else touches
a loop, a future or a `Job` from a foreign thread.

**Attribution.**  `tag_webhook_url` adds a per-submit-attempt nonce (``pb_attempt``,
made by `new_attempt_id`) to the ``webhookUrl``; the API calls that URL back, so a
delivery tells which submit attempt created which job
(`WebhookReceiver.job_for_attempt`).  The signature covers the timestamp and the
body, **not the URL**: the nonce is attribution, not authentication.  Only verified
deliveries are counted, and the first delivery naming an attempt wins; a later one
naming it with another job id is logged and ignored.

**Memory.**  Nothing is kept per finished job for long: a job's waiter state goes
with its last waiter; an event is forgotten *retention* seconds (30 min by default)
after its last delivery and an attribution after its first, with *max_events* as a
hard cap.

.. versionadded:: 0.1.0
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import hmac
import inspect
import json
import logging
import re
import secrets
import threading
import time
import weakref
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Any, Protocol, Self
from urllib.parse import parse_qsl, unquote_plus

import attrs

from ._clock import Clock, SystemClock
from ._errors import ResponseDecodeError, WebhookVerificationError
from ._models import JobInfo, JobStatus
from ._serde import decode_job


if TYPE_CHECKING:
    import aiohttp.web


__all__ = [
    "ATTEMPT_PARAM",
    "DEFAULT_MAX_BODY",
    "DEFAULT_TOLERANCE",
    "SIGNATURE_HEADER",
    "TIMESTAMP_HEADER",
    "WebhookEvent",
    "WebhookReceiver",
    "WebhookServer",
    "new_attempt_id",
    "sign",
    "signature_headers",
    "tag_webhook_url",
    "verify",
]

log = logging.getLogger("pixelbyte_async.webhooks")

SIGNATURE_HEADER = "X-PixelByte-Signature"
TIMESTAMP_HEADER = "X-PixelByte-Timestamp"
#: Seconds a delivery's timestamp may differ from now, either way.
DEFAULT_TOLERANCE = 300.0
#: Largest body accepted (a job's payload is a few hundred bytes).
DEFAULT_MAX_BODY = 256 * 1024
#: The ``webhookUrl`` query parameter that carries a submit attempt's nonce.
ATTEMPT_PARAM = "pb_attempt"

_TIMESTAMP_RE = re.compile(r"^[0-9]{1,12}$")
_SIGNATURE_RE = re.compile(r"^sha256=([0-9a-fA-F]{64})$")
_ATTEMPT_RE = re.compile(r"[A-Za-z0-9_-]{1,64}")
# Retries end ~341 s after the first attempt (1+4+16+64+256 s), each attempt may take
# up to 30 s, a retry's timestamp is good for the 300 s tolerance, and reconciling an
# ambiguous submit looks back over a 300 s settle horizon: ~1,120 s in all.  Thirty
# minutes covers that with a margin and still forgets a finished job soon.
_DEFAULT_RETENTION = 1800.0

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
        attempt: The ``pb_attempt`` nonce of the URL the delivery was sent to (see
            `tag_webhook_url`), or None.  Not covered by the signature: use it to
            attribute a job to a submit attempt, never to authenticate.

    .. versionadded:: 0.1.0
    .. versionchanged:: 0.2.0 *attempt*.

    """

    job_id: str
    status: JobStatus
    job: JobInfo
    timestamp: int
    payload: Mapping[str, Any] = attrs.field(repr=False)
    attempt: str | None = None

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


def new_attempt_id() -> str:
    """
    Return a fresh nonce for one submit attempt (16 URL-safe characters).

    .. versionadded:: 0.2.0
    """
    return secrets.token_urlsafe(12)


def tag_webhook_url(url: str, attempt: str) -> str:
    """
    Return *url* with its ``pb_attempt`` query parameter set to *attempt*.

    Any earlier ``pb_attempt`` is replaced; other parameters and the fragment are
    kept exactly as written.

    Raises:
        ValueError: *attempt* is not 1-64 characters of ``[A-Za-z0-9_-]``.

    .. versionadded:: 0.2.0

    """
    if not isinstance(attempt, str) or not _ATTEMPT_RE.fullmatch(attempt):
        msg = f"attempt must be 1-64 characters of [A-Za-z0-9_-], not {attempt!r}"
        raise ValueError(msg)
    base, hashmark, fragment = url.partition("#")
    path, _, query = base.partition("?")
    kept = [
        part
        for part in query.split("&")
        if part and unquote_plus(part.partition("=")[0]) != ATTEMPT_PARAM
    ]
    kept.append(f"{ATTEMPT_PARAM}={attempt}")
    return f"{path}?{'&'.join(kept)}{hashmark}{fragment}"


def _attempt_from(url: str | None) -> str | None:
    """The valid ``pb_attempt`` of a URL, path or query string; else None."""
    if not url or not isinstance(url, str):
        return None
    if "?" in url:
        query = url.partition("?")[2]
    elif "://" in url or url.startswith("/"):
        return None
    else:
        query = url
    query = query.partition("#")[0]
    values = [
        value
        for key, value in parse_qsl(query, keep_blank_values=True)
        if key == ATTEMPT_PARAM
    ]
    if not values or any(value != values[0] for value in values):
        return None
    return values[0] if _ATTEMPT_RE.fullmatch(values[0]) else None


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
    url: str | None = None,
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
        url: The URL the delivery was sent to, or just its query string: its valid
            ``pb_attempt`` becomes ``event.attempt`` (not part of the signature).

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
        attempt=_attempt_from(url),
    )


EventHook = Callable[[WebhookEvent], "Awaitable[None] | None"]


class WebhookObserver(Protocol):
    """
    What a receiver needs from a client attached to it (`PixelByte` is one).

    The receiver hands it every new event (on the loop the client was attached
    on) and asks whether it knows a job, so deliveries for nobody's jobs can be
    reported to ``on_unknown``; nothing else of the client is touched.
    """

    def _webhook_event(self, event: WebhookEvent) -> bool:
        """Observe *event*; return whether the job is this client's."""
        ...

    def _knows_job(self, job_id: str) -> bool:
        """Whether *job_id* is one of this client's jobs."""
        ...


_Loop = asyncio.AbstractEventLoop


def _running_loop() -> _Loop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


def _resolve(
    futures: Iterable[asyncio.Future[WebhookEvent]], event: WebhookEvent
) -> bool:
    """Set *event* on the pending *futures* (on their loop); True if any was pending."""
    fed = False
    for future in futures:
        if not future.done():
            future.set_result(event)
            fed = True
    return fed


def _cancel(futures: Iterable[asyncio.Future[WebhookEvent]]) -> None:
    for future in futures:
        if not future.done():
            future.cancel()


class WebhookReceiver:
    """
    Verifies, de-duplicates and dispatches webhook deliveries.

    Framework-agnostic core (`handle`) plus an aiohttp handler (`aiohttp_handler`,
    `aiohttp_app`).  Dispatch is synchronous and cheap, so the API gets its 2xx
    at once; your hooks run afterwards as tasks.

    `handle` and `dispatch` are safe from any thread.  From a thread other than the
    event loop a waiter or an attached client belongs to, the event is handed to
    that loop with ``call_soon_threadsafe`` (and dropped if the loop is closed); a
    plain-function hook runs in the calling thread, a coroutine hook as a task on
    that loop.  The receiver learns loops from `future_for`, `event_for`,
    `job_for_attempt` and `attach` called inside them.

    Args:
        secret: The webhook secret (``$PIXELBYTE_WEBHOOK_SECRET`` is not read
            implicitly), or several during a rotation.
        tolerance: Accepted timestamp skew in seconds, both ways.
        max_body: Larger bodies get 413 without being read in full.
        clock: Time source for the timestamp check and *retention* (tests pass a
            virtual clock).
        on_event: Called with every new verified event (after waiters are fed, or
            handed to their loop).
        on_unknown: Called with events for jobs no client here knows, after
            *unknown_grace* seconds (so a delivery racing its own submit is not
            reported); on the owning event loop when there is one.
        unknown_grace: See *on_unknown*.
        max_events: Hard cap on the events (and on the attempt attributions)
            remembered for de-duplication and for waiters that register late.
        retention: Seconds an event is remembered after its last delivery, and an
            attribution (`job_for_attempt`) after its first.  The default, 1800 s,
            outlasts the API's retries (1+4+16+64+256 s ≈ 5.7 min, each attempt
            allowed 30 s), the 300 s timestamp tolerance of the last retry and a
            300 s settle horizon for reconciling an ambiguous submit (≈ 19 min in
            all), with margin.  Keep it above *tolerance*, so that a replayed
            delivery is refused as stale before it is forgotten.  Pruning is
            amortised O(1) on each call, with no background task.

    .. versionadded:: 0.1.0
    .. versionchanged:: 0.2.0 *retention*; safe from any thread.

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
        retention: float = _DEFAULT_RETENTION,
    ) -> None:
        if not retention > 0:
            raise ValueError(
                f"retention must be a positive number of seconds, not {retention!r}"
            )
        self._secrets = _secret_bytes(secret)
        self.tolerance = tolerance
        self.max_body = max_body
        self.clock: Clock = clock or SystemClock()
        self.on_event = on_event
        self.on_unknown = on_unknown
        self.unknown_grace = unknown_grace
        self.max_events = max_events
        self.retention = float(retention)
        # Guards every structure below: handle() may run in any thread.  Never held
        # while calling out (hooks, clients, futures).
        self._lock = threading.Lock()
        # job id -> (clock.monotonic() of its last delivery, event), oldest first.
        self._events: OrderedDict[str, tuple[float, WebhookEvent]] = OrderedDict()
        # attempt nonce -> (clock.monotonic() of its first delivery, job id).
        self._attempts: OrderedDict[str, tuple[float, str]] = OrderedDict()
        # job id -> one pending future per event loop with a waiter (usually one).
        self._futures: dict[str, list[asyncio.Future[WebhookEvent]]] = {}
        self._waiters: dict[str, int] = {}
        # client -> the loop it was attached on (None: outside a loop).
        self._clients: dict[WebhookObserver, _Loop | None] = {}
        self._home: weakref.ref[_Loop] | None = None
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

    def _count(self, stat: str) -> None:
        with self._lock:
            self.stats[stat] += 1

    def _sizes(self) -> dict[str, int]:
        """The sizes of the per-job structures (for tests and debugging)."""
        with self._lock:
            return {
                "events": len(self._events),
                "attempts": len(self._attempts),
                "futures": len(self._futures),
                "waiters": len(self._waiters),
                "hook_tasks": len(self._hook_tasks),
            }

    # -- the framework-agnostic core ------------------------------------------------

    def handle(
        self,
        body: bytes | bytearray | memoryview | str,
        headers: Mapping[str, str],
        *,
        url: str | None = None,
    ) -> tuple[int, str]:
        """
        Verify and dispatch one delivery; return ``(http_status, reason)``.

        200 for new and duplicate deliveries (the API must stop retrying), 401 for
        verification failures, 413 for oversize bodies.  Safe from any thread; the
        answer never waits for an event loop.

        Args:
            body: The raw request body, exactly as received.
            headers: The request headers.
            url: The request URL, or just its query string (``"pb_attempt=..."``
                or ``"?pb_attempt=..."``): its ``pb_attempt`` becomes the event's
                *attempt* (see `job_for_attempt`).

        .. versionchanged:: 0.2.0 *url*; safe from any thread.

        """
        self._count("received")
        try:
            event = verify(
                body,
                headers,
                self._secrets,
                tolerance=self.tolerance,
                now=self.clock.time(),
                max_body=self.max_body,
                url=url,
            )
        except WebhookVerificationError as exc:
            self._count("rejected")
            log.warning("rejected webhook delivery: %s (%s)", exc.reason, exc)
            return (413 if exc.reason == "too_large" else 401), exc.reason
        if not self.dispatch(event):
            self._count("duplicates")
            return 200, "duplicate"
        return 200, "ok"

    def dispatch(self, event: WebhookEvent) -> bool:
        """
        Hand a verified *event* to waiters, clients and hooks; False if a duplicate.

        Exposed for frameworks where you verified with `verify` yourself (pass its
        *url* so that ``event.attempt`` is set).  Safe from any thread: the
        de-duplication and the attribution of ``event.attempt`` happen at once,
        the hand-off to waiters and clients on their own event loop.
        """
        conflict: str | None = None
        futures: list[asyncio.Future[WebhookEvent]] = []
        clients: list[tuple[WebhookObserver, _Loop | None]] = []
        home: _Loop | None = None
        with self._lock:
            now = self.clock.monotonic()
            self._prune(now)  # an expired event no longer counts as seen
            if event.attempt is not None:
                conflict = self._attribute(event, now)
            seen = self._events.pop(event.job_id, None)
            if seen is not None:
                # A retry: remember the event for another *retention* from now.
                self._events[event.job_id] = (now, seen[1])
            elif event.status.is_terminal:
                self.stats["accepted"] += 1
                self._events[event.job_id] = (now, event)
                futures = self._futures.pop(event.job_id, [])
                clients = list(self._clients.items())
                home = self._home() if self._home is not None else None
            self._prune(now)  # the max_events cap
        if conflict is not None:
            log.warning(
                "webhook for %s names attempt %s, already attributed to %s; ignored",
                event.job_id,
                event.attempt,
                conflict,
            )
        if seen is not None:
            return False
        if not event.status.is_terminal:
            # Only terminal deliveries are documented; anything else is informative
            # and must not block the terminal one that follows.
            log.info("webhook for %s with status %s", event.job_id, event.status)
            return True
        self._fan_out(event, futures, clients, home)
        return True

    def _prune(self, now: float) -> None:
        """Forget what is older than *retention* or over *max_events* (lock held)."""
        horizon = now - self.retention
        for entries in (self._events, self._attempts):
            while entries and (
                len(entries) > self.max_events
                or next(iter(entries.values()))[0] <= horizon
            ):
                entries.popitem(last=False)

    def _attribute(self, event: WebhookEvent, now: float) -> str | None:
        """Record ``event.attempt``; return the other job id it names (lock held)."""
        attempt = event.attempt
        if attempt is None or not _ATTEMPT_RE.fullmatch(attempt):
            return None
        known = self._attempts.get(attempt)
        if known is None:
            self._attempts[attempt] = (now, event.job_id)
            return None
        return None if known[1] == event.job_id else known[1]

    def _fan_out(
        self,
        event: WebhookEvent,
        futures: list[asyncio.Future[WebhookEvent]],
        clients: list[tuple[WebhookObserver, _Loop | None]],
        home: _Loop | None,
    ) -> None:
        """Feed waiters and clients on their loops, then the hooks."""
        here = _running_loop()
        plan: dict[
            _Loop | None,
            tuple[list[asyncio.Future[WebhookEvent]], list[WebhookObserver]],
        ] = {}
        for future in futures:
            plan.setdefault(future.get_loop(), ([], []))[0].append(future)
        for client, attached_on in clients:
            # A client attached outside a loop is fed on the loop it was first
            # used on (PixelByte._loop, when it records one), else on the loop the
            # SDK was last seen on.
            used_on = getattr(client, "_loop", None)
            loop = (
                attached_on
                or (used_on if isinstance(used_on, _Loop) else None)
                or home
                or here
            )
            plan.setdefault(loop, ([], []))[1].append(client)
        known = bool(futures)
        for loop, (feed, observers) in plan.items():
            if loop is None or loop is here:
                known |= self._feed(event, feed, observers)
            else:
                self._call_on(loop, self._feed, event, feed, observers)
        owner = here or next(
            (
                loop
                for loop in (*plan, home)
                if loop is not None and not loop.is_closed()
            ),
            None,
        )
        if self.on_event is not None:
            self._run_hook(self.on_event, event, owner)
        if not known:
            check = functools.partial(self._maybe_unknown, event)
            if owner is None or owner is here:
                self._later(check)
            else:
                self._call_on(owner, self._later, check)

    def _feed(
        self,
        event: WebhookEvent,
        futures: list[asyncio.Future[WebhookEvent]],
        clients: list[WebhookObserver],
    ) -> bool:
        """On the waiters' loop: resolve futures, tell clients; True if known."""
        known = _resolve(futures, event)
        for client in clients:
            known |= client._webhook_event(event)  # noqa: SLF001 -- client and receiver cooperate
        return known

    def _call_on(
        self, loop: _Loop, callback: Callable[..., object], *args: Any
    ) -> bool:
        """Run *callback* on *loop* from any thread; False if the loop is closed."""
        try:
            loop.call_soon_threadsafe(callback, *args)
        except RuntimeError:
            log.debug("event loop %r is closed; webhook hand-off dropped", loop)
            return False
        return True

    def _later(self, callback: Callable[[], None]) -> None:
        """Run *callback* after the grace period, or now outside an event loop."""
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            # A synchronous framework (a Django or Flask view) and no event loop in
            # the process: no submit that the delivery could be racing.
            callback()
            return
        self.clock.call_later(self.unknown_grace, callback)

    def _is_known(self, job_id: str) -> bool:
        with self._lock:
            if job_id in self._waiters:
                return True
            clients = list(self._clients)
        return any(
            client._knows_job(job_id)  # noqa: SLF001 -- client and receiver cooperate
            for client in clients
        )

    def _count_unknown(self, event: WebhookEvent) -> bool:
        if self._is_known(event.job_id):
            return False
        self._count("unknown")
        return True

    def _maybe_unknown(self, event: WebhookEvent) -> None:
        if self._count_unknown(event) and self.on_unknown is not None:
            self._run_hook(self.on_unknown, event, _running_loop())

    def _run_hook(
        self, hook: EventHook, event: WebhookEvent, owner: _Loop | None
    ) -> None:
        """Call *hook* here; an awaitable it returns runs on this loop or *owner*."""
        try:
            result = hook(event)
        except Exception:
            log.exception("webhook hook failed for %s", event.job_id)
            return
        if not inspect.isawaitable(result):
            return
        if _running_loop() is not None:
            self._spawn(result, event)
            return
        if owner is not None and self._call_on(owner, self._spawn, result, event):
            return
        log.warning(
            "webhook hook for %s returned an awaitable outside an event "
            "loop; use a plain function with synchronous frameworks",
            event.job_id,
        )
        if inspect.iscoroutine(result):
            result.close()

    def _spawn(self, awaitable: Awaitable[None], event: WebhookEvent) -> None:
        """On a loop: run a hook's awaitable as a task, kept until it ends."""

        async def run() -> None:
            try:
                await awaitable
            except Exception:
                log.exception("webhook hook failed for %s", event.job_id)

        task = asyncio.ensure_future(run())
        with self._lock:
            self._hook_tasks.add(task)
        task.add_done_callback(self._forget_task)

    def _forget_task(self, task: asyncio.Task[None]) -> None:
        with self._lock:
            self._hook_tasks.discard(task)

    # -- waiting ----------------------------------------------------------------------

    def _note_loop(self, loop: _Loop | None) -> None:
        """Remember the loop the SDK runs on (lock held)."""
        if loop is not None and (self._home is None or self._home() is not loop):
            self._home = weakref.ref(loop)

    def event_for(self, job_id: str) -> WebhookEvent | None:
        """Return the remembered event for *job_id*, if one arrived (and is kept)."""
        with self._lock:
            self._note_loop(_running_loop())
            self._prune(self.clock.monotonic())
            entry = self._events.get(job_id)
        return None if entry is None else entry[1]

    def job_for_attempt(self, attempt: str) -> str | None:
        """
        Return the job id a verified delivery tagged with *attempt* was about.

        The first verified delivery naming an attempt wins; the answer is kept for
        *retention* seconds.  See `tag_webhook_url`.

        .. versionadded:: 0.2.0
        """
        with self._lock:
            self._note_loop(_running_loop())
            self._prune(self.clock.monotonic())
            entry = self._attempts.get(attempt)
        return None if entry is None else entry[1]

    def future_for(self, job_id: str) -> asyncio.Future[WebhookEvent]:
        """
        Return a future resolved by *job_id*'s delivery (already done if it came).

        One future per job id (and event loop) is shared by every waiter, and no
        task is made per job.  Call `release` with the same id when you stop waiting.
        """
        loop = asyncio.get_running_loop()
        with self._lock:
            self._note_loop(loop)
            self._prune(self.clock.monotonic())
            self._waiters[job_id] = self._waiters.get(job_id, 0) + 1
            entry = self._events.get(job_id)
            if entry is None:
                futures = self._futures.setdefault(job_id, [])
                for future in futures:
                    if future.get_loop() is loop and not future.done():
                        return future
                # Drop this loop's future if a caller cancelled it.
                futures[:] = [f for f in futures if f.get_loop() is not loop]
                future = loop.create_future()
                futures.append(future)
                return future
        done: asyncio.Future[WebhookEvent] = loop.create_future()
        done.set_result(entry[1])
        return done

    def release(self, job_id: str) -> None:
        """Forget *job_id*'s future once its last waiter is gone (no leak)."""
        with self._lock:
            count = self._waiters.get(job_id, 0) - 1
            if count > 0:
                self._waiters[job_id] = count
                return
            self._waiters.pop(job_id, None)
            futures = self._futures.pop(job_id, [])
        here = _running_loop()
        for future in futures:
            loop = future.get_loop()
            if loop is here:
                _cancel([future])
            else:
                self._call_on(loop, _cancel, [future])

    @property
    def waiting(self) -> int:
        """How many job ids have a waiter right now."""
        return len(self._waiters)

    def attach(self, client: WebhookObserver) -> None:
        """Let *client* observe events (done by `PixelByte.use_webhooks`)."""
        loop = _running_loop()
        with self._lock:
            self._note_loop(loop)
            if self._clients.get(client) is None:
                self._clients[client] = loop

    def detach(self, client: WebhookObserver) -> None:
        """Stop feeding *client*."""
        with self._lock:
            self._clients.pop(client, None)

    # -- aiohttp ------------------------------------------------------------------------

    async def aiohttp_handler(
        self, request: aiohttp.web.Request
    ) -> aiohttp.web.Response:
        """
        An aiohttp handler: mount it with ``app.router.add_post(path, handler)``.

        Oversize bodies get 413 from ``Content-Length`` alone, or as soon as the
        streamed body passes the limit.  The query string goes to `handle` as
        *url* (for ``pb_attempt``).
        """
        declared = request.content_length
        if declared is not None and declared > self.max_body:
            self._count("received")
            self._count("rejected")
            return _reply(413, "too_large")
        body = bytearray()
        async for chunk in request.content.iter_chunked(16 * 1024):
            body += chunk
            if len(body) > self.max_body:
                self._count("received")
                self._count("rejected")
                return _reply(413, "too_large")
        status, reason = self.handle(
            bytes(body), request.headers, url=request.query_string
        )
        return _reply(status, reason)

    def aiohttp_app(self, path: str = "/") -> aiohttp.web.Application:
        """Return a sub-application to mount: ``app.add_subapp("/hooks", r.aiohttp_app())``."""
        from aiohttp import web  # noqa: PLC0415 -- aiohttp.web is imported on first use

        app = web.Application(client_max_size=self.max_body + 1)
        app.router.add_post(path, self.aiohttp_handler)
        return app

    async def aclose(self) -> None:
        """Wait for hook tasks of this event loop still running."""
        loop = asyncio.get_running_loop()
        with self._lock:
            tasks = [t for t in self._hook_tasks if t.get_loop() is loop]
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)


def _reply(status: int, reason: str) -> aiohttp.web.Response:
    from aiohttp import web  # noqa: PLC0415 -- aiohttp.web is imported on first use

    return web.json_response({"ok": status < 300, "reason": reason}, status=status)  # noqa: PLR2004 -- HTTP success


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
        **receiver_kwargs: More `WebhookReceiver` options.

    Raises:
        ValueError: *read_timeout* is not a positive finite number or
            *max_connections* not a positive integer.

    .. versionadded:: 0.1.0
    .. versionchanged:: 0.2.0 *read_timeout* and *max_connections*.

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
            receiver = WebhookReceiver(secret, **receiver_kwargs)
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
