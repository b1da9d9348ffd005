"""
What happens to a verified delivery inside a webhook receiver.

`DeliveryDispatch` de-duplicates it by job id, attributes its submit attempt,
remembers it, hands it to waiters and attached clients on their event loops and to
the ``on_event`` hook, and reports it to ``on_unknown`` when nobody knows the job
``unknown_grace`` seconds later.  The job is decoded only for somebody who receives
it: a retry, or a delivery nobody waits for, costs no decoding.  The receiver's
settings are read live, through `ReceiverSettings`.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from typing import Protocol

from ._clock import Clock
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
from ._signing import Remembered, SignedDelivery, WebhookEvent, restore


__all__ = ["DeliveryDispatch", "ReceiverSettings"]

log = logging.getLogger("pixelbyte_async.webhooks")

_Loop = asyncio.AbstractEventLoop


class ReceiverSettings(Protocol):
    """What the dispatch reads of its receiver (public attributes, read when used)."""

    clock: Clock
    retention: float
    max_events: int
    on_event: EventHook | None
    on_unknown: EventHook | None
    unknown_grace: float
    stats: dict[str, int]


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
                if futures or clients:
                    delivery.event()  # made already, unless they came since the hint
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
