"""
Where a client's webhook deliveries come from, and the lifecycle of what feeds them.

`WebhookWiring` holds the client's choice (`PixelByte.use_webhooks`): a
`WebhookReceiver` mounted in the user's app, a `WebhookServer` the client may start,
or a hub shared by several processes; plus the hubs the client started itself (it
closes those, and only those).  It keeps the hub told which jobs the client tracks
(a hub sends a delivery only to the processes watching its job).  It answers the
questions the rest of the client asks:
which URL a submit sends (`public_url`), where a job waits for its delivery now
(`source`: ``None`` while a hub is unhealthy, so waits poll), when to wake a parked
wait (`outage`), and which attempt created which job (`attempts`).  It says loudly
when deliveries do not come (`undelivered`, rate-limited per cause) and checks the
set-up with a signed probe (`check`, and `ensure_checked` for ``check=True``).
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

import attrs

from ._clock import Clock, SystemClock
from ._errors import ValidationError
from ._inputs import validate_webhook_url
from ._receiver import WebhookReceiver
from ._signing import Secrets, signing_keys
from ._webhook_check import CAUSES, WebhookCheck, WebhookCheckError, send_probe
from ._webhook_server import WebhookServer


if TYPE_CHECKING:
    from ._handoff import WebhookObserver
    from ._reconcile import AttemptSource
    from ._sharing import Hub
    from ._signing import WebhookEvent


__all__ = ["WARN_EVERY", "WebhookWiring"]

log = logging.getLogger("pixelbyte_async")

#: Seconds between two WARNINGs of one cause of undelivered webhooks (per client).
WARN_EVERY = 600.0


class WebhookWiring:
    """A client's webhook source (receiver, server or hub) and the hubs it owns."""

    def __init__(
        self, observer: WebhookObserver, hub: Hub | None, clock: Clock | None = None
    ) -> None:
        self._observer = observer
        self._clock: Clock = clock or SystemClock()
        #: The hub of ``PixelByte(hub=...)`` (job slots), if any.
        self.hub = hub
        #: Where deliveries come from (``None``: the client polls).
        self.receiver: WebhookReceiver | Hub | None = None
        #: The hub feeding waits, when `use` was given one.
        self.webhook_hub: Hub | None = None
        self._url: str | None = None
        self._server: WebhookServer | None = None
        self._owns_server = False
        self._owned_hubs: list[Hub] = []
        # Jobs the client tracks, each watched on the hub feeding waits (one
        # `future_for` each, released when the job ends or the client closes).
        self._watched: set[str] = set()
        # cause -> (when its last WARNING was logged, how many were muted since).
        self._reported: dict[str, tuple[float, int]] = {}
        self._secret: Secrets | None = None
        self._pending_check: float | None = None
        self._check_lock = asyncio.Lock()

    def use(
        self,
        receiver: WebhookReceiver | WebhookServer | Hub,
        public_url: str | None,
        secret: Secrets | None = None,
    ) -> None:
        """See `PixelByte.use_webhooks`."""
        if secret is not None:
            signing_keys(secret)  # ValueError now for an empty one
        self._secret = secret
        if isinstance(receiver, WebhookServer):
            self._server = receiver
            self._owns_server = not receiver.running
            self.receiver = receiver.receiver
            self._url = public_url
        else:
            if public_url is None:
                what = type(receiver).__name__
                raise ValidationError(
                    f"public_url is required with a {what}", field="public_url"
                )
            self.receiver = receiver
            self._url = public_url
            if not isinstance(receiver, WebhookReceiver):
                self.webhook_hub = receiver
        if self._url is not None:
            validate_webhook_url(self._url)
        self.receiver.attach(self._observer)

    # -- lifecycle -----------------------------------------------------------------

    async def start(self) -> None:
        """Start the hubs in use that are not running (then they are ours to close)."""
        for hub in (self.hub, self.webhook_hub):
            if hub is not None and not hub.running and hub not in self._owned_hubs:
                self._owned_hubs.append(hub)
                await hub.start()

    async def close(self) -> None:
        """Stop observing; stop the server and the hubs the client started."""
        for job_id in list(self._watched):
            self.untrack(job_id)
        if self.receiver is not None:
            self.receiver.detach(self._observer)
        if self._server is not None and self._owns_server:
            await self._server.close()
        for hub in self._owned_hubs:
            await hub.aclose()

    # -- the jobs the client tracks (a `JobTracker`) ------------------------------------

    def track(self, job_id: str) -> None:
        """
        Watch *job_id* on the hub feeding waits, so its delivery comes here.

        Also with nobody waiting: the client frees the job's slot when it sees the
        delivery.  Without a running hub (or from another loop) nothing is
        watched; those jobs are then found by the slot sweep.
        """
        hub = self.webhook_hub
        if hub is None or not hub.running or job_id in self._watched:
            return
        try:
            hub.future_for(job_id)
        except RuntimeError:  # the hub runs on another event loop
            return
        self._watched.add(job_id)

    def untrack(self, job_id: str) -> None:
        """Stop watching *job_id* (a no-op for a job not watched)."""
        hub = self.webhook_hub
        if job_id in self._watched:
            self._watched.discard(job_id)
            if hub is not None:
                hub.release(job_id)

    # -- what the client asks --------------------------------------------------------

    async def public_url(self) -> str | None:
        """The URL a submit sends as ``webhookUrl`` (starting our server if need be)."""
        if self.receiver is None:
            return None
        if self._url is not None:
            return self._url
        server = self._server
        if server is None:
            return None
        if not server.running:
            await server.start()
        return server.public_url

    def source(self) -> WebhookReceiver | Hub | None:
        """Where a job waits for its delivery now (``None``: poll)."""
        hub = self.webhook_hub
        if hub is not None and not (hub.running and hub.healthy):
            return None  # deliveries may be missed: poll until the hub is back
        return self.receiver

    def outage(self) -> asyncio.Future[None] | None:
        """A future resolved when the hub feeding waits goes down."""
        hub = self.webhook_hub
        return None if hub is None or not hub.running else hub.outage()

    def event_for(self, job_id: str) -> WebhookEvent | None:
        """A delivery already seen for *job_id* (it may race the submit answer)."""
        return None if self.receiver is None else self.receiver.event_for(job_id)

    def undelivered(self, job_id: str, late: float) -> None:
        """
        A job ended *late* seconds ago and its delivery never reached this process.

        One WARNING per cause every `WARN_EVERY` seconds (the others DEBUG, counted
        in the next WARNING): what was expected, the public URL (never the secret),
        and what to check.  The causes: ``hub`` (a hub feeds waits: the receiver
        may publish elsewhere), ``rejected`` (the receiver here refused deliveries:
        a wrong secret?), ``unreached`` (nothing came).
        """
        hub = self.webhook_hub
        url = self._url or (
            self._server.public_url
            if self._server is not None and self._server.running
            else "?"
        )
        receiver = self.receiver
        rejected = (
            receiver.stats["rejected"] if isinstance(receiver, WebhookReceiver) else 0
        )
        if hub is not None:
            cause = "hub"
        elif rejected:
            cause = "rejected"
        else:
            cause = "unreached"
        level, more = self._rate(cause)
        tail = f" ({more} more such jobs since the last warning)" if more else ""
        if cause == "hub":
            prefix = getattr(hub, "key_prefix", "?")
            account = getattr(hub, "account", "?")
            log.log(
                level,
                "job %s ended %.0f s ago and no delivery reached this process "
                "through the Redis hub (key prefix %r, account %r): a receiver "
                "publishing to this hub was expected to get the API's POST to %s. "
                "Check that the webhook receiver publishes with the same "
                "--redis-prefix and --redis-account (RedisHub key_prefix, account), "
                "and that the API reaches that URL: %s. Waits meanwhile end at their "
                "safety GET (ETA + webhook_grace); await pb.check_webhooks() tests "
                "the set-up%s",
                job_id,
                late,
                prefix,
                account,
                url,
                CAUSES,
                tail,
            )
            return
        if cause == "rejected":
            log.log(
                level,
                "job %s ended %.0f s ago and its webhook delivery never arrived at %s "
                "in a form the receiver accepts: the receiver here rejected %d "
                "deliveries (see its 'rejected webhook delivery' warnings): is it "
                "set up with the account's webhook secret, and is the clock right? "
                "Waits meanwhile end at their safety GET (ETA + webhook_grace)%s",
                job_id,
                late,
                url,
                rejected,
                tail,
            )
            return
        log.log(
            level,
            "job %s ended %.0f s ago and its webhook delivery never arrived at %s "
            "(the API's signed POST was expected there; the wait ended at its "
            "safety GET, ETA + webhook_grace, instead). Likely causes: %s. "
            "await pb.check_webhooks() tests the set-up%s",
            job_id,
            late,
            url,
            CAUSES,
            tail,
        )

    def _rate(self, cause: str) -> tuple[int, int]:
        """The level of a report of *cause* now, and how many were muted before it."""
        now = self._clock.monotonic()
        last, muted = self._reported.get(cause, (None, 0))
        if last is not None and now - last < WARN_EVERY:
            self._reported[cause] = (last, muted + 1)
            return logging.DEBUG, 0
        self._reported[cause] = (now, 0)
        return logging.WARNING, muted

    # -- checking the set-up ---------------------------------------------------------

    def want_check(self, timeout: float) -> None:
        """Check the set-up (`check`) on the next `ensure_checked`; raise if it fails."""
        self._pending_check = timeout

    async def ensure_checked(self) -> None:
        """Run the check `want_check` asked for, once it passes; raise if it fails."""
        async with self._check_lock:
            timeout = self._pending_check
            if timeout is None:
                return
            result = await self.check(timeout)
            if not result.ok:
                raise WebhookCheckError(
                    f"the webhook set-up failed its check (nothing was submitted): "
                    f"{result.problem}",
                    check=result,
                )
            self._pending_check = None

    async def check(self, timeout: float) -> WebhookCheck:
        """Send a signed probe to the public URL: see `PixelByte.check_webhooks`."""
        receiver = self.receiver
        url = await self.public_url()
        if receiver is None or url is None:
            return WebhookCheck(
                ok=False,
                url=url or "",
                problem="webhooks are not set up: call use_webhooks() first",
            )
        local = receiver if isinstance(receiver, WebhookReceiver) else None
        if local is not None:
            keys = local._keys  # noqa: SLF001 -- the receiver's own secret
            now = local.clock.time()
        elif self._secret is not None:
            keys = signing_keys(self._secret)
            now = self._clock.time()
        else:
            return WebhookCheck(
                ok=False,
                url=url,
                problem="no webhook secret to sign the probe with: pass "
                "use_webhooks(hub, public_url=..., secret=...)",
            )
        hub = self.webhook_hub
        return await send_probe(
            url,
            keys,
            now=now,
            timeout=timeout,
            reached_here=None if local is None else local.saw_probe,
            hub_attempt=None if hub is None else hub.fetch_attempt,
        )

    def attempts(self) -> AttemptSource | None:
        """Attempt → job attribution; a hub's comes from every process's deliveries."""
        if self.webhook_hub is not None:
            return _HubAttempts(self.webhook_hub)
        return None if self.receiver is None else _ReceiverAttempts(self.receiver)


@attrs.frozen
class _ReceiverAttempts:
    """A `WebhookReceiver` seen as an `AttemptSource` (what it received)."""

    _receiver: WebhookReceiver | Hub

    async def job_for_attempt(self, attempt: str) -> str | None:
        return self._receiver.job_for_attempt(attempt)

    async def attempt_for(self, job_id: str) -> str | None:
        event = self._receiver.event_for(job_id)
        return None if event is None else event.attempt


@attrs.frozen
class _HubAttempts:
    """A hub seen as an `AttemptSource`: what any process received (its store)."""

    _hub: Hub

    async def job_for_attempt(self, attempt: str) -> str | None:
        return await self._hub.fetch_attempt(attempt)

    async def attempt_for(self, job_id: str) -> str | None:
        event = await self._hub.fetch_event(job_id)
        return None if event is None else event.attempt
