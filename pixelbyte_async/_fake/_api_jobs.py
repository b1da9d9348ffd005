"""
The API's ``/v1/jobs`` handlers: submit and estimate, and reading and cancelling jobs.

`SubmitHandlers` checks what a body names (model, version, input, uploads, webhook
URL) before anything is charged; `JobHandlers` shows jobs as the API does, lists
them newest first with opaque cursors, and cancels pending ones.
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any
from urllib.parse import urlsplit

from pixelbyte_async._inputs import is_loopback

from ._catalog import MODELS, InputError, ModelSpec, is_valid_slug, resolve_model
from ._http import ApiError, Call, Reply
from ._jobs import TERMINAL, FakeJob, render_output
from ._state import FakeState
from ._util import iso, new_job_id


__all__ = ["JobHandlers", "SubmitHandlers"]

_STATUSES = ("pending", "processing", "completed", "failed", "cancelled")
_PROGRESS = {"pending": 0, "processing": 50, "completed": 100}
_MAX_LIMIT = 100
_DEFAULT_LIMIT = 20


def _invalid(field: str, reason: str) -> ApiError:
    return ApiError(
        400,
        "INVALID_INPUT",
        f"Invalid input: {field} {reason}.",
        {"field": field, "reason": reason},
    )


class SubmitHandlers:
    """``POST /v1/jobs/submit`` and ``/v1/jobs/estimate`` over one `FakeState`."""

    def __init__(self, state: FakeState) -> None:
        self.state = state

    # -- what a body names ----------------------------------------------------------

    def model_of(self, body: dict[str, Any]) -> ModelSpec:
        """Return the model a submit or estimate body names."""
        slug = body.get("model")
        if not isinstance(slug, str) or not slug:
            raise _invalid("model", "is required and must be a model slug string")
        if not is_valid_slug(slug):
            raise ApiError(
                400,
                "INVALID_MODEL_SLUG",
                f"Invalid model slug '{slug}'. Expected provider/model/capability.",
                {"model": slug},
            )
        model = resolve_model(slug)
        if model is None:
            raise ApiError(
                404, "MODEL_NOT_FOUND", f"Model '{slug}' not found.", {"model": slug}
            )
        return model

    def version_of(self, model: ModelSpec, body: dict[str, Any]) -> str:
        """Return the (active) version a body asks for, or the current one."""
        version = body.get("version")
        if version is None:
            return model.current_version
        if not isinstance(version, str):
            raise _invalid("version", "must be a string")
        found = model.version(version)
        if found is None:
            raise ApiError(
                404,
                "MODEL_VERSION_NOT_FOUND",
                f"Version '{version}' of model '{model.slug}' not found.",
                {"model": model.slug, "version": version},
            )
        if found.status not in {"active", "deprecated"}:
            raise ApiError(
                400,
                "MODEL_VERSION_NOT_ACTIVE",
                f"Version '{version}' of model '{model.slug}' is {found.status}.",
                {"model": model.slug, "version": version, "status": found.status},
            )
        return version

    def check_upload_refs(self, model: ModelSpec, value: dict[str, Any]) -> None:
        """Reject URL inputs that point at an upload of this fake that is not there."""
        prefix = f"{self.state.cdn_url}/temp/"
        for field in model.fields:
            url = value.get(field.name)
            if field.kind != "url" or not isinstance(url, str):
                continue
            if not self.state.cdn_url or not url.startswith(prefix):
                continue
            file_id = url[len(prefix) :].split("/", 1)[0]
            upload = self.state.uploads.get(file_id)
            if upload is None or upload.data is None:
                raise _invalid(field.name, "refers to an upload that was never PUT")
            if upload.status_at(self.state.now()) == "expired":
                raise _invalid(field.name, "refers to an expired upload")

    # -- handlers -------------------------------------------------------------------

    def submit(self, call: Call) -> Reply:
        """``POST /v1/jobs/submit``."""
        state = self.state
        body = call.json_object()
        model = self.model_of(body)
        version = self.version_of(model, body)
        webhook_url = body.get("webhookUrl")
        if webhook_url is not None:
            self.check_webhook(webhook_url)
        if "input" not in body:
            raise _invalid("input", "is required")
        value = body["input"]
        try:
            model.validate(value, complete=True)
        except InputError as exc:
            raise _invalid(exc.field, exc.reason) from None
        self.check_upload_refs(model, value)
        limit = state.concurrent_job_limit
        if limit is not None:
            active = state.active_jobs()
            if active >= limit:
                raise ApiError(
                    429,
                    "CONCURRENT_JOBS_EXCEEDED",
                    f"Concurrent job limit of {limit} reached. "
                    "Wait for running jobs to finish.",
                    {
                        "retryAfter": state.retry_after(),
                        "limit": limit,
                        "active": active,
                    },
                )
        cost = state.price(model, value)
        balance = state.balance()
        if balance is not None and balance < cost:
            raise ApiError(
                402,
                "INSUFFICIENT_BALANCE",
                "Insufficient balance for this job.",
                {"requiredMicroCents": cost, "balanceMicroCents": balance},
            )
        job = state.create_job(
            model=model,
            version=version,
            input=value,
            webhook_url=webhook_url,
            request_id=call.request_id,
            job_id=new_job_id(),
        )
        if limit is not None:
            state.peak_active = max(state.peak_active, active + 1)
        if state.early_webhooks > 0 and webhook_url is not None:
            state.early_webhooks -= 1
            state.force_terminal(job.id, "completed")
            state.early_pending.append(job.id)
        payload: dict[str, Any] = {
            "jobId": job.id,
            "status": "pending",
            "estimatedCompletionTime": iso(job.estimated_completion_time),
        }
        if state.report_costs:
            payload["costMicroCents"] = job.cost
        return Reply(
            payload=payload,
            request_id_in_flat=True,
            wrapped_extra={"model": job.model, "createdAt": iso(job.created_at)},
        )

    def check_webhook(self, url: Any) -> None:
        """Raise 400 ``INVALID_WEBHOOK_URL`` unless *url* is an acceptable https URL."""
        parts = urlsplit(url) if isinstance(url, str) else None
        allowed = parts is not None and (
            parts.scheme == "https"
            or (
                parts.scheme == "http"
                and self.state.allow_http_webhooks
                and is_loopback(parts.hostname)
            )
        )
        if parts is None or not allowed or not parts.hostname:
            message = "webhookUrl must be a valid HTTPS URL."
            if (
                parts is not None
                and parts.scheme == "http"
                and is_loopback(parts.hostname)
            ):
                message += (
                    " (The sandbox takes http:// on this machine when started with "
                    "--allow-http-webhooks, or FakePixelByte(allow_http_webhooks="
                    "True); the real API takes https:// only.)"
                )
            raise ApiError(400, "INVALID_WEBHOOK_URL", message, {"webhookUrl": url})

    def estimate(self, call: Call) -> Reply:
        """``POST /v1/jobs/estimate``."""
        body = call.json_object()
        model = self.model_of(body)
        self.version_of(model, body)
        value = body.get("input", {})
        try:
            model.validate(value, complete=False)
        except InputError as exc:
            raise _invalid(exc.field, exc.reason) from None
        cost = self.state.price(model, value)
        return Reply(
            payload={
                "baseCostMicroCents": cost,
                "estimatedCostMicroCents": cost,
                "breakdown": [{"component": "base_generation", "costMicroCents": cost}],
                "hasDiscount": False,
            }
        )


class JobHandlers:
    """``GET /v1/jobs``, ``GET /v1/jobs/{jobId}`` and its cancel, over one `FakeState`."""

    def __init__(self, state: FakeState) -> None:
        self.state = state

    def job_of(self, call: Call) -> FakeJob:
        """Return the job named in the path."""
        job_id = call.request.match_info["job_id"]
        job = self.state.jobs.get(job_id)
        if job is None:
            raise ApiError(
                404, "JOB_NOT_FOUND", f"Job '{job_id}' not found.", {"jobId": job_id}
            )
        return job

    def job_json(self, job: FakeJob, now: float) -> Reply:
        """Return the ``GET /v1/jobs/{jobId}`` view of *job* at *now*."""
        status = job.status_at(now)
        output: Any = None
        outputs: Any = None
        if status == "completed":
            output, outputs = render_output(job, MODELS[job.model], self.state.cdn_url)
        error = None
        if status == "failed":
            error = {"code": job.script.error_code, "message": job.script.error_message}
        return Reply(
            payload={
                "jobId": job.id,
                "status": status,
                "progress": _PROGRESS.get(status, 0),
                "output": output,
                "outputs": outputs,
                "error": error,
                "createdAt": iso(job.created_at),
                "completedAt": iso(job.finished_at) if status in TERMINAL else None,
                "model": job.model,
            },
            wrapped_extra={"cost": job.cost} if self.state.report_costs else {},
        )

    def get_job(self, call: Call) -> Reply:
        """``GET /v1/jobs/{jobId}``."""
        return self.job_json(self.job_of(call), call.now)

    def list_jobs(self, call: Call) -> Reply:
        """``GET /v1/jobs``: newest first, cursor-paginated."""
        query = call.request.query
        limit = _parse_limit(query.get("limit"))
        status = query.get("status")
        if status is not None and status not in _STATUSES:
            raise _invalid("status", f"must be one of {', '.join(_STATUSES)}")
        model = query.get("modelId")
        # By creation time, as the API's cursor (its createdAt) says: a late
        # creation is registered after jobs younger than it.
        newest_first = sorted(  # noqa: C414 -- ties: the last registered first
            reversed(self.state.jobs.values()),
            key=lambda j: j.created_at,
            reverse=True,
        )
        start = 0
        cursor = query.get("cursor")
        if cursor:
            after = _decode_cursor(cursor)
            ids = [j.id for j in newest_first]
            if after not in ids:
                raise _invalid("cursor", "is not a cursor this server issued")
            start = ids.index(after) + 1
        matching = [
            j
            for j in newest_first[start:]
            if (status is None or j.status_at(call.now) == status)
            and (model is None or j.model == model)
        ]
        page = matching[:limit]
        has_more = len(matching) > limit
        return Reply(
            payload={
                "jobs": [
                    {
                        key: full.payload[key]
                        for key in (
                            "jobId",
                            "status",
                            "progress",
                            "model",
                            "createdAt",
                            "completedAt",
                        )
                    }
                    for full in (self.job_json(j, call.now) for j in page)
                ],
                "nextCursor": _encode_cursor(page[-1]) if has_more else None,
                "hasMore": has_more,
            }
        )

    def cancel(self, call: Call) -> Reply:
        """``POST /v1/jobs/{jobId}/cancel``: only pending jobs, refunded in full."""
        job = self.job_of(call)
        status = job.status_at(call.now)
        if status != "pending":
            raise ApiError(
                400,
                "JOB_CANNOT_BE_CANCELLED",
                f"Job '{job.id}' is {status}; only pending jobs can be cancelled.",
                {"jobId": job.id, "status": status},
            )
        refunded = self.state.cancel(job)
        return Reply(
            payload={
                "jobId": job.id,
                "status": "cancelled",
                "refundedMicroCents": refunded,
            }
        )


def _parse_limit(raw: str | None) -> int:
    if raw is None:
        return _DEFAULT_LIMIT
    try:
        limit = int(raw)
    except ValueError:
        limit = 0
    if not 1 <= limit <= _MAX_LIMIT:
        raise _invalid("limit", f"must be an integer from 1 to {_MAX_LIMIT}")
    return limit


def _encode_cursor(job: FakeJob) -> str:
    raw = json.dumps({"createdAt": iso(job.created_at), "jobId": job.id})
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def _decode_cursor(cursor: str) -> str:
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        data = json.loads(base64.urlsafe_b64decode(padded.encode()))
        job_id = data["jobId"]
    except (ValueError, binascii.Error, KeyError, TypeError):
        raise _invalid("cursor", "is malformed") from None
    if not isinstance(job_id, str):
        raise _invalid("cursor", "is malformed")
    return job_id
