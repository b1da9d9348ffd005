"""
`RedisLedger`: the ledger of every machine that shares a hub, in the hub's Redis.

Attempts are hashes indexed by start time (one sorted set per model and one for
all); claims are hashes by job id, with the job each attempt claimed beside them.
A claim is one optimistic transaction (``WATCH`` the claims it reads, decide with
the one rule of `pixelbyte_async._ledger` — never a second copy of it in Lua —
and ``MULTI``/``EXEC`` the writes, again if another process wrote meanwhile), so
one job goes to one attempt across machines.

Tracked jobs (`TrackingLedger`) are hashes by attempt, indexed by creation time in
one sorted set per state and, while active, one per owner (what `renew` and
`release` touch); done ones are also indexed by their last change, which the
retention counts from.  A lease is taken like a claim (``WATCH`` the record,
decide with `lease_free`, ``MULTI``/``EXEC``); the other changes are Lua scripts
that keep the indexes with the record.  Active records never expire.

While Redis is away, what a submit writes (its attempt, its outcome, its own
job) is kept in order in this process and written once the hub is back, before
the hub turns healthy: submits go on.  What needs every machine's word cannot
be answered from here, so reading attempts or claims, and claiming a job by
inference (a delivery, the job list, a person), raise `LedgerError` until then.
So do reading tracked jobs, taking a lease and finishing a tracked job; tracking
one, tying it to its job, and renewing or releasing a process's leases are kept.
"""

from __future__ import annotations

import asyncio
import collections
import logging
from collections.abc import Collection, Mapping
from typing import Any, Literal, TypeAlias, get_args

import attrs
from redis.exceptions import WatchError

from pixelbyte_async._ledger import (
    Attempt,
    AttemptState,
    Claim,
    ClaimHow,
    LedgerError,
    MemoryLedger,
)
from pixelbyte_async._ledger._claiming import decide, overridden, state_after
from pixelbyte_async._ledger._records import STATES
from pixelbyte_async._ledger._tracking import (
    ACTIVE,
    DONE_STATES,
    TRACKED_STATES,
    TrackedRecord,
    TrackedState,
    lease_free,
)

from ._codec import text
from ._link import FAULTS, RedisLink


__all__ = ["RedisLedger"]

log = logging.getLogger("pixelbyte_async")

#: How often old entries are deleted (seconds, by the writers' clock).
_PRUNE_EVERY = 60.0
#: Entries per pipeline when reading many.
_BATCH = 500
#: How long this process remembers its own writes in memory (seconds).
_MINE_RETENTION = 7200.0
#: How many times a claim is tried again when another process wrote meanwhile.
_CLAIM_TRIES = 20

# KEYS: attempt hash.  ARGV: state, ttl ms.  Only an attempt that exists moves.
_MARK_LUA = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('HSET', KEYS[1], 'state', ARGV[1])
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return 1
"""

# KEYS: all attempts index, claims index.
# ARGV: horizon, attempt key prefix, claim key prefix, claimed-by key prefix,
#       model index prefix.
# Deletes what began (attempts) or was claimed (claims) before the horizon, in
# bounded steps; every key shares the account's hash tag (one cluster slot).
_PRUNE_LUA = """
local old = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', '(' .. ARGV[1], 'LIMIT', 0, 1000)
for _, id in ipairs(old) do
  local key = ARGV[2] .. id
  local model = redis.call('HGET', key, 'model')
  if model then redis.call('ZREM', ARGV[5] .. model, id) end
  redis.call('DEL', key)
  redis.call('ZREM', KEYS[1], id)
end
local gone = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', '(' .. ARGV[1], 'LIMIT', 0, 1000)
for _, job in ipairs(gone) do
  local key = ARGV[3] .. job
  local attempt = redis.call('HGET', key, 'attempt')
  if attempt then redis.call('DEL', ARGV[4] .. attempt) end
  redis.call('DEL', key)
  redis.call('ZREM', KEYS[2], job)
end
return #old + #gone
"""

_HOWS: tuple[ClaimHow, ...] = get_args(ClaimHow)

# KEYS: the job's claim, the attempt's claimed-by, the attempt, the claims index
#       (the claim key again for the two attempt keys of a claim with no attempt).
# ARGV: job id, how, at, attempt ('' for none), the attempt's state after it,
#       ttl ms, only if nothing is claimed ('1'/'0').
# Writes one claim `decide` ruled on; with "only if free", only when neither the
# job nor the attempt has a claim (the one case decided without reading).
_CLAIM_LUA = """
if ARGV[7] == '1' then
  if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
  if ARGV[4] ~= '' and redis.call('EXISTS', KEYS[2]) == 1 then return 0 end
end
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], 'how', ARGV[2], 'at', ARGV[3])
redis.call('PEXPIRE', KEYS[1], ARGV[6])
redis.call('ZADD', KEYS[4], ARGV[3], ARGV[1])
redis.call('PEXPIRE', KEYS[4], ARGV[6])
if ARGV[4] ~= '' then
  redis.call('HSET', KEYS[1], 'attempt', ARGV[4])
  redis.call('SET', KEYS[2], ARGV[1], 'PX', ARGV[6])
  redis.call('HSET', KEYS[3], 'state', ARGV[5], 'job_id', ARGV[1])
  redis.call('PEXPIRE', KEYS[3], ARGV[6])
