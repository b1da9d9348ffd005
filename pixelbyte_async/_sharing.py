"""
What a hub shared by several processes offers: `Hub`, `SharedSlots`, `PublishingHub`.

`PixelByte(hub=...)` takes any object of this shape; `pixelbyte_async.redis.RedisHub`
is the one the package ships.  The client never imports it (Redis is an optional
extra): these Protocols are the whole seam.  A hub is two things at once:

* a webhook source shared by every process: deliveries received anywhere resolve
  the waits parked here (`Hub.future_for` ...), and tell which attempt created which
  job (`Hub.fetch_attempt`);
* account-wide job slots (`Hub.slots`), each held by its job until the job ends,
  even when the process that took it dies.

When the hub is not `healthy` (Redis away), waits poll and slots admit only what
their *fallback_limit* allows; `outage` wakes parked waits so they start polling
at once.

`WebhookReceiver(hub=...)` needs much less of a hub: `PublishingHub`, a way to
publish each delivery it verified, from its event loop or from another thread.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from typing import TYPE_CHECKING, Protocol


if TYPE_CHECKING:
    from ._handoff import WebhookObserver
    from ._signing import WebhookEvent


__all__ = ["Hub", "PublishingHub", "SharedSlots"]


class SharedSlots(Protocol):
    """Account-wide job slots: one lease per job in flight, in any process."""

    async def acquire(self, timeout: float | None = None) -> str:
        """Wait for a free slot; return its lease id."""
        ...

    def bind(self, lease: str, job_id: str) -> None:
        """Tie *lease* to the job its submit created."""
        ...

    def adopt(self, job_id: str) -> str:
        """Count a job found in flight (reconciled) against the limit."""
        ...

    def release_soon(self, lease: str) -> None:
        """Give back a lease whose submit created no job (in the background)."""
        ...

    def release_job(self, job_id: str) -> bool:
        """Give back the lease bound to *job_id*, if this process holds it."""
        ...


class Hub(Protocol):
    """A webhook source and job slots shared by the processes of one account."""

    @property
    def healthy(self) -> bool:
        """Whether events are flowing (else wait by polling)."""
        ...

    @property
    def running(self) -> bool:
        """Whether `start` has been called and `aclose` has not."""
        ...

    async def start(self) -> None:
        """Connect (idempotent); an unreachable store is an outage, not an error."""
        ...

    async def aclose(self) -> None:
        """Release this process's slots and disconnect (idempotent)."""
        ...

    def outage(self) -> asyncio.Future[None]:
        """A future resolved when the hub stops being healthy."""
        ...

    def future_for(self, job_id: str) -> asyncio.Future[WebhookEvent]:
        """A future resolved by *job_id*'s delivery, received by any process."""
        ...

    def release(self, job_id: str) -> None:
        """Stop waiting for *job_id* (one call per `future_for`)."""
        ...

    def event_for(self, job_id: str) -> WebhookEvent | None:
        """The delivery for *job_id* this process has seen, if it is kept."""
        ...

    def job_for_attempt(self, attempt: str) -> str | None:
        """The job a delivery seen here tagged with *attempt* named."""
        ...

    async def fetch_event(self, job_id: str) -> WebhookEvent | None:
        """*job_id*'s delivery from this process's memory, else from the store."""
        ...

    async def fetch_attempt(self, attempt: str) -> str | None:
        """The job the first delivery tagged with *attempt* named, from anywhere."""
        ...

    def attach(self, client: WebhookObserver) -> None:
        """Feed *client* every event that reaches this process (``_webhook_event``)."""
        ...

    def detach(self, client: WebhookObserver) -> None:
        """Stop feeding *client*."""
        ...

    def slots(self, limit: int) -> SharedSlots:
        """The account-wide job slots, *limit* across every process."""
        ...


class PublishingHub(Protocol):
    """
    What a `WebhookReceiver` needs of a hub: publishing the deliveries it verified.

    `publish` answers True for a delivery new everywhere and False for a duplicate,
    and raises a `ConnectionError` (``HubUnavailable``) when the hub cannot share
    it.  It runs on the hub's event loop; `publish_threadsafe` is the way in from
    any other thread, whose answer the receiver awaits for `connect_timeout`.
    """

    @property
    def running(self) -> bool:
        """Whether `start` has been called and `aclose` has not."""
        ...

    @property
    def connect_timeout(self) -> float:
        """Seconds a call to the store may take (how long a thread waits for one)."""
        ...

    async def publish(self, event: WebhookEvent) -> bool:
        """Share *event* with every process; True if it is new everywhere."""
        ...

    def publish_threadsafe(
        self, event: WebhookEvent
    ) -> concurrent.futures.Future[bool]:
        """Schedule `publish` on the hub's event loop from any thread."""
        ...
