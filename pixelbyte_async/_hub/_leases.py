"""
The job slot leases one process holds, and keeping Redis in step with them.

`HeldLeases` maps each lease of one slot group held by this process to the job id
bound to it, and keeps Redis in step: it binds leases to their jobs, runs the one
task that renews all of them every *lease*/3 seconds (registering again those that
Redis lost or never saw, each with its job), gives released leases back (those
released while Redis was away once it is back, before anyone is admitted), checks
with the API the orphaned slots Redis hands it (slots of jobs whose process died),
and says so, once, when the processes of the account disagree on the limit.
Renewals and releases are serialised, so a renewal never re-adds a lease that a
release has just removed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Awaitable, Callable, Coroutine, Iterable
from typing import Any, Protocol

from pixelbyte_async._clock import Clock, sleep_or_until

from ._codec import text
from ._link import FAULTS, RedisLink


__all__ = ["HeldLeases", "JobEnded", "LeaseGroup", "SlotsHub"]

log = logging.getLogger("pixelbyte_async")

#: ``await ended(job_id)``: whether the API says the job has ended (None: unknown).
JobEnded = Callable[[str], Awaitable[bool | None]]


def _parse_config(config: str) -> tuple[int, float] | None:
    """``"limit lease_ms"`` as another process wrote it: (limit, lease seconds)."""
    limit, _, lease = config.partition(" ")
    if not (limit.isdigit() and lease.isdigit()):
        return None
    return int(limit), int(lease) / 1000


class SlotsHub(Protocol):
    """What job slots use of their `RedisHub`, as the hub has it now."""

    instance_id: str
    account: str
    clock: Clock
    connect_timeout: float
    reconnect_max: float

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

    def script_args(self) -> list[Any]:
        """The arguments every slot script starts with."""
        ...


class HeldLeases:
    """
    The leases of *group* that this process holds, kept registered in Redis.

    *keys* are the group's keys in `SLOT_KEYS` order.
    """

    def __init__(
        self,
        group: LeaseGroup,
        link: RedisLink,
        *,
        keys: list[str],
    ) -> None:
        self._group = group
        self._link = link
        self._keys = keys
        #: Lease id -> the job id it is bound to (None until `bind`).
        self.held: dict[str, str | None] = {}
        #: Job id -> its lease id.
        self.by_job: dict[str, str] = {}
        self._kick: asyncio.Future[None] | None = None
        self._renewer: asyncio.Task[None] | None = None
        self._releaser: asyncio.Task[None] | None = None
        self._reaper: asyncio.Task[None] | None = None
        self._to_release: list[str] = []
        self._to_bind: list[tuple[str, str]] = []
        # Releases Redis has not heard of (it was away): sent before anyone is
        # admitted again.
        self.unsent: list[str] = []
        # Renewals and releases are serialised, so a renewal never re-adds a
        # lease that a release has just removed.
        self._sync = asyncio.Lock()
        #: How many processes were last seen renewing leases of this group.
        self.processes = 1
        #: The group's epoch as this process last saw it ("" before).
        self.epoch = ""
        self._new_epoch = uuid.uuid4().hex[:12]
        #: The strictest limit of the live processes, as last seen.
        self.limit_in_force = group.limit
        self._disagreement: frozenset[str] = frozenset()
        #: Asks the API whether a job has ended (for orphaned slots), if given.
        self.ended: JobEnded | None = None
        #: Orphaned slots this process found ended at the API and gave back.
        self.reaped = 0

    def bind(self, lease: str, job_id: str) -> None:
        """Note that *lease* is the slot of *job_id*, here and in Redis (if held)."""
        if lease in self.held:
            self.held[lease] = job_id
            self.by_job[job_id] = lease
            self._to_bind.append((lease, job_id))
            self._start_releaser()

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

    def epoch_args(self) -> list[str]:
        """Known epoch, a new one (if Redis has none), and how long to hold (ms)."""
        group = self._group
        # Every live process registers its leases again as it reconnects, at
        # most `reconnect_max` (its longest pause between attempts) after Redis
        # is back: hold that long and a second, and never longer than a renewal
        # interval and a second (it would renew them by then anyway).
        hold = min(group.lease / 3, group.hub.reconnect_max) + 1.0
        return [self.epoch, self._new_epoch, str(max(1, round(hold * 1000)))]

    def config(self) -> str:
        """This process's settings, as the other processes see them."""
        group = self._group
        return f"{group.limit} {round(group.lease * 1000)}"

    # -- releasing and binding ----------------------------------------------------------

    def release_later(self, lease: str) -> None:
        """Give *lease* (forgotten already) back to Redis from a background task."""
        self._to_release.append(lease)
        self._start_releaser()

    def _start_releaser(self) -> None:
        if (self._releaser is None or self._releaser.done()) and self._link.running():
            self._releaser = self._spawn(self._drain(), "release")

    async def _drain(self) -> None:
        # One loop turn first: the job's own wait, woken by the same delivery
        # (`resolve`: its task runs in the next turn), runs before the Redis call.
        await asyncio.sleep(0)
        while self._to_release or self._to_bind:
            if self._to_bind:
                binds, self._to_bind = self._to_bind, []
                await self._bind_in_redis(binds)
            if self._to_release:
                batch, self._to_release = self._to_release, []
                await self.release_in_redis(batch)

    async def _bind_in_redis(self, binds: list[tuple[str, str]]) -> None:
        """Bind leases to their jobs in Redis (the next renewal does, if this fails)."""
        if not self._group.hub.healthy:
            return
        pairs = [x for lease, job in binds if lease in self.held for x in (lease, job)]
        if pairs:
            with contextlib.suppress(*FAULTS):
                await self._link.call(
                    "bind", self._keys, [*self._group.script_args(), *pairs]
                )

    async def release_in_redis(self, leases: list[str], *, by: str = "lease") -> int:
        """
        Give *leases* (or the slots of the jobs *leases*, *by* ``"job"``) back.

        While Redis is away they are kept (`unsent`) and given back before anyone
        is admitted once it is back.  Returns how many slots Redis freed.
        """
        if by == "lease" and not self._group.hub.healthy:
            self.unsent.extend(leases)
            return 0
        try:
            return await self._release(by, leases)
        except FAULTS:
            if by == "lease":
                self.unsent.extend(leases)
            return 0

    async def _release(self, by: str, ids: list[str]) -> int:
        """The release script for *ids* (leases, or jobs); Redis's faults raise."""
        async with self._sync:
            freed = await self._link.call(
                "release", self._keys, [*self._group.script_args(), by, *ids]
            )
        return int(freed)

    def back(self) -> None:
        """Redis is back and caught up: send what was released since the catch-up."""
        if self.unsent:
            self._to_release.extend(self.unsent)
            self.unsent = []
            self._start_releaser()

    # -- renewing ------------------------------------------------------------------------

    def kick_renewer(self) -> None:
        """Renew every lease now (a lease was adopted)."""
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
            if self._group.hub.healthy:
                with contextlib.suppress(*FAULTS):
                    await self.renew(list(self.held))
            await sleep_or_until(clock, self._group.lease / 3, kick)

    async def resync(self) -> None:
        """
        Redis is back (before anyone is admitted): releases, then every lease held.

        Raises what Redis raises (the reconnection then starts over).
        """
        if not self._renewer and not self.held and not self.unsent:
            return  # this process never used the group
        unsent, self.unsent = self.unsent, []
        if unsent:
            try:
                await self._release("lease", unsent)
            except BaseException:
                self.unsent = unsent + self.unsent
                raise
        await self.renew(list(self.held))

    async def renew(self, leases: Iterable[str]) -> int:
        """Extend those of *leases* still held; return how many Redis re-added."""
        group = self._group
        async with self._sync:
            pairs = [
                x
                for lease in leases
                if lease in self.held
                for x in (lease, self.held[lease] or "")
            ]
            added, processes, epoch, ended, due, configs = await self._link.call(
                "renew",
                self._keys,
                [
                    *group.script_args(),
                    group.hub.instance_id,
                    self.config(),
                    *self.epoch_args(),
                    "0" if self.ended is None else "1",
                    *pairs,
                ],
            )
        self.processes = max(1, int(processes))
        self.saw_epoch(epoch)
        for lease in ended:
            self.forget(text(lease))
        self._compare(configs)
        if added:
            log.info(
                "job slots %r: registered %d leases of this process again",
                group.name,
                added,
            )
        if (
            due
            and self.ended is not None
            and (self._reaper is None or self._reaper.done())
        ):
            jobs = [text(j) for j in due]
            self._reaper = self._spawn(self._reap(jobs), "reap")
        return int(added)

    def saw_epoch(self, epoch: bytes | str) -> None:
        """Remember the group's epoch as Redis has it now."""
        self.epoch = text(epoch)

    def _compare(self, configs: list[bytes]) -> None:
        """Use the strictest limit of the live processes; say so once if they differ."""
        group = self._group
        mine = self.config()
        seen = {text(c) for c in configs} - {mine}
        others = {c: parsed for c in seen if (parsed := _parse_config(c)) is not None}
        self.limit_in_force = min([group.limit, *(lim for lim, _ in others.values())])
        differ = frozenset(others)
        if differ and differ != self._disagreement:
            log.error(
                "job slots %r of account %r: other processes use %s, this one "
                "limit=%d lease=%gs; the strictest limit (%d) is used: give every "
                "process the same max_concurrent_jobs and lease",
                group.name,
                group.hub.account,
                ", ".join(
                    f"limit={lim} lease={lease:g}s"
                    for lim, lease in sorted(set(others.values()))
                ),
                group.limit,
                group.lease,
                self.limit_in_force,
            )
        self._disagreement = differ

    async def _reap(self, jobs: list[str]) -> None:
        """Ask the API about orphaned slots' jobs; give back those that ended."""
        ended = self.ended
        if ended is None:
            return
        done: list[str] = []
        for job_id in jobs:
            try:
                if await ended(job_id):
                    done.append(job_id)
            except Exception as exc:  # noqa: BLE001 -- checked again later
                log.debug("job slots: could not check job %s: %s", job_id, exc)
        if done:
            freed = await self.release_in_redis(done, by="job")
            self.reaped += freed
            if freed:
                log.info(
                    "job slots %r: %d slots of ended jobs whose process stopped "
                    "renewing them are free again",
                    self._group.name,
                    freed,
                )

    async def close(self) -> None:
        """Stop renewing and give back every lease held."""
        tasks = [
            t for t in (self._renewer, self._releaser, self._reaper) if t is not None
        ]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, *FAULTS):
                await task
        leases = list(self.held) + self._to_release + self.unsent
        self.held.clear()
        self.by_job.clear()
        self._to_release = []
        self.unsent = []
        if leases:
            await self.release_in_redis(leases)