end
return 1
"""

# -- tracked jobs --
#
# Every script that changes a tracked record keeps its indexes with it:
# KEYS: the record, the done index (done records by last change).
# ARGV: state index prefix, owner index prefix, attempt, ttl ms, then the script's.
# A record is in the index of its state (by created_at) always, in its owner's (by
# created_at) while active, in the done index (by updated_at) while done; a done
# record (and its indexes) expires after ttl unless written again, an active never.
_TRACKED_LUA_HEAD = """
local rec, done = KEYS[1], KEYS[2]
local by_state, by_owner, id, ttl = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local function unindex()
  local state, owner = unpack(redis.call('HMGET', rec, 'state', 'owner'))
  if state then redis.call('ZREM', by_state .. state, id) end
  if owner then redis.call('ZREM', by_owner .. owner, id) end
  redis.call('ZREM', done, id)
end
local function index()
  local state, owner, made, at = unpack(
    redis.call('HMGET', rec, 'state', 'owner', 'created_at', 'updated_at'))
  redis.call('ZADD', by_state .. state, made, id)
  if state == 'active' then
    redis.call('PERSIST', rec)
    if owner then redis.call('ZADD', by_owner .. owner, made, id) end
  else
    redis.call('ZADD', done, at, id)
    redis.call('PEXPIRE', rec, ttl)
    redis.call('PEXPIRE', done, ttl)
    redis.call('PEXPIRE', by_state .. state, ttl)
  end
end
"""

# ARGV (after the head's): the record's fields and values.  Replaces the record.
_TRACK_LUA = (
    _TRACKED_LUA_HEAD
    + """
unindex()
redis.call('DEL', rec)
redis.call('HSET', rec, unpack(ARGV, 5))
index()
return 1
"""
)

# ARGV (after the head's): job id, at.  Only a record that exists is tied.
_TRACKED_JOB_LUA = (
    _TRACKED_LUA_HEAD
    + """
if redis.call('EXISTS', rec) == 0 then return 0 end
redis.call('HSET', rec, 'job_id', ARGV[5], 'updated_at', ARGV[6])
index()
return 1
"""
)

# ARGV (after the head's): owner, state, at, '1' to set failures / failures,
# '1' to set error / error.  Only an active record the owner holds moves.
_FINISH_LUA = (
    _TRACKED_LUA_HEAD
    + """
