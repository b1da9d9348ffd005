"""
What one process of the hub knows of the events, and who waits for them here.

`EventMemory` keeps the terminal events this process has seen (retention- and
count-bounded; an event nobody here waits for is kept in the hub's JSON form, one
``bytes`` for the garbage collector to skip, and decoded only when asked for), the
attempt → job attributions they carried (first wins), one shared future per
waited-for job id, and the observers (clients) fed every event here on their own
loop.  It is thread-safe and does no Redis I/O: the exchange feeds it and asks it
which jobs still need their stored state read.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import math
import threading
from collections import OrderedDict

from pixelbyte_async._clock import resolve
from pixelbyte_async._handoff import WebhookObserver
from pixelbyte_async._signing import WebhookEvent

from ._codec import RawEvent, build_event, parse_event
from ._link import HubSettings, Loop, RedisLink


__all__ = ["EventMemory"]

log = logging.getLogger("pixelbyte_async")


class EventMemory:
    """
    The events, attributions, waiters and observers of one hub in this process.

    *link* gives the hub's loop (observers on it are fed at once); *hub* gives the
    clock, *retention*, *max_events* and the stats, as the hub has them now.
    """

    def __init__(self, hub: HubSettings, link: RedisLink) -> None:
        self._hub = hub
        self._link = link
        # Guards the structures below: event_for / job_for_attempt may be read
        # from any thread.  Never held while calling out.
        self._lock = threading.Lock()
        # job id -> (clock.monotonic() when seen, its event); an event nobody here
        # waits for is kept as the hub's JSON form (`encode_event`), decoded when
        # asked for: ~10 objects fewer per event for every full collection to walk.
        self._events: OrderedDict[str, tuple[float, WebhookEvent | bytes]] = (
            OrderedDict()
        )
        self._attempts: OrderedDict[str, tuple[float, str]] = OrderedDict()
        self._prune_after = math.inf  # when the oldest entry expires
        self._futures: dict[str, asyncio.Future[WebhookEvent]] = {}
        self._waiters: dict[str, int] = {}
        self._clients: dict[WebhookObserver, Loop | None] = {}
        #: Job ids whose stored state is still to be read for a new waiter.
        self.to_check: set[str] = set()

    @property
    def waiting(self) -> int:
        """How many job ids have a waiter in this process right now."""
        return len(self._waiters)

    def undecodable(self) -> None:
        """Count (and log) an event that could not be decoded."""
        self._hub.stats["undecodable"] += 1
        log.warning("undecodable event in the Redis hub; ignored")

    def unresolved(self, *, forget_checks: bool = False) -> list[str]:
        """Return the job ids with a waiter here and no event (and clear the checks)."""
        with self._lock:
            ids = [j for j in self._waiters if j not in self._events]
            if forget_checks:
                self.to_check.clear()
        return ids

    def next_checks(self, count: int) -> list[str]:
        """Take up to *count* ids to check; return those still waited for, unknown."""
        with self._lock:
            chunk = list(itertools.islice(self.to_check, count))
            self.to_check.difference_update(chunk)
            return [j for j in chunk if j in self._waiters and j not in self._events]

    def _prune(self, now: float) -> None:
        """Forget what is older than *retention* or over *max_events* (lock held)."""
        events, attempts = self._events, self._attempts
        max_events = self._hub.max_events
        if now < self._prune_after and max(len(events), len(attempts)) <= (max_events):
            return  # nothing is old enough yet: amortised O(1)
        horizon = now - self._hub.retention
        oldest = math.inf
        for entries in (events, attempts):
            while entries and (
                len(entries) > max_events or next(iter(entries.values()))[0] <= horizon
            ):
                entries.popitem(last=False)
            if entries:
                oldest = min(oldest, next(iter(entries.values()))[0])
        self._prune_after = oldest + self._hub.retention

    def deliver(
        self, item: WebhookEvent | RawEvent, *, attributed: bool, form: bytes
    ) -> bool:
        """
        Record a terminal event and feed this process's waiters and clients.

        *form* is the event's JSON form (`encode_event`), kept instead of *item*
        when nobody here wants the event now.
        """
        if isinstance(item, WebhookEvent) and not item.status.is_terminal:
            return False
        job_id = item.job_id
        retention = self._hub.retention
        with self._lock:
            now = self._hub.clock.monotonic()
            self._prune(now)
            attempt = item.attempt
            if attributed and attempt is not None and attempt not in self._attempts:
                self._attempts[attempt] = (now, job_id)
                self._prune_after = min(self._prune_after, now + retention)
            if job_id in self._events:
                return False
            self._prune_after = min(self._prune_after, now + retention)
            wanted = job_id in self._futures or bool(self._clients)
            if not wanted:
                # Nobody here waits: keep its JSON form (decoded when asked for).
                self._events[job_id] = (now, form)
                self.to_check.discard(job_id)
                self._hub.stats["delivered"] += 1
                return True
        if isinstance(item, RawEvent):
            built = build_event(item)
            if built is None:
                self.undecodable()
                return False
            event = built
        else:
            event = item
        with self._lock:
            if job_id in self._events:
                return False
            self._events[job_id] = (now, event)
            future = self._futures.pop(job_id, None)
            self.to_check.discard(job_id)
            clients = list(self._clients.items())
            self._prune(now)
        self._hub.stats["delivered"] += 1
        self._fan_out(event, future, clients)
        return True

    def _fan_out(
        self,
        event: WebhookEvent,
        future: asyncio.Future[WebhookEvent] | None,
        clients: list[tuple[WebhookObserver, Loop | None]],
    ) -> None:
        if future is not None and not future.done():
            resolve(future, event)  # its waits resume in the next loop turn
        here = self._link.loop
        for client, loop in clients:
            if loop is None:
                self._feed(client, event)
            elif loop is here:
                # After the waits just woken: the wait that needs the event first.
                loop.call_soon(self._feed, client, event)
            else:
                with contextlib.suppress(RuntimeError):  # that loop is closed
                    loop.call_soon_threadsafe(self._feed, client, event)

    @staticmethod
    def _feed(client: WebhookObserver, event: WebhookEvent) -> None:
        try:
            client._webhook_event(event)  # noqa: SLF001 -- client and hub cooperate
        except Exception:
            log.exception("client failed to take the event of %s", event.job_id)

    def future_for(
        self, job_id: str, loop: Loop
    ) -> tuple[asyncio.Future[WebhookEvent], bool]:
        """
        Return *job_id*'s shared future on *loop*, and whether it was made now.

        Already done if the event is known (then never new).
        """
        known = self.event_for(job_id)
        new = False
        with self._lock:
            self._waiters[job_id] = self._waiters.get(job_id, 0) + 1
            future = self._futures.get(job_id)
            if known is None and (future is None or future.done()):
                future = self._futures[job_id] = loop.create_future()
                new = True
        if known is not None or future is None:
            done: asyncio.Future[WebhookEvent] = loop.create_future()
            if known is not None:
                done.set_result(known)
            return done, False
        return future, new

    def release(self, job_id: str) -> None:
        """Forget *job_id*'s future once its last waiter is gone (no leak)."""
        with self._lock:
            count = self._waiters.get(job_id, 0) - 1
            if count > 0:
                self._waiters[job_id] = count
                return
            self._waiters.pop(job_id, None)
            future = self._futures.pop(job_id, None)
            self.to_check.discard(job_id)
        if future is not None and not future.done():
            future.cancel()

    def event_for(self, job_id: str) -> WebhookEvent | None:
        """Return the event this process has seen for *job_id*, if it is kept."""
        with self._lock:
            self._prune(self._hub.clock.monotonic())
            entry = self._events.get(job_id)
        if entry is None:
            return None
        seen, value = entry
        if isinstance(value, WebhookEvent):
            return value
        raw = parse_event(value)
        event = None if raw is None or raw.job_id != job_id else build_event(raw)
        with self._lock:
            if self._events.get(job_id) is entry:
                if event is None:
                    del self._events[job_id]
                else:
                    self._events[job_id] = (seen, event)
        if event is None:
            self.undecodable()
        return event

    def job_for_attempt(self, attempt: str) -> str | None:
        """Return the job id that an event seen here attributed *attempt* to."""
        with self._lock:
            self._prune(self._hub.clock.monotonic())
            entry = self._attempts.get(attempt)
        return None if entry is None else entry[1]

    def attach(self, client: WebhookObserver) -> None:
        """Let *client* observe every event here (``client._webhook_event``)."""
        try:
            loop: Loop | None = asyncio.get_running_loop()
        except RuntimeError:
            loop = None
        with self._lock:
            if self._clients.get(client) is None:
                self._clients[client] = loop

    def observed(self) -> bool:
        """Whether a client observes the events that reach this process."""
        return bool(self._clients)

    def detach(self, client: WebhookObserver) -> None:
        """Stop feeding *client*."""
        with self._lock:
            self._clients.pop(client, None)

    def cancel_waits(self) -> None:
        """Cancel every pending future and forget the waiters and observers."""
        with self._lock:
            futures = list(self._futures.values())
            self._futures.clear()
            self._waiters.clear()
            self._clients.clear()
        for future in futures:
            if not future.done():
                future.cancel()
