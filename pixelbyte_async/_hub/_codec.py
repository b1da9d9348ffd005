"""
The hub's wire format: events as Redis carries them, names, URLs and Lua scripts.

A message (and a stored event) is one kind byte and a JSON document; this module
encodes a verified `WebhookEvent` to it, parses it back without decoding (cheap,
for events nobody here waits for) and builds the `WebhookEvent` when asked.  It
also checks key prefixes and names, masks a URL's password, and holds the Lua
scripts that publish and watch events, so that every Redis call is one atomic
script (those of job slots are in ``_slot_lua``).
"""

from __future__ import annotations

import json
import math
import re
from typing import Any
from urllib.parse import parse_qsl, urlencode

import attrs

from pixelbyte_async._errors import ResponseDecodeError
from pixelbyte_async._models import JobStatus
from pixelbyte_async._signing import _ATTEMPT_RE, SignedDelivery, WebhookEvent


__all__ = [
    "ATTEMPT_RE",
    "CONFLICT",
    "EVENT",
    "PUBLISH_LUA",
    "RELEASED",
    "WATCH_LUA",
    "RawEvent",
    "build_event",
    "check_name",
    "encode_event",
    "mask_url",
    "ms",
    "parse_event",
    "parse_released",
    "text",
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


def mask_url(url: str) -> str:
    """
    Return *url* with its password (in the user part, or ``?password=``) masked.

    Read by its structure, not by a pattern, and from the right: the user part is
    everything up to the last ``@``, so a password holding ``#``, ``?``, ``/`` or
    ``@`` is masked whole (what follows an ``@`` in a query is masked with it:
    more than needed, never less).
    """
    scheme, sep, rest = url.partition("://")
    if not sep:
        return "<redis url>"
    userinfo, at, place = rest.rpartition("@")
    if at:
        user, colon, _password = userinfo.partition(":")
        rest = f"{user}{':***' if colon else ''}@{place}"
    head, question, query = rest.partition("?")
    if question:
        query, hash_, fragment = query.partition("#")
        try:
            pairs = parse_qsl(query, keep_blank_values=True, strict_parsing=True)
        except ValueError:
            query = "***"
        else:
            query = urlencode(
                [(k, "***" if k.lower() == "password" else v) for k, v in pairs],
                safe="*/",
            )
        rest = f"{head}?{query}{hash_}{fragment}"
    return f"{scheme}://{rest}"


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
    except (ValueError, KeyError, TypeError, AttributeError, RecursionError):
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


def text(value: bytes | str) -> str:
    """*value* as Redis answered it (bytes: the hub's clients never decode), as text."""
    return value.decode() if isinstance(value, bytes) else value


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
