"""
The Redis hub's parts (private): `pixelbyte_async.redis` is its public module.

Each module imports only those listed before it:

* ``_codec``: the wire format (events encoded, parsed, built), names, URL masking
  and the Lua scripts.
* ``_slot_lua``: the scripts of job slots (bound leases, orphans, epochs).
* ``_link``: `RedisLink`, the connection, subscription and health; the import of
  redis-py; `HubUnavailable`.
* ``_memory``: `EventMemory`, the events, attributions, waiters and observers of
  this process.
* ``_events``: `EventExchange`, publishing and reading events in Redis.
* ``_ledger``: `RedisLedger`, the ledger of every machine sharing the hub.
* ``_leases``: `HeldLeases`, the leases this process holds, renewed and released.
* ``_slots``: `RedisSlots` and a hub's `SlotGroups`.
* ``_hub``: `RedisHub`, composing the parts above.
"""
