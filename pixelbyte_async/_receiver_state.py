"""
What a webhook receiver keeps between deliveries, and for how long.

`RecentDeliveries` remembers recent events (for de-duplication and for waiters that
register late) and the submit attempts they were attributed to, each for
*retention* seconds, with *max_events* as a hard cap.  `JobWaiters` holds one
pending future per waited-on job and event loop, and how many waiters share it.
`AttachedClients` holds the attached clients and the event loops they and the SDK
were seen on.  None is thread-safe on its own: the receiver calls them with its lock
held, and nothing here calls out (futures, hooks, clients).
"""

from __future__ import annotations

import asyncio
import weakref
from collections import OrderedDict

from ._handoff import WebhookObserver
from ._signing import _ATTEMPT_RE, Remembered, WebhookEvent, restore


__all__ = ["AttachedClients", "JobWaiters", "RecentDeliveries"]

_Loop = asyncio.AbstractEventLoop


class RecentDeliveries:
    """
    Events by job id and attempt attributions, oldest first, pruned in O(1) amortised.

    An event nobody has asked for is kept compact (its raw body, timestamp and
    attempt) and made again, once, when asked for.  Times are the receiver clock's
    ``monotonic()``.  The caller holds the lock.
    """

    def __init__(self) -> None:
        # job id -> (clock.monotonic() of its last delivery, event or compact form),
        # oldest first.
        self._events: OrderedDict[str, tuple[float, Remembered]] = OrderedDict()
        # attempt nonce -> (clock.monotonic() of its first delivery, job id).
        self._attempts: OrderedDict[str, tuple[float, str]] = OrderedDict()

    @property
    def events(self) -> int:
        """How many events are remembered."""
        return len(self._events)

    @property
    def attempts(self) -> int:
        """How many attempt attributions are remembered."""
        return len(self._attempts)

    def __contains__(self, job_id: object) -> bool:
        """Whether *job_id*'s event is remembered (also read without the lock, as a hint)."""
        return job_id in self._events

    def prune(self, now: float, retention: float, max_events: int) -> None:
        """Forget what is older than *retention* or over *max_events*."""
        horizon = now - retention
        for entries in (self._events, self._attempts):
            while entries and (
                len(entries) > max_events or next(iter(entries.values()))[0] <= horizon
            ):
                entries.popitem(last=False)

    def attribute(self, attempt: str | None, job_id: str, now: float) -> str | None:
        """Record that *attempt* made *job_id*; return the other job id it names."""
        if attempt is None or not _ATTEMPT_RE.fullmatch(attempt):
            return None
        known = self._attempts.get(attempt)
        if known is None:
            self._attempts[attempt] = (now, job_id)
            return None
        return None if known[1] == job_id else known[1]

    def refresh(self, job_id: str, now: float) -> bool:
        """Whether *job_id*'s event is remembered; if so, keep it from *now* on."""
        seen = self._events.pop(job_id, None)
        if seen is None:
            return False
        # A retry: remember the event for another *retention* from now.
        self._events[job_id] = (now, seen[1])
        return True

    def remember(self, job_id: str, record: Remembered, now: float) -> None:
        """Remember a new delivery for *job_id*, delivered *now*."""
        self._events[job_id] = (now, record)

    def event_for(self, job_id: str) -> WebhookEvent | None:
        """The remembered event for *job_id*, if any (made once from a compact form)."""
        entry = self._events.get(job_id)
        if entry is None:
            return None
        seen_at, record = entry
        event = restore(record)
        if event is not record:
            self._events[job_id] = (seen_at, event)  # its place in the order is kept
        return event

    def job_for_attempt(self, attempt: str) -> str | None:
        """The job id the first delivery naming *attempt* was about, if remembered."""
        entry = self._attempts.get(attempt)
        return None if entry is None else entry[1]


class JobWaiters:
    """
    One pending future per waited-on job id and event loop, and its waiter count.

    The caller holds the lock; resolving and cancelling the futures happens outside
    it, on their own loops (``_handoff``).
    """

    def __init__(self) -> None:
        # job id -> one pending future per event loop with a waiter (usually one).
        self._futures: dict[str, list[asyncio.Future[WebhookEvent]]] = {}
        self._waiters: dict[str, int] = {}

    @property
    def futures(self) -> int:
        """How many job ids have futures."""
        return len(self._futures)

    def __len__(self) -> int:
        """How many job ids have a waiter."""
        return len(self._waiters)

    def __contains__(self, job_id: object) -> bool:
        return job_id in self._waiters

    def add(self, job_id: str) -> None:
        """Count one more waiter for *job_id*."""
        self._waiters[job_id] = self._waiters.get(job_id, 0) + 1

    def future(
        self, job_id: str, loop: asyncio.AbstractEventLoop
    ) -> asyncio.Future[WebhookEvent]:
        """The pending future of *job_id* on *loop*, made if there is none."""
        futures = self._futures.setdefault(job_id, [])
        for future in futures:
            if future.get_loop() is loop and not future.done():
                return future
        # Drop this loop's future if a caller cancelled it.
        futures[:] = [f for f in futures if f.get_loop() is not loop]
        future = loop.create_future()
        futures.append(future)
        return future

    def release(self, job_id: str) -> list[asyncio.Future[WebhookEvent]]:
        """Count one waiter less; the futures to cancel when it was the last."""
        count = self._waiters.get(job_id, 0) - 1
        if count > 0:
            self._waiters[job_id] = count
            return []
        self._waiters.pop(job_id, None)
        return self._futures.pop(job_id, [])

    def expects(self, job_id: str) -> bool:
        """Whether *job_id* has futures (also read without the lock, as a hint)."""
        return job_id in self._futures

    def take(self, job_id: str) -> list[asyncio.Future[WebhookEvent]]:
        """Remove and return *job_id*'s futures (its event has come)."""
        return self._futures.pop(job_id, [])


class AttachedClients:
    """
    The clients attached to a receiver, with the loop each was attached on.

    Also the loop the SDK was last seen on (weakly: a closed loop is not kept
    alive).  The caller holds the lock.
    """

    def __init__(self) -> None:
        # client -> the loop it was attached on (None: outside a loop).
        self._clients: dict[WebhookObserver, _Loop | None] = {}
        self._home: weakref.ref[_Loop] | None = None

    def __len__(self) -> int:
        """How many clients are attached (also read without the lock, as a hint)."""
        return len(self._clients)

    def note_loop(self, loop: _Loop | None) -> None:
        """Remember the loop the SDK runs on."""
        if loop is not None and (self._home is None or self._home() is not loop):
            self._home = weakref.ref(loop)

    def attach(self, client: WebhookObserver, loop: _Loop | None) -> None:
        """Let *client*, attached on *loop*, observe events."""
        self.note_loop(loop)
        if self._clients.get(client) is None:
            self._clients[client] = loop

    def detach(self, client: WebhookObserver) -> None:
        """Stop feeding *client*."""
        self._clients.pop(client, None)

    def clients(self) -> list[WebhookObserver]:
        """The attached clients, now."""
        return list(self._clients)

    def routes(self) -> tuple[list[tuple[WebhookObserver, _Loop | None]], _Loop | None]:
        """Each client with the loop it was attached on, and the SDK's loop."""
        home = self._home() if self._home is not None else None
        return list(self._clients.items()), home
