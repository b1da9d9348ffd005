"""
The hub's wire format: events as Redis carries them, names, URLs and Lua scripts.

A message (and a stored event) is one kind byte and a JSON document; this module
encodes a verified `WebhookEvent` to it, parses it back without decoding (cheap,
for events nobody here waits for) and builds the `WebhookEvent` when asked.  It
also checks key prefixes and names, masks a URL's password, and holds the Lua
scripts that publish events and admit, renew and release job slot leases, so that
every Redis call is one atomic script.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import attrs

from pixelbyte_async._errors import ResponseDecodeError
from pixelbyte_async._models import JobStatus
from pixelbyte_async._signing import _ATTEMPT_RE, SignedDelivery, WebhookEvent


__all__ = [
    "ACQUIRE_LUA",
    "ATTEMPT_RE",
    "CONFLICT",
    "EVENT",
    "IN_USE_LUA",
    "LEAVE_LUA",
    "PUBLISH_LUA",
    "RELEASED",
    "RELEASE_LUA",
    "RENEW_LUA",
    "WATCH_LUA",
    "RawEvent",
    "build_event",
    "check_name",
    "encode_event",
    "mask_url",
    "ms",
    "parse_event",
    "parse_released",
    "turn_args",
]

_NAME_RE = re.compile(r"[A-Za-z0-9_.:-]{1,64}")
#: A ``pb_attempt`` nonce, as `pixelbyte_async.webhooks.verify` accepts one.
ATTEMPT_RE = _ATTEMPT_RE

# A message (and a stored event) is one kind byte and a JSON document:
#   e{"job":..,"ts":..,"attempt":..,"payload":{..}}  event, attempt attributed to it
#   c{...}                                          event, attempt names another job
#   r<slot group name>\n<waiter>,<waiter>          their turn for a job slot came
EVENT = b"e"
CONFLICT = b"c"
RELEASED = b"r"

# KEYS: event key, watchers key [, attempt key]
# ARGV: message JSON, ttl s, job id, inbox channel prefix, terminal ("1"/"0")
# A new terminal event is stored, then sent to the inbox of each process that
# watches its job (their ids in the watchers set, which it ends): a process that
# waits for nothing of this job is not woken.
PUBLISH_LUA = """
local kind = 'e'
local owner = false
if #KEYS > 2 then
  if not redis.call('SET', KEYS[3], ARGV[3], 'NX', 'EX', ARGV[2]) then
    owner = redis.call('GET', KEYS[3])
    if owner == ARGV[3] then owner = false else kind = 'c' end
  end
end
if ARGV[5] ~= '1' then return {1, owner} end
local value = kind .. ARGV[1]
if not redis.call('SET', KEYS[1], value, 'NX', 'EX', ARGV[2]) then
  return {0, owner}
end
for _, who in ipairs(redis.call('SMEMBERS', KEYS[2])) do
  redis.call('PUBLISH', ARGV[4] .. who, value)
