"""Jobs and uploads held by the fake, with their state derived lazily from the clock."""

from __future__ import annotations

from typing import Any, Literal, Protocol, TypeAlias

import attrs
from attrs import validators as v

from ._catalog import ModelSpec
from ._util import EPSILON, input_fingerprint


__all__ = [
    "FakeJob",
    "FakeUpload",
    "JobScript",
    "JobStatus",
    "OutputShape",
    "cdn_files",
    "render_output",
]

JobStatus: TypeAlias = Literal[
    "pending", "processing", "completed", "failed", "cancelled"
]
OutputShape: TypeAlias = Literal[
    "reference", "object", "video_url", "outputs_only", "image_url", "none"
]

TERMINAL: frozenset[str] = frozenset({"completed", "failed", "cancelled"})
UPLOAD_WINDOW_SECONDS = 15 * 60
UPLOAD_LIFETIME_SECONDS = 60 * 60

_SHAPES = ("reference", "object", "video_url", "outputs_only", "image_url", "none")


@attrs.frozen(kw_only=True)
class JobScript:
    """
    How a fake job lives: how long it queues, how long it runs, and how it ends.

    A job created at *t0* is ``pending`` during ``[t0, t0 + queue_seconds)``,
    ``processing`` during the next *processing_seconds*, and then ``completed`` or
    ``failed`` according to *outcome*.  Failed jobs are refunded automatically.

    Args:
        queue_seconds: Virtual seconds spent ``pending``.
        processing_seconds: Virtual seconds spent ``processing``; `None` means the
            model's typical time (240 s for Kling O1, 5 s for the test image model).
        outcome: ``"completed"`` or ``"failed"``.
        error_code: ``error.code`` of a failed job.
        error_message: ``error.message`` of a failed job.
        eta_seconds: The ETA the API reports (``estimatedCompletionTime``), in
            seconds after creation; `None`: the job's real duration.  A model's
            ETA is static while jobs vary, so set it apart from
            ``queue_seconds + processing_seconds`` to test polling with an ETA
            that is wrong.
        output_shape: Which of the documented shapes a completed job reports:

            * ``"reference"``: ``output`` is the URL string, ``outputs`` a list of
              ``{url, type, thumbnail, posterImage}`` (the API reference).
            * ``"object"``: ``output`` is ``{url, contentType, durationSeconds}``
              (the quickstart).
            * ``"video_url"``: ``output`` is ``{videoUrl}`` (the models API schema).
            * ``"outputs_only"``: ``output`` is null, ``outputs`` has the URL.
            * ``"image_url"``: ``output`` is ``{imageUrl, metadata}`` (the webhook
              example).
            * ``"none"``: completed without any URL at all, an anomaly clients must
              survive.

    """

    queue_seconds: float = attrs.field(default=5.0, validator=v.ge(0))
    processing_seconds: float | None = attrs.field(
        default=None, validator=v.optional(v.ge(0))
    )
    outcome: Literal["completed", "failed"] = attrs.field(
        default="completed", validator=v.in_(("completed", "failed"))
    )
    error_code: str = "GENERATION_FAILED"
    error_message: str = "Generation failed. Credits have been refunded."
    output_shape: OutputShape = attrs.field(
        default="reference", validator=v.in_(_SHAPES)
    )
    eta_seconds: float | None = attrs.field(default=None, validator=v.optional(v.ge(0)))


class WallClock(Protocol):
    """What a `FakeJob` reads the time from: the fake server's clock."""

    def time(self) -> float:
        """Return the server's wall-clock time (Unix seconds)."""
        ...


