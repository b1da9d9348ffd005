# ruff: noqa: PLC0414 -- explicit `Name as Name` re-exports are the house style
"""
Webhooks: verify signed deliveries, receive them, and feed `Job.wait` with them.

The API signs each delivery it sends, in two headers::

    X-PixelByte-Timestamp: 1760000000
    X-PixelByte-Signature: sha256=<hex HMAC-SHA256(secret, f"{timestamp}.{raw body}")>

* `verify` checks a delivery from any framework: pass the **raw body bytes** exactly
  as received (never re-serialised JSON) and the headers.
* `WebhookReceiver` verifies, de-duplicates by job id (the API retries deliveries after
  1, 4, 16, 64 and 256 s), answers fast, and hands events to waiting jobs and your
  hooks.  Mount its aiohttp handler in your app (listening through a `GuardedSite`,
  which bounds slow and idle connections), or run a standalone `WebhookServer`.
* ``PixelByte(webhook=server)`` (or `PixelByte.use_webhooks`) adds the ``webhookUrl``
  to every submit, and `Job.wait` then awaits the delivery, with a slow safety poll in
  case a delivery is lost.

**Threads.**  `WebhookReceiver.handle` and `WebhookReceiver.dispatch` may be called
from any thread, e.g. a synchronous Django or Flask view in a worker thread while
``job.wait()`` is parked on your application's event loop.  Verification and
de-duplication happen at once in the calling thread (so the HTTP answer is
immediate); waiters, attached clients and coroutine hooks are then handed to the
event loop they belong to with ``loop.call_soon_threadsafe``.  Nothing else touches
a loop, a future or a `Job` from a foreign thread.

**Several processes.**  With ``hub=`` (a `pixelbyte_async.redis.RedisHub`), every
verified delivery is published through the hub and resolves the waits of every
process sharing it; the hub's answer decides the reply: 200 ``ok`` (new), 200
``duplicate`` (any process had it already), 503 ``hub_unavailable`` (Redis away: the
API retries).  From a coroutine, use `WebhookReceiver.handle_async`; `WebhookReceiver.handle` then
waits for the hub only in a thread with no event loop (a synchronous view).

**Attribution.**  `tag_webhook_url` adds a per-submit-attempt nonce (``pb_attempt``,
made by `new_attempt_id`) to the ``webhookUrl``; the API calls that URL back, so a
delivery tells which submit attempt created which job
(`WebhookReceiver.job_for_attempt`).  The signature covers the timestamp and the
body, **not the URL**: the nonce is attribution, not authentication.  Only verified
deliveries are counted, and the first delivery naming an attempt wins; a later one
naming it with another job id is logged and ignored.

**Checking the set-up.**  `PixelByte.check_webhooks` sends a signed probe
(``{"jobId": "probe_<nonce>", "status": "probe", "probe": true}``) to the public URL
and returns a `WebhookCheck`; receivers answer a probe 200 ``probe`` and dispatch
nothing.  ``use_webhooks(..., check=True)`` raises `WebhookCheckError` before the
first submit if it fails.

**Memory.**  Nothing is kept per finished job for long: a job's waiter state goes
with its last waiter; an event is forgotten *retention* seconds (30 min by default)
after its last delivery and an attribution after its first, with *max_events* as a
hard cap.

.. versionadded:: 0.1.0
"""

from __future__ import annotations

# The hmac module stays reachable as ``webhooks.hmac`` (a test spies on
# ``hmac.compare_digest`` through it).
import hmac as hmac

from . import _signing
from ._handoff import WebhookObserver as WebhookObserver
from ._receiver import WebhookReceiver as WebhookReceiver
from ._signing import SIGNATURE_HEADER as SIGNATURE_HEADER
from ._signing import TIMESTAMP_HEADER as TIMESTAMP_HEADER
from ._signing import WebhookEvent as WebhookEvent
from ._signing import new_attempt_id as new_attempt_id
from ._signing import sign as sign
from ._signing import signature_headers as signature_headers
from ._signing import tag_webhook_url as tag_webhook_url
from ._signing import verify as verify
from ._webhook_check import WebhookCheck as WebhookCheck
from ._webhook_check import WebhookCheckError as WebhookCheckError
from ._webhook_server import GuardedSite as GuardedSite
from ._webhook_server import WebhookServer as WebhookServer


# The documented constants are assigned, not imported: the reference reads their
# ``#:`` comments from this module's source.
#: Seconds a delivery's timestamp may differ from now, either way.
DEFAULT_TOLERANCE = _signing.DEFAULT_TOLERANCE
#: Largest body accepted (a job's payload is a few hundred bytes).
DEFAULT_MAX_BODY = _signing.DEFAULT_MAX_BODY
#: The ``webhookUrl`` query parameter that carries a submit attempt's nonce.
ATTEMPT_PARAM = _signing.ATTEMPT_PARAM


__all__ = [
    "ATTEMPT_PARAM",
    "DEFAULT_MAX_BODY",
    "DEFAULT_TOLERANCE",
    "SIGNATURE_HEADER",
    "TIMESTAMP_HEADER",
    "GuardedSite",
    "WebhookCheck",
    "WebhookCheckError",
    "WebhookEvent",
    "WebhookReceiver",
    "WebhookServer",
    "new_attempt_id",
    "sign",
    "signature_headers",
    "tag_webhook_url",
    "verify",
]
