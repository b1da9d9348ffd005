"""
`RedisLedger`: the ledger of every machine that shares a hub, in the hub's Redis.

Attempts are hashes indexed by start time (one sorted set per model and one for
all); claims are hashes by job id, with the job each attempt claimed beside them.
A claim is one optimistic transaction (``WATCH`` the claims it reads, decide with
the one rule of `pixelbyte_async._ledger` — never a second copy of it in Lua —
and ``MULTI``/``EXEC`` the writes, again if another process wrote meanwhile), so
one job goes to one attempt across machines.

While Redis is away, what a submit writes (its attempt, its outcome, its own
job) is kept in order in this process and written once the hub is back, before
the hub turns healthy: submits go on.  What needs every machine's word cannot
be answered from here, so reading attempts or claims, and claiming a job by
inference (a delivery, the job list, a person), raise `LedgerError` until then.
"""

from __future__ import annotations

import asyncio
import collections
import logging
from collections.abc import Collection, Mapping
from typing import Any, Literal, TypeAlias, get_args

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

_Op: TypeAlias = tuple[Literal["begin", "mark", "claim"], tuple[Any, ...]]


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

    Get it from the hub (``hub.ledger()``); ``PixelByte(hub=hub)`` uses it unless
    told otherwise.  Entries are kept for *retention* seconds by the writers'
    clock (and expire in Redis after as long again, should nobody write).

    While Redis is away, this process's own writes are kept in order (up to the
    hub's *max_outbox*) and written when it is back; reads of attempts and
    claims, and claims made by inference, raise `LedgerError` meanwhile (no
    process can tell whose a job is without every machine's word).

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
        return await self._claim(*args)

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