end
redis.call('DEL', KEYS[2])
return {1, owner}
"""

# KEYS: event key, watchers key, event key, watchers key, ...
# ARGV: this process's id, ttl s
# Watches each job (its next event comes to this process's inbox) and returns
# what is stored for it, in one atomic step: an event published before is
# returned, one published after is sent.  No gap either way.
WATCH_LUA = """
local stored = {}
for i = 1, #KEYS, 2 do
  redis.call('SADD', KEYS[i + 1], ARGV[1])
  redis.call('EXPIRE', KEYS[i + 1], ARGV[2])
  stored[#stored + 1] = redis.call('GET', KEYS[i])
end
return stored
"""

# Server time in ms, so that the hosts' clocks never matter.
_NOW_LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
"""

# `free` drops the expired leases and counts the free slots; `purge` drops the
# queue's expired waiters (their processes stopped asking); `tell` tells the
# waiters now first in line, as many as there are free slots, that their turn has
# come: one message to the inbox of each of their processes, naming them
# ("r<group>\n<waiter>,<waiter>").  Waiter ids start with their process's id.
_TELL_LUA = """
local function free(leases, limit, now)
  redis.call('ZREMRANGEBYSCORE', leases, '-inf', now)
  return tonumber(limit) - redis.call('ZCARD', leases)
end
local function purge(queue, expiry, now)
  for _, waiter in ipairs(redis.call('ZRANGEBYSCORE', expiry, '-inf', now)) do
    redis.call('ZREM', queue, waiter)
    redis.call('ZREM', expiry, waiter)
  end
end
local function tell(queue, free, inbox, message, except)
  if free <= 0 then return end
  local order, names = {}, {}
  for _, waiter in ipairs(redis.call('ZRANGE', queue, 0, free - 1)) do
    local process = string.match(waiter, '^([^:]+):')
    if process and waiter ~= except then
      if not names[process] then
        names[process] = {}
        order[#order + 1] = process
      end
      table.insert(names[process], waiter)
    end
  end
  for _, process in ipairs(order) do
    redis.call('PUBLISH', inbox .. process,
      message .. '\\n' .. table.concat(names[process], ','))
  end
end
"""

# KEYS: leases, queue (score: arrival), queue expiry (score: ms), sequence
# ARGV: limit, lease ms, waiter id, lease id, queue ttl ms, inbox prefix, message
# Returns {granted, rank in the queue, leases in use, place in the queue (its
# arrival number: the queue's order, stable while others come and go)}.  A slot
# found free by expiry, or still free after this admission, is told to the
# waiters whose turn it is.
ACQUIRE_LUA = (
    _NOW_LUA
    + _TELL_LUA
    + """
local expired = redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
purge(KEYS[2], KEYS[3], now)
local seq = redis.call('ZSCORE', KEYS[2], ARGV[3])
if not seq then
  seq = redis.call('INCR', KEYS[4])
  redis.call('ZADD', KEYS[2], seq, ARGV[3])
end
local keep = math.max(tonumber(ARGV[2]), tonumber(ARGV[5])) * 2
redis.call('ZADD', KEYS[3], now + tonumber(ARGV[5]), ARGV[3])
local used = redis.call('ZCARD', KEYS[1])
local rank = redis.call('ZRANK', KEYS[2], ARGV[3])
local granted = 0
if rank < tonumber(ARGV[1]) - used then
  redis.call('ZREM', KEYS[2], ARGV[3])
  redis.call('ZREM', KEYS[3], ARGV[3])
  redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[4])
  used = used + 1
  granted = 1
end
if granted == 1 or expired > 0 then
  tell(KEYS[2], tonumber(ARGV[1]) - used, ARGV[6], ARGV[7], ARGV[3])
end
for i = 1, 4 do redis.call('PEXPIRE', KEYS[i], keep) end
return {granted, rank, used, tonumber(seq)}
"""
)

# KEYS: leases, processes   ARGV: lease ms, process id, lease ids...
# (Re-)registers every lease this process holds, so leases admitted while Redis
# was away, or lost to a long outage, count again.  Returns {re-added, processes}.
RENEW_LUA = (
    _NOW_LUA
    + """
local expiry = now + tonumber(ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
local added = 0
for i = 3, #ARGV do
  added = added + redis.call('ZADD', KEYS[1], expiry, ARGV[i])
end
redis.call('ZADD', KEYS[2], expiry, ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
local keep = tonumber(ARGV[1]) * 2
redis.call('PEXPIRE', KEYS[1], keep)
redis.call('PEXPIRE', KEYS[2], keep)
return {added, redis.call('ZCARD', KEYS[2])}
"""
)

# KEYS: leases, queue, queue expiry   ARGV: inbox prefix, message, limit, lease ids...
# Tells the waiters whose turn it is now (none when nobody is queued: a waiter
# whose attempt comes after this script sees the free slot itself).
RELEASE_LUA = (
    _NOW_LUA
    + _TELL_LUA
    + """
local removed = 0
for i = 4, #ARGV do
  removed = removed + redis.call('ZREM', KEYS[1], ARGV[i])
end
if removed > 0 and redis.call('EXISTS', KEYS[2]) == 1 then
  purge(KEYS[2], KEYS[3], now)
  tell(KEYS[2], free(KEYS[1], ARGV[3], now), ARGV[1], ARGV[2], false)
end
return removed
"""
)

# KEYS: queue, queue expiry, leases   ARGV: waiter id, inbox prefix, message, limit
# A waiter that gives up may have held a turn: it passes to those behind it.
LEAVE_LUA = (
    _NOW_LUA
    + _TELL_LUA
    + """
local queued = redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('ZREM', KEYS[2], ARGV[1])
if queued > 0 then
  tell(KEYS[1], free(KEYS[3], ARGV[4], now), ARGV[2], ARGV[3], false)
end
return queued
"""
)

# KEYS: leases   Returns the leases not yet expired.
IN_USE_LUA = _NOW_LUA + "return redis.call('ZCOUNT', KEYS[1], now, '+inf')\n"


def mask_url(url: str) -> str:
    """Return *url* with its password (netloc or ``?password=``) masked."""
    try:
        parts = urlsplit(url)
        netloc = parts.netloc
        if "@" in netloc:
            userinfo, _, hostport = netloc.rpartition("@")
            user, colon, _password = userinfo.partition(":")
            netloc = f"{user}:***@{hostport}" if colon else f"{user}@{hostport}"
        query = parts.query
        if query:
            pairs = parse_qsl(query, keep_blank_values=True)
            query = urlencode(
                [(k, "***" if k.lower() == "password" else v) for k, v in pairs],
                safe="*",
            )
        return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))
    except ValueError:
        return "<redis url>"


