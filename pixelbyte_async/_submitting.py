"""
Submitting a job: the one path that spends money, and the care it takes.

`Submitter.submit` validates the input (uploading local frames under the call's one
deadline), tags the webhook URL with an attempt nonce, waits for a job slot, sends
the POST once, and turns the answer into a tracked `Job`.  A submit whose fate is
unknown (`is_ambiguous`) becomes an `AmbiguousSubmitError` remembered by the
`Reconciler` and is never re-sent.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any

import attrs

from ._errors import (
    AmbiguousSubmitError,
    PixelByteError,
    ResponseDecodeError,
    ServerError,
    TransportError,
    ValidationError,
)
from ._handoff import to_the_end
from ._inputs import (
    ModelInput,
    check_input,
    check_slug,
    local_cost,
    validate_webhook_url,
)
from ._job import Job
from ._models import JobInfo, JobStatus
from ._pipeline import short
from ._serde import decode_job
from ._signing import new_attempt_id, tag_webhook_url
from ._telemetry import JobTrace, start_job
from ._tracked import context_text


if TYPE_CHECKING:
    from ._clock import Clock
    from ._config import ClientConfig
    from ._files import Files
    from ._links import JobLink
    from ._pipeline import RequestPipeline
    from ._reconcile import Reconciler
    from ._slots import JobSlots
    from ._tracked import Tracker
    from ._wiring import WebhookWiring


__all__ = ["Submitter", "is_ambiguous"]

log = logging.getLogger("pixelbyte_async")

#: How long recording an attempt in the ledger may take before it is sent (its
#: deadline starts after the write): part of how long it may be on the wire.
_LEDGER_WRITE_ALLOWANCE = 10.0


@attrs.frozen
class Submitter:
    """A client's submit path, built from its parts (see `PixelByte.submit`)."""

    clock: Clock
    config: ClientConfig
    _pipeline: RequestPipeline
    _files: Files
    _slots: JobSlots
    _reconciler: Reconciler
    _wiring: WebhookWiring
    _job_link: JobLink
    _tracker: Tracker

    async def submit(
        self,
        model: str | ModelInput,
        input: Mapping[str, Any] | None,  # noqa: A002 -- the API's field name
        *,
        webhook_url: str | None,
        version: str | None,
        timeout: float | None,
        attempt: str | None,
        context: Any = None,
        on_sending: Callable[[float], Awaitable[object]] | None = None,
    ) -> Job:
        """Validate, take a slot, send once, track; see `PixelByte.submit`."""
        attempt = attempt or new_attempt_id()
        # The job's span opens now, a child of the caller's span; it is current while
        # the submit runs, so its uploads and its POST are its children.
        trace = start_job(
            model if isinstance(model, str) else getattr(model, "model_slug", "?"),
            attempt,
            started=self.clock.monotonic(),
        )
        with trace.current():
            try:
                return await self._submit(
                    model,
                    input,
                    webhook_url=webhook_url,
                    version=version,
                    timeout=timeout,
                    attempt=attempt,
                    context=context,
                    on_sending=on_sending,
                    trace=trace,
                )
            except PixelByteError as exc:
                trace.failed(
                    exc,
                    status=(
                        "unknown"
                        if isinstance(exc, AmbiguousSubmitError)
                        else "refused"
                    ),
                )
                raise
            except BaseException as exc:
                # Cancelled: the POST may be on the wire, its fate unknown to us.
                trace.failed(exc, status="unknown")
                raise

    async def _submit(
        self,
        model: str | ModelInput,
        input: Mapping[str, Any] | None,  # noqa: A002 -- the API's field name
        *,
        webhook_url: str | None,
        version: str | None,
        timeout: float | None,
        attempt: str,
        context: Any,
        on_sending: Callable[[float], Awaitable[object]] | None,
        trace: JobTrace,
    ) -> Job:
        clock = self.clock
        deadline = clock.monotonic() + (timeout or self.config.submit_timeout)
        tracked = None if context is None else context_text(context)
        slug, payload = await self._prepare_input(model, input, deadline)
        validate_webhook_url(webhook_url)
        ours = await self._wiring.public_url()
        tagged = webhook_url is None and ours is not None
        if tagged:
            assert ours is not None  # noqa: S101 -- narrowed by `tagged`
            webhook_url = tag_webhook_url(ours, attempt)
        body = _body(slug, payload, version, webhook_url)

        # Waiting for a slot is queueing, not the call: the time spent waiting
        # moves the deadline, which uploads and the request share.
        queued = clock.monotonic()
        # The ledger is opened before a slot is taken: queued submits then wait
        # for a free slot, not for a slot held by a submit waiting on the file.
        await self._reconciler.ledger.ready()
        lease = await self._slots.acquire(
            self.clock, self.config, self.config.slot_timeout
        )
        trace.event("pixelbyte.slot", {"waited_s": clock.monotonic() - queued})
        started_at = clock.time()
        reconciler = self._reconciler
        try:
            await self._announce(
                attempt,
                slug,
                started_at=started_at,
                ends_by=started_at
                + max(deadline - queued, 0.0)
                + _LEDGER_WRITE_ALLOWANCE,
                tagged=tagged,
                list_price=local_cost(slug, payload),
                tracked=tracked,
                on_sending=on_sending,
            )
        except BaseException:
            self._slots.free(lease)
            self._tracker.abandoned(attempt)  # if tracked: for resume() to reconcile
            raise
        # The slot wait and the ledger's write are queueing, not the call.
        deadline += clock.monotonic() - queued
        # When the try that may have made the job went out: after 429s (the
        # plan's limit) that can be minutes after the call began, and its job
        # can only appear after it (the tries before it made none).
        sent = [started_at]

        def sending_now() -> None:
            sent[0] = clock.time()

        with reconciler.submitting(slug):
            try:
                data, rid = await self._pipeline.request(
                    "POST",
                    "/v1/jobs/submit",
                    json_body=body,
                    deadline=deadline,
                    mode="submit",
                    on_send=sending_now,
                )
                info = decode_job(data, rid)
            except PixelByteError as exc:
                self._slots.free(lease)
                lost = (
                    AmbiguousSubmitError(
                        f"submit to {slug} may have created a job ({short(exc)}); "
                        "it was not re-sent. Use PixelByte.reconcile(error) to find "
                        "it.",
                        model=slug,
                        input=payload,
                        webhook_url=webhook_url,
                        started_at=sent[0],
                        attempt=attempt,
                    )
                    if is_ambiguous(exc)
                    else None
                )
                await self._failed(attempt, lost, None if tracked is None else context)
                if lost is not None:
                    raise lost from exc
                raise
            except BaseException:
                # Cancelled mid-flight: the submit's fate is unknown to us now (the
                # ledger has it 'sending' until its deadline, then unknown).
                self._slots.free(lease)
                self._tracker.abandoned(
                    attempt
                )  # if tracked: for resume() to reconcile
                raise
        job = self._track(
            info,
            slug,
            payload,
            lease=lease,
            started_at=started_at,
            via_webhook=tagged or (ours is not None and webhook_url == ours),
            trace=trace,
        )
        # Recorded even if the caller is cancelled meanwhile: the job is paid for.
        inline = getattr(reconciler.ledger, "writes_on_loop", False) is True
        await to_the_end(reconciler.created(attempt, job.id), inline=inline)
        if tracked is not None:
            await to_the_end(
                self._tracker.submitted(job, attempt, context), inline=inline
            )
        return job

    async def _announce(
        self,
        attempt: str,
        slug: str,
        *,
        started_at: float,
        ends_by: float,
        tagged: bool,
        list_price: int | None,
        tracked: str | None,
        on_sending: Callable[[float], Awaitable[object]] | None,
    ) -> None:
        """Record the attempt wherever it must be known before it is sent."""
        if on_sending is not None:
            # The caller's own record of the attempt (a batch's journal), with
            # the slot taken: the start it records is when the request goes.
            await on_sending(started_at)
        if tracked is not None:
            # Tracked before it is sent: a process that dies with the request
            # on the wire leaves its context for the next one (`resume`).
            await self._tracker.before_send(attempt, slug, tracked)
        # In the ledger before it is sent: if this process dies with the
        # request on the wire, every other process knows its fate is unknown.
        await self._reconciler.sending(
            attempt,
            slug,
            started_at=started_at,
            ends_by=ends_by,
            tagged=tagged,
            list_price=list_price,
        )

    async def _failed(
        self, attempt: str, lost: AmbiguousSubmitError | None, context: Any
    ) -> None:
        """A submit failed: its fate unknown (*lost*) or no job; tell who tracks it."""
        await self._reconciler.ended(attempt, lost=lost)
        if context is None:
            return
        if lost is not None:
            self._tracker.lost(lost, context)
        else:
            await self._tracker.refused(attempt)

    def _track(
        self,
        info: JobInfo,
        slug: str,
        payload: dict[str, Any],
        *,
        lease: str | None,
        started_at: float,
        via_webhook: bool,
        trace: JobTrace,
    ) -> Job:
        if info.status is JobStatus.UNKNOWN and info.raw_status is None:
            info = attrs.evolve(info, status=JobStatus.PENDING)
        if info.model is None:
            info = attrs.evolve(info, model=slug)
        if info.cost_micro_cents is None:
            log.debug("submit response for %s carried no cost", info.id)
        job = Job(self._job_link, info, input=payload, submitted_at=started_at)
        job.via_webhook = via_webhook
        job._traced(trace)  # noqa: SLF001 -- same package
        self._reconciler.claims.add(job.id)
        self._slots.bind(job, lease)
        # A delivery may have raced the submit response: take it now.
        event = self._wiring.event_for(job.id)
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


def _body(
    slug: str, payload: dict[str, Any], version: str | None, webhook_url: str | None
) -> dict[str, Any]:
    """The submit's JSON body."""
    body: dict[str, Any] = {"model": slug, "input": payload}
    if version is not None:
        body["version"] = version
    if webhook_url is not None:
        body["webhookUrl"] = webhook_url
    return body


def is_ambiguous(exc: PixelByteError) -> bool:
    """Whether a failed submit may nevertheless have created a job."""
    if isinstance(exc, TransportError):
        return exc.request_sent
    if isinstance(exc, ServerError):
        return exc.code != "PUBSUB_PUBLISH_FAILED"
    # A 2xx we could not read: the job was most likely created.
    return isinstance(exc, ResponseDecodeError)
