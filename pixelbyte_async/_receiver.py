"""
The webhook receiver: verify, de-duplicate and dispatch deliveries.

Owns `WebhookReceiver`: its settings and ``stats``, the framework-agnostic `handle`
(and `handle_async`) and `dispatch`, waiting on a job's delivery, attaching clients,
and its aiohttp handler.  Verification is ``_signing``'s, what happens to a verified
delivery ``_dispatch``'s (publishing it to a hub first, when there is one), what it
remembers ``_receiver_state``'s, and its hooks and the hand-off to other event loops
``_handoff``'s.
"""

from __future__ import annotations

import asyncio
import functools
import json
import threading
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

from ._clock import Clock, SystemClock
from ._dispatch import DeliveryDispatch, DeliveryIntake, counted
from ._handoff import (
    EventHook,
    HookRunner,
    WebhookObserver,
    _cancel,
    _running_loop,
    call_on,
)
from ._receiver_state import AttachedClients, JobWaiters, RecentDeliveries
from ._signing import (
    DEFAULT_MAX_BODY,
    DEFAULT_TOLERANCE,
    Secrets,
    SignedDelivery,
    WebhookEvent,
    signing_keys,
)


if TYPE_CHECKING:
    import aiohttp
    import aiohttp.web

    from ._sharing import PublishingHub


__all__ = ["WebhookReceiver"]

