# ruff: noqa: PLC0414 -- explicit `Name as Name` re-exports are the house style
"""
A Redis hub: webhook-fed waits and account-wide job slots across processes.

One process receives a webhook delivery, but the `Job.wait` it resolves may be
parked in another gunicorn worker, replica or bot shard; and the API's limit on
jobs in flight is per account, not per process.  `RedisHub` shares both through
one Redis server (redis-py's asyncio client, ``redis>=5``)::

    hub = RedisHub("redis://localhost:6379/0", key_prefix="pixelbyte", account="default")
    async with hub:
        first = await hub.publish(event)        # the process that got the delivery
        event = await hub.future_for(job_id)    # any process
        slots = hub.slots(20)                   # account-wide, leased
        lease = await slots.acquire(timeout=60)

**Transport.**  One pub/sub channel per account (one ``SUBSCRIBE`` per process;
messages are routed locally by job id) plus one stored key per job that carries its
terminal event for *event_ttl*.  A Lua script de-duplicates (``SET NX EX``), stores,
records the attempt → job id attribution (first wins) and publishes in one atomic
call, so a waiter that subscribes first and then reads the stored state can miss
nothing.

**Faults** (the lessons of Celery's Redis result backend).  Pub/sub is fire and
forget: while a process is disconnected it misses messages.  So `RedisHub.healthy` turns
false at once (one WARNING on the ``pixelbyte_async`` logger per outage, and the
*on_health* callbacks) and the client falls back to polling; on reconnect the hub
subscribes again and then re-reads the stored state of every job it has waiters
for, which resolves those whose event arrived meanwhile.  An event published while
Redis is away still reaches this process's waiters, is kept in a bounded outbox and
is published again on reconnect; `RedisHub.publish` raises `HubUnavailable` so that the
webhook endpoint can answer 503 and the API retries the delivery too.  Job slots
admit no new job while Redis is away (unless given a *fallback_limit*), never
"unlimited"; a slot stays held by its job until the job ends, even when its
process dies, and the limit is in step again before anyone is admitted when
Redis is back.

**The ledger.**  ``hub.ledger()`` is the account's `RedisLedger`: every submit of
every machine using the hub, and whose job is whose, so that a lost submit's job
is told from another machine's (``PixelByte(hub=hub)`` uses it by default).

**What is stored.**  Only what a delivery carried: the JSON payload, its
timestamp and its ``pb_attempt`` nonce; the lease ids of job slots; and the
ledger's records (attempt nonces, models, times, states, job ids, list prices,
and owners as ``host:pid:client``).  Never an API key or a webhook secret.  The URL's password is masked wherever the hub shows
its URL (``repr``, logs).

The hub belongs to the event loop it was started on, like a `PixelByte` client;
`RedisHub.publish_threadsafe` is the way in from another thread.

.. versionadded:: 0.3.0
"""

from __future__ import annotations

# The import of redis-py (and the error naming the extra when it is missing) is
# in ._hub._link, which every part of the hub imports.
from ._hub._hub import RedisHub as RedisHub
from ._hub._ledger import RedisLedger as RedisLedger
from ._hub._link import HubUnavailable as HubUnavailable
from ._hub._slots import RedisSlots as RedisSlots


__all__ = ["HubUnavailable", "RedisHub", "RedisLedger", "RedisSlots"]
