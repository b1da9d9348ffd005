"""
`PixelByte`: the async client.

One request pipeline (build → send → unwrap envelope → map error → decode), one
aiohttp session per client, one deadline per call, and a limit on jobs in flight.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import random
import re
import types
import warnings
from collections.abc import (
    AsyncIterable,
    Awaitable,
    Callable,
    Collection,
    Iterable,
    Mapping,
)
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal, Self, cast

import aiohttp
import attrs

from ._catalog_calls import CatalogCalls
from ._clock import Clock, SystemClock
from ._config import ClientConfig, mask_key
from ._errors import (
    ClientClosedError,
    EventLoopMismatch,
    NotFound,
    ValidationError,
)
from ._files import Files
from ._inputs import (
    ModelInput,
)
from ._job import Job
from ._job_queries import JobQueries
from ._ledger import LedgerSpec, SubmitLedger, ledger_for
from ._links import JobLink, ReconcileLink, TrackedLink
from ._pipeline import RequestPipeline
from ._polling import PollPolicy
from ._receiver import WebhookReceiver
from ._reconcile import (
    DEFAULT_CLAIM_WINDOW,
    DEFAULT_SETTLE,
    Reconciler,
    new_owner,
)
from ._retry import (
    RetryPolicy,
)
from ._signing import Secrets, WebhookEvent, is_probe_id
from ._slots import JobSlots
from ._submitting import Submitter
from ._tracked import FinishedHandler, LostHandler, Tracker
from ._transport import AiohttpTransport, Transport
from ._webhook_check import WebhookCheck
from ._webhook_server import WebhookServer
from ._wiring import WebhookWiring


if TYPE_CHECKING:
    from ._batch import Batch, BatchInput
    from ._ledger import TrackedRecord, TrackingLedger
    from ._sharing import Hub


__all__ = ["PixelByte"]

log = logging.getLogger("pixelbyte_async")

_UNSET: Any = object()
_NO_PARAMS: Mapping[str, str] = types.MappingProxyType({})
_SAFE_ID = re.compile(r"[A-Za-z0-9_.\-]+")


# Seconds a webhook check may take (`PixelByte.check_webhooks`).
_CHECK_TIMEOUT = 10.0

_Mode = Literal["safe", "submit"]


def _hub_ledger(hub: object) -> Callable[[str], SubmitLedger] | None:
    """A hub's ledger by account id, if the hub keeps one (`RedisHub.ledger`)."""
    make = getattr(hub, "ledger", None)
    if not callable(make):
        return None
    return lambda account: cast("SubmitLedger", make(account=account))


