"""
The Redis side of the hub's events: publish, de-duplicate, store, read back.

`EventExchange` publishes a verified event with one atomic script (de-duplicated by
job id, stored for *event_ttl*, its attempt attributed, sent to the inbox of each
process watching the job), keeps what could not be published while Redis was away
in a bounded outbox, routes the messages this process receives, and watches jobs:
one script per batch registers this process for a job's event and reads what is
stored, for new waiters (one checker task), after each reconnection (catch up), and
on request.  What it learns goes to the `EventMemory`, which feeds the waiters.
"""

from __future__ import annotations

import asyncio
import logging
import math
import threading
from collections import OrderedDict
from collections.abc import Callable

import anyio

from pixelbyte_async._signing import WebhookEvent

from ._codec import (
    ATTEMPT_RE,
    CONFLICT,
    EVENT,
    RELEASED,
    encode_event,
    parse_event,
    parse_released,
)
from ._link import FAULTS, HubSettings, HubUnavailable, RedisLink
from ._memory import EventMemory


__all__ = ["EventExchange"]

log = logging.getLogger("pixelbyte_async")

_BATCH = 500  # job ids per script (or MGET) when reading stored state


class EventExchange:
    """
    Shares one hub's events through Redis and feeds what it reads to *memory*.

    *released* is called with a slot group's name and the waiters named when a
    message says that their turn for one of its slots came.
    """

    def __init__(
        self,
        hub: HubSettings,
        link: RedisLink,
        memory: EventMemory,
        *,
        released: Callable[[str, list[str]], None],
    ) -> None:
        self._hub = hub
        self._link = link
        self._memory = memory
        self._released = released
        self._checker: asyncio.Task[None] | None = None
        # job id -> message, kept for re-publication while Redis is away.
        self._outbox: OrderedDict[str, bytes] = OrderedDict()
        self._outbox_lock = threading.Lock()

    @property
    def checker(self) -> asyncio.Task[None] | None:
        """The task reading the stored state of new waiters' jobs, if any."""
        return self._checker

    # -- receiving -------------------------------------------------------------------------

    async def catch_up(self) -> None:
        """
        Catch up once subscribed: watch and re-read, then publish the outbox.

        Every job with a waiter is watched again (a restarted Redis forgot who
        watches what) and its stored state read (events that came while this
        process was away), the events kept while Redis was away are published, and
        only then is the hub declared healthy (by its link).
        """
        ids = self._memory.unresolved(forget_checks=True)
        resolved = await self.read_stored(ids)
        self._hub.stats["caught_up"] += resolved
        await self._flush_outbox()
        if resolved:
            log.info(
                "Redis hub %s: %d waiting jobs ended while it was away",
                self._link.url,
                resolved,
            )

    def on_message(self, data: bytes) -> None:
        """Route one message received: a slot release, or an event."""
        kind, body = data[:1], data[1:]
        if kind == RELEASED:
            self._released(*parse_released(body))
            return
        if kind not in {EVENT, CONFLICT}:
            return
        raw = parse_event(body)
        if raw is None:
            self._memory.undecodable()
            return
        self._memory.deliver(raw, attributed=kind == EVENT, form=body)

    async def read_stored(self, job_ids: list[str], *, watch: bool = True) -> int:
        """
        Deliver the stored events of *job_ids*; return how many were found.

        With *watch*, this process is also registered for each job's event (one
        atomic script per batch, so nothing published meanwhile is missed).
        """
        found = 0
        link = self._link
        for start in range(0, len(job_ids), _BATCH):
            batch = job_ids[start : start + _BATCH]
            if watch:
                keys = [k for j in batch for k in (link.key("ev", j), link.key("w", j))]
                values = await link.scripts["watch"](
                    keys=keys,
                    args=[self._hub.instance_id, math.ceil(self._hub.event_ttl)],
                )
            else:
                values = await link.client().mget([link.key("ev", j) for j in batch])
            for job_id, raw in zip(batch, values, strict=True):
                if isinstance(raw, bytes) and raw[:1] in {EVENT, CONFLICT}:
                    body = raw[1:]
                    parsed = parse_event(body)
                    if parsed is None or parsed.job_id != job_id:
                        self._memory.undecodable()
                    elif self._memory.deliver(
                        parsed, attributed=raw[:1] == EVENT, form=body
                    ):
                        found += 1
        return found

    def _ensure_checker(self) -> None:
        if self._checker is None or self._checker.done():
            loop = self._link.loop
            if loop is not None and self._link.state == "started":
                self._checker = loop.create_task(self._check_stored())

    async def _check_stored(self) -> None:
        """
        Watch new waiters' jobs and read their stored state (one task, batches).

        The inbox subscription is up before the watch, so an event published after
        it arrives as a message: no gap.  If the subscription is down, the watch
        after the reconnection covers these jobs.
        """
        link, memory = self._link, self._memory
        delay = self._hub.reconnect_initial
        while memory.to_check and link.state == "started" and link.subscribed:
            batch = memory.next_checks(_BATCH)
            if not batch:
                continue
            try:
                await self.read_stored(batch)
            except FAULTS as exc:
                memory.to_check.update(batch)
                link.trouble(exc)
                await self._hub.clock.sleep(link.jitter(delay))
                delay = min(delay * 2, self._hub.reconnect_max)
                continue
            link.command_ok()

    def future_for(self, job_id: str) -> asyncio.Future[WebhookEvent]:
        """Return *job_id*'s shared future; a new one has its stored state read."""
        loop = self._link.require_loop()
        future, new = self._memory.future_for(job_id, loop)
        if new and self._link.subscribed:
            self._memory.to_check.add(job_id)
            self._ensure_checker()
        return future

    async def fetch_event(self, job_id: str) -> WebhookEvent | None:
        """Return *job_id*'s event from this process's memory, else from Redis."""
        self._link.require_loop()
        event = self._memory.event_for(job_id)
        if event is not None or not self._link.healthy:
            return event
        await self.read_stored([job_id], watch=False)
        return self._memory.event_for(job_id)

    async def fetch_attempt(self, attempt: str) -> str | None:
        """Return the job id *attempt* is attributed to, from memory or Redis."""
        self._link.require_loop()
        job_id = self._memory.job_for_attempt(attempt)
        if job_id is not None or not self._link.healthy:
            return job_id
        if not ATTEMPT_RE.fullmatch(attempt):
            return None
        raw = await self._link.client().get(self._link.key("at", attempt))
        return raw.decode() if isinstance(raw, bytes) else None

    async def refresh(self) -> int:
        """Watch again, and re-read the stored state of, every job waited for here."""
        self._link.require_loop()
        return await self.read_stored(self._memory.unresolved())

    # -- publishing ------------------------------------------------------------------------

    async def publish(self, event: WebhookEvent) -> bool:
        """Share a verified *event* with every process (see the hub's `publish`)."""
        link = self._link
        link.require_loop()
        message = encode_event(event)
        terminal = event.status.is_terminal
        attempt = event.attempt
        if not link.healthy:
            # Known to be away: answer at once (the API retries a 503), rather
            # than wait on a connection that may never answer.
            raise self._kept(event, message, None)
        try:
            with anyio.fail_after(self._hub.publish_timeout):
                first, owner = await self._run_publish(
                    event.job_id, attempt, message, terminal=terminal
                )
        except FAULTS as exc:
            link.trouble(exc)
            raise self._kept(event, message, exc) from exc
        link.command_ok()
        if owner is not None:
            log.warning(
                "webhook for %s names attempt %s, already attributed to %s; ignored",
                event.job_id,
                attempt,
                owner.decode() if isinstance(owner, bytes) else owner,
            )
        if not terminal:
            log.info("webhook for %s with status %s", event.job_id, event.status)
            return True
        if first:
            self._hub.stats["published"] += 1
            self._memory.deliver(event, attributed=owner is None, form=message)
        else:
            self._hub.stats["duplicates"] += 1
        if self._outbox:
            try:
                await self._flush_outbox()
            except FAULTS as exc:
                link.trouble(exc)
        return bool(first)

    def _kept(
        self, event: WebhookEvent, message: bytes, exc: BaseException | None
    ) -> HubUnavailable:
        """Redis is away: feed this process, keep the event, say so (a 503)."""
        fresh = self._memory.deliver(event, attributed=True, form=message)
        if event.status.is_terminal:
            with self._outbox_lock:
                self._outbox[event.job_id] = message
                while len(self._outbox) > self._hub.max_outbox:
                    self._outbox.popitem(last=False)
        why = "" if exc is None else f" ({type(exc).__name__})"
        return HubUnavailable(
            f"Redis hub {self._link.url} is unreachable{why}; the event of "
            f"{event.job_id} reached this process{'' if fresh else ' (again)'} and "
            "is kept for re-publication"
        )

    async def _run_publish(
        self, job_id: str, attempt: str | None, message: bytes, *, terminal: bool
    ) -> list[object]:
        """Run the publish script for one event; return its ``[first, owner]``."""
        link = self._link
        keys = [link.key("ev", job_id), link.key("w", job_id)]
        if attempt is not None and ATTEMPT_RE.fullmatch(attempt):
            keys.append(link.key("at", attempt))
        args = [
            message,
            math.ceil(self._hub.event_ttl),
            job_id,
            link.inbox_prefix,
            "1" if terminal else "0",
        ]
        result: list[object] = await link.scripts["publish"](keys=keys, args=args)
        return result

    async def _flush_outbox(self) -> None:
        """Publish the events kept while Redis was away (stops at the first fault)."""
        while self._outbox:
            with self._outbox_lock:
                job_id, message = next(iter(self._outbox.items()))
            parsed = parse_event(message)
            if parsed is not None:
                await self._run_publish(job_id, parsed.attempt, message, terminal=True)
            with self._outbox_lock:
                if self._outbox.get(job_id) is message:
                    del self._outbox[job_id]
