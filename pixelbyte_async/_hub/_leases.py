"""
The job slot leases one process holds, and keeping Redis in step with them.

`HeldLeases` maps each lease of one slot group held by this process to the job id
bound to it, runs the one task that renews all of them every *lease*/3 seconds
(registering again those that Redis lost or never saw, and counting the processes
that renew), and gives released leases back to Redis, at once or from a background
task for synchronous callers.  Renewals and releases are serialised, so a renewal
never re-adds a lease that a release has just removed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Coroutine, Iterable
from typing import Any, Protocol

from pixelbyte_async._clock import Clock, sleep_or_until

from ._codec import ms, turn_args
from ._link import FAULTS, RedisLink


__all__ = ["HeldLeases", "LeaseGroup", "SlotsHub"]

log = logging.getLogger("pixelbyte_async")


class SlotsHub(Protocol):
    """What job slots use of their `RedisHub`, as the hub has it now."""

    instance_id: str
    account: str
    clock: Clock
    connect_timeout: float

    @property
    def healthy(self) -> bool:
        """Whether Redis is reachable and the hub subscribed."""

    @property
    def _link(self) -> RedisLink:
        """The hub's link to Redis."""


class LeaseGroup(Protocol):
    """What `HeldLeases` reads of its slot group, as the group has it now."""

    hub: SlotsHub
    name: str
    lease: float
    limit: int


class HeldLeases:
    """
    The leases of *group* that this process holds, kept registered in Redis.

    *leases_key* is the group's sorted set of leases, *procs_key* the one of the
    processes renewing them, *queue_keys* the waiters' queue and its expiry.
    """

    def __init__(
        self,
        group: LeaseGroup,
        link: RedisLink,
        *,
        leases_key: str,
        procs_key: str,
        queue_keys: tuple[str, str],
    ) -> None:
        self._group = group
        self._link = link
        self._leases_key = leases_key
        self._procs_key = procs_key
        self._queue_keys = queue_keys
        #: Lease id -> the job id it is bound to (None until `bind`).
        self.held: dict[str, str | None] = {}
        #: Job id -> its lease id.
        self.by_job: dict[str, str] = {}
        self._kick: asyncio.Future[None] | None = None
        self._renewer: asyncio.Task[None] | None = None
        self._releaser: asyncio.Task[None] | None = None
        self._to_release: list[str] = []
        # Renewals and releases are serialised, so a renewal never re-adds a
        # lease that a release has just removed.
        self._sync = asyncio.Lock()
        #: How many processes were last seen renewing leases of this group.
        self.processes = 1

    def bind(self, lease: str, job_id: str) -> None:
        """Note that *lease* is the slot of *job_id* (if it is held)."""
        if lease in self.held:
            self.held[lease] = job_id
            self.by_job[job_id] = lease

    def forget(self, lease: str) -> bool:
        """Stop holding *lease* here; False if it was not held."""
        if lease not in self.held:
            return False
        job_id = self.held.pop(lease)
        if job_id is not None and self.by_job.get(job_id) == lease:
            del self.by_job[job_id]
        return True

    def _spawn(self, coro: Coroutine[Any, Any, None], what: str) -> asyncio.Task[None]:
        loop = self._link.require_loop()
        name = f"pixelbyte-redis-slots-{self._group.name}-{what}"
        return loop.create_task(coro, name=name)

    # -- releasing ------------------------------------------------------------------------

    def release_later(self, lease: str) -> None:
        """Give *lease* (forgotten already) back to Redis from a background task."""
        self._to_release.append(lease)
        if (self._releaser is None or self._releaser.done()) and self._link.running():
            self._releaser = self._spawn(self._drain_releases(), "release")

    async def _drain_releases(self) -> None:
        # One loop turn first: the job's own wait, woken by the same delivery
        # (`resolve`: its task runs in the next turn), runs before the Redis call.
        await asyncio.sleep(0)
        while self._to_release:
            batch, self._to_release = self._to_release, []
            await self.release_in_redis(batch)

    async def release_in_redis(self, leases: list[str]) -> None:
        """ZREM *leases*, telling the waiters whose turn it is; a lease missed expires."""
        group = self._group
        if not group.hub.healthy:
            return
        link = self._link
        async with self._sync:
            with contextlib.suppress(*FAULTS):
                await link.call(
                    "release",
                    [self._leases_key, *self._queue_keys],
                    [*turn_args(link.inbox_prefix, group.name), group.limit, *leases],
                )

    # -- renewing ------------------------------------------------------------------------

    def kick_renewer(self) -> None:
        """Renew every lease now (Redis is back, or a lease was adopted)."""
        # The renewer makes a new future before each renewal, so a kick during
        # one is not lost: it renews again at once.
        if self._kick is not None and not self._kick.done():
            self._kick.set_result(None)

    def ensure_renewer(self) -> None:
        """Start the renewal task unless it runs."""
        if self._renewer is None or self._renewer.done():
            self._renewer = self._spawn(self._renew_forever(), "renew")

    async def _renew_forever(self) -> None:
        """This process's one renewal task for all of its leases."""
        clock = self._group.hub.clock
        loop = asyncio.get_running_loop()
        while True:
            kick = self._kick = loop.create_future()
            with contextlib.suppress(*FAULTS):
                await self.renew(list(self.held))
            await sleep_or_until(clock, self._group.lease / 3, kick)

    async def renew(self, leases: Iterable[str]) -> int:
        """Extend those of *leases* still held; return how many Redis re-added."""
        group = self._group
        async with self._sync:
            held = [lease for lease in leases if lease in self.held]
            added, processes = await self._link.call(
                "renew",
                [self._leases_key, self._procs_key],
                [ms(group.lease), group.hub.instance_id, *held],
            )
        self.processes = max(1, int(processes))
        if added:
            log.info(
                "job slots %r: registered %d leases of this process again",
                group.name,
                added,
            )
        return int(added)

    async def close(self) -> None:
        """Stop renewing and give back every lease held."""
        tasks = [t for t in (self._renewer, self._releaser) if t is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, *FAULTS):
                await task
        leases = list(self.held) + self._to_release
        self.held.clear()
        self.by_job.clear()
        self._to_release = []
        if leases:
            await self.release_in_redis(leases)