class PixelByte(JobQueries, CatalogCalls):
    """
    The asyncio client for the PixelByte API.

    Use it as an async context manager (or call `aclose`)::

        async with PixelByte() as pb:
            job = await pb.submit(KlingO1StartEndFrame(...))
            done = await job.wait()

    Args:
        api_key: API key; default ``$PIXELBYTE_API_KEY``.  Never logged or shown.
        base_url: API base; default ``$PIXELBYTE_BASE_URL`` or https://api.muvi.video.
        timeout: Overall deadline of one API call in seconds, retries included.
        max_concurrent_jobs: Jobs in flight at once (default 10; ``None``: no limit).
        retry: Retry policy for safe calls (`RetryPolicy.disabled()` to opt out).
        poll: Default polling policy of `Job.wait`.
        config: A complete `ClientConfig` (the keyword arguments above override it).
        session: An `aiohttp.ClientSession` to borrow; it is never closed by us.
        transport: A custom transport (e.g. `MockTransport` in unit tests).
        clock: Time source (`SystemClock`); tests pass `FakePixelByte.clock`.
        rng: ``uniform(a, b)`` used for jitter; default `random.uniform`.
        webhook: A `WebhookServer`: every submit gets its ``public_url`` as
            ``webhookUrl`` and `Job.wait` awaits the delivery (see `use_webhooks`).
            The client starts the server if it is not running, and then stops it
            on `aclose`.
        settle: The settle horizon of `reconcile` in seconds (default 300): how
            long after an ambiguous submit began "no job found" is taken as proof
            that none was created.  Lower it only for a backend you know answers
            or gives up faster.
        claim_window: How long the client remembers the jobs it submitted,
            adopted or reconciled, for `reconcile` and `audit` (default one
            hour; at least twice the settle horizon plus two minutes);
            older ones are forgotten, so memory does not grow with the number of
            jobs a long-running process has run.
        hub: A hub shared by several processes (`pixelbyte_async.redis.RedisHub`):
            *max_concurrent_jobs* then counts the jobs in flight of every process
            sharing it, and ``use_webhooks(hub, public_url=...)`` feeds waits from
            deliveries received by any of them.  The client starts the hub if it
            is not running, and then closes it on `aclose`.  See "Deploying with
            several workers" in the docs.
        ledger: Where the submits of this account are recorded, so that a lost
            submit's job is never taken from another submitter (see "Sharing an
            account" in the docs): a file path (an SQLite file every process of
            the machine may share), ``None`` (this process's memory only), or a
            `SubmitLedger` to share between clients.  Default: the *hub*'s
            ledger (``hub.ledger()``: every machine using the hub sees it), else
            ``$PIXELBYTE_LEDGER`` (a path, or ``:memory:``), else one file per
            account in the user's state directory.  A ledger the client opened
            is closed by `aclose`.
        tracked_group: The name of this program's tracked jobs (``context=``)
            where several programs share a ledger (one API key on one machine, or
            one hub): `resume` and the ``on_finished`` handlers take only the
            tracked jobs of their group, so a bot never runs its handlers for a
            web app's jobs.  Default ``"default"``.

    A client belongs to the event loop it is first used on; create it inside the
    running loop (``async with PixelByte() as pb:`` in your ``main()``).

    .. versionadded:: 0.1.0

    """

    def __init__(
        self,
        *,
        api_key: str | None = None,
        base_url: str | None = None,
        timeout: float | None = None,
        max_concurrent_jobs: int | None = _UNSET,
        retry: RetryPolicy | None = None,
        poll: PollPolicy | None = None,
        config: ClientConfig | None = None,
        session: aiohttp.ClientSession | None = None,
        transport: Transport | None = None,
        clock: Clock | None = None,
        rng: Callable[[float, float], float] | None = None,
        webhook: WebhookServer | None = None,
        settle: float | None = None,
        claim_window: float | None = None,
        hub: Hub | None = None,
        ledger: LedgerSpec = _UNSET,
        tracked_group: str = "default",
    ) -> None:
        overrides: dict[str, Any] = {
            k: v
            for k, v in {
                "api_key": api_key,
                "base_url": base_url,
                "timeout": timeout,
                "retry": retry,
                "poll": poll,
            }.items()
            if v is not None
        }
        if max_concurrent_jobs is not _UNSET:
            overrides["max_concurrent_jobs"] = max_concurrent_jobs
        if config is None:
            config = ClientConfig.from_env(**overrides)
        else:
            config = attrs.evolve(config, **overrides)
        self.config = config
        self.clock: Clock = clock or SystemClock()
        self._uniform = rng or random.uniform
        self._transport: Transport = transport or AiohttpTransport(
            session=session, max_connections=config.max_connections
        )
        self._owns_transport = transport is None
        self._state: Literal["open", "closed"] = "open"
        self._pipeline = RequestPipeline(
            config, self.clock, self._transport, self._uniform, self._check_open
        )
        self._files = Files(self._pipeline)
        self._decoded_bodies = collections.OrderedDict()
        limit = config.max_concurrent_jobs
        self._wiring = WebhookWiring(self, hub, self.clock)
        self._slots = JobSlots(
            limit,
            None if hub is None or limit is None else hub.slots(limit),
            tracker=self._wiring,
        )
        self._job_link = JobLink(
            self.clock,
            config,
            self._wiring,
            self._uniform,
            self._pipeline,
            self._files,
            self._slots,
        )
        self._ledger, self._owns_ledger = ledger_for(
            ledger,
            api_key=config.api_key,
            default=ledger is _UNSET,
            memory_retention=max(claim_window or 0.0, DEFAULT_CLAIM_WINDOW),
            shared=_hub_ledger(hub),
        )
        self._reconciler = Reconciler(
            ReconcileLink(self.clock, self._wiring, self.get_job, self.list_jobs),
            self._slots,
            settle=DEFAULT_SETTLE if settle is None else settle,
            retention=claim_window,
            ledger=self._ledger,
            owner=new_owner(),
            offset=self._pipeline.server_offset,
        )
        if not isinstance(tracked_group, str) or not tracked_group.strip():
            raise ValidationError(
                "tracked_group must be a non-empty name", field="tracked_group"
            )
        self._tracker = Tracker(
            cast("TrackingLedger", self._ledger),
            owner=self._reconciler.owner,
            group=tracked_group,
        )
        self._tracker.bind(
            TrackedLink(self.clock, self.get_job, self.reconcile, self._ledger)
        )
        self._submitter = Submitter(
            self.clock,
            config,
            self._pipeline,
            self._files,
            self._slots,
            self._reconciler,
            self._wiring,
            self._job_link,
            self._tracker,
        )
        self._loop: asyncio.AbstractEventLoop | None = None
        # A hub's slots of a process that died stay taken while their jobs run:
        # this client asks the API about them (one GET each, now and then).
        use_checker = getattr(self._slots.shared, "use_checker", None)
        if callable(use_checker):
            use_checker(self._job_ended)
        if webhook is not None:
            self.use_webhooks(webhook)

    async def _job_ended(self, job_id: str) -> bool:
        """Whether the API says *job_id* has ended (a job it does not know has)."""
        try:
            job = await self.get_job(job_id)
        except NotFound:
            return True
        return job.status.is_terminal

    # -- lifecycle -----------------------------------------------------------------

    async def __aenter__(self) -> Self:
        self._check_open()
        await self._wiring.start()
        await self._wiring.ensure_checked()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the client and its session (a borrowed session stays open).  Idempotent."""
        if self._state == "closed":
            return
        self._state = "closed"
        # Tracked jobs first: their leases go back while the ledger is open.
        await self._tracker.aclose()
        await self._wiring.close()
        if self._owns_ledger:
            await self._ledger.aclose()
        # A user-supplied transport is theirs to close; we only stop using it.
        if self._owns_transport:
            await self._transport.aclose()

    @property
    def settle(self) -> float:
        """
        The settle horizon of `reconcile` in seconds (see *settle*).

        .. versionadded:: 0.3.0
        """
        return self._reconciler.settle

    @property
    def ledger(self) -> SubmitLedger:
        """
        Where this client records its submits and whose job is whose (see *ledger*).

        .. versionadded:: 0.3.0
        """
        return self._ledger

    @property
    def closed(self) -> bool:
        """Whether `aclose` was called."""
        return self._state == "closed"

    def _check_open(self) -> None:
        if self._state == "closed":
            raise ClientClosedError(
                "this PixelByte client is closed; create a new one "
                "(use 'async with PixelByte() as pb:')"
            )
        loop = asyncio.get_running_loop()
        if loop is not self._loop:
            if self._loop is not None:
                raise EventLoopMismatch(
                    "this PixelByte client was first used on another event loop "
                    "(a second asyncio.run()?); create the client inside the running "
                    "loop, e.g. 'async with PixelByte() as pb:' in your main()"
                )
            self._loop = loop

    def __del__(self, _warn: Callable[..., None] = warnings.warn) -> None:
        # Warn only: scheduling I/O from __del__ is what causes "Event loop is closed".
        if getattr(self, "_state", "closed") == "open" and getattr(
            self, "_owns_transport", False
        ):
            transport = getattr(self, "_transport", None)
            if (
                isinstance(transport, AiohttpTransport)
                and transport._session is not None  # noqa: SLF001 -- own transport
            ):
                _warn(
                    f"unclosed {self!r}; use 'async with PixelByte()' or 'await pb.aclose()'",
                    ResourceWarning,
                    stacklevel=2,
                )

    def __repr__(self) -> str:
        return (
            f"PixelByte(base_url={self.config.base_url!r}, "
            f"api_key={mask_key(self.config.api_key)!r}, state={self._state!r})"
        )

    # -- webhooks ------------------------------------------------------------------------

    def use_webhooks(
        self,
        receiver: WebhookReceiver | WebhookServer | Hub,
        *,
        public_url: str | None = None,
        check: bool = False,
        secret: Secrets | None = None,
    ) -> None:
        """
        Feed `Job.wait` from webhook deliveries instead of polling.

        Every later `submit` without an explicit *webhook_url* sends *public_url*
        (a `WebhookServer`'s own ``public_url`` by default), and waits for such jobs
        resolve when the delivery arrives, with one safety GET after
        ``PollPolicy.webhook_grace`` past the ETA in case the delivery is lost.
        Deliveries for this client's jobs also free their job slots at once.
        When a wait ends at its safety GET because no delivery came, the client
        logs a WARNING saying what to check (once per cause every 10 minutes).

        With a hub (`pixelbyte_async.redis.RedisHub`), deliveries are received by
        any process (a `WebhookReceiver` with ``hub=``, or ``pixelbyte-async
        webhook listen --redis``) and reach this one through the hub; while the hub
        is unhealthy, waits poll.

        Args:
            receiver: A `WebhookReceiver` mounted in your app, a `WebhookServer`
                (started by the client when needed, and then stopped on `aclose`),
                or a hub shared by several processes.
            public_url: The https URL the API should call; required with a bare
                receiver or a hub.
            check: Run `check_webhooks` before the first submit (or `resume`, or
                ``async with``, whichever comes first) and raise
                `WebhookCheckError` if the probe does not arrive: no job is
                paid for with a broken set-up.
            secret: The webhook secret to sign probes with, needed with a hub
                only (a receiver or server signs with its own).

        .. versionchanged:: 0.5.0 *check*, *secret*.

        """
        self._wiring.use(receiver, public_url, secret)
        if check:
            self._wiring.want_check(_CHECK_TIMEOUT)

    async def check_webhooks(self, timeout: float = _CHECK_TIMEOUT) -> WebhookCheck:
        """
        Send a signed probe delivery to the webhook URL; say whether it arrived.

        The probe is what the API would send (the same headers, signed with the
        webhook secret), with the body ``{"jobId": "probe_<nonce>", "status":
        "probe", "probe": true}``; receivers answer it 200 ``probe`` and
        dispatch nothing.  It reveals, before the first paid job, a URL that
        answers 404 (a wrong path or trailing slash, a reverse proxy's prefix),
        a TLS or connection failure, a redirect, a wrong secret, or a receiver
        in another process without the hub.  The probe is sent from this
        machine, not the API's: a URL only reachable from inside your network
        passes here and may still fail for the API.

        Args:
            timeout: Seconds the whole check may take.

        Returns:
            A `WebhookCheck`: ``ok``, the ``url``, the HTTP ``status`` seen,
            whether the probe ``reached`` this process's receiver (or its hub),
            and the ``problem`` in words.  It never raises for a failed check.

        .. versionadded:: 0.5.0

        """
        self._check_open()
        await self._wiring.start()
        return await self._wiring.check(timeout)

    def _webhook_event(self, event: WebhookEvent) -> bool:
        """Observe a delivery for one of our jobs; return whether we know the job."""
        if is_probe_id(event.job_id):
            return True  # a set-up check's probe (through a hub): no job
        job = self._slots.jobs.get(event.job_id)
        if job is not None:
            job._observe(event.job, from_webhook=True)  # noqa: SLF001 -- same package
        return self._reconciler.claimed(event.job_id)

    def _knows_job(self, job_id: str) -> bool:
        return self._reconciler.claimed(job_id)

    # -- jobs --------------------------------------------------------------------------

    async def submit(
        self,
        model: str | ModelInput,
        input: Mapping[str, Any] | None = None,  # noqa: A002 -- the API's field name
        *,
        webhook_url: str | None = None,
        version: str | None = None,
        timeout: float | None = None,
        attempt: str | None = None,
        context: Any = None,
        on_sending: Callable[[float], Awaitable[object]] | None = None,
    ) -> Job:
        """
        Submit a job and return its `Job` handle (the job is charged now).

        *model* is a typed input such as `KlingO1StartEndFrame` (local frames are
        uploaded first) or a model slug with a raw *input* mapping (the escape hatch
        for any model).  The submit waits for a slot when ``max_concurrent_jobs`` jobs
        are in flight and waits out 429 ``CONCURRENT_JOBS_EXCEEDED``.

        It is never re-sent when its fate is unknown: a read timeout, a dropped
        connection or a 5xx raise `AmbiguousSubmitError`; see `reconcile`.

        With webhooks in use (`use_webhooks`), the ``webhookUrl`` of every attempt
        carries a nonce (``?pb_attempt=...``), so the delivery proves which attempt
        created which job.

        Args:
            model: A typed input, or a model slug.
            input: The raw ``input`` object (only with a slug).
            webhook_url: https URL to notify when the job ends.
            version: Model version (default: latest stable).
            timeout: One deadline in seconds for the whole call, uploads of local
                frames included (default ``config.submit_timeout``); time spent
                waiting for a job slot is not counted.
            attempt: The nonce tagging this attempt's ``webhookUrl`` when webhooks
                are in use (default: a fresh one).  Pass your own to journal it
                before sending, as the batch runner does.
            context: Makes the job **tracked**: anything JSON-serialisable (at most
                64 KiB as JSON; a chat id, a user id), recorded in the ledger before
                the submit is sent and given back as ``job.context``.  The
                `on_finished` handlers run for it when it ends, in this process or,
                after a restart, in the one that calls `resume`.
            on_sending: An async function of one float, awaited once a job slot
                is taken, right before the request goes out, with the attempt's
                start (Unix time, the client's clock): record the attempt in
                your own store there (a settle horizon counts from that start),
                as `run_batch` journals its rows.  If it raises, nothing is sent.

        Raises:
            ValidationError: Bad input (or a context that is not JSON); nothing
                was sent.
            AmbiguousSubmitError: The job may exist; nothing was re-sent.
            InsufficientBalance, InvalidRequestError, NotFound, ...: As the API says.

        """
        self._check_open()
        await self._wiring.start()
        await self._wiring.ensure_checked()
        return await self._submitter.submit(
            model,
            input,
            webhook_url=webhook_url,
            version=version,
            timeout=timeout,
            attempt=attempt,
            context=context,
            on_sending=on_sending,
        )

    # -- tracked jobs ------------------------------------------------------------------

    def on_finished(self, handler: FinishedHandler) -> FinishedHandler:
        """
        Run *handler* (an async function of one `Job`) when a tracked job ends.

        A tracked job is one submitted with ``context=``.  Handlers run in the
        order registered, once the job has completed, failed or been cancelled
        (look at ``job.status``); when they all return, the job is handled and
        leaves the ledger after its retention (a day).  A handler that raises is logged
        and run again with back-off (2 s doubling to 5 minutes), and the job is
        parked after 5 failures (`failed_handlers`).  A process that dies midway
        leaves the job to the next one that calls `resume`: handlers run **at
        least once** per job, and exactly once when they finish; use ``job.id`` as
        the idempotency key of what they do.  Usable as a decorator.

        .. versionadded:: 0.4.0
        """
        return self._tracker.on_finished(handler)

    def on_lost(self, handler: LostHandler) -> LostHandler:
        """
        Run *handler* (async, of one `LostSubmit`) for a tracked submit with no job.

        A tracked submit whose answer was lost (`AmbiguousSubmitError`), or whose
        process died while sending it, is settled by reconcile: when no job of
        the account can be its once its settle horizon has passed, nothing runs
        and nothing is charged, and these handlers are told, with its
        ``context``, so that a bot can tell its user or submit again.  Like
        `on_finished`: in order, retried with back-off, parked after 5 failures,
        at least once (in this process, or after a restart in the one that calls
        `resume`).  Without one, such a submit is only logged.  Usable as a
        decorator.

        .. versionadded:: 0.5.0
        """
        return self._tracker.on_lost(handler)

    async def resume(self) -> list[Job]:
        """
        Take over the tracked jobs of this ledger that no live process watches.

        Each one is watched again (webhook-fed where webhooks are set up, else
        polled) and handled when it ends; one whose submit's fate was unknown
        when its process died is reconciled first (the settle horizon).  From
        then on, jobs whose process stops renewing its lease (60 s) are taken over
        too.  Call it once at start-up, after registering `on_finished`.

        Returns:
            The jobs re-attached whose id is known (running or already ended),
            each with its ``context``.

        .. versionadded:: 0.4.0
        """
        self._check_open()
        await self._wiring.start()
        await self._wiring.ensure_checked()
        # Our receiver listens before the jobs are re-attached: their deliveries
        # come to it (a server starts on the first submit otherwise).
        await self._wiring.public_url()
        return await self._tracker.resume()

    async def tracked_jobs(
        self, states: Collection[str] = ("active",)
    ) -> list[TrackedRecord]:
        """
        This group's tracked jobs in *states* (default: those still to handle).

        States: ``active`` (running, or ended and not handled yet), ``handled``,
        ``parked`` (its handlers kept failing) and ``none`` (its submit made no job).

        For a status page, a drain before shutting down (wait until it is empty),
        or a test.  ``("handled",)`` lists those handled within the claim window.

        .. versionadded:: 0.4.0
        """
        return await self._tracker.records(states)

    async def failed_handlers(self) -> list[TrackedRecord]:
        """
        The tracked jobs whose handlers kept failing (parked), for a person to look at.

        .. versionadded:: 0.4.0
        """
        return await self._tracker.failed()

    async def run(
        self,
        model: str | ModelInput,
        input: Mapping[str, Any] | None = None,  # noqa: A002 -- the API's field name
        *,
        timeout: float | None = None,
        webhook_url: str | None = None,
    ) -> Job:
        """
        Submit and wait: the one-liner for ``asyncio.gather`` over many inputs.

        *timeout* bounds the wait (the submit has its own deadline).
        """
        job = await self.submit(model, input, webhook_url=webhook_url)
        return await job.wait(timeout)

    def run_batch(
        self,
        inputs: Iterable[BatchInput] | AsyncIterable[BatchInput],
        **options: Any,
    ) -> Batch:
        """
        Run many inputs under this client's job limit: see `pixelbyte_async.run_batch`.

        Options: *journal*, *out_dir*, *max_cost_micro_cents*, *dry_run*,
        *retry_failed*, *wait_timeout*, *settle*, *fit*, *rerun_changed*,
        *source*, *reuse_journal*, *assume_list_prices*, *report*.
        """
        from ._batch import run_batch  # noqa: PLC0415 -- batches load on first use

        return run_batch(self, inputs, **options)

    @property
    def jobs_in_flight(self) -> int:
        """How many of this client's job slots are taken."""
        return self._slots.used
