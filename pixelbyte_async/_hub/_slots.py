"""
Account-wide job slots in Redis: `RedisSlots`, and the slot groups of one hub.

`RedisSlots` is a counting semaphore with leases, shared by every process of an
account: waiters queue in Redis in arrival order, are admitted by one Lua script,
are woken by name when their turn comes (a message to their process's inbox, sent
by the script that freed the slot), and admit nothing they cannot prove while
Redis is away (unless told to, by *fallback_limit*).  A slot is held by its job
until the job ends, not until a lease expires (see ``_slot_lua``).  The leases a
process holds are kept by `HeldLeases`.  `SlotGroups` are a hub's groups by name:
made once, told about health and releases, brought in step with Redis when it is
back, closed with the hub.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import itertools
import math
from typing import Any

import anyio

from pixelbyte_async._clock import sleep_or_until
from pixelbyte_async._errors import RequestTimeout

from ._codec import check_name, ms, turn_args
from ._leases import HeldLeases, JobEnded, SlotsHub
from ._link import FAULTS, HubUnavailable
from ._slot_lua import SLOT_KEYS


__all__ = ["DEFAULT_SETTLE", "RedisSlots", "SlotGroups"]

_MAX_PAUSE = 60.0
#: Seconds a lease lives without renewal, unless the group says otherwise.
DEFAULT_LEASE = 60.0  # longest single pause of a slot waiter (re-checks health)
#: Seconds a slot whose submit was on the wire when its process died stays taken.
DEFAULT_SETTLE = 300.0


class RedisSlots:
    """
    An account-wide counting semaphore with leases, kept in Redis.

    A lease is a member of a sorted set scored by its expiry (Redis server time),
    admitted by a Lua script; one task per process renews all of its leases every
    *lease*/3 seconds.

    **A slot is held by its job, not by a lease.**  Each lease is bound to the job
    its submit created.  When a lease expires (its process was killed, or lost
    Redis for longer than a lease), the slot stays taken while its job runs at
    the API: it is freed when the job's terminal event is stored (a receiver
    published it; every slot operation of any process looks), or when a live
    process asks the API (one GET per orphaned slot and *lease*, by one process;
    the client does it, ``PixelByte(hub=...)``).  A lease whose submit was on the
    wire when its process died stays taken for *settle* seconds, the submit's
    settle horizon.  A lease with no submit is freed when it expires.

    **Fairness.**  Waiters queue in Redis in arrival order (FIFO across all
    processes): a waiter is admitted only when fewer waiters are ahead of it than
    there are free slots.  The script that frees a slot (a release, a waiter
    giving up, an admission that leaves one free, a slot found free) names the
    waiters whose turn it is, in a message to each one's process (its inbox); a
    waiter named while its attempt was on the wire tries again at once.  Otherwise
    waiters try again every *retry_interval* (jittered).  A waiter whose process
    died leaves the queue after ``max(2 s, 5 × retry_interval)``.

    **Redis away.**  No process can count the others' jobs, so none admits a job
    it cannot prove a slot for: the slots a process holds stay its own, and it
    admits new ones only up to *fallback_limit* leases held (default 0: submits
    wait for Redis, or for ``slot_timeout``).  A *fallback_limit* above 0 trades
    the account limit for progress during an outage (up to *fallback_limit* ×
    processes jobs at once).  When Redis is back, the releases made meanwhile and
    every lease held are registered again before anyone is admitted; if Redis
    lost its data, admissions hold while every live process registers its
    leases again as it reconnects (*reconnect_max*, at most a renewal interval,
    plus a second).

    **Settings drift.**  Each process records its *limit* and *lease*; admission
    uses the strictest limit of the live processes, and a process that sees
    another setting logs an ERROR naming both.

    Made by `RedisHub.slots`.

    Args:
        hub: The `RedisHub`.
        limit: Slots for the whole account (use the same value in every process).
        name: Several independent groups may share an account.
        lease: Seconds a lease lives without renewal.
        fallback_limit: Leases this process may hold while Redis is away
            (default 0: it admits nothing new until Redis is back).
        retry_interval: Mean pause between a waiter's attempts (jittered).
        settle: Seconds a slot whose submit was on the wire when its process
            died stays taken (that submit's settle horizon).

    .. versionadded:: 0.3.0

    """

    def __init__(
        self,
        hub: SlotsHub,
        limit: int,
        *,
        name: str = "jobs",
        lease: float = 60.0,
        fallback_limit: int | None = None,
        retry_interval: float = 1.0,
        settle: float = DEFAULT_SETTLE,
    ) -> None:
        if not isinstance(limit, int) or limit < 1:
            raise ValueError("limit must be a positive integer")
        if not lease > 0:
            raise ValueError("lease must be a positive number of seconds")
        if fallback_limit is not None and fallback_limit < 0:
            raise ValueError("fallback_limit must be 0 or a positive integer")
        if not settle >= 0:
            raise ValueError("settle must be a number of seconds")
        if not retry_interval > 0:
            raise ValueError("retry_interval must be a positive number of seconds")
        self.hub = hub
        self.limit = limit
        self.name = check_name("name", name)
        self.lease = float(lease)
        self.retry_interval = float(retry_interval)
        self.settle = float(settle)
        self._fallback = fallback_limit or 0
        self._link = hub._link  # noqa: SLF001 -- a slot group is part of its hub
        key = self._link.key
        self._keys = [key(kind, name) for kind in SLOT_KEYS]
        self._queue_ttl = max(2.0, 5 * self.retry_interval)
        self._leases = HeldLeases(self, self._link, keys=self._keys)
        self._ids = itertools.count()
        # This process's sleeping waiters, in Redis' queue order.  Redis names the
        # ones whose turn came (see _TELL_LUA); while Redis is away, a slot freed
        # here wakes the first.
        self._waiting: list[tuple[float, str, asyncio.Future[None]]] = []
        # Each waiter's place in Redis' queue (its arrival number), so that this
        # process's line is in the queue's order.
        self._places: dict[str, float] = {}
        # The waiters inside `acquire` now, and those of them named while awake
        # (their attempt on the wire may have run just before the slot was
        # freed: if it failed, they try again at once).
        self._live: set[str] = set()
        self._called: set[str] = set()
        #: The most leases seen in use account-wide right after an admission.
        self.peak = 0
        #: Admissions made under the per-process fallback limit.
        self.fallback_admissions = 0

    def __repr__(self) -> str:
        return (
            f"RedisSlots(name={self.name!r}, limit={self.limit}, "
            f"held={len(self._leases.held)}, lease={self.lease:g})"
        )

    @property
    def fallback_limit(self) -> int:
        """How many leases this process may hold while Redis is away; 0 admits none."""
        return self._fallback

    @property
    def limit_in_force(self) -> int:
        """The strictest limit of the processes sharing the group, as last seen."""
        return self._leases.limit_in_force

    @property
    def reaped(self) -> int:
        """Orphaned slots this process found ended at the API and gave back."""
        return self._leases.reaped

    def script_args(self) -> list[Any]:
        """The arguments every slot script starts with (see ``_slot_lua``)."""
        return [
            self.limit,
            ms(self.lease),
            ms(self.settle),
            *turn_args(self._link.inbox_prefix, self.name),
            ms(self.lease),
            self._link.key("ev", ""),
        ]

    def use_checker(self, ended: JobEnded | None) -> None:
        """
        Ask *ended(job_id)* about orphaned slots (their process stopped renewing).

        ``PixelByte(hub=...)`` gives its own (one GET of the job), so that a slot
        of a dead process's job is freed when the job ends even without webhooks.
        """
        self._leases.ended = ended

    @property
    def held(self) -> int:
        """How many leases this process holds."""
        return len(self._leases.held)

    def leases(self) -> dict[str, str | None]:
        """Return this process's leases, each with the job id bound to it."""
        return dict(self._leases.held)

    # -- waking ----------------------------------------------------------------------------

    def _notify(self, *, every: bool = False) -> None:
        """Wake the first sleeping waiter (*every*: all of them)."""
        for entry in list(self._waiting):
            self._waiting.remove(entry)
            wake = entry[2]
            if not wake.done():
                wake.set_result(None)
                if not every:
                    return

    def _released(self, names: list[str]) -> None:
        """Redis says the turn of *names* came: wake them."""
        wanted = set(names)
        for entry in list(self._waiting):
            if entry[1] in wanted:
                wanted.discard(entry[1])
                self._waiting.remove(entry)
                if not entry[2].done():
                    entry[2].set_result(None)
        self._called.update(wanted & self._live)  # awake: their attempt retries

    def _sleep_in_line(
        self, waiter: str, wake: asyncio.Future[None] | None
    ) -> asyncio.Future[None]:
        """The waiter's place in line: the one it has, or a new one at the end."""
        if wake is None or wake.done():
            wake = asyncio.get_running_loop().create_future()
            place = self._places.get(waiter, math.inf)  # never queued in Redis: last
            bisect.insort(self._waiting, (place, waiter, wake), key=lambda e: e[0])
        return wake

    def _leave_line(self, waiter: str, wake: asyncio.Future[None] | None) -> None:
        self._live.discard(waiter)
        self._called.discard(waiter)
        self._places.pop(waiter, None)
        if wake is not None and not wake.done():
            wake.cancel()
            # By identity: its place may have been learnt after it went to sleep.
            for i, entry in enumerate(self._waiting):
                if entry[2] is wake:
                    del self._waiting[i]
                    break

    def _health_changed(self, *, healthy: bool) -> None:
        self._notify(every=True)
        if healthy:
            self._leases.back()

    # -- acquiring ------------------------------------------------------------------------

    def _new_id(self, kind: str) -> str:
        return f"{self.hub.instance_id}:{kind}{next(self._ids)}"

    async def acquire(self, timeout: float | None = None) -> str:
        """
        Wait for a slot and return its lease id.

        Args:
            timeout: Seconds to wait at most (None: until a slot frees).  One
                attempt is always made, even with 0.

        Raises:
            RequestTimeout: No slot freed in time.
            RuntimeError: The hub is not started (or was closed meanwhile).

        """
        link = self._link
        link.require_loop()
        self._leases.ensure_renewer()
        clock = self.hub.clock
        deadline = clock.monotonic() + (math.inf if timeout is None else timeout)
        waiter = self._new_id("w")
        lease = self._new_id("l")
        queued = False
        wake: asyncio.Future[None] | None = None
        self._live.add(waiter)
        try:
            while True:
                if not link.running():
                    raise RuntimeError("the RedisHub of these job slots is closed")
                pause = _MAX_PAUSE
                if self.hub.healthy:
                    try:
                        admitted = await self._try_in_redis(waiter, lease)
                    except FAULTS:
                        continue  # the hub is unhealthy now: fall back below
                    if admitted:
                        queued = False
                        return lease
                    queued = True
                    if admitted is None:
                        continue  # a slot was freed during this attempt: try again
                    pause = self.retry_interval * link.uniform(0.5, 1.5)
                elif len(self._leases.held) < self.fallback_limit:
                    self.fallback_admissions += 1
                    self._leases.held[lease] = None
                    return lease
                remaining = deadline - clock.monotonic()
                if remaining <= 0:
                    raise RequestTimeout(
                        f"no job slot freed within {timeout}s ({self.limit} slots "
                        f"of account {self.hub.account!r}; {len(self._leases.held)} held "
                        "by this process)",
                        request_sent=False,
                    )
                wake = self._sleep_in_line(waiter, wake)
                await sleep_or_until(clock, min(pause, remaining), wake)
        finally:
            self._leave_line(waiter, wake)
            if queued:
                # Leave the queue at once rather than block it until expiry.
                with (
                    anyio.move_on_after(self.hub.connect_timeout, shield=True),
                    contextlib.suppress(*FAULTS),
                ):
                    await link.call("leave", self._keys, [*self.script_args(), waiter])

    async def _try_in_redis(self, waiter: str, lease: str) -> bool | None:
        """
        One admission attempt: True (admitted), False (queued), None (try again now).

        None when Redis named this waiter while the attempt was on the wire: it
        may have run just before the slot was freed.
        """
        leases = self._leases
        args = [
            *self.script_args(),
            waiter,
            lease,
            ms(self._queue_ttl),
            self.hub.instance_id,
            leases.config(),
            *leases.epoch_args(),
        ]
        self._called.discard(waiter)
        granted, _rank, used, place, epoch, _most = await self._link.call(
            "acquire", self._keys, args
        )
        leases.saw_epoch(epoch)
        self._places[waiter] = float(place)
        if granted:
            self.peak = max(self.peak, int(used))
            self._leases.held[lease] = None
            return True
        if waiter in self._called:
            self._called.discard(waiter)
            return None
        return False

    def bind(self, lease: str, job_id: str) -> None:
        """Bind *lease* to *job_id*: its slot is held until the job ends."""
        self._leases.bind(lease, job_id)

    def adopt(self, job_id: str) -> str:
        """
        Count a job already in flight (found after a restart) without waiting.

        The lease is registered in Redis at once by the renewal task, even past
        *limit*.
        """
        leases = self._leases
        self._link.require_loop()
        leases.ensure_renewer()
        existing = leases.by_job.get(job_id)
        if existing is not None:
            return existing
        lease = self._new_id("a")
        leases.held[lease] = job_id
        leases.by_job[job_id] = lease
        leases.kick_renewer()
        return lease

    # -- releasing ------------------------------------------------------------------------

    def _forget(self, lease: str) -> bool:
        if not self._leases.forget(lease):
            return False
        if not self.hub.healthy:
            self._notify()  # admitted here while Redis is away: the next one
        # (Healthy: Redis names the waiter whose turn it is once it freed the slot.)
        return True

    async def release(self, lease: str) -> None:
        """Give *lease* back (no-op if this process does not hold it)."""
        if self._forget(lease):
            await self._leases.release_in_redis([lease])

    def release_soon(self, lease: str) -> None:
        """Give *lease* back now, and to Redis from a background task (sync code)."""
        if self._forget(lease):
            self._leases.release_later(lease)

    def release_job(self, job_id: str) -> bool:
        """Give back the lease bound to *job_id* (`release_soon`); False if none."""
        lease = self._leases.by_job.get(job_id)
        if lease is None:
            return False
        self.release_soon(lease)
        return True

    # -- renewing and counting -----------------------------------------------------------

    async def renew(self, lease: str) -> None:
        """
        Extend *lease* by *lease* seconds now (the background task does it for all).

        Raises:
            HubUnavailable: Redis could not be reached.

        """
        self._link.require_loop()
        try:
            await self._leases.renew([lease])
        except FAULTS as exc:
            raise HubUnavailable(f"could not renew lease {lease}") from exc

    async def in_use(self) -> int:
        """Return how many slots are taken account-wide (live leases and orphans)."""
        self._link.require_loop()
        try:
            used = await self._link.call("in_use", self._keys, self.script_args())
        except FAULTS as exc:
            raise HubUnavailable("could not count the job slots in use") from exc
        return int(used)

    async def _close(self) -> None:
        """Stop renewing and give back every lease of this process."""
        await self._leases.close()
        self._notify(every=True)


class SlotGroups:
    """The job slot groups of one hub, by name (one `RedisSlots` per name)."""

    def __init__(self) -> None:
        self._groups: dict[str, RedisSlots] = {}

    def slots(
        self,
        hub: SlotsHub,
        limit: int,
        *,
        name: str,
        lease: float | None,
        fallback_limit: int | None,
        retry_interval: float,
        settle: float = DEFAULT_SETTLE,
    ) -> RedisSlots:
        """
        Return *hub*'s group *name*, made now if need be (see `RedisHub.slots`).

        Without a *lease*, an existing group is taken as it is (the client asks so).
        """
        group = self._groups.get(name)
        if group is None:
            group = RedisSlots(
                hub,
                limit,
                name=name,
                lease=DEFAULT_LEASE if lease is None else lease,
                fallback_limit=fallback_limit,
                retry_interval=retry_interval,
                settle=settle,
            )
            self._groups[name] = group
        elif group.limit != limit or lease not in {None, group.lease}:
            raise ValueError(
                f"job slots {name!r} exist with limit={group.limit}, "
                f"lease={group.lease:g}"
            )
        return group

    def released(self, name: str, waiters: list[str]) -> None:
        """The turn of *waiters* of group *name* came: wake them."""
        group = self._groups.get(name)
        if group is not None:
            group._released(waiters)  # noqa: SLF001 -- the hub owns its slot groups

    def health_changed(self, healthy: bool) -> None:
        """Tell every group that the hub's health changed."""
        for group in list(self._groups.values()):
            group._health_changed(healthy=healthy)  # noqa: SLF001 -- the hub owns its slot groups

    def outage_note(self) -> list[str]:
        """What each group does while Redis is away, for the outage message."""
        return [
            f"job slots {g.name!r} admit no new job"
            if g.fallback_limit == 0
            else f"job slots {g.name!r} admit up to {g.fallback_limit} jobs in this "
            "process (fallback_limit)"
            for g in self._groups.values()
        ]

    async def resync(self) -> None:
        """Redis is back: every group's releases and leases, before any admission."""
        for group in list(self._groups.values()):
            await group._leases.resync()  # noqa: SLF001 -- the hub owns its slot groups

    async def close(self, timeout: float) -> None:
        """Give back every group's leases (at most *timeout* seconds per group)."""
        for group in list(self._groups.values()):
            with anyio.move_on_after(timeout):
                await group._close()  # noqa: SLF001 -- the hub owns its slot groups