local state, holder = unpack(redis.call('HMGET', rec, 'state', 'owner'))
if state ~= 'active' or holder ~= ARGV[5] then return 0 end
unindex()
redis.call('HSET', rec, 'state', ARGV[6], 'updated_at', ARGV[7])
if ARGV[8] == '1' then redis.call('HSET', rec, 'failures', ARGV[9]) end
if ARGV[10] == '1' then redis.call('HSET', rec, 'error', ARGV[11]) end
index()
return 1
"""
)

# KEYS: the owner's index.  ARGV: record key prefix, owner, lease until, at,
# 'release' or 'renew'.  Renews (or gives up) every active lease the owner holds;
# entries the index kept by mistake are dropped.
_LEASES_LUA = """
local ids = redis.call('ZRANGE', KEYS[1], 0, -1)
for _, id in ipairs(ids) do
  local key = ARGV[1] .. id
  local state, owner = unpack(redis.call('HMGET', key, 'state', 'owner'))
  if state ~= 'active' or owner ~= ARGV[2] then
    redis.call('ZREM', KEYS[1], id)
  elseif ARGV[5] == 'renew' then
    redis.call('HSET', key, 'lease_until', ARGV[3])
  else
    redis.call('HDEL', key, 'owner')
    redis.call('HSET', key, 'lease_until', ARGV[3], 'updated_at', ARGV[4])
  end
