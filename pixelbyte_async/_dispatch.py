"""
What happens to a delivery inside a webhook receiver, from its bytes to its answer.

`DeliveryIntake` verifies and counts it, and turns what became of it into the HTTP
answer.  `DeliveryDispatch` de-duplicates it by job id, attributes its submit attempt,
remembers it, hands it to waiters and attached clients on their event loops and to
the ``on_event`` hook, and reports it to ``on_unknown`` when nobody knows the job
``unknown_grace`` seconds later.  The job is decoded only for somebody who receives
it: a retry, or a delivery nobody waits for, costs no decoding.  The receiver's
settings are read live, through `ReceiverSettings`.  With a hub, `SharedDispatch`
publishes each delivery to it first, and the hub's answer decides what happens here.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextlib
import hmac
import logging
import threading
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Protocol

from ._clock import Clock
from ._errors import WebhookVerificationError
from ._handoff import (
    DelayedCalls,
    EventHook,
    HookRunner,
    WebhookObserver,
    _running_loop,
    call_on,
    hand_out,
)
from ._receiver_state import AttachedClients, JobWaiters, RecentDeliveries
from ._signing import (
    Remembered,
    SignedDelivery,
    WebhookEvent,
    read_delivery,
    restore,
)
from ._telemetry import delivery


if TYPE_CHECKING:
    from ._sharing import PublishingHub


__all__ = [
    "DeliveryDispatch",
    "DeliveryIntake",
    "ReceiverSettings",
    "SharedDispatch",
    "counted",
]

log = logging.getLogger("pixelbyte_async.webhooks")

_Loop = asyncio.AbstractEventLoop
# A delivery as received: its raw body, its headers and its URL (or query string).
_Request = tuple[bytes | bytearray | memoryview | str, Mapping[str, str], str | None]
_Override = Callable[[WebhookEvent], bool] | None

# The answers to a verified delivery: new, a duplicate, or not shared (with a hub).
_ANSWERS = {True: (200, "ok"), False: (200, "duplicate")}
_UNSHARED = (503, "hub_unavailable")
# The answer to a verified probe (`probe_body`): received, dispatched to nobody.
_PROBE = (200, "probe")
# How many probe ids a receiver remembers (a check looks for its own at once).
_MAX_PROBES = 64


class ReceiverSettings(Protocol):
    """What the dispatch reads of its receiver (public attributes, read when used)."""

    clock: Clock
    tolerance: float
    max_body: int
    retention: float
    max_events: int
    on_event: EventHook | None
    on_unknown: EventHook | None
    unknown_grace: float
    stats: dict[str, int]


class DeliveryIntake:
    """
    Verifies and counts one delivery, hands it on, and answers ``(status, reason)``.

    A verified delivery goes to *local*, or with a *hub* to its `SharedDispatch`
    (`shared`), or to the *override* an answer is asked with: a `dispatch` of a
    subclass of the receiver (or patched in), which sees every delivery, as ever.
    *lock* is the receiver's (it guards ``stats``).
    """

    def __init__(
        self,
        settings: ReceiverSettings,
        lock: threading.Lock,
        keys: list[hmac.HMAC],
        *,
        local: DeliveryDispatch,
        hub: PublishingHub | None,
    ) -> None:
        self._settings = settings
        self._lock = lock
        self._keys = keys
        self._local = local
        # The ids of the probes verified here, newest last (see `saw_probe`).
        self._probes: collections.OrderedDict[str, None] = collections.OrderedDict()
        #: Publishes to the hub first, if there is one.
        self.shared = (
            None if hub is None else SharedDispatch(hub, local, settings, lock)
        )

    def answer(self, request: _Request, override: _Override) -> tuple[int, str]:
        """Verify and hand on one delivery, in this thread (see the receiver's `handle`)."""
        return counted(self._answer(request, override))

    def _answer(self, request: _Request, override: _Override) -> tuple[int, str]:
        delivery = self._verified(*request)
        if isinstance(delivery, tuple):
            return delivery
        if delivery.probe:
            if self.shared is not None and _running_loop() is None:
                with contextlib.suppress(ConnectionError):
                    self.shared.publish_probe_blocking(delivery)
            return self._probe(delivery)
        shared = self.shared
        try:
            if override is not None:
                accepted = override(delivery.event())
                if not accepted:
                    self._count("duplicates")
            elif shared is None:
                accepted = self._local.accept(delivery, received=True)
            else:
                accepted = shared.accept(delivery, received=True)
        except ConnectionError:
            if shared is None:
                raise
            return _UNSHARED
        return _ANSWERS[accepted]

    async def answer_async(
        self, request: _Request, override: _Override
    ) -> tuple[int, str]:
        """`answer` on an event loop: a hub's answer is awaited, never blocked on."""
        shared = self.shared
        if shared is None:
            return self.answer(request, override)
        if override is not None:
            # The override is synchronous: it waits for the hub in a thread.
            return await asyncio.to_thread(self.answer, request, override)
        delivery = self._verified(*request)
        if isinstance(delivery, tuple):
            return counted(delivery)
        if delivery.probe:
            with contextlib.suppress(ConnectionError):
                await shared.publish_probe(delivery)
            return counted(self._probe(delivery))
        try:
            return counted(_ANSWERS[await shared.accept_async(delivery, received=True)])
        except ConnectionError:
            return counted(_UNSHARED)

    def _probe(self, delivery: SignedDelivery) -> tuple[int, str]:
        """Remember a verified probe (for `saw_probe`) and answer it; no dispatch."""
        with self._lock:
            self._probes[delivery.job_id] = None
            while len(self._probes) > _MAX_PROBES:
                self._probes.popitem(last=False)
        log.info("webhook probe %s received", delivery.job_id)
        return _PROBE

    def saw_probe(self, job_id: str) -> bool:
        """Whether the probe *job_id* was verified here (among the latest 64)."""
        with self._lock:
            return job_id in self._probes

    def too_large(self) -> tuple[int, str]:
        """The answer to a body refused for its size before it was read in full."""
        self._count("received")
        self._count("rejected")
        return counted((413, "too_large"))

    def _count(self, stat: str) -> None:
        with self._lock:
            self._settings.stats[stat] += 1

    def _verified(
        self,
        body: bytes | bytearray | memoryview | str,
        headers: Mapping[str, str],
        url: str | None,
    ) -> SignedDelivery | tuple[int, str]:
        """The verified delivery, or the answer to one that is not (counted)."""
        self._count("received")
        settings = self._settings
        try:
            return read_delivery(
                body,
                headers,
                self._keys,
                tolerance=settings.tolerance,
                now=settings.clock.time(),
                max_body=settings.max_body,
                url=url,
            )
        except WebhookVerificationError as exc:
            self._count("rejected")
            log.warning("rejected webhook delivery: %s (%s)", exc.reason, exc)
            if exc.reason == "too_large":
                return 413, exc.reason
            # A valid signature over an unusable body: the sender's bug, not a forgery.
            return (400 if exc.signed else 401), exc.reason


class DeliveryDispatch:
    """
    De-duplicates, attributes, remembers and hands out verified deliveries.

    *lock* is the receiver's: it guards *recent*, *waiters*, *clients* and the
    receiver's ``stats``, and is never held while calling out.
    """

    def __init__(
        self,
        settings: ReceiverSettings,
        lock: threading.Lock,
        *,
        recent: RecentDeliveries,
        waiters: JobWaiters,
        clients: AttachedClients,
        hooks: HookRunner,
    ) -> None:
        self._settings = settings
        self._lock = lock
        self._recent = recent
        self._waiters = waiters
        self._clients = clients
        self._hooks = hooks
        # (job id, what is remembered of it) of deliveries nobody knew of yet,
        # looked at again after unknown_grace.
        self._unknown_checks: DelayedCalls[tuple[str, Remembered]] = DelayedCalls(
            settings.clock, self._maybe_unknown, lock
        )

    def prune(self, now: float) -> None:
        """Forget what is older than *retention* or over *max_events* (lock held)."""
        self._recent.prune(now, self._settings.retention, self._settings.max_events)

    def accept(self, delivery: SignedDelivery, *, received: bool) -> bool:
        """
        De-duplicate, attribute and hand out *delivery*; False if a duplicate.

        *received*: it came through `WebhookReceiver.handle`, whose duplicates are
        counted in ``stats``.
        """
        job_id = delivery.job_id
        terminal = delivery.status.is_terminal
        if terminal and not delivery.decoded and self._wants_event(job_id):
            delivery.event()  # decoded here, not under the lock
        conflict: str | None = None
        futures: list[asyncio.Future[WebhookEvent]] = []
        clients: list[tuple[WebhookObserver, _Loop | None]] = []
        home: _Loop | None = None
        record: Remembered | None = None
        stats = self._settings.stats
        with self._lock:
            now = self._settings.clock.monotonic()
            self.prune(now)  # an expired event no longer counts as seen
            if delivery.attempt is not None:
                conflict = self._recent.attribute(delivery.attempt, job_id, now)
            seen = self._recent.refresh(job_id, now)
            if seen:
                if received:
                    stats["duplicates"] += 1
            elif terminal:
                stats["accepted"] += 1
                futures = self._waiters.take(job_id)
                clients, home = self._clients.routes()
                if futures or clients or self._settings.on_event is not None:
                    # Handed out: remembered as made (already, unless they came
                    # since the hint), so every later asker gets the same event.
                    record = delivery.event()
                else:
                    record = delivery.remembered()
                self._recent.remember(job_id, record, now)
            self.prune(now)  # the max_events cap
        if conflict is not None:
            log.warning(
                "webhook for %s names attempt %s, already attributed to %s; ignored",
                job_id,
                delivery.attempt,
                conflict,
            )
        if seen:
            return False
        if record is None:  # not terminal: nothing remembered, nobody fed
            # Only terminal deliveries are documented; anything else is informative
            # and must not block the terminal one that follows.
            log.info("webhook for %s with status %s", job_id, delivery.status)
            return True
        self._fan_out(delivery, record, futures, clients, home)
        return True

    def _wants_event(self, job_id: str) -> bool:
        """Whether a delivery for *job_id* is new and goes to anybody (a hint: no lock)."""
        settings = self._settings
        return job_id not in self._recent and (
            settings.on_event is not None
            or settings.on_unknown is not None
            or len(self._clients) > 0
            or self._waiters.expects(job_id)
        )

    def _fan_out(
        self,
        delivery: SignedDelivery,
        record: Remembered,
        futures: list[asyncio.Future[WebhookEvent]],
        clients: list[tuple[WebhookObserver, _Loop | None]],
        home: _Loop | None,
    ) -> None:
        """Feed waiters and clients on their loops, then the hooks."""
        known, owner, here = hand_out(delivery, futures, clients, home)
        on_event = self._settings.on_event
        if on_event is not None:
            self._hooks.run(on_event, delivery.event(), owner)
        if not known:
            check = (delivery.job_id, record)
            grace = self._settings.unknown_grace
            if owner is None or owner is here:
                self._unknown_checks.add(check, grace)
            else:
                call_on(owner, self._unknown_checks.add, check, grace)

    def _is_known(self, job_id: str) -> bool:
        with self._lock:
            if job_id in self._waiters:
                return True
            clients = self._clients.clients()
        return any(
            client._knows_job(job_id)  # noqa: SLF001 -- client and receiver cooperate
            for client in clients
        )

    def _maybe_unknown(self, check: tuple[str, Remembered]) -> None:
        """After the grace: count *check*'s job as unknown, and report it, if it is."""
        job_id, record = check
        if self._is_known(job_id):
            return
        with self._lock:
            self._settings.stats["unknown"] += 1
        on_unknown = self._settings.on_unknown
        if on_unknown is not None:
            self._hooks.run(on_unknown, restore(record), _running_loop())


class SharedDispatch:
    """
    Publishes each verified delivery to a hub, then dispatches it here (*local*).

    Nothing is de-duplicated here before publishing: the hub's answer decides.

    * New everywhere: dispatched by *local* to this receiver's own waiters, clients
      and hooks (which still skips what this receiver has handed out already, so
      nothing is delivered twice here); True.
    * A duplicate: nothing happens here (the process that got it first dispatched
      it); False, counted in ``stats["duplicates"]`` when *received*.
    * The hub cannot share it (``HubUnavailable``, no answer within the hub's
      ``connect_timeout``, or a hub that is not running): dispatched here all the
      same, as the hub feeds its own waiters, then `ConnectionError`, so that the
      endpoint answers 503 and the API retries (and the retry is published again).

    *lock* is the receiver's (it guards ``stats``).
    """

    def __init__(
        self,
        hub: PublishingHub,
        local: DeliveryDispatch,
        settings: ReceiverSettings,
        lock: threading.Lock,
    ) -> None:
        self.hub = hub
        self._local = local
        self._settings = settings
        self._lock = lock

    def accept(self, delivery: SignedDelivery, *, received: bool) -> bool:
        """Publish from a thread with no event loop, waiting for the hub's answer."""
        if _running_loop() is not None:
            raise RuntimeError(
                "a WebhookReceiver with a hub cannot wait for the hub's answer on a "
                "running event loop: await its handle_async() there"
            )
        try:
            first = self._publish_blocking(delivery.event())
        except ConnectionError:
            self._local.accept(delivery, received=False)
            raise
        return self._settle(delivery, first=first, received=received)

    async def accept_async(self, delivery: SignedDelivery, *, received: bool) -> bool:
        """Publish from a coroutine: on the hub's loop, or through it from another."""
        try:
            first = await self._publish(delivery.event())
        except ConnectionError:
            self._local.accept(delivery, received=False)
            raise
        return self._settle(delivery, first=first, received=received)

    async def publish_probe(self, delivery: SignedDelivery) -> None:
        """
        Publish a probe, so the process that sent it sees it arrive (best effort).

        The hub records the attribution of its ``pb_attempt`` (the sender looks it
        up with ``fetch_attempt``); a probe is no ended job, so nobody is fed.
        """
        await self._publish(delivery.event())

    def publish_probe_blocking(self, delivery: SignedDelivery) -> None:
        """`publish_probe` from a thread with no event loop."""
        self._publish_blocking(delivery.event())

    def _settle(self, delivery: SignedDelivery, *, first: bool, received: bool) -> bool:
        if not first:
            if received:
                with self._lock:
                    self._settings.stats["duplicates"] += 1
            return False
        self._local.accept(delivery, received=False)
        return True

    async def _publish(self, event: WebhookEvent) -> bool:
        hub = self.hub
        if not hub.running:
            raise _unshared(event, "the hub is not running")
        try:
            return await hub.publish(event)
        except RuntimeError:
            # Another event loop than the hub's: through the hub's own, bounded.
            answer = asyncio.wrap_future(self._send(event))
            try:
                return await asyncio.wait_for(answer, hub.connect_timeout)
            except TimeoutError as exc:
                raise _late(event, hub.connect_timeout) from exc

    def _send(self, event: WebhookEvent) -> concurrent.futures.Future[bool]:
        """Schedule the publication of *event* on the hub's loop."""
        try:
            return self.hub.publish_threadsafe(event)
        except RuntimeError as exc:
            raise _unshared(event, "the hub is not running") from exc

    def _publish_blocking(self, event: WebhookEvent) -> bool:
        """The hub's answer, waited for in this thread for its ``connect_timeout``."""
        timeout = self.hub.connect_timeout
        try:
            return self._send(event).result(timeout)
        except TimeoutError as exc:
            raise _late(event, timeout) from exc
        except concurrent.futures.CancelledError as exc:
            raise _unshared(event, "the hub was closed") from exc


def _late(event: WebhookEvent, timeout: float) -> ConnectionError:
    return _unshared(event, f"the hub did not answer within {timeout:g} s")


def _unshared(event: WebhookEvent, why: str) -> ConnectionError:
    """The error (logged) for a delivery the hub could not share."""
    log.warning("webhook for %s not shared through the hub: %s", event.job_id, why)
    return ConnectionError(f"the webhook for {event.job_id} was not shared: {why}")


def counted(answer: tuple[int, str]) -> tuple[int, str]:
    """Count *answer* to a delivery in ``pixelbyte.webhook.deliveries``; return it."""
    status, reason = answer
    if status == 200:  # noqa: PLR2004 -- HTTP OK: "ok" or "duplicate"
        delivery(reason)
    elif status == 503:  # noqa: PLR2004 -- the hub could not share it
        delivery("503")
    else:
        delivery(f"rejected:{reason}")
    return answer