@attrs.define(kw_only=True)
class FakeJob:
    """
    A job in the fake, as the server sees it.

    Its `status` is not stored: it is computed from the clock, ``created_at`` and
    ``script`` every time it is read.

    Args:
        id: The job id (``job_`` + 12 hex characters).
        model: The full model slug.
        version: The model version the job runs on.
        input: The input as submitted.
        webhook_url: The ``webhookUrl`` of the submit, if any.
        created_at: Virtual Unix time of creation (whole milliseconds).
        script: The lifecycle in effect (`FakePixelByte.complete_now` and
            `FakePixelByte.fail_now` rewrite it); *processing_seconds* is resolved.
        cost: The charge in micro-cents.
        request_id: The ``requestId`` of the submit that created it.
        cancelled_at: Virtual Unix time of cancellation, if it was cancelled.
        clock: The server's clock, which `status` reads.

    """

    id: str
    model: str
    version: str
    input: dict[str, Any]
    webhook_url: str | None
    created_at: float
    script: JobScript
    cost: int
    request_id: str
    cancelled_at: float | None = None
    _clock: WallClock = attrs.field(alias="clock", repr=False, eq=False)

    @property
    def estimated_completion_time(self) -> float:
        """Return when the API says the job ends (virtual Unix time; see `JobScript`)."""
        if self.script.eta_seconds is not None:
            return self.created_at + self.script.eta_seconds
        return self.ends_by_script

    @property
    def ends_by_script(self) -> float:
        """Return when the script makes the job end (virtual Unix time)."""
        return (
            self.created_at
            + self.script.queue_seconds
            + (self.script.processing_seconds or 0.0)
        )

    @property
    def finished_at(self) -> float:
        """Return when the job ended or will end (its cancellation, or its script's end)."""
        if self.cancelled_at is not None:
            return self.cancelled_at
        return self.ends_by_script

    @property
    def fingerprint(self) -> str:
        """Return the ledger fingerprint of the job's model and input."""
        return input_fingerprint(self.model, self.input)

    def status_at(self, now: float) -> JobStatus:
        """
        Return the status of the job at virtual time *now*.

        Args:
            now: Virtual Unix time.

        """
        if self.cancelled_at is not None and now + EPSILON >= self.cancelled_at:
            return "cancelled"
        elapsed = now - self.created_at + EPSILON
        if elapsed < self.script.queue_seconds:
            return "pending"
        if elapsed < self.script.queue_seconds + (self.script.processing_seconds or 0):
            return "processing"
        return self.script.outcome

    @property
    def status(self) -> JobStatus:
        """Return the status of the job now, by the fake's clock."""
        return self.status_at(self._clock.time())


def render_output(
    job: FakeJob, model: ModelSpec, cdn_url: str
) -> tuple[Any, list[dict[str, Any]] | None]:
    """
    Return ``(output, outputs)`` of a completed *job* in its script's shape.

    Args:
        job: A completed job.
        model: The job's model.
        cdn_url: The base URL of the fake's CDN origin.

    """
    base = f"{cdn_url}/outputs/{job.id}"
    video = model.category == "video"
    url = f"{base}/output_0.mp4" if video else f"{base}/output_0.png"
    item = {
        "url": url,
        "type": model.category,
        "thumbnail": f"{base}/thumb_0.jpg" if video else None,
        "posterImage": f"{base}/poster_0.jpg" if video else None,
    }
    shape = job.script.output_shape
    if shape == "reference":
        return url, [item]
    if shape == "object":
        obj: dict[str, Any] = {"url": url, "contentType": _content_type(url)}
        if video:
            obj["durationSeconds"] = model.duration_seconds(job.input)
        return obj, None
    if shape == "video_url":
        return {"videoUrl": url}, None
    if shape == "outputs_only":
        return None, [item]
    if shape == "image_url":
        size = (160, 90) if video else (64, 64)
        meta = {"width": size[0], "height": size[1], "format": url.rsplit(".", 1)[1]}
        return {"imageUrl": url, "metadata": meta}, None
    return None, None


def _content_type(name: str) -> str:
    ext = name.rsplit(".", 1)[-1]
    return {"mp4": "video/mp4", "png": "image/png", "jpg": "image/jpeg"}[ext]


def cdn_files(model: ModelSpec) -> dict[str, tuple[str, str]]:
    """
    Return the files the CDN serves for a completed job of *model*.

    Returns:
        ``{file name: (package data file, content type)}``.

    """
    if model.category == "video":
        return {
            "output_0.mp4": ("sample.mp4", "video/mp4"),
            "thumb_0.jpg": ("thumb.jpg", "image/jpeg"),
            "poster_0.jpg": ("thumb.jpg", "image/jpeg"),
        }
    return {"output_0.png": ("sample.png", "image/png")}


@attrs.define(kw_only=True)
class FakeUpload:
    """
    A presigned upload slot and, once PUT, its bytes.

    The slot accepts a PUT for 15 minutes after ``created_at``; the file is served,
    and reported ``pending`` (= available), until `expires_at` (60 minutes).

    Args:
        id: The file id (a UUID 4).
        filename: The sanitised file name.
        content_type: The content type the PUT must carry.
        max_size: The largest body accepted, in bytes.
        created_at: Virtual Unix time of the presign.
        data: The uploaded bytes, once PUT.
        uploaded_at: Virtual Unix time of the (last) PUT.

    """

    id: str
    filename: str
    content_type: str
    max_size: int
    created_at: float
    data: bytes | None = attrs.field(default=None, repr=False)
    uploaded_at: float | None = None

    @property
    def upload_deadline(self) -> float:
        """Return the virtual Unix time after which the presigned PUT is refused."""
        return self.created_at + UPLOAD_WINDOW_SECONDS

    @property
    def expires_at(self) -> float:
        """Return the virtual Unix time the file is deleted."""
        return self.created_at + UPLOAD_LIFETIME_SECONDS

    def status_at(self, now: float) -> Literal["pending", "expired"]:
        """
        Return ``"pending"`` (the API's word for *available*) or ``"expired"``.

        Args:
            now: Virtual Unix time.

        """
        return "pending" if now < self.expires_at else "expired"
