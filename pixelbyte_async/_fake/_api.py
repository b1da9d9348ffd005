"""The fake's API origin: ``/v1/jobs``, ``/v1/uploads``, ``/v1/models``, ``/v1/catalog``."""

from __future__ import annotations

import base64
import binascii
import hmac
import json
import uuid
from collections.abc import Awaitable, Callable
from typing import Any, Literal, TypeAlias
from urllib.parse import quote, urlsplit

from aiohttp import web

from pixelbyte_async._inputs import is_loopback

from ._catalog import (
    MODELS,
    PROVIDERS,
    InputError,
    ModelSpec,
    ProviderSpec,
    catalog_capability_groups,
    catalog_categories,
    catalog_model_detail,
    catalog_model_item,
    catalog_provider,
    is_valid_slug,
    model_detail,
    model_summary,
    provider_json,
    resolve_model,
)
from ._faults import Fault
from ._http import (
    ApiError,
    Call,
    Group,
    Reply,
    drop_connection,
    error_response,
    fault_before,
    garble,
    hold_until_gone,
    parse_body,
    recorded_json,
    render,
)
from ._jobs import TERMINAL, FakeJob, FakeUpload, render_output
from ._records import RecordedRequest
from ._state import FakeState
from ._util import floor_ms, iso, new_job_id, new_request_id


__all__ = ["ALLOWED_UPLOAD_TYPES", "UNAUTHORIZED_MESSAGE", "build_api_app"]

Auth: TypeAlias = Literal["bearer", "either", "public"]
Handler: TypeAlias = Callable[[web.Request], Awaitable[web.StreamResponse]]

UNAUTHORIZED_MESSAGE = "Missing or invalid Authorization header. Provide a valid API key as a Bearer token."

#: Allowed upload content types and their size limits in bytes.
ALLOWED_UPLOAD_TYPES: dict[str, int] = {
    "image/jpeg": 10_485_760,
    "image/png": 10_485_760,
    "image/webp": 10_485_760,
    "image/gif": 10_485_760,
    "video/mp4": 104_857_600,
    "video/webm": 104_857_600,
    "audio/mpeg": 52_428_800,
    "audio/wav": 52_428_800,
}

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


