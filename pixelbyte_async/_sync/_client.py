"""
`SyncPixelByte`: the SDK for synchronous code, a facade over `PixelByte`.

Not a second implementation: each method runs the async client's method of the same
name on the client's own event loop thread (`SyncRuntime`) and blocks until it is
done.  Jobs come back as `SyncJob` handles, async iterators as lists or iterators.
"""

from __future__ import annotations

import contextlib
import inspect
import os
import weakref
from collections.abc import (
    AsyncIterator,
    Awaitable,
    Callable,
    Collection,
    Iterable,
    Mapping,
)
from datetime import datetime
from types import TracebackType
from typing import IO, TYPE_CHECKING, Any, Literal, Self, TypeVar

import aiohttp
import anyio.to_thread

from pixelbyte_async._audit_report import AuditReport
from pixelbyte_async._client import PixelByte
from pixelbyte_async._clock import Clock
from pixelbyte_async._config import ClientConfig
from pixelbyte_async._errors import AmbiguousSubmitError
from pixelbyte_async._inputs import ModelInput
from pixelbyte_async._job import Job
from pixelbyte_async._ledger import LedgerSpec, TrackedRecord
from pixelbyte_async._models import CatalogModel, Estimate, JobStatus, Upload
from pixelbyte_async._polling import PollPolicy
from pixelbyte_async._receiver import WebhookReceiver
from pixelbyte_async._reconcile import DEFAULT_CLOCK_SKEW
from pixelbyte_async._retry import RetryPolicy
from pixelbyte_async._signing import Secrets
from pixelbyte_async._tracked import LostSubmit
from pixelbyte_async._transport import Transport
from pixelbyte_async._webhook_check import WebhookCheck
from pixelbyte_async._webhook_server import WebhookServer

from ._job import SyncJob
from ._runtime import SyncRuntime, refuse_in_loop


if TYPE_CHECKING:
    from pixelbyte_async._sharing import Hub


__all__ = ["SyncPixelByte"]

T = TypeVar("T")

_UNSET: Any = object()

#: What `SyncPixelByte.on_finished` takes: a plain function of one `SyncJob`.
SyncFinishedHandler = Callable[[SyncJob], object]