# Retries end ~341 s after the first attempt (1+4+16+64+256 s), each attempt may take
# up to 30 s, a retry's timestamp is good for the 300 s tolerance, and reconciling an
# ambiguous submit looks back over a 300 s settle horizon: ~1,120 s in all.  Thirty
# minutes covers that with a margin and still forgets a finished job soon.
_DEFAULT_RETENTION = 1800.0
# The counters of `WebhookReceiver.stats`, all 0 at first.
_STATS = ("received", "accepted", "duplicates", "rejected", "unknown")
# Seconds `aiohttp_handler` waits for a whole body once the headers are in: the API
# sends a few hundred bytes; the same bound as WebhookServer's read timeout.
_DEFAULT_BODY_TIMEOUT = 10.0


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
        body_timeout: Seconds `aiohttp_handler` waits for the whole body once the
            headers are in; a slower body is answered 408 ``timeout`` and its
            connection closed.  (Slow headers are the site's to bound: serve the
            app through a `GuardedSite`, or a proxy with a header timeout.)
        hub: A started hub shared by processes (`pixelbyte_async.redis.RedisHub`)
            to publish each verified delivery to, with no de-duplication here
            first; its answer decides.  New everywhere: 200 ``ok``, dispatched
            here.  A duplicate: 200 ``duplicate``, nothing happens here.  Not
            shared (``HubUnavailable``, no answer within its ``connect_timeout``,
            or not running): 503 ``hub_unavailable`` (the API retries, and the
            retry is published again), dispatched here all the same.  Waiters,
            clients and hooks here still get a delivery once; waits elsewhere
            are the hub's.  On an event loop, await `handle_async`.

    .. versionadded:: 0.1.0
    .. versionchanged:: 0.2.0 *retention*; safe from any thread.
    .. versionchanged:: 0.3.0 *hub*, *body_timeout*.
    .. versionchanged:: 0.5.0 Probes (see `saw_probe`).

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
        body_timeout: float = _DEFAULT_BODY_TIMEOUT,
        hub: PublishingHub | None = None,
    ) -> None:
        if not retention > 0:
            raise ValueError(
                f"retention must be a positive number of seconds, not {retention!r}"
            )
        if (
            not isinstance(body_timeout, int | float)
            or isinstance(body_timeout, bool)
            or not 0 < body_timeout < float("inf")
        ):
            raise ValueError(
                "body_timeout must be a positive finite number of seconds, "
                f"not {body_timeout!r}"
            )
        keys = signing_keys(secret)
        self._keys = keys
        self.tolerance = tolerance
        self.max_body = max_body
        self.clock: Clock = clock or SystemClock()
        self.on_event = on_event
        self.on_unknown = on_unknown
        self.unknown_grace = unknown_grace
        self.max_events = max_events
        self.retention = float(retention)
        self.body_timeout = float(body_timeout)
        # Guards every structure below: handle() may run in any thread.  Never held
        # while calling out (hooks, clients, futures).
        self._lock = threading.Lock()
        self._recent = RecentDeliveries()
        self._waiters = JobWaiters()
        self._clients = AttachedClients()
        self._hooks = HookRunner(self._lock)
        self.stats: dict[str, int] = dict.fromkeys(_STATS, 0)
        self._dispatch = DeliveryDispatch(
            self,
            self._lock,
            recent=self._recent,
            waiters=self._waiters,
            clients=self._clients,
            hooks=self._hooks,
        )
        self._intake = DeliveryIntake(
            self, self._lock, keys, local=self._dispatch, hub=hub
        )

    @property
    def hub(self) -> PublishingHub | None:
        """The hub every verified delivery is published to, if any."""
        shared = self._intake.shared
        return None if shared is None else shared.hub

    def __repr__(self) -> str:
        return (
            f"WebhookReceiver(events={self._recent.events}, "
            f"waiting={len(self._waiters)}, stats={self.stats})"
        )

    def _sizes(self) -> dict[str, int]:
        """The sizes of the per-job structures (for tests and debugging)."""
        with self._lock:
            return {
                "events": self._recent.events,
                "attempts": self._recent.attempts,
                "futures": self._waiters.futures,
                "waiters": len(self._waiters),
                "hook_tasks": len(self._hooks),
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
        verification failures, 413 for oversize bodies; 200 ``probe`` for a signed
        probe (`PixelByte.check_webhooks`), dispatched to nobody.  Safe from any thread; the
        answer never waits for an event loop.  With a *hub*, 503 when it could not
        share the delivery; the answer waits for the hub, so call it in a thread
        with no event loop (on one, await `handle_async`, or get `RuntimeError`).

        Args:
            body: The raw request body, exactly as received.
            headers: The request headers.
            url: The request URL, or just its query string (``"pb_attempt=..."``
                or ``"?pb_attempt=..."``): its ``pb_attempt`` becomes the event's
                *attempt* (see `job_for_attempt`).

        .. versionchanged:: 0.2.0 *url*; safe from any thread.

        """
        return self._intake.answer((body, headers, url), self._override())

    async def handle_async(
        self,
        body: bytes | bytearray | memoryview | str,
        headers: Mapping[str, str],
        *,
        url: str | None = None,
    ) -> tuple[int, str]:
        """
        `handle` for a coroutine (an aiohttp or FastAPI handler): the same answers.

        With a *hub*, the hub's answer is awaited: on the hub's event loop directly,
        from another loop through the hub's (for its ``connect_timeout`` at most).
        Without one, this is `handle`.

        .. versionadded:: 0.3.0

        """
        return await self._intake.answer_async((body, headers, url), self._override())

    def saw_probe(self, job_id: str) -> bool:
        """
        Whether the probe *job_id* reached this receiver (see `PixelByte.check_webhooks`).

        A probe (``{"jobId": "probe_<nonce>", "status": "probe", "probe": true}``,
        signed) is answered 200 ``probe`` and dispatched to nobody: no waiter,
        client or hook sees it, and it counts only as ``received``.

        .. versionadded:: 0.5.0
        """
        return self._intake.saw_probe(job_id)

    def _override(self) -> Callable[[WebhookEvent], bool] | None:
        """A `dispatch` of a subclass (or patched in): it sees every delivery."""
        dispatch = self.dispatch
        own = getattr(dispatch, "__func__", None) is WebhookReceiver.dispatch
        return None if own else dispatch

    def dispatch(self, event: WebhookEvent) -> bool:
        """
        Hand a verified *event* to waiters, clients and hooks; False if a duplicate.

        Exposed for frameworks where you verified with `verify` yourself (pass its
        *url* so that ``event.attempt`` is set).  Safe from any thread: the
        de-duplication and the attribution of ``event.attempt`` happen at once,
        the hand-off to waiters and clients on their own event loop.

        With a *hub*, *event* is published first and the answer is the hub's; a
        `ConnectionError` (``HubUnavailable``...) means it was not shared: answer
        503.  Call it in a thread with no event loop (on one: `RuntimeError`).
        """
        delivery = SignedDelivery.of(event)
        shared = self._intake.shared
        if shared is not None:
            return shared.accept(delivery, received=False)
        return self._dispatch.accept(delivery, received=False)

    def _prune(self, now: float) -> None:
        """Forget what is older than *retention* or over *max_events* (lock held)."""
        self._dispatch.prune(now)

    # -- waiting ----------------------------------------------------------------------

    def event_for(self, job_id: str) -> WebhookEvent | None:
        """Return the remembered event for *job_id*, if one arrived (and is kept)."""
        with self._lock:
            self._clients.note_loop(_running_loop())
            self._prune(self.clock.monotonic())
            return self._recent.event_for(job_id)

    def job_for_attempt(self, attempt: str) -> str | None:
        """
        Return the job id a verified delivery tagged with *attempt* was about.

        The first verified delivery naming an attempt wins; the answer is kept for
        *retention* seconds.  See `tag_webhook_url`.

        .. versionadded:: 0.2.0
        """
        with self._lock:
            self._clients.note_loop(_running_loop())
            self._prune(self.clock.monotonic())
            return self._recent.job_for_attempt(attempt)

    def future_for(self, job_id: str) -> asyncio.Future[WebhookEvent]:
        """
        Return a future resolved by *job_id*'s delivery (already done if it came).

        One future per job id (and event loop) is shared by every waiter, and no
        task is made per job.  Call `release` with the same id when you stop waiting.
        """
        loop = asyncio.get_running_loop()
        with self._lock:
            self._clients.note_loop(loop)
            self._prune(self.clock.monotonic())
            self._waiters.add(job_id)
            event = self._recent.event_for(job_id)
            if event is None:
                return self._waiters.future(job_id, loop)
        done: asyncio.Future[WebhookEvent] = loop.create_future()
        done.set_result(event)
        return done

    def release(self, job_id: str) -> None:
        """Forget *job_id*'s future once its last waiter is gone (no leak)."""
        with self._lock:
            futures = self._waiters.release(job_id)
        here = _running_loop()
        for future in futures:
            loop = future.get_loop()
            if loop is here:
                _cancel([future])
            else:
                call_on(loop, _cancel, [future])

    @property
    def waiting(self) -> int:
        """How many job ids have a waiter right now."""
        return len(self._waiters)

    def attach(self, client: WebhookObserver) -> None:
        """Let *client* observe events (done by `PixelByte.use_webhooks`)."""
        loop = _running_loop()
        with self._lock:
            self._clients.attach(client, loop)

    def detach(self, client: WebhookObserver) -> None:
        """Stop feeding *client*."""
        with self._lock:
            self._clients.detach(client)

    # -- aiohttp ------------------------------------------------------------------------

    async def aiohttp_handler(
        self, request: aiohttp.web.Request
    ) -> aiohttp.web.Response:
        """
        An aiohttp handler: mount it with ``app.router.add_post(path, handler)``.

        Oversize bodies get 413 from ``Content-Length`` alone, or as soon as the
        streamed body passes the limit; a body not in within *body_timeout* gets
        408 and its connection is closed.  The query string goes to `handle` (with
        a *hub*, `handle_async`) as *url* (for ``pb_attempt``).

        .. versionchanged:: 0.3.0 408 for a body slower than *body_timeout*.
        """
        declared = request.content_length
        if declared is None or declared <= self.max_body:
            content = request.content
            if content.is_eof():  # came with the headers, as a delivery does: no timer
                body = await _read_body(content, self.max_body)
            else:
                try:
                    async with asyncio.timeout(self.body_timeout):
                        body = await _read_body(content, self.max_body)
                except TimeoutError:
                    return await self._too_slow(request)
            if body is not None:
                url, headers = request.query_string, request.headers
                if self._intake.shared is None:
                    return _reply(*self.handle(body, headers, url=url))
                return _reply(*await self.handle_async(body, headers, url=url))
        return _reply(*self._intake.too_large())

    async def _too_slow(self, request: aiohttp.web.Request) -> aiohttp.web.Response:
        """
        408 to a body not in within *body_timeout*, and its connection closed.

        Sent here, then the connection closed: returned unsent, aiohttp would wait
        for the rest of the body (its ``lingering_time``, 10 s) before closing.
        """
        with self._lock:
            self.stats["received"] += 1
            self.stats["rejected"] += 1
        response = _reply(*counted((408, "timeout")))
        response.force_close()
        await response.prepare(request)
        await response.write_eof()
        request.protocol.force_close()  # after what was written is sent
        return response

    def aiohttp_app(self, path: str = "/") -> aiohttp.web.Application:
        """Return a sub-application to mount: ``app.add_subapp("/hooks", r.aiohttp_app())``."""
        from aiohttp import web  # noqa: PLC0415 -- aiohttp.web is imported on first use

        app = web.Application(client_max_size=self.max_body + 1)
        app.router.add_post(path, self.aiohttp_handler)
        return app

    async def aclose(self) -> None:
        """Wait for hook tasks of this event loop still running."""
        await self._hooks.aclose()


async def _read_body(content: aiohttp.StreamReader, limit: int) -> bytes | None:
    """The body, read 16 KiB at a time; None as soon as it passes *limit* bytes."""
    parts: list[bytes] = []
    size = 0
    while chunk := await content.read(16 * 1024):
        size += len(chunk)
        if size > limit:
            return None
        parts.append(chunk)
    return b"".join(parts)


def _reply(status: int, reason: str) -> aiohttp.web.Response:
    from aiohttp import web  # noqa: PLC0415 -- aiohttp.web is imported on first use

    return web.Response(
        text=_reply_text(status, reason), status=status, content_type="application/json"
    )


@functools.cache
def _reply_text(status: int, reason: str) -> str:
    """The JSON of a reply (what ``web.json_response`` would send); a few reasons exist."""
    return json.dumps({"ok": status < 300, "reason": reason})  # noqa: PLR2004 -- HTTP success
