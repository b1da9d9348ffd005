"""
`PixelByte`: the async client.

One request pipeline (build → send → unwrap envelope → map error → decode), one
aiohttp session per client, one deadline per call, and a limit on jobs in flight.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import re
import types
import warnings
from collections.abc import (
    AsyncGenerator,
    AsyncIterable,
    Callable,
    Iterable,
    Mapping,
)
from datetime import datetime
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Literal, Self
from urllib.parse import quote

import aiohttp
import attrs

from ._batch import Batch, BatchInput, run_batch
from ._clock import Clock, SystemClock
from ._config import ClientConfig, mask_key
from ._errors import (
    AmbiguousSubmitError,
    ClientClosedError,
    EventLoopMismatch,
    PixelByteError,
    ResponseDecodeError,
    ServerError,
    TransportError,
    ValidationError,
)
from ._files import Files
from ._inputs import (
    ModelInput,
    check_input,
    check_slug,
    local_cost,
    validate_webhook_url,
)
from ._job import Job
from ._models import CatalogModel, Estimate, JobInfo, JobStatus, Upload
from ._pipeline import RequestPipeline, short
from ._polling import PollPolicy
from ._reconcile import (
    DEFAULT_CLOCK_SKEW,
    DEFAULT_SETTLE,
    AuditReport,
    Reconciler,
)
from ._retry import (
    RetryPolicy,
)
from ._serde import (
    decode_catalog_model,
    decode_estimate,
    decode_job,
    items_of,
)
from ._slots import JobSlots
from ._transport import AiohttpTransport, Transport
from .webhooks import (
    WebhookEvent,
    WebhookReceiver,
    WebhookServer,
    new_attempt_id,
    tag_webhook_url,
)


__all__ = ["PixelByte"]

log = logging.getLogger("pixelbyte_async")

_UNSET: Any = object()
_NO_PARAMS: Mapping[str, str] = types.MappingProxyType({})
_SAFE_ID = re.compile(r"[A-Za-z0-9_.\-]+")


_Mode = Literal["safe", "submit"]


class PixelByte:
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
        self._job_link = _JobLink(self)
        self._slots = JobSlots(config.max_concurrent_jobs)
        self._reconciler = Reconciler(
            self,
            settle=DEFAULT_SETTLE if settle is None else settle,
            retention=claim_window,
        )
        self._loop: asyncio.AbstractEventLoop | None = None
        self._webhook_receiver: WebhookReceiver | None = None
        self._webhook_url: str | None = None
        self._webhook_server: WebhookServer | None = None
        self._owns_webhook_server = False
        if webhook is not None:
            self.use_webhooks(webhook)

    # -- lifecycle -----------------------------------------------------------------

    async def __aenter__(self) -> Self:
        self._check_open()
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
        if self._webhook_receiver is not None:
            self._webhook_receiver.detach(self)
        if self._webhook_server is not None and self._owns_webhook_server:
            await self._webhook_server.close()
        # A user-supplied transport is theirs to close; we only stop using it.
        if self._owns_transport:
            await self._transport.aclose()

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
        receiver: WebhookReceiver | WebhookServer,
        *,
        public_url: str | None = None,
    ) -> None:
        """
        Feed `Job.wait` from webhook deliveries instead of polling.

        Every later `submit` without an explicit *webhook_url* sends *public_url*
        (a `WebhookServer`'s own ``public_url`` by default), and waits for such jobs
        resolve when the delivery arrives, with one safety GET after
        ``PollPolicy.webhook_grace`` past the ETA in case the delivery is lost.
        Deliveries for this client's jobs also free their job slots at once.

        Args:
            receiver: A `WebhookReceiver` mounted in your app, or a `WebhookServer`
                (started by the client when needed, and then stopped on `aclose`).
            public_url: The https URL the API should call; required with a bare
                receiver.

        """
        if isinstance(receiver, WebhookServer):
            self._webhook_server = receiver
            self._owns_webhook_server = not receiver.running
            self._webhook_receiver = receiver.receiver
            self._webhook_url = public_url
        else:
            if public_url is None:
                raise ValidationError(
                    "public_url is required with a WebhookReceiver", field="public_url"
                )
            self._webhook_receiver = receiver
            self._webhook_url = public_url
        if self._webhook_url is not None:
            validate_webhook_url(self._webhook_url)
        self._webhook_receiver.attach(self)

    async def _our_webhook_url(self) -> str | None:
        if self._webhook_receiver is None:
            return None
        if self._webhook_url is not None:
            return self._webhook_url
        server = self._webhook_server
        if server is None:
            return None
        if not server.running:
            await server.start()
        return server.public_url

    def _webhook_event(self, event: WebhookEvent) -> bool:
        """Observe a delivery for one of our jobs; return whether we know the job."""
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

        Raises:
            ValidationError: Bad input; nothing was sent.
            AmbiguousSubmitError: The job may exist; nothing was re-sent.
            InsufficientBalance, InvalidRequestError, NotFound, ...: As the API says.

        """
        self._check_open()
        clock = self.clock
        deadline = clock.monotonic() + (timeout or self.config.submit_timeout)
        slug, payload = await self._prepare_input(model, input, deadline)
        validate_webhook_url(webhook_url)
        ours = await self._our_webhook_url()
        if webhook_url is None and ours is not None:
            attempt = attempt or new_attempt_id()
            webhook_url = tag_webhook_url(ours, attempt)
        else:
            attempt = None
        body: dict[str, Any] = {"model": slug, "input": payload}
        if version is not None:
            body["version"] = version
        if webhook_url is not None:
            body["webhookUrl"] = webhook_url

        # Waiting for a slot is queueing, not the call: the time spent waiting
        # moves the deadline, which uploads and the request share.
        queued = clock.monotonic()
        await self._slots.acquire(self.clock, self.config, self.config.slot_timeout)
        deadline += clock.monotonic() - queued
        started_at = clock.time()
        reconciler = self._reconciler
        with reconciler.submitting(slug):
            try:
                data, rid = await self._pipeline.request(
                    "POST",
                    "/v1/jobs/submit",
                    json_body=body,
                    deadline=deadline,
                    mode="submit",
                )
                info = decode_job(data, rid)
            except PixelByteError as exc:
                self._slots.free()
                if _is_ambiguous(exc):
                    ambiguous = AmbiguousSubmitError(
                        f"submit to {slug} may have created a job ({short(exc)}); "
                        "it was not re-sent. Use PixelByte.reconcile(error) to find "
                        "it.",
                        model=slug,
                        input=payload,
                        webhook_url=webhook_url,
                        started_at=started_at,
                        attempt=attempt,
                    )
                    reconciler.ambiguous(ambiguous)
                    raise ambiguous from exc
                raise
            except BaseException:
                # Cancelled mid-flight: the submit's fate is unknown to us now.
                self._slots.free()
                raise
        return self._track_submitted(
            info,
            slug,
            payload,
            started_at=started_at,
            via_webhook=attempt is not None
            or (ours is not None and webhook_url == ours),
        )

    def _track_submitted(
        self,
        info: JobInfo,
        slug: str,
        payload: dict[str, Any],
        *,
        started_at: float,
        via_webhook: bool,
    ) -> Job:
        if info.status is JobStatus.UNKNOWN and info.raw_status is None:
            info = attrs.evolve(info, status=JobStatus.PENDING)
        if info.model is None:
            info = attrs.evolve(info, model=slug)
        if info.cost_micro_cents is None:
            log.debug("submit response for %s carried no cost", info.id)
        job = Job(self._job_link, info, input=payload, submitted_at=started_at)
        job.via_webhook = via_webhook
        self._reconciler.claims.add(job.id)
        self._slots.bind(job)
        if self._webhook_receiver is not None:
            # A delivery may have raced the submit response: take it now.
            event = self._webhook_receiver.event_for(job.id)
            if event is not None:
                job._observe(event.job, from_webhook=True)  # noqa: SLF001 -- same package
        log.info(
            "submitted %s to %s cost=%s request_id=%s",
            job.id,
            slug,
            info.cost_micro_cents,
            info.request_id,
        )
        if job.done:
            self._slots.finished(job.id)
        return job

    async def _prepare_input(
        self,
        model: str | ModelInput,
        input: Mapping[str, Any] | None,  # noqa: A002 -- the API's field name
        deadline: float,
    ) -> tuple[str, dict[str, Any]]:
        """Validate a submit's input (uploading local frames); return (slug, input)."""
        if isinstance(model, str):
            if input is None:
                raise ValidationError(
                    "input is required with a model slug", field="input"
                )
            return check_slug(model), check_input(input)
        if isinstance(model, ModelInput):
            if input is not None:
                raise ValidationError(
                    "pass either a typed input or a slug with input, not both",
                    field="input",
                )
            uploaded = await self._files.upload_frames(model, deadline)
            return model.model_slug, uploaded.to_input()
        raise ValidationError(
            f"model must be a slug or a typed input, not {type(model).__name__}",
            field="model",
        )

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
        *retry_failed*, *wait_timeout*, *settle*, *fit*.
        """
        return run_batch(self, inputs, **options)

    @property
    def jobs_in_flight(self) -> int:
        """How many of this client's job slots are taken."""
        return self._slots.used

    async def get_job(self, job_id: str, *, timeout: float | None = None) -> Job:
        """
        Fetch a job by id and return a handle on it (e.g. after a restart).

        Raises:
            NotFound: No such job (or not yours).

        """
        if not isinstance(job_id, str) or not job_id.strip():
            raise ValidationError("job_id must be a non-empty string", field="job_id")
        safe_id = job_id if _SAFE_ID.fullmatch(job_id) else quote(job_id, safe="")
        data, rid = await self._pipeline.request(
            "GET", f"/v1/jobs/{safe_id}", timeout=timeout
        )
        existing = self._slots.jobs.get(job_id)
        if existing is not None:
            existing._observe_body(data, rid)  # noqa: SLF001 -- same package
            return existing
        return self._adopt(decode_job(data, rid))

    def _adopt(self, info: JobInfo) -> Job:
        existing = self._slots.jobs.get(info.id)
        if existing is not None:
            existing._observe(info)  # noqa: SLF001 -- same client
            return existing
        return Job(self._job_link, info)

    async def list_jobs(
        self,
        *,
        status: JobStatus | str | None = None,
        model: str | None = None,
        limit: int | None = None,
        page_size: int = 100,
    ) -> AsyncGenerator[Job, None]:
        """
        Iterate over your jobs, newest first, following ``nextCursor`` pages.

        Args:
            status: Only jobs in this status.
            model: Only jobs of this model slug.
            limit: Stop after this many jobs (default: all).
            page_size: Jobs per request (1..100).

        """
        if not 1 <= page_size <= 100:  # noqa: PLR2004 -- the API's maximum
            raise ValidationError("page_size must be 1..100", field="page_size")
        params: dict[str, str] = {}
        if status is not None:
            params["status"] = (
                JobStatus(status).value if isinstance(status, str) else status.value
            )
        if model is not None:
            params["modelId"] = model  # the API's name for the slug filter (§4.4)
        count = 0
        cursor: str | None = None
        while True:
            size = page_size if limit is None else min(page_size, limit - count)
            if size <= 0:
                return
            page_params = {**params, "limit": str(size)}
            if cursor:
                page_params["cursor"] = cursor
            data, _ = await self._pipeline.request(
                "GET", "/v1/jobs", params=page_params
            )
            items = items_of(data, "jobs")
            for item in items:
                yield self._adopt(decode_job(item))
                count += 1
                if limit is not None and count >= limit:
                    return
            next_cursor = data.get("nextCursor") if isinstance(data, dict) else None
            has_more = data.get("hasMore") if isinstance(data, dict) else False
            if (
                not items
                or not next_cursor
                or has_more is False
                or next_cursor == cursor
            ):
                return
            cursor = str(next_cursor)

    async def reconcile(
        self,
        error: AmbiguousSubmitError,
        *,
        settle: float | None = None,
        timeout: float | None = None,
        clock_skew: float = DEFAULT_CLOCK_SKEW,
        exclude: Iterable[str] = (),
        competing: Iterable[AmbiguousSubmitError] = (),
    ) -> Job | None:
        """
        Find the job an ambiguous submit may have created, instead of paying twice.

        A slow backend can create the job *after* the client gave up, so "no job
        found" means nothing until a **settle horizon** has passed since the
        attempt began (``error.started_at``).  Reconcile looks at the job list at a
        gentle cadence (2 s, doubling to 30 s) for a job of the same model created
        in the attempt's window (from its start to the end of its horizon, widened
        by *clock_skew*) that nothing in this process claims and that is not in
        *exclude* (ids a journal accounts for, for example).
        With webhooks in use, a delivery carrying the attempt's nonce proves which
        job is whose.  Build the error yourself to reconcile an attempt recorded by
        an earlier process: ``AmbiguousSubmitError(msg, model=..., input=...,
        webhook_url=None, started_at=...)``.

        Args:
            error: The `AmbiguousSubmitError` the submit raised.
            settle: The horizon in seconds (default: the client's ``settle``, 300).
            timeout: Give up looking after this many seconds (default: no limit
                but the horizon); then `ReconcileTimeout` is raised, never ``None``.
            clock_skew: How far the server's clock may be off ours.
            exclude: Job ids that are known to belong to something else.
            competing: Other attempts of unknown fate this client did not make
                (e.g. other rows of a journal) that could own the same jobs; the
                client's own ambiguous submits are taken into account anyway.

        Returns:
            The job, adopted into this client (it counts against the job limit), as
            soon as it appears; ``None`` only once the horizon has passed with
            nothing found (re-submitting is then safe).

        Submits of the same model still in flight are waited for, and other
        unreconciled ambiguous submits of the same model are taken into account:
        when more than one attempt could own a job, nothing is guessed.

        Raises:
            ReconcileError: Several candidates, or competing ambiguous submits
                (``.candidates``, ``.competing``): decide yourself; re-submitting
                any of them may pay twice.
            ReconcileTimeout: *timeout* ended before the horizon; the fate is
                still unknown (``.settle_at`` says until when).

        """
        self._check_open()
        return await self._reconciler.reconcile(
            error,
            settle=settle,
            timeout=timeout,
            clock_skew=clock_skew,
            exclude=exclude,
            competing=competing,
        )

    async def audit(
        self,
        *,
        since: datetime | float,
        until: datetime | float | None = None,
        model: str | None = None,
        exclude: Iterable[str] = (),
    ) -> AuditReport:
        """
        List the account's jobs created in a window that nothing here claims.

        A double charge that slipped through everything (another program using the
        key, a lost submit nobody reconciled) is then at least found and priced.
        Claimed are: jobs this client submitted, adopted or reconciled within its
        ``claim_window`` (one hour by default), jobs in flight, and the ids in
        *exclude* (for example a batch journal's ``job_ids()``).

        Args:
            since: Start of the window (a datetime, naive = UTC, or Unix seconds).
            until: End of the window (default: now).
            model: Only jobs of this model slug.
            exclude: Job ids claimed elsewhere.

        Returns:
            An `AuditReport`; ``report.pending`` can still be cancelled for a
            refund (``await report.cancel_pending()``), and every orphan's ``job``
            can be waited for and downloaded.

        .. versionadded:: 0.3.0

        """
        self._check_open()
        return await self._reconciler.audit(
            since=since, until=until, model=model, exclude=exclude
        )

    # -- estimate, catalog -----------------------------------------------------------

    async def estimate(
        self,
        model: str | ModelInput,
        input: Mapping[str, Any] | None = None,  # noqa: A002 -- the API's field name
        *,
        version: str | None = None,
        local: bool = False,
        timeout: float | None = None,
    ) -> Estimate:
        """
        Estimate a job's cost without creating it.

        With ``local=True`` the SDK's price table answers offline (raises
        `ValidationError` for models it does not know).
        """
        if isinstance(model, str):
            slug = check_slug(model)
            payload = check_input(input or {})
        else:
            slug = model.model_slug
            payload = _estimate_input(model)
        if local:
            cost = local_cost(slug, payload)
            if cost is None:
                raise ValidationError(f"no local price for {slug}", field="model")
            return Estimate(
                estimated_cost_micro_cents=cost,
                base_cost_micro_cents=cost,
                source="local",
            )
        body: dict[str, Any] = {"model": slug, "input": payload}
        if version is not None:
            body["version"] = version
        data, _ = await self._pipeline.request(
            "POST", "/v1/jobs/estimate", json_body=body, timeout=timeout
        )
        return decode_estimate(data)

    async def models(self, *, timeout: float | None = None) -> list[CatalogModel]:
        """List the public model catalogue."""
        data, _ = await self._pipeline.request(
            "GET", "/v1/catalog/models", timeout=timeout, auth="optional"
        )
        return [decode_catalog_model(item) for item in items_of(data, "models")]

    async def model(self, slug: str, *, timeout: float | None = None) -> CatalogModel:
        """Fetch one catalogue model, including its ``inputSchema``."""
        check_slug(slug)
        data, _ = await self._pipeline.request(
            "GET",
            f"/v1/catalog/models/{quote(slug, safe='/')}",
            timeout=timeout,
            auth="optional",
        )
        return decode_catalog_model(data)

    # -- uploads and downloads ---------------------------------------------------------

    async def upload(
        self,
        source: os.PathLike[str] | bytes | IO[bytes],
        *,
        filename: str | None = None,
        content_type: str | None = None,
        timeout: float | None = None,
    ) -> str:
        """
        Upload a local file (or bytes) for use as a job input and return its URL.

        Uses presign + PUT; the file is deleted by the API after 60 minutes.  The type
        (sniffed from the content for images) and size are checked before anything
        is sent.

        *source* is a `pathlib.Path` (any ``os.PathLike``), ``bytes`` or a binary
        file object; a ``str`` is refused, never opened, so a string from an
        untrusted user cannot make the server upload its own files.
        """
        info = await self.upload_file(
            source, filename=filename, content_type=content_type, timeout=timeout
        )
        return info.file_url

    async def upload_file(
        self,
        source: os.PathLike[str] | bytes | IO[bytes],
        *,
        filename: str | None = None,
        content_type: str | None = None,
        timeout: float | None = None,
    ) -> Upload:
        """Like `upload`, but return the whole `Upload` (id, expiry …)."""
        self._check_open()
        return await self._files.upload(
            source, filename=filename, content_type=content_type, timeout=timeout
        )


@attrs.frozen
class _JobLink:
    """What this client lends its jobs: the `JobClient` seam, and nothing more."""

    _client: PixelByte

    @property
    def clock(self) -> Clock:
        return self._client.clock

    @property
    def config(self) -> ClientConfig:
        return self._client.config

    @property
    def webhooks(self) -> WebhookReceiver | None:
        return self._client._webhook_receiver  # noqa: SLF001 -- its own client

    def uniform(self, low: float, high: float) -> float:
        return self._client._uniform(low, high)  # noqa: SLF001 -- its own client

    async def request(
        self, method: str, path: str, *, timeout: float | None = None
    ) -> tuple[Any, str | None]:
        return await self._client._pipeline.request(method, path, timeout=timeout)  # noqa: SLF001 -- its own client

    async def download(
        self, url: str, path: Path, *, timeout: float | None, overwrite: bool
    ) -> Path:
        return await self._client._files.download(  # noqa: SLF001 -- its own client
            url, path, timeout=timeout, overwrite=overwrite
        )

    def finished(self, job: Job) -> None:
        self._client._slots.finished(job.id)  # noqa: SLF001 -- its own client


def _is_ambiguous(exc: PixelByteError) -> bool:
    """Whether a failed submit may nevertheless have created a job."""
    if isinstance(exc, TransportError):
        return exc.request_sent
    if isinstance(exc, ServerError):
        return exc.code != "PUBSUB_PUBLISH_FAILED"
    # A 2xx we could not read: the job was most likely created.
    return isinstance(exc, ResponseDecodeError)


def _estimate_input(model: ModelInput) -> dict[str, Any]:
    try:
        return model.to_input()
    except ValidationError:
        duration = getattr(model, "duration", None)
        return {} if duration is None else {"duration": str(duration)}