class SyncPixelByte:
    """
    The PixelByte client for synchronous code: `PixelByte`, one blocking call at a time.

    For Django and Flask views, Celery tasks, scripts and the REPL::

        with SyncPixelByte() as pb:  # one event loop thread for this client
            job = pb.submit(KlingO1StartEndFrame(...))
            done = job.wait(timeout=900)
            done.download("out.mp4")

    It takes the same arguments as `PixelByte` (passed through unchanged), and
    creates and enters a `PixelByte` on an event loop in a thread of its own; every
    method runs the async method of the same name there and blocks the calling
    thread until it is done.  The errors are the async client's, unchanged, and so
    is the safety: deadlines, the ledger, job slots and the settle horizon all
    live in `PixelByte`.

    One client may be shared by many threads (one per request, a thread pool):
    their calls run side by side on its loop, under one ``max_concurrent_jobs``.

    Close it with ``with`` or `close`; one left open is closed at interpreter exit
    (or when garbage-collected, with a `ResourceWarning`).  Calls from a thread
    that runs an event loop (from an ``async def``) raise `EventLoopMismatch`
    before blocking anything: use `PixelByte` there.  A client belongs to the
    process that made it: after a fork, make a new one.

    .. versionadded:: 0.4.0
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
        refuse_in_loop("__init__")
        kwargs: dict[str, Any] = {
            "api_key": api_key,
            "base_url": base_url,
            "timeout": timeout,
            "retry": retry,
            "poll": poll,
            "config": config,
            "session": session,
            "transport": transport,
            "clock": clock,
            "rng": rng,
            "webhook": webhook,
            "settle": settle,
            "claim_window": claim_window,
            "hub": hub,
            "tracked_group": tracked_group,
        }
        if max_concurrent_jobs is not _UNSET:
            kwargs["max_concurrent_jobs"] = max_concurrent_jobs
        if ledger is not _UNSET:
            kwargs["ledger"] = ledger
        self._runtime = SyncRuntime(kwargs, name="pixelbyte-sync")
        # Closes the client if it is collected while open; at exit, _runtime does.
        self._finalizer = weakref.finalize(self, self._runtime.collected)
        self._finalizer.atexit = False

    # -- the machinery -----------------------------------------------------------------

    def _call(self, func: Callable[[], Awaitable[T]], what: str) -> T:
        return self._runtime.call(func, what=what)

    @property
    def _client(self) -> PixelByte:
        return self._runtime.client

    def _wrap(self, job: Job) -> SyncJob:
        return SyncJob(self, job)

    def _close_quietly(self, steps: AsyncIterator[Any]) -> None:
        """Close an async iterator on the loop, if this thread may wait for it."""
        aclose = getattr(steps, "aclose", None)
        if aclose is not None:
            # Closed client, or a thread that may not block: asyncio closes the
            # generator itself once it is collected.
            with contextlib.suppress(Exception):
                self._call(aclose, "watch")

    # -- lifecycle ---------------------------------------------------------------------

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """
        Close the client (as `PixelByte.aclose`), then stop its loop thread.  Idempotent.

        Calls still running in other threads raise `ClientClosedError`.  Bounded:
        it never hangs, even on a client that cannot close cleanly.
        """
        refuse_in_loop("close")
        self._runtime.close()
        self._finalizer.detach()

    @property
    def closed(self) -> bool:
        """Whether `close` was called, or the client was made by another process."""
        return self._runtime.closed

    @property
    def config(self) -> ClientConfig:
        """The client's configuration (the key masked in its repr)."""
        return self._runtime.config

    @property
    def settle(self) -> float:
        """The settle horizon of `reconcile` in seconds (see `PixelByte`)."""
        return self._client.settle

    @property
    def jobs_in_flight(self) -> int:
        """How many of this client's job slots are taken."""
        return self._client.jobs_in_flight

    def __repr__(self) -> str:
        return self._runtime.describe()

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
        Feed `SyncJob.wait` from webhook deliveries instead of polling: `PixelByte.use_webhooks`.

        A `WebhookReceiver` mounted in a synchronous framework (its ``handle`` is
        safe from any thread) hands each delivery to this client's loop.  With
        *check*, the first submit (or `resume`) sends a probe first and raises
        `WebhookCheckError` if it does not arrive.

        .. versionchanged:: 0.5.0 *check*, *secret*.
        """
        client = self._client

        async def use() -> None:
            client.use_webhooks(
                receiver, public_url=public_url, check=check, secret=secret
            )

        self._call(use, "use_webhooks")

    def check_webhooks(self, timeout: float = 10.0) -> WebhookCheck:
        """
        Send a signed probe to the webhook URL; say whether it arrived: `PixelByte.check_webhooks`.

        .. versionadded:: 0.5.0
        """
        client = self._client
        return self._call(
            lambda: client.check_webhooks(timeout=timeout), "check_webhooks"
        )

    # -- jobs --------------------------------------------------------------------------

    def submit(
        self,
        model: str | ModelInput,
        input: Mapping[str, Any] | None = None,  # noqa: A002 -- the API's field name
        *,
        webhook_url: str | None = None,
        version: str | None = None,
        timeout: float | None = None,
        attempt: str | None = None,
        context: Any = None,
        on_sending: Callable[[float], object] | None = None,
    ) -> SyncJob:
        """
        Submit a job and return its `SyncJob` handle: `PixelByte.submit`.

        The job is charged now.  It is never re-sent when its fate is unknown
        (`AmbiguousSubmitError`; see `reconcile`).  With *context* the job is
        tracked: the `on_finished` handlers run for it when it ends.  *on_sending*
        (a plain function of one float, run in a worker thread) is called once a
        job slot is taken, right before the request goes out, with the attempt's
        start: record the attempt there; if it raises, nothing is sent.

        Raises:
            ValidationError: Bad input (or a context that is not JSON); nothing was sent.
            AmbiguousSubmitError: The job may exist; nothing was re-sent.
            InsufficientBalance, InvalidRequestError, NotFound, ...: As the API says.

        """
        client = self._client
        hook = None
        if on_sending is not None:
            call = on_sending

            async def hook(started_at: float) -> None:
                await anyio.to_thread.run_sync(call, started_at)

        job = self._call(
            lambda: client.submit(
                model,
                input,
                webhook_url=webhook_url,
                version=version,
                timeout=timeout,
                attempt=attempt,
                context=context,
                on_sending=hook,
            ),
            "submit",
        )
        return self._wrap(job)

    # -- tracked jobs ------------------------------------------------------------------

    def on_finished(self, handler: SyncFinishedHandler) -> SyncFinishedHandler:
        """
        Run *handler* when a tracked job ends: `PixelByte.on_finished`, for plain functions.

        *handler* is a plain function of one `SyncJob`; it runs in a worker thread,
        so it may block and call this client (``job.download(...)``).  As with
        `PixelByte.on_finished`: handlers run in the order registered, one that
        raises is run again with back-off and the job is parked after 5 failures
        (`failed_handlers`), at least once per job.  Usable as a decorator.

        Raises:
            TypeError: *handler* is an async function (use `PixelByte` for those).

        .. versionadded:: 0.4.0
        """
        self._register_plain("on_finished", "SyncJob", handler, self._wrap)
        return handler

    def on_lost(
        self, handler: Callable[[LostSubmit], object]
    ) -> Callable[[LostSubmit], object]:
        """
        Run *handler* for a tracked submit that made no job: `PixelByte.on_lost`.

        *handler* is a plain function of one `LostSubmit`, run in a worker thread;
        as with `PixelByte.on_lost`, it is retried with back-off and run at least
        once.  Usable as a decorator.

        Raises:
            TypeError: *handler* is an async function (use `PixelByte` for those).

        .. versionadded:: 0.5.0
        """
        self._register_plain("on_lost", "LostSubmit", handler, lambda lost: lost)
        return handler

    def _register_plain(
        self,
        name: Literal["on_finished", "on_lost"],
        of: str,
        handler: Callable[[Any], object],
        given: Callable[[Any], object],
    ) -> None:
        """Register plain *handler* with the client's *name*, run in a worker thread."""
        if not callable(handler) or inspect.iscoroutinefunction(handler):
            raise TypeError(
                f"SyncPixelByte.{name} takes a plain function of one {of}; "
                "register async handlers on a PixelByte"
            )

        async def in_a_thread(value: Any) -> None:
            await anyio.to_thread.run_sync(handler, given(value))

        client = self._client

        async def register() -> None:
            getattr(client, name)(in_a_thread)

        self._call(register, name)

    def resume(self) -> list[SyncJob]:
        """
        Take over the tracked jobs that no live process watches: `PixelByte.resume`.

        Call it once at start-up, after registering `on_finished`.

        .. versionadded:: 0.4.0
        """
        client = self._client
        return [self._wrap(job) for job in self._call(client.resume, "resume")]

    def tracked_jobs(
        self, states: Collection[str] = ("active",)
    ) -> list[TrackedRecord]:
        """
        This group's tracked jobs in *states*: `PixelByte.tracked_jobs`.

        .. versionadded:: 0.4.0
        """
        client = self._client
        return self._call(lambda: client.tracked_jobs(states), "tracked_jobs")

    def failed_handlers(self) -> list[TrackedRecord]:
        """
        The tracked jobs whose handlers kept failing: `PixelByte.failed_handlers`.

        .. versionadded:: 0.4.0
        """
        client = self._client
        return self._call(client.failed_handlers, "failed_handlers")

    def run(
        self,
        model: str | ModelInput,
        input: Mapping[str, Any] | None = None,  # noqa: A002 -- the API's field name
        *,
        timeout: float | None = None,
        webhook_url: str | None = None,
    ) -> SyncJob:
        """
        Submit and wait: `PixelByte.run`.  *timeout* bounds the wait.

        Raises:
            JobFailed, JobCancelled, WaitTimeout: As `SyncJob.wait`.

        """
        client = self._client
        job = self._call(
            lambda: client.run(model, input, timeout=timeout, webhook_url=webhook_url),
            "run",
        )
        return self._wrap(job)

    def get_job(self, job_id: str, *, timeout: float | None = None) -> SyncJob:
        """
        Fetch a job by id and return a handle on it: `PixelByte.get_job`.

        Raises:
            NotFound: No such job (or not yours).

        """
        client = self._client
        job = self._call(lambda: client.get_job(job_id, timeout=timeout), "get_job")
        return self._wrap(job)

    def list_jobs(
        self,
        *,
        status: JobStatus | str | None = None,
        model: str | None = None,
        limit: int | None = None,
        page_size: int = 100,
    ) -> list[SyncJob]:
        """
        Your jobs, newest first, every page read: `PixelByte.list_jobs` as a list.

        Pass *limit* on a busy account: without it, every job is listed.
        """
        client = self._client

        async def collect() -> list[Job]:
            jobs = client.list_jobs(
                status=status, model=model, limit=limit, page_size=page_size
            )
            return [job async for job in jobs]

        return [self._wrap(job) for job in self._call(collect, "list_jobs")]

    def reconcile(
        self,
        error: AmbiguousSubmitError,
        *,
        settle: float | None = None,
        timeout: float | None = None,
        clock_skew: float = DEFAULT_CLOCK_SKEW,
        exclude: Iterable[str] = (),
        competing: Iterable[AmbiguousSubmitError] = (),
    ) -> SyncJob | None:
        """
        Find the job an ambiguous submit may have created: `PixelByte.reconcile`.

        Blocks until the job is found, or until the settle horizon has passed
        (then ``None``: re-submitting is safe).

        Raises:
            ReconcileError: Several candidates, or competing ambiguous submits.
            ReconcileTimeout: *timeout* ended before the horizon.

        """
        client = self._client
        job = self._call(
            lambda: client.reconcile(
                error,
                settle=settle,
                timeout=timeout,
                clock_skew=clock_skew,
                exclude=exclude,
                competing=competing,
            ),
            "reconcile",
        )
        return None if job is None else self._wrap(job)

    def audit(
        self,
        *,
        since: datetime | float,
        until: datetime | float | None = None,
        model: str | None = None,
        exclude: Iterable[str] = (),
        lost: Iterable[AmbiguousSubmitError] = (),
    ) -> AuditReport:
        """
        List the jobs of a window that nothing here claims: `PixelByte.audit`.

        The report's ``cancel_pending`` is a coroutine function; from synchronous
        code, cancel its ``cancellable`` orphans one by one:
        ``pb.get_job(orphan.job.id).cancel()``.
        """
        client = self._client
        return self._call(
            lambda: client.audit(
                since=since, until=until, model=model, exclude=exclude, lost=lost
            ),
            "audit",
        )

    # -- prices, catalogue, uploads ----------------------------------------------------

    def estimate(
        self,
        model: str | ModelInput,
        input: Mapping[str, Any] | None = None,  # noqa: A002 -- the API's field name
        *,
        version: str | None = None,
        local: bool = False,
        timeout: float | None = None,
    ) -> Estimate:
        """Estimate a job's cost without creating it: `PixelByte.estimate`."""
        client = self._client
        return self._call(
            lambda: client.estimate(
                model, input, version=version, local=local, timeout=timeout
            ),
            "estimate",
        )

    def models(self, *, timeout: float | None = None) -> list[CatalogModel]:
        """List the public model catalogue: `PixelByte.models`."""
        client = self._client
        return self._call(lambda: client.models(timeout=timeout), "models")

    def model(self, slug: str, *, timeout: float | None = None) -> CatalogModel:
        """Fetch one catalogue model: `PixelByte.model`."""
        client = self._client
        return self._call(lambda: client.model(slug, timeout=timeout), "model")

    def upload(
        self,
        source: os.PathLike[str] | bytes | IO[bytes],
        *,
        filename: str | None = None,
        content_type: str | None = None,
        timeout: float | None = None,
    ) -> str:
        """
        Upload a local file (or bytes) and return its URL: `PixelByte.upload`.

        A ``str`` is refused, never opened.
        """
        client = self._client
        return self._call(
            lambda: client.upload(
                source, filename=filename, content_type=content_type, timeout=timeout
            ),
            "upload",
        )

    def upload_file(
        self,
        source: os.PathLike[str] | bytes | IO[bytes],
        *,
        filename: str | None = None,
        content_type: str | None = None,
        timeout: float | None = None,
    ) -> Upload:
        """Like `upload`, but return the whole `Upload`: `PixelByte.upload_file`."""
        client = self._client
        return self._call(
            lambda: client.upload_file(
                source, filename=filename, content_type=content_type, timeout=timeout
            ),
            "upload_file",
        )