end
if ARGV[5] == 'release' then redis.call('DEL', KEYS[1]) end
return #ids
"""

# KEYS: the done index.  ARGV: horizon, record key prefix, state index prefix,
# then the done states.  Deletes done records last changed before the horizon, in
# bounded steps (a record gone already is taken out of every done state's index).
_PRUNE_TRACKED_LUA = """
local old = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', '(' .. ARGV[1], 'LIMIT', 0, 1000)
for _, id in ipairs(old) do
  local key = ARGV[2] .. id
  local state = redis.call('HGET', key, 'state')
  if state ~= 'active' then
    for i = 4, #ARGV do redis.call('ZREM', ARGV[3] .. ARGV[i], id) end
    redis.call('DEL', key)
  end
  redis.call('ZREM', KEYS[1], id)
end
return #old
"""

_Op: TypeAlias = tuple[
    Literal["begin", "mark", "claim", "track", "tracked_job", "renew", "release"],
    tuple[Any, ...],
]


def _fields(attempt: Attempt) -> dict[str, str]:
    fields = {
        "model": attempt.model,
        "started_at": repr(attempt.started_at),
        "ends_by": repr(attempt.ends_by),
        "state": attempt.state,
        "owner": attempt.owner,
        "tagged": "1" if attempt.tagged else "0",
    }
    if attempt.job_id is not None:
        fields["job_id"] = attempt.job_id
    if attempt.list_price is not None:
        fields["list_price"] = str(attempt.list_price)
    if attempt.offset is not None:
        fields["offset_low"], fields["offset_high"] = map(repr, attempt.offset)
    return fields


def _decoded(raw: Mapping[bytes, bytes]) -> dict[str, str]:
    return {k.decode(): v.decode() for k, v in raw.items()}


def _attempt(attempt_id: str, raw: Mapping[bytes, bytes]) -> Attempt | None:
    got = _decoded(raw)
    state = got.get("state")
    if "model" not in got or state not in STATES:
        return None  # gone (pruned or expired) between two reads
    low, high = got.get("offset_low"), got.get("offset_high")
    price = got.get("list_price")
    return Attempt(
        id=attempt_id,
        model=got["model"],
        started_at=float(got["started_at"]),
        ends_by=float(got["ends_by"]),
        state=state,
        owner=got.get("owner", ""),
        tagged=got.get("tagged") == "1",
        job_id=got.get("job_id"),
        list_price=None if price is None else int(price),
        offset=None if low is None or high is None else (float(low), float(high)),
    )


def _tracked_fields(record: TrackedRecord) -> list[str]:
    """*record*'s hash fields and values, in turn (`_TRACK_LUA`'s arguments)."""
    fields = {
        "model": record.model,
        "context": record.context,
        "group": record.group,
        "state": record.state,
        "lease_until": repr(record.lease_until),
        "failures": str(record.failures),
        "created_at": repr(record.created_at),
        "updated_at": repr(record.updated_at),
    }
    if record.job_id is not None:
        fields["job_id"] = record.job_id
    if record.owner is not None:
        fields["owner"] = record.owner
    if record.error is not None:
        fields["error"] = record.error
    return [part for pair in fields.items() for part in pair]


def _tracked(attempt: str, raw: Mapping[bytes, bytes]) -> TrackedRecord | None:
    got = _decoded(raw)
    state = got.get("state")
    if "model" not in got or state not in TRACKED_STATES:
        return None  # gone (pruned or expired) between two reads
    return TrackedRecord(
        attempt=attempt,
        model=got["model"],
        context=got.get("context", "null"),
        state=state,
        job_id=got.get("job_id"),
        owner=got.get("owner"),
        lease_until=float(got.get("lease_until", "0")),
        failures=int(got.get("failures", "0")),
        error=got.get("error"),
        created_at=float(got["created_at"]),
        updated_at=float(got["updated_at"]),
        group=got.get("group", "default"),
    )


def _claim(job_id: str, raw: Mapping[bytes, bytes]) -> Claim | None:
    got = _decoded(raw)
    how = got.get("how")
    if how not in _HOWS or "at" not in got:
        return None
    return Claim(
        job_id=job_id,
        attempt=got.get("attempt"),
        how=how,
        at=float(got["at"]),
    )


class RedisLedger:
    """
    A `SubmitLedger` in a hub's Redis, shared by every machine using the hub.

    Also a `TrackingLedger`.  Get it from the hub (``hub.ledger()``);
    ``PixelByte(hub=hub)`` uses it unless told otherwise.  Entries are kept for *retention* seconds by the writers'
    clock (and expire in Redis after as long again, should nobody write); active
    tracked jobs are kept until they are done.

    While Redis is away, this process's own writes are kept in order (up to the
    hub's *max_outbox*) and written when it is back; reads of attempts and
    claims, and claims made by inference, raise `LedgerError` meanwhile (no
    process can tell whose a job is without every machine's word), and so do
    reading tracked jobs, leasing and finishing one.

    .. versionadded:: 0.3.0
    """

    def __init__(
        self,
        link: RedisLink,
        *,
        account: str,
        retention: float,
        max_outbox: int,
    ) -> None:
        self._link = link
        self.account = account
        self.retention = retention
        self.max_outbox = max_outbox
        self._ttl_ms = int(retention * 2000)
        self._outbox: collections.deque[_Op] = collections.deque()
        # This process's own recent writes, for `attempt` while Redis is away
        # (reconcile asks about attempts of the last hour at most).
        self._mine = MemoryLedger(retention=min(retention, _MINE_RETENTION))
        self._scripts: dict[str, Any] = {}
        self._pruned_at = 0.0
        self._flushing = asyncio.Lock()

    @property
    def where(self) -> str:
        """The hub's Redis (its password masked) and the ledger's account."""
        return f"{self._link.url} (ledger {self.account})"

    def __repr__(self) -> str:
        return f"RedisLedger({self.where!r}, pending={len(self._outbox)})"

    @property
    def pending(self) -> int:
        """Writes kept here until Redis is back."""
        return len(self._outbox)

    # -- keys ------------------------------------------------------------------------

    def _key(self, kind: str, name: str = "") -> str:
        return self._link.key(kind, f"{self.account}:{name}")

    def _attempt_key(self, attempt_id: str) -> str:
        return self._key("la", attempt_id)

    def _claim_key(self, job_id: str) -> str:
        return self._key("lj", job_id)

    def _claimed_by_key(self, attempt_id: str) -> str:
        return self._key("lc", attempt_id)

    def _index(self, model: str | None) -> str:
        return self._key("li", "") if model is None else self._key("lm", model)

    def _tracked_key(self, attempt: str) -> str:
        return self._key("lt", attempt)

    def _state_index(self, state: str) -> str:
        return self._key("ls", state)

    def _owner_index(self, owner: str) -> str:
        return self._key("lo", owner)

    def _tracked_keys(self, attempt: str) -> tuple[list[str], list[str | int]]:
        """The keys and first arguments of a script with `_TRACKED_LUA_HEAD`."""
        keys = [self._tracked_key(attempt), self._key("lx")]
        args: list[str | int] = [
            self._state_index(""),
            self._owner_index(""),
            attempt,
            self._ttl_ms,
        ]
        return keys, args

    def _redis(self) -> Any:
        """The hub's client for commands (redis-py's types are looser than ours)."""
        return self._link.client()

    def _script(self, name: str, source: str) -> Any:
        found = self._scripts.get(name)
        if found is None:
            found = self._scripts[name] = self._redis().register_script(source)
        return found

    # -- writes ----------------------------------------------------------------------

    async def ready(self) -> None:
        """Write what was kept while Redis was away, if it is back."""
        if self._outbox and self._link.healthy:
            await self.flush()

    async def begin(self, attempt: Attempt) -> None:
        """See `SubmitLedger.begin`."""
        await self._mine.begin(attempt)
        await self._write(("begin", (attempt,)))

    async def mark(self, attempt_id: str, state: AttemptState, *, at: float) -> None:
        """See `SubmitLedger.mark`."""
        await self._mine.mark(attempt_id, state, at=at)
        await self._write(("mark", (attempt_id, state, at)))

    async def claim(
        self, job_id: str, *, how: ClaimHow, at: float, attempt: str | None = None
    ) -> Claim | None:
        """
        See `SubmitLedger.claim`.

        Raises:
            LedgerError: Redis is away and *how* is not ``submitted``: a claim by
                inference needs every machine's claims.

        """
        if how == "submitted":
            # A submit's own answer: this process's word is proof enough, now
            # or once Redis is back.
            await self._mine.claim(job_id, how=how, at=at, attempt=attempt)
            return await self._write(("claim", (job_id, how, at, attempt)))
        await self._usable()
        try:
            in_the_way = await self._claim(job_id, how, at, attempt)
        except FAULTS as exc:
            raise self._away(exc) from exc
        if in_the_way is None:
            await self._mine.claim(job_id, how=how, at=at, attempt=attempt)
        return in_the_way

    async def _write(self, op: _Op) -> Claim | None:
        if not self._outbox and self._link.healthy:
            try:
                return await self._apply(op)
            except FAULTS as exc:
                self._link.trouble(exc)
        if len(self._outbox) >= self.max_outbox:
            raise LedgerError(
                f"the hub's Redis {self._link.url} has been away for "
                f"{len(self._outbox)} ledger writes; nothing more is sent until it "
                "is back"
            )
        self._outbox.append(op)
        return None

    async def _apply(self, op: _Op) -> Claim | None:
        kind, args = op
        if kind == "begin":
            await self._begin(*args)
            return None
        if kind == "mark":
            attempt_id, state, at = args
            await self._script("mark", _MARK_LUA)(
                keys=[self._attempt_key(attempt_id)], args=[state, self._ttl_ms]
            )
            await self._maybe_prune(at)
            return None
        if kind == "claim":
            return await self._claim(*args)
        await self._apply_tracked(op)
        return None

    async def _apply_tracked(self, op: _Op) -> None:
        kind, args = op
        if kind == "track":
            (record,) = args
            keys, head = self._tracked_keys(record.attempt)
            await self._script("track", _TRACK_LUA)(
                keys=keys, args=[*head, *_tracked_fields(record)]
            )
            at = record.created_at
        elif kind == "tracked_job":
            attempt, job_id, at = args
            keys, head = self._tracked_keys(attempt)
            await self._script("tracked_job", _TRACKED_JOB_LUA)(
                keys=keys, args=[*head, job_id, repr(at)]
            )
        else:  # renew, release
            owner, until, at = args
            await self._script("leases", _LEASES_LUA)(
                keys=[self._owner_index(owner)],
                args=[self._tracked_key(""), owner, repr(until), repr(at), kind],
            )
        await self._maybe_prune(at)

    async def flush(self) -> int:
        """
        Write what was kept while Redis was away, in order; return how many.

        The hub does this on its own after each reconnection, before it turns
        healthy.  A fault stops it (the rest stays kept, and Redis is away again).
        """
        async with self._flushing:
            return await self._flush()

    async def _flush(self) -> int:
        done = 0
        while self._outbox:
            op = self._outbox[0]
            try:
                in_the_way = await self._apply(op)
            except FAULTS as exc:
                self._link.trouble(exc)
                break
            self._outbox.popleft()
            done += 1
            if op[0] == "claim" and in_the_way is not None:
                log.warning(
                    "ledger: job %s, recorded while Redis was away, is already "
                    "claimed by attempt %s (%s)",
                    op[1][0],
                    in_the_way.attempt,
                    in_the_way.how,
                )
        if done:
            log.info("ledger: %d writes made while Redis was away are in it now", done)
        return done

    async def _begin(self, attempt: Attempt) -> None:
        key = self._attempt_key(attempt.id)
        async with self._redis().pipeline(transaction=True) as pipe:
            pipe.delete(key)
            pipe.hset(key, mapping=_fields(attempt))
            pipe.pexpire(key, self._ttl_ms)
            for index in (self._index(None), self._index(attempt.model)):
                pipe.zadd(index, {attempt.id: attempt.started_at})
                pipe.pexpire(index, self._ttl_ms)
            await pipe.execute()
        await self._maybe_prune(attempt.started_at)

    async def _claim(
        self, job_id: str, how: ClaimHow, at: float, attempt: str | None
    ) -> Claim | None:
        # Nothing claimed yet (nearly always): `decide` says "new", and one script
        # writes it if that is still so.  Otherwise read, decide and write again.
        if decide(job_id, attempt, how, on_job=None, on_attempt=None)[0] == "new":
            keys, args = self._claim_write(job_id, how, at, attempt, only_if_free=True)
            if await self._script("claim", _CLAIM_LUA)(keys=keys, args=args) == 1:
                await self._maybe_prune(at)
                return None
        on_job_key = self._claim_key(job_id)
        by_key = None if attempt is None else self._claimed_by_key(attempt)
        for _ in range(_CLAIM_TRIES):
            async with self._redis().pipeline(transaction=True) as pipe:
                try:
                    await pipe.watch(on_job_key, *([] if by_key is None else [by_key]))
                    on_job = _claim(job_id, await pipe.hgetall(on_job_key))
                    on_attempt = None
                    if by_key is not None:
                        raw = await pipe.get(by_key)
                        held = None if raw is None else text(raw)
                        if held is not None:
                            on_attempt = _claim(
                                held, await pipe.hgetall(self._claim_key(held))
                            )
                    verdict, other = decide(
                        job_id, attempt, how, on_job=on_job, on_attempt=on_attempt
                    )
                    if verdict in {"conflict", "same"}:
                        await pipe.unwatch()
                        return other if verdict == "conflict" else None
                    pipe.multi()
                    if verdict == "override" and other is not None:
                        overridden(job_id, other, attempt)
                        if other.attempt is not None:
                            pipe.delete(self._claimed_by_key(other.attempt))
                            key = self._attempt_key(other.attempt)
                            pipe.hset(key, "state", "unknown")
                            pipe.hdel(key, "job_id")
                    keys, args = self._claim_write(job_id, how, at, attempt)
                    await self._script("claim", _CLAIM_LUA)(
                        keys=keys, args=args, client=pipe
                    )
                    await pipe.execute()
                except WatchError:
                    continue
            await self._maybe_prune(at)
            return None
        raise LedgerError(f"job {job_id} is being claimed by many processes at once")

    def _claim_write(
        self,
        job_id: str,
        how: ClaimHow,
        at: float,
        attempt: str | None,
        *,
        only_if_free: bool = False,
    ) -> tuple[list[str], list[str | int]]:
        """The keys and arguments of `_CLAIM_LUA` for this claim."""
        job_key = self._claim_key(job_id)
        keys = [
            job_key,
            job_key if attempt is None else self._claimed_by_key(attempt),
            job_key if attempt is None else self._attempt_key(attempt),
            self._key("lk"),
        ]
        args: list[str | int] = [
            job_id,
            how,
            repr(at),
            attempt or "",
            state_after(how),
            self._ttl_ms,
            "1" if only_if_free else "0",
        ]
        return keys, args

    async def _maybe_prune(self, now: float) -> None:
        if now - self._pruned_at < _PRUNE_EVERY:
            return
        self._pruned_at = now
        await self._script("prune", _PRUNE_LUA)(
            keys=[self._index(None), self._key("lk")],
            args=[
                repr(now - self.retention),
                self._attempt_key(""),
                self._claim_key(""),
                self._claimed_by_key(""),
                self._key("lm"),
            ],
        )
        await self._script("prune_tracked", _PRUNE_TRACKED_LUA)(
            keys=[self._key("lx")],
            args=[
                repr(now - self.retention),
                self._tracked_key(""),
                self._state_index(""),
                *sorted(DONE_STATES),
            ],
        )

    # -- reads -----------------------------------------------------------------------

    def _away(self, exc: BaseException | None = None) -> LedgerError:
        if exc is not None:
            self._link.trouble(exc)
        return LedgerError(
            f"the hub's Redis {self._link.url} is unreachable: whose job is whose "
            "cannot be told without it (nothing was claimed); try again when it is "
            "back"
        )

    async def _usable(self) -> None:
        if not self._link.healthy:
            raise self._away()
        if self._outbox:
            await self.flush()
            if self._outbox:
                raise self._away()

    async def attempt(self, attempt_id: str) -> Attempt | None:
        """See `SubmitLedger.attempt` (this process's own while Redis is away)."""
        if self._link.healthy and not self._outbox:
            try:
                raw = await self._redis().hgetall(self._attempt_key(attempt_id))
            except FAULTS as exc:
                self._link.trouble(exc)
            else:
                return _attempt(attempt_id, raw)
        return await self._mine.attempt(attempt_id)

    async def attempts(
        self, *, model: str | None, since: float, until: float, open_only: bool = False
    ) -> list[Attempt]:
        """
        See `SubmitLedger.attempts`.

        Raises:
            LedgerError: Redis is away.

        """
        await self._usable()
        try:
            ids = [
                i.decode()
                for i in await self._redis().zrangebyscore(
                    self._index(model), since, until
                )
            ]
            rows = await self._hashes([self._attempt_key(i) for i in ids])
        except FAULTS as exc:
            raise self._away(exc) from exc
        return [
            a
            for a in map(_attempt, ids, rows)
            if a is not None and (a.open or not open_only)
        ]

    async def claims(self, job_ids: Collection[str]) -> dict[str, Claim]:
        """
        See `SubmitLedger.claims`.

        Raises:
            LedgerError: Redis is away.

        """
        wanted = list(dict.fromkeys(job_ids))
        if not wanted:
            return {}
        await self._usable()
        try:
            rows = await self._hashes([self._claim_key(j) for j in wanted])
        except FAULTS as exc:
            raise self._away(exc) from exc
        return {
            claim.job_id: claim
            for claim in map(_claim, wanted, rows)
            if claim is not None
        }

    async def _hashes(self, keys: list[str]) -> list[Mapping[bytes, bytes]]:
        """``HGETALL`` of each of *keys*, pipelined in batches."""
        rows: list[Mapping[bytes, bytes]] = []
        for start in range(0, len(keys), _BATCH):
            async with self._redis().pipeline(transaction=False) as pipe:
                for key in keys[start : start + _BATCH]:
                    pipe.hgetall(key)
                rows.extend(await pipe.execute())
        return rows

    # -- tracked jobs ----------------------------------------------------------------

    async def track(self, record: TrackedRecord) -> None:
        """See `TrackingLedger.track` (kept until Redis is back, like `begin`)."""
        await self._write(("track", (record,)))

    async def tracked_job(self, attempt: str, job_id: str, *, at: float) -> None:
        """See `TrackingLedger.tracked_job` (kept until Redis is back)."""
        await self._write(("tracked_job", (attempt, job_id, at)))

    async def tracked(
        self, *, states: Collection[TrackedState] = ACTIVE
    ) -> list[TrackedRecord]:
        """
        See `TrackingLedger.tracked`.

        Raises:
            LedgerError: Redis is away.

        """
        wanted = sorted(set(states))
        if not wanted:
            return []
        await self._usable()
        try:
            async with self._redis().pipeline(transaction=False) as pipe:
                for state in wanted:
                    pipe.zrange(self._state_index(state), 0, -1, withscores=True)
                ranked = sorted(
                    (made, member.decode())
                    for entries in await pipe.execute()
                    for member, made in entries
                )
            ids = list(dict.fromkeys(attempt for _, attempt in ranked))
            rows = await self._hashes([self._tracked_key(i) for i in ids])
        except FAULTS as exc:
            raise self._away(exc) from exc
        return [
            r for r in map(_tracked, ids, rows) if r is not None and r.state in wanted
        ]

    async def lease(
        self,
        attempt: str,
        owner: str,
        *,
        until: float,
        at: float,
        gone: Collection[str] = (),
    ) -> TrackedRecord | None:
        """
        See `TrackingLedger.lease`.

        Raises:
            LedgerError: Redis is away (who holds it cannot be told without it).

        """
        await self._usable()
        try:
            return await self._lease(attempt, owner, until=until, at=at, gone=gone)
        except FAULTS as exc:
            raise self._away(exc) from exc

    async def _lease(
        self,
        attempt: str,
        owner: str,
        *,
        until: float,
        at: float,
        gone: Collection[str],
    ) -> TrackedRecord | None:
        # Like a contested claim: read, decide with the one rule, write unless
        # another process wrote the record meanwhile (then again).
        key = self._tracked_key(attempt)
        for _ in range(_CLAIM_TRIES):
            async with self._redis().pipeline(transaction=True) as pipe:
                try:
                    await pipe.watch(key)
                    found = _tracked(attempt, await pipe.hgetall(key))
                    if found is None or not lease_free(found, owner, at=at, gone=gone):
                        await pipe.unwatch()
                        return None
                    pipe.multi()
                    pipe.hset(
                        key,
                        mapping={
                            "owner": owner,
                            "lease_until": repr(until),
                            "updated_at": repr(at),
                        },
                    )
                    if found.owner is not None and found.owner != owner:
                        pipe.zrem(self._owner_index(found.owner), attempt)
                    pipe.zadd(self._owner_index(owner), {attempt: found.created_at})
                    await pipe.execute()
                except WatchError:
                    continue
            return attrs.evolve(found, owner=owner, lease_until=until, updated_at=at)
        raise LedgerError(
            f"tracked job {attempt} is being leased by many processes at once"
        )

    async def renew(self, owner: str, *, until: float, at: float) -> None:
        """
        See `TrackingLedger.renew`.

        Kept until Redis is back, like the other writes of this process (the
        latest renewal replaces one kept just before it).
        """
        op: _Op = ("renew", (owner, until, at))
        outbox = self._outbox
        if (
            outbox
            and outbox[-1][0] == "renew"
            and outbox[-1][1][0] == owner
            and (len(outbox) > 1 or not self._flushing.locked())
        ):
            outbox[-1] = op  # not the one a flush may be writing right now
            return
        await self._write(op)

    async def release(self, owner: str, *, at: float) -> None:
        """See `TrackingLedger.release` (kept until Redis is back)."""
        await self._write(("release", (owner, 0.0, at)))

    async def finish(
        self,
        attempt: str,
        owner: str,
        *,
        state: TrackedState,
        at: float,
        failures: int | None = None,
        error: str | None = None,
    ) -> bool:
        """
        See `TrackingLedger.finish`.

        Raises:
            LedgerError: Redis is away (whether *owner* still holds the lease
                cannot be told without it; nothing changed).

        """
        await self._usable()
        keys, head = self._tracked_keys(attempt)
        try:
            done = await self._script("finish", _FINISH_LUA)(
                keys=keys,
                args=[
                    *head,
                    owner,
                    state,
                    repr(at),
                    "0" if failures is None else "1",
                    "" if failures is None else str(failures),
                    "0" if error is None else "1",
                    "" if error is None else error,
                ],
            )
        except FAULTS as exc:
            raise self._away(exc) from exc
        try:
            await self._maybe_prune(at)
        except FAULTS as exc:  # it is finished all the same
            self._link.trouble(exc)
        return bool(done == 1)

    async def aclose(self) -> None:
        """Write what was kept, if Redis is there (the hub closes the connection)."""
        if self._outbox and self._link.running() and self._link.healthy:
            await self.flush()
        if self._outbox:
            log.warning(
                "ledger: %d writes made while Redis was away were never written "
                "to it (other machines will take those submits' jobs for foreign)",
                len(self._outbox),
            )