class _Api:
    """The API origin's handlers over one `FakeState`."""

    def __init__(self, state: FakeState) -> None:
        self.state = state
        #: Sends a job's webhook at once (set by the server; the "early" fault).
        self.early_hook: Callable[[str], Awaitable[object]] | None = None

    # -- plumbing -------------------------------------------------------------------

    def route(
        self, fn: Callable[[Call], Reply], *, auth: Auth, group: Group
    ) -> Handler:
        """Wrap a handler with recording, faults, auth, envelopes and error mapping."""

        async def handle(request: web.Request) -> web.StreamResponse:
            state = self.state
            request_id = new_request_id()
            try:
                raw = await request.read()
            except web.HTTPRequestEntityTooLarge:
                return error_response(
                    request_id, 413, "PAYLOAD_TOO_LARGE", "Request body is too large."
                )
            body = parse_body(raw)
            fault = state.faults.take("api", request.method, request.path)
            state.requests.append(
                RecordedRequest(
                    method=request.method,
                    path=request.path,
                    query=dict(request.query),
                    headers=dict(request.headers),
                    json=recorded_json(body),
                    time=state.now(),
                    fault=fault.kind if fault else None,
                    request_id=request_id,
                )
            )
            early = await fault_before(fault, request, request_id)
            if early is not None:
                return early
            state.settle()
            late = fault is not None and fault.kind == "late_create"
            if late:
                assert fault is not None  # noqa: S101 -- narrowed by `late`
                state.creation_delay = max(fault.seconds, 0.001)
            try:
                self.authenticate(request, auth)
                call = Call(
                    request=request, request_id=request_id, now=state.now(), body=body
                )
                response = render(
                    fn(call),
                    envelope=state.envelope,
                    group=group,
                    request_id=request_id,
                )
            except ApiError as exc:
                response = error_response(
                    request_id, exc.status, exc.code, exc.message, exc.details
                )
            finally:
                state.creation_delay = 0.0
            if late:
                assert fault is not None  # noqa: S101 -- narrowed by `late`
                return await _withhold(request, fault, response)
            while state.early_pending and self.early_hook is not None:
                await self.early_hook(state.early_pending.pop(0))
            if fault is not None and fault.kind == "drop_after":
                drop_connection(request)
            elif fault is not None and fault.kind == "garbage":
                return garble(response, fault)
            return response

        return handle

    def authenticate(self, request: web.Request, auth: Auth) -> None:
        """Raise the 401 `ApiError` unless the request carries the API key."""
        if auth == "public" or not self.state.require_auth:
            return
        offered: list[str] = []
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() == "bearer" and token.strip():
            offered.append(token.strip())
        if auth == "either" and request.headers.get("x-api-key", "").strip():
            offered.append(request.headers["x-api-key"].strip())
        if not offered:
            raise ApiError(401, "UNAUTHORIZED", UNAUTHORIZED_MESSAGE)
        key = self.state.api_key.encode()
        if not any(hmac.compare_digest(o.encode(), key) for o in offered):
            raise ApiError(401, "INVALID_API_KEY", "Invalid API key.")

    def build(self) -> web.Application:
        """Return the aiohttp application of the API origin."""
        app = web.Application()
        add = app.router.add_route
        jobs: dict[str, Any] = {"auth": "bearer", "group": "jobs"}
        models: dict[str, Any] = {"auth": "either", "group": "models"}
        catalog: dict[str, Any] = {"auth": "public", "group": "catalog"}
        uploads: dict[str, Any] = {"auth": "bearer", "group": "uploads"}
        add("POST", "/v1/jobs/submit", self.route(self.submit, **jobs))
        add("POST", "/v1/jobs/estimate", self.route(self.estimate, **jobs))
        add("GET", "/v1/jobs", self.route(self.list_jobs, **jobs))
        add("GET", "/v1/jobs/{job_id}", self.route(self.get_job, **jobs))
        add("POST", "/v1/jobs/{job_id}/cancel", self.route(self.cancel, **jobs))
        add("POST", "/v1/uploads/presign", self.route(self.presign, **uploads))
        add("GET", "/v1/uploads/{file_id}", self.route(self.get_upload, **uploads))
        add("GET", "/v1/models", self.route(self.list_models, **models))
        add("GET", "/v1/models/{model_id}", self.route(self.get_model, **models))
        add("GET", "/v1/providers", self.route(self.list_providers, **models))
        add(
            "GET",
            "/v1/providers/{provider_id}/models",
            self.route(self.provider_models, **models),
        )
        add("GET", "/v1/catalog/models", self.route(self.catalog_models, **catalog))
        add(
            "GET",
            "/v1/catalog/models/{slug:.+}",
            self.route(self.catalog_model, **catalog),
        )
        add(
            "GET",
            "/v1/catalog/providers",
            self.route(self.catalog_providers, **catalog),
        )
        add(
            "GET",
            "/v1/catalog/providers/{provider_id}",
            self.route(self.catalog_provider, **catalog),
        )
        add(
            "GET",
            "/v1/catalog/categories",
            self.route(self.catalog_categories, **catalog),
        )
        add(
            "GET",
            "/v1/catalog/capability-groups",
            self.route(self.catalog_capability_groups, **catalog),
        )
        add("*", "/{tail:.*}", self.route(self.not_found, **catalog))
        return app

    # -- shared lookups -------------------------------------------------------------

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

    def job_of(self, call: Call) -> FakeJob:
        """Return the job named in the path."""
        job_id = call.request.match_info["job_id"]
        job = self.state.jobs.get(job_id)
        if job is None:
            raise ApiError(
                404, "JOB_NOT_FOUND", f"Job '{job_id}' not found.", {"jobId": job_id}
            )
        return job

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
            wrapped_extra={"cost": job.cost},
        )

    # -- jobs -----------------------------------------------------------------------

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
                        "retryAfter": state.concurrency_retry_after,
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
        if state.early_webhooks > 0 and webhook_url is not None:
            state.early_webhooks -= 1
            state.force_terminal(job.id, "completed")
            state.early_pending.append(job.id)
        return Reply(
            payload={
                "jobId": job.id,
                "status": "pending",
                "estimatedCompletionTime": iso(job.estimated_completion_time),
                "costMicroCents": job.cost,
            },
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
            raise ApiError(
                400,
                "INVALID_WEBHOOK_URL",
                "webhookUrl must be a valid HTTPS URL.",
                {"webhookUrl": url},
            )

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
        newest_first = list(reversed(self.state.jobs.values()))
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

    # -- uploads --------------------------------------------------------------------

    def presign(self, call: Call) -> Reply:
        """``POST /v1/uploads/presign``."""
        body = call.json_object(code="VALIDATION_ERROR")
        for field in ("filename", "contentType"):
            if not isinstance(body.get(field), str) or not body[field].strip():
                raise ApiError(
                    400,
                    "VALIDATION_ERROR",
                    f"{field} is required.",
                    {"field": field},
                )
        content_type = body["contentType"].strip().lower()
        if content_type not in ALLOWED_UPLOAD_TYPES:
            raise ApiError(
                400,
                "INVALID_CONTENT_TYPE",
                f"Content type '{body['contentType']}' is not allowed.",
                {
                    "contentType": body["contentType"],
                    "allowed": list(ALLOWED_UPLOAD_TYPES),
                },
            )
        filename = body["filename"].replace("\\", "/").rsplit("/", 1)[-1].strip()
        if filename in {"", ".", ".."}:
            raise ApiError(
                400, "VALIDATION_ERROR", "filename is invalid.", {"field": "filename"}
            )
        upload = FakeUpload(
            id=str(uuid.uuid4()),
            filename=filename,
            content_type=content_type,
            max_size=ALLOWED_UPLOAD_TYPES[content_type],
            created_at=floor_ms(call.now),
        )
        self.state.uploads[upload.id] = upload
        tail = f"{upload.id}/{quote(filename)}"
        return Reply(
            payload={
                "uploadUrl": f"{self.state.cdn_url}/storage/temp/{tail}",
                "fileUrl": f"{self.state.cdn_url}/temp/{tail}",
                "fileId": upload.id,
                "expiresAt": iso(upload.expires_at),
                "maxSize": upload.max_size,
            }
        )

    def get_upload(self, call: Call) -> Reply:
        """``GET /v1/uploads/{id}``."""
        file_id = call.request.match_info["file_id"]
        upload = self.state.uploads.get(file_id)
        if upload is None:
            raise ApiError(
                404, "NOT_FOUND", f"Upload '{file_id}' not found.", {"id": file_id}
            )
        return Reply(
            payload={
                "id": upload.id,
                "filename": upload.filename,
                "contentType": upload.content_type,
                "fileUrl": f"{self.state.cdn_url}/temp/{upload.id}/{quote(upload.filename)}",
                "status": upload.status_at(call.now),
                "createdAt": iso(upload.created_at),
                "expiresAt": iso(upload.expires_at),
            }
        )

    # -- models and providers -------------------------------------------------------

    def list_models(self, call: Call) -> Reply:  # noqa: ARG002 -- uniform handler signature
        """``GET /v1/models``."""
        return Reply(payload={"models": [model_summary(m) for m in MODELS.values()]})

    def get_model(self, call: Call) -> Reply:
        """``GET /v1/models/{modelId}`` (an id like ``model_klingo1std``, not a slug)."""
        model_id = call.request.match_info["model_id"]
        for model in MODELS.values():
            if model.id == model_id:
                return Reply(payload=model_detail(model))
        raise ApiError(
            404,
            "MODEL_NOT_FOUND",
            f"Model '{model_id}' not found.",
            {"modelId": model_id},
        )

    def list_providers(self, call: Call) -> Reply:  # noqa: ARG002 -- uniform handler signature
        """``GET /v1/providers``."""
        return Reply(
            payload={"providers": [provider_json(p) for p in PROVIDERS.values()]}
        )

    def provider_models(self, call: Call) -> Reply:
        """``GET /v1/providers/{providerId}/models``."""
        provider = self._provider(call)
        models = [m for m in MODELS.values() if m.provider_id == provider.id]
        return Reply(
            payload={
                "provider": provider_json(provider),
                "models": [model_summary(m, with_provider=False) for m in models],
            }
        )

    def _provider(self, call: Call) -> ProviderSpec:
        provider_id = call.request.match_info["provider_id"]
        provider = PROVIDERS.get(provider_id)
        if provider is None:
            raise ApiError(
                404,
                "NOT_FOUND",
                f"Provider '{provider_id}' not found.",
                {"providerId": provider_id},
            )
        return provider

    # -- catalogue ------------------------------------------------------------------

    def catalog_models(self, call: Call) -> Reply:
        """``GET /v1/catalog/models`` with optional category/capability/provider filters."""
        query = call.request.query
        items = [
            catalog_model_item(m)
            for m in MODELS.values()
            if query.get("category", m.category) == m.category
            and query.get("capability", m.capability) == m.capability
            and query.get("provider", m.provider_id) == m.provider_id
        ]
        return Reply(payload=items, list_key="models")

    def catalog_model(self, call: Call) -> Reply:
        """``GET /v1/catalog/models/{slug}`` (the slug contains slashes)."""
        slug = call.request.match_info["slug"]
        model = resolve_model(slug)
        if model is None:
            raise ApiError(
                404, "MODEL_NOT_FOUND", f"Model '{slug}' not found.", {"model": slug}
            )
        return Reply(payload=catalog_model_detail(model))

    def catalog_providers(self, call: Call) -> Reply:  # noqa: ARG002 -- uniform handler signature
        """``GET /v1/catalog/providers``."""
        return Reply(
            payload=[catalog_provider(p) for p in PROVIDERS.values()],
            list_key="providers",
        )

    def catalog_provider(self, call: Call) -> Reply:
        """``GET /v1/catalog/providers/{id}``."""
        return Reply(payload=catalog_provider(self._provider(call), with_models=True))

    def catalog_categories(self, call: Call) -> Reply:  # noqa: ARG002 -- uniform handler signature
        """``GET /v1/catalog/categories``."""
        return Reply(payload=catalog_categories(), list_key="categories")

    def catalog_capability_groups(self, call: Call) -> Reply:  # noqa: ARG002 -- uniform handler signature
        """``GET /v1/catalog/capability-groups``."""
        return Reply(payload=catalog_capability_groups(), list_key="capabilityGroups")

    def not_found(self, call: Call) -> Reply:
        """Any other path: 404 ``NOT_FOUND`` in the error envelope."""
        request = call.request
        raise ApiError(
            404,
            "NOT_FOUND",
            f"Route {request.method} {request.path} not found.",
            {"method": request.method, "path": request.path},
        )


async def _withhold(
    request: web.Request, fault: Fault, response: web.StreamResponse
) -> web.StreamResponse:
    """A late-creation fault: never let the client see the answer."""
    if fault.late_answer == "hang":
        await hold_until_gone(request, fault.hold)
    drop_connection(request)
    return response


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


def build_api_app(
    state: FakeState, *, early_hook: Callable[[str], Awaitable[object]] | None = None
) -> web.Application:
    """Return the aiohttp application serving the API origin over *state*."""
    api = _Api(state)
    api.early_hook = early_hook
    return api.build()