def encode_event(event: WebhookEvent) -> bytes:
    """The hub's JSON form of *event*: only what the delivery carried."""
    try:
        return json.dumps(
            {
                "job": event.job_id,
                "ts": event.timestamp,
                "attempt": event.attempt,
                "payload": dict(event.payload),
            },
            separators=(",", ":"),
            ensure_ascii=False,
        ).encode()
    except (TypeError, ValueError) as exc:
        raise ValueError(f"the payload of {event.job_id} is not JSON") from exc


@attrs.frozen
class RawEvent:
    """An event as Redis carries it, parsed but not decoded (that costs ~20 µs)."""

    job_id: str
    timestamp: int
    attempt: str | None
    payload: dict[str, Any]


def parse_event(raw: bytes) -> RawEvent | None:
    """Parse `encode_event`'s form; None if it is not one."""
    try:
        obj = json.loads(raw)
        job_id = obj["job"]
        timestamp = int(obj["ts"])
        attempt = obj.get("attempt")
        payload = obj["payload"]
    except (ValueError, KeyError, TypeError, AttributeError):
        return None
    if not isinstance(job_id, str) or not isinstance(payload, dict):
        return None
    if not isinstance(attempt, str) or not ATTEMPT_RE.fullmatch(attempt):
        attempt = None
    return RawEvent(
        job_id=job_id, timestamp=timestamp, attempt=attempt, payload=payload
    )


def build_event(raw: RawEvent) -> WebhookEvent | None:
    """Decode the payload as `verify` does; None unless a terminal event of its job."""
    delivery = SignedDelivery(
        raw.job_id,
        JobStatus.UNKNOWN,  # read from the payload by `event`
        raw.timestamp,
        raw.payload,
        attempt=raw.attempt,
        raw=None,
    )
    try:
        event = delivery.event()
    except (ResponseDecodeError, ValueError, TypeError):
        return None
    if event.job_id != raw.job_id or not event.status.is_terminal:
        return None
    return event


def check_name(what: str, value: str) -> str:
    """Return *value*, a key prefix, account or slot group name, if it is valid."""
    if not isinstance(value, str) or not _NAME_RE.fullmatch(value):
        raise ValueError(f"{what} must be 1-64 characters of [A-Za-z0-9_.:-]")
    return value


def ms(seconds: float) -> int:
    """Return *seconds* in whole milliseconds, at least 1."""
    return max(1, math.ceil(seconds * 1000))


def turn_args(inbox_prefix: str, group: str) -> list[str]:
    """
    The script arguments that say where to tell waiters of *group* their turn came.

    The inboxes' prefix, and the start of the message (see `parse_released`).
    """
    return [inbox_prefix, RELEASED.decode() + group]


def parse_released(body: bytes) -> tuple[str, list[str]]:
    """Return the slot group and the waiters named by a turn message (kind byte off)."""
    group, _, names = body.decode("utf-8", "replace").partition("\n")
    return group, [n for n in names.split(",") if n]
