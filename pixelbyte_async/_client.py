"""
`PixelByte`: the async client.

One request pipeline (build → send → unwrap envelope → map error → decode), one
aiohttp session per client, one deadline per call, and a limit on jobs in flight.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
import math
import mimetypes
import os
import random
import re
import types
import warnings
from collections.abc import (
    AsyncGenerator,
    AsyncIterable,
    Awaitable,
    Callable,
    Iterable,
    Mapping,
)
from pathlib import Path
from types import TracebackType
from typing import IO, TYPE_CHECKING, Any, Literal, Self, TypeVar
from urllib.parse import quote, urlsplit

import aiohttp
import anyio
import attrs

from ._clock import Clock, SystemClock, sleep_or_until
from ._config import ClientConfig, mask_key
from ._errors import (
    AmbiguousSubmitError,
    APIError,
    ClientClosedError,
    EventLoopMismatch,
    PixelByteError,
    RequestTimeout,
    ResponseDecodeError,
    ServerError,
    TransportError,
    ValidationError,
    error_class_for,
)
from ._inputs import (
    ModelInput,
    check_input,
    check_slug,
    check_url,
    is_binary_file,
    local_cost,
    read_frame,
    sniff_image_type,
    validate_webhook_url,
)
from ._job import Job, stream_to_file
from ._models import CatalogModel, Estimate, JobInfo, JobStatus, Upload
from ._polling import PollPolicy
from ._reconcile import (
    DEFAULT_CLOCK_SKEW,
    DEFAULT_SETTLE,
    AuditReport,
    Reconciler,
)
from ._retry import (
    RetryPolicy,
    is_submit_safe_to_retry,
    parse_retry_after,
    retry_after_from_details,
)
from ._serde import (
    decode_catalog_model,
    decode_estimate,
    decode_job,
    decode_json,
    decode_upload,
    error_fields,
    items_of,
    unwrap,
)
from ._transport import AiohttpTransport, Request, Response, Transport
from .webhooks import (
    WebhookEvent,
    WebhookReceiver,
    WebhookServer,
    new_attempt_id,
    tag_webhook_url,
)


if TYPE_CHECKING:
    from ._batch import Batch, BatchInput


__all__ = ["PixelByte"]

log = logging.getLogger("pixelbyte_async")

_UNSET: Any = object()
_NO_PARAMS: Mapping[str, str] = types.MappingProxyType({})
_SAFE_ID = re.compile(r"[A-Za-z0-9_.\-]+")
_T = TypeVar("_T")

_UPLOAD_TYPES: Mapping[str, int] = {
    "image/jpeg": 10 * 1024**2,
    "image/png": 10 * 1024**2,
    "image/webp": 10 * 1024**2,
    "image/gif": 10 * 1024**2,
    "video/mp4": 100 * 1024**2,
    "video/webm": 100 * 1024**2,
    "audio/mpeg": 50 * 1024**2,
    "audio/wav": 50 * 1024**2,
}

_Mode = Literal["safe", "submit"]


class _JobSlots:
    """
    The client's limit on jobs in flight (submitted and not yet seen terminal).

    A slot is taken before a submit and freed when the client sees the job reach a
    terminal state, however it sees it (wait, watch, refresh, list, cancel).  A
    submitter kept waiting for a slot refreshes in-flight jobs that nobody is
    waiting on, so "submit everything, then wait for everything" cannot deadlock.
    """

    def __init__(self, limit: int | None) -> None:
        self.limit = limit
        self.used = 0
        self.jobs: dict[str, Job] = {}
        self._released: asyncio.Future[None] | None = None
        self._sweeping = False

    def _notify(self) -> None:
        released, self._released = self._released, None
        if released is not None and not released.done():
            released.set_result(None)

    def free(self) -> None:
        self.used -= 1
        self._notify()

    def bind(self, job: Job) -> None:
        self.jobs[job.id] = job

    def finished(self, job_id: str) -> None:
        if self.jobs.pop(job_id, None) is not None:
            self.free()

    def adopt(self, job: Job) -> None:
        if job.id not in self.jobs and not job.done:
            self.used += 1
            self.jobs[job.id] = job

    async def acquire(self, client: PixelByte, timeout: float | None) -> None:
        if self.limit is None:
            self.used += 1
            return
        clock = client.clock
        deadline = clock.monotonic() + (timeout if timeout is not None else math.inf)
        while self.used >= self.limit:
            remaining = deadline - clock.monotonic()
            if remaining <= 0:
                raise RequestTimeout(
                    f"no job slot freed within slot_timeout={timeout}s "
                    f"({self.used} jobs in flight, max_concurrent_jobs={self.limit})"
                )
            await self._sweep(client, deadline)
            if self.used < self.limit:
                break
            if self._released is None:
                self._released = asyncio.get_running_loop().create_future()
            # A freed slot wakes us at once; the pause only paces the sweeps.
            pause = min(remaining, client.config.poll.near_interval)
            await sleep_or_until(clock, pause, self._released)
        self.used += 1

    async def _sweep(self, client: PixelByte, deadline: float) -> None:
        """
        Refresh unwatched in-flight jobs that are due, to notice finished ones.

        One sweep at a time: the other queued submitters wait for its result
        instead of polling the same jobs again.
        """
        if self._sweeping:
            return
        self._sweeping = True
        try:
            clock = client.clock
            deadline = min(deadline, clock.monotonic() + client.config.timeout)
            policy = client.config.poll
            for job in list(self.jobs.values()):
                if job._watchers or job.done:  # noqa: SLF001 -- slots and jobs cooperate
                    continue
                if clock.time() < job._sweep_due(policy):  # noqa: SLF001
                    continue
                await job._poll_once(deadline)  # noqa: SLF001
        finally:
            self._sweeping = False


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
        self._slots = _JobSlots(config.max_concurrent_jobs)
        self._reconciler = Reconciler(
            self,
            settle=DEFAULT_SETTLE if settle is None else settle,
            retention=claim_window,
        )
        self._header_cache: dict[str, dict[str, str]] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._api_origin = _origin(config.base_url)
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

    # -- the request pipeline --------------------------------------------------------

    def _shared_headers(
        self, auth: Literal["bearer", "both", "optional", "none"]
    ) -> Mapping[str, str]:
        """The headers for *auth*, built once; never mutate the result."""
        cached = self._header_cache.get(auth)
        if cached is None:
            cached = self._header_cache[auth] = self._build_headers(auth)
        return cached

    def _headers(
        self, auth: Literal["bearer", "both", "optional", "none"]
    ) -> dict[str, str]:
        """A fresh copy of the headers for *auth*, for callers that add to them."""
        return dict(self._shared_headers(auth))

    def _headers_for(self, url: str) -> dict[str, str]:
        """Headers for a URL outside the API pipeline: the key only to the API's origin."""
        if _origin(url) == self._api_origin:
            return self._headers("bearer")
        return {"User-Agent": self.config.user_agent}

    def _build_headers(
        self, auth: Literal["bearer", "both", "optional", "none"]
    ) -> dict[str, str]:
        headers = {"User-Agent": self.config.user_agent, "Accept": "application/json"}
        key = self.config.api_key
        if auth == "none":
            return headers
        if not key:
            if auth == "optional":
                return headers
            raise ValidationError(
                "no API key: pass PixelByte(api_key=...) or set PIXELBYTE_API_KEY",
                field="api_key",
            )
        headers["Authorization"] = f"Bearer {key}"
        if auth == "both":
            # The models/providers pages show x-api-key instead of Bearer (§1).
            headers["x-api-key"] = str(key)
        return headers

    async def _request(
        self,
        method: str,
        path: str,
        *,
        json_body: Any = None,
        params: Mapping[str, str] | None = None,
        timeout: float | None = None,
        deadline: float | None = None,
        mode: _Mode = "safe",
        auth: Literal["bearer", "both", "optional", "none"] = "bearer",
    ) -> tuple[Any, str | None]:
        """Send one API call under one deadline; return ``(payload, request_id)``."""
        self._check_open()
        clock = self.clock
        if deadline is None:
            deadline = clock.monotonic() + (timeout or self.config.timeout)
        headers = self._shared_headers(auth)
        if json_body is not None:
            headers = {**headers, "Content-Type": "application/json"}
        url = self.config.base_url + path
        query: Mapping[str, str] = dict(params) if params else _NO_PARAMS
        request = Request(
            method=method,
            url=url,
            headers=headers,
            params=query,
            json=json_body,
            timeout=deadline - clock.monotonic(),
        )
        # The first attempt inline: the common case pays for no retry machinery.
        first_error: PixelByteError | None = None
        if request.timeout is not None and request.timeout > 0:
            try:
                response = await self._transport.send(request)
                result = self._handle(response, method, path)
            except PixelByteError as exc:
                first_error = exc
            else:
                if log.isEnabledFor(logging.DEBUG):
                    log.debug(
                        "%s %s -> %d request_id=%s",
                        method,
                        path,
                        response.status,
                        result[1],
                    )
                return result

        async def attempt(remaining: float) -> tuple[Any, str | None]:
            response = await self._transport.send(
                attrs.evolve(request, timeout=remaining)
            )
            return self._handle(response, method, path)

        decide = self._decide_submit if mode == "submit" else self._decide_safe
        return await self._retrying(
            attempt,
            deadline=deadline,
            decide=decide,
            what=f"{method} {path}",
            first_error=first_error,
        )

    def _decide_safe(self, exc: PixelByteError, attempt: int) -> float | None:
        return self.config.retry.delay_for(exc, attempt, self._uniform)

    def _decide_submit(self, exc: PixelByteError, attempt: int) -> float | None:
        if not is_submit_safe_to_retry(exc):
            return None
        policy = self.config.retry
        delay = policy.delay_for(exc, attempt, self._uniform)
        if (
            delay is None
            and isinstance(exc, APIError)
            and exc.code == "CONCURRENT_JOBS_EXCEEDED"
            and exc.retry_after is not None
            and exc.retry_after <= policy.max_retry_after
        ):
            # The plan's concurrency limit: waiting is the answer, bounded by the
            # submit deadline rather than by the attempt count.
            delay = exc.retry_after
        return delay

    async def _retrying(
        self,
        attempt_once: Callable[[float], Awaitable[_T]],
        *,
        deadline: float,
        decide: Callable[[PixelByteError, int], float | None],
        what: str,
        first_error: PixelByteError | None = None,
    ) -> _T:
        """
        Call *attempt_once(remaining)* until it succeeds or *decide* gives up.

        The one retry loop of the client: one deadline covers every attempt and
        every pause, so retries never multiply a timeout.
        """
        clock = self.clock
        error = first_error
        attempt = 0 if error is None else 1
        while True:
            if error is None:
                attempt += 1
                remaining = deadline - clock.monotonic()
                if remaining <= 0:
                    raise RequestTimeout(
                        f"{what}: deadline passed before attempt {attempt}"
                    )
                try:
                    return await attempt_once(remaining)
                except PixelByteError as exc:
                    error = exc
            delay = decide(error, attempt)
            if delay is None or delay >= deadline - clock.monotonic():
                raise error
            log.info(
                "%s: %s; retrying in %.2fs (attempt %d)",
                what,
                _short(error),
                delay,
                attempt + 1,
            )
            error = None
            await clock.sleep(delay)

    def _handle(
        self, response: Response, method: str, path: str
    ) -> tuple[Any, str | None]:
        status = response.status
        header_rid = response.headers.get("x-request-id")
        if 200 <= status < 300:  # noqa: PLR2004 -- HTTP success class
            if not response.content or response.content.isspace():
                return {}, header_rid
            body = decode_json(response.content, status=status)
            if isinstance(body, dict) and body.get("success") is False:
                raise self._api_error(status, body, response, method, path)
            data, rid = unwrap(body)
            return data, rid or header_rid
        try:
            body = json.loads(response.content) if response.content else None
        except (ValueError, UnicodeDecodeError):
            body = None
        raise self._api_error(status, body, response, method, path)

    def _api_error(
        self, status: int, body: Any, response: Response, method: str, path: str
    ) -> APIError:
        code, message, details, rid = error_fields(body)
        if message is None:
            excerpt = response.content[:200].decode("utf-8", "replace").strip()
            message = excerpt or f"{method} {path} failed"
        if 200 <= status < 300:  # noqa: PLR2004 -- a 2xx carrying success:false
            status = 400 if code is None else status
        retry_after = parse_retry_after(
            response.headers.get("retry-after"), now=self.clock.time()
        )
        if retry_after is None:
            retry_after = retry_after_from_details(details)
        if retry_after is None and code == "CONCURRENT_JOBS_EXCEEDED":
            retry_after = 30.0  # the docs' sample default when retryAfter is absent
        cls = error_class_for(status, code)
        return cls(
            message,
            status=status,
            code=code,
            details=details,
            request_id=rid or response.headers.get("x-request-id"),
            retry_after=retry_after,
        )

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
        await self._slots.acquire(self, self.config.slot_timeout)
        deadline += clock.monotonic() - queued
        started_at = clock.time()
        reconciler = self._reconciler
        with reconciler.submitting(slug):
            try:
                data, rid = await self._request(
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
                        f"submit to {slug} may have created a job ({_short(exc)}); "
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
        job = Job(self, info, input=payload, submitted_at=started_at)
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
            self._job_finished(job)
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
            uploaded = await self._upload_frames(model, deadline)
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
        from ._batch import run_batch  # noqa: PLC0415 -- _batch imports this module

        return run_batch(self, inputs, **options)

    def _job_finished(self, job: Job) -> None:
        self._slots.finished(job.id)

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
        data, rid = await self._request("GET", f"/v1/jobs/{safe_id}", timeout=timeout)
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
        return Job(self, info)

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
            data, _ = await self._request("GET", "/v1/jobs", params=page_params)
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
        since: dt.datetime | float,
        until: dt.datetime | float | None = None,
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
        data, _ = await self._request(
            "POST", "/v1/jobs/estimate", json_body=body, timeout=timeout
        )
        return decode_estimate(data)

    async def models(self, *, timeout: float | None = None) -> list[CatalogModel]:
        """List the public model catalogue."""
        data, _ = await self._request(
            "GET", "/v1/catalog/models", timeout=timeout, auth="optional"
        )
        return [decode_catalog_model(item) for item in items_of(data, "models")]

    async def model(self, slug: str, *, timeout: float | None = None) -> CatalogModel:
        """Fetch one catalogue model, including its ``inputSchema``."""
        check_slug(slug)
        data, _ = await self._request(
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
        data, name = await _read_source(source, filename)
        sniffed = sniff_image_type(data)
        guessed = mimetypes.guess_type(name)[0] or ""
        if sniffed is None and content_type is None and guessed.startswith("image/"):
            raise ValidationError(
                f"cannot upload {name!r}: it is named like an image but is not a "
                "JPEG, PNG, WebP or GIF image",
                field="source",
            )
        ctype = content_type or sniffed or guessed
        if ctype not in _UPLOAD_TYPES:
            raise ValidationError(
                f"cannot upload {name!r}: type {ctype or 'unknown'} is not one of "
                f"{', '.join(_UPLOAD_TYPES)}",
                field="content_type",
            )
        if not data:
            raise ValidationError(f"{name!r} is empty", field="source")
        if len(data) > _UPLOAD_TYPES[ctype]:
            raise ValidationError(
                f"{name!r} is {len(data)} bytes; {ctype} uploads may be at most "
                f"{_UPLOAD_TYPES[ctype]}",
                field="source",
            )
        if "." not in name:
            name += mimetypes.guess_extension(ctype) or ""
        deadline = self.clock.monotonic() + (timeout or self.config.timeout)
        payload, rid = await self._request(
            "POST",
            "/v1/uploads/presign",
            json_body={"filename": name, "contentType": ctype},
            deadline=deadline,
        )
        upload = decode_upload(payload)
        if upload.upload_url is None:
            raise ResponseDecodeError("presign response has no uploadUrl")
        if upload.max_size is not None and len(data) > upload.max_size:
            raise ValidationError(
                f"{name!r} is {len(data)} bytes; the API allows {upload.max_size}",
                field="source",
            )
        await self._put_upload(upload.upload_url, data, ctype, deadline)
        log.debug("uploaded %s (%d bytes) request_id=%s", name, len(data), rid)
        return upload

    async def _put_upload(
        self, url: str, data: bytes, ctype: str, deadline: float
    ) -> None:
        headers = {**self._headers_for(url), "Content-Type": ctype}

        async def put(remaining: float) -> None:
            resp = await self._transport.send(
                Request(
                    method="PUT",
                    url=url,
                    headers=headers,
                    content=data,
                    timeout=remaining,
                )
            )
            if resp.status >= 300:  # noqa: PLR2004 -- HTTP non-success
                raise self._api_error(resp.status, None, resp, "PUT", "upload")

        await self._retrying(
            put, deadline=deadline, decide=self._decide_safe, what="PUT upload"
        )

    async def _upload_frames(self, model: ModelInput, deadline: float) -> ModelInput:
        fields = getattr(model, "frame_fields", ())
        changes: dict[str, str] = {}
        done: dict[object, str] = {}
        for name in fields:
            value = getattr(model, name)
            if isinstance(value, str):
                continue  # a str is always a URL (never a local file)
            key: object = (
                os.fspath(value)
                if isinstance(value, os.PathLike)
                else value
                if isinstance(value, bytes)
                else id(value)
            )
            if key not in done:
                remaining = deadline - self.clock.monotonic()
                if remaining <= 0:
                    raise RequestTimeout(
                        "submit: the deadline passed while uploading local frames; "
                        "nothing was submitted",
                        request_sent=False,
                    )
                done[key] = await self.upload(
                    value, timeout=min(remaining, self.config.timeout)
                )
            changes[name] = done[key]
        if not changes:
            return model
        for url in changes.values():
            check_url(url, "upload")
        evolved: ModelInput = attrs.evolve(model, **changes)  # type: ignore[misc]  # typed inputs are attrs classes
        return evolved

    async def _download(
        self, url: str, path: Path, *, timeout: float | None, overwrite: bool
    ) -> Path:
        self._check_open()
        headers = self._headers_for(url)
        budget = timeout or self.config.download_timeout
        deadline = self.clock.monotonic() + budget

        async def fetch(remaining: float) -> Path:
            return await stream_to_file(
                self,
                url,
                path,
                headers=headers,
                timeout=remaining,
                max_bytes=self.config.max_download_bytes,
                overwrite=overwrite,
            )

        def decide(exc: PixelByteError, attempt: int) -> float | None:
            # Only transport trouble is worth another try; a bad size is final.
            if not isinstance(exc, TransportError):
                return None
            return self._decide_safe(exc, attempt)

        return await self._retrying(
            fetch, deadline=deadline, decide=decide, what="download"
        )


async def _read_source(
    source: os.PathLike[str] | bytes | IO[bytes], filename: str | None
) -> tuple[bytes, str]:
    """The bytes and the name of an upload's *source*; a ``str`` is refused."""
    if isinstance(source, bytes | bytearray | memoryview):
        return bytes(source), filename or "upload"
    if isinstance(source, os.PathLike):
        path = Path(source)
        if not await anyio.Path(path).is_file():
            raise ValidationError(f"no such file: {path}", field="source")
        return await anyio.Path(path).read_bytes(), filename or path.name
    if is_binary_file(source):
        data = await anyio.to_thread.run_sync(read_frame, source)
        return data, filename or Path(str(getattr(source, "name", "upload"))).name
    raise ValidationError(
        "upload takes a pathlib.Path, bytes or a binary file object; a str is never "
        "opened as a file (use pathlib.Path(...) for a local file)",
        field="source",
    )


def _origin(url: str) -> tuple[str, str, int | None]:
    parts = urlsplit(url)
    try:
        port = parts.port or {"https": 443, "http": 80}.get(parts.scheme)
    except ValueError:  # an invalid port: an origin of its own, never the API's
        return (parts.scheme, parts.netloc.lower(), -1)
    return (parts.scheme, (parts.hostname or "").lower(), port)


def _short(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


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
