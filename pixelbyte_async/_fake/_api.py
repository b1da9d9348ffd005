"""
The fake's API origin: its routes, and what every request goes through.

Each request is recorded, meets its injected fault, is authenticated, and its
`Reply` is put in the configured envelope (errors in the error envelope).  The
handlers themselves live by resource: `SubmitHandlers` and `JobHandlers`
(``/v1/jobs``), `UploadHandlers` (``/v1/uploads``) and `CatalogHandlers`
(``/v1/models``, ``/v1/providers``, ``/v1/catalog``).
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Awaitable, Callable
from email.utils import formatdate
from typing import Any, Literal, TypeAlias

from aiohttp import web

from ._api_catalog import CatalogHandlers
from ._api_jobs import JobHandlers, SubmitHandlers
from ._api_uploads import UploadHandlers
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
from ._records import RecordedRequest
from ._state import FakeState
from ._util import new_request_id


#: Each API request and its answer's status (the sandbox's ``--log requests``).
REQUEST_LOG = logging.getLogger("pixelbyte_async.testing.requests")

__all__ = ["UNAUTHORIZED_MESSAGE", "build_api_app"]

Auth: TypeAlias = Literal["bearer", "either", "public"]
Handler: TypeAlias = Callable[[web.Request], Awaitable[web.StreamResponse]]

UNAUTHORIZED_MESSAGE = "Missing or invalid Authorization header. Provide a valid API key as a Bearer token."


class _Api:
    """The API origin over one `FakeState`: the route table and its plumbing."""

    def __init__(self, state: FakeState) -> None:
        self.state = state
        #: Sends a job's webhook at once (set by the server; the "early" fault).
        self.early_hook: Callable[[str], Awaitable[object]] | None = None
        self.submits = SubmitHandlers(state)
        self.jobs = JobHandlers(state)
        self.uploads = UploadHandlers(state)
        self.catalog = CatalogHandlers()

    # -- plumbing -------------------------------------------------------------------

    def route(
        self, fn: Callable[[Call], Reply], *, auth: Auth, group: Group
    ) -> Handler:
        """Wrap a handler with recording, faults, auth, envelopes, errors and dates."""
        answer = self._answering(fn, auth=auth, group=group)

        async def handle(request: web.Request) -> web.StreamResponse:
            response = await answer(request)
            # Dated by the server's own clock, as a real server dates its answers.
            response.headers["Date"] = formatdate(self.state.now(), usegmt=True)
            if REQUEST_LOG.isEnabledFor(logging.INFO):
                REQUEST_LOG.info(
                    "%s %s -> %d", request.method, request.path_qs, response.status
                )
            return response

        return handle

    def _answering(
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
        jobs_route: dict[str, Any] = {"auth": "bearer", "group": "jobs"}
        models_route: dict[str, Any] = {"auth": "either", "group": "models"}
        catalog_route: dict[str, Any] = {"auth": "public", "group": "catalog"}
        uploads_route: dict[str, Any] = {"auth": "bearer", "group": "uploads"}
        add("POST", "/v1/jobs/submit", self.route(self.submits.submit, **jobs_route))
        add(
            "POST", "/v1/jobs/estimate", self.route(self.submits.estimate, **jobs_route)
        )
        add("GET", "/v1/jobs", self.route(self.jobs.list_jobs, **jobs_route))
        add("GET", "/v1/jobs/{job_id}", self.route(self.jobs.get_job, **jobs_route))
        add(
            "POST",
            "/v1/jobs/{job_id}/cancel",
            self.route(self.jobs.cancel, **jobs_route),
        )
        add(
            "POST",
            "/v1/uploads/presign",
            self.route(self.uploads.presign, **uploads_route),
        )
        add(
            "GET",
            "/v1/uploads/{file_id}",
            self.route(self.uploads.get_upload, **uploads_route),
        )
        add("GET", "/v1/models", self.route(self.catalog.list_models, **models_route))
        add(
            "GET",
            "/v1/models/{model_id}",
            self.route(self.catalog.get_model, **models_route),
        )
        add(
            "GET",
            "/v1/providers",
            self.route(self.catalog.list_providers, **models_route),
        )
        add(
            "GET",
            "/v1/providers/{provider_id}/models",
            self.route(self.catalog.provider_models, **models_route),
        )
        add(
            "GET",
            "/v1/catalog/models",
            self.route(self.catalog.catalog_models, **catalog_route),
        )
        add(
            "GET",
            "/v1/catalog/models/{slug:.+}",
            self.route(self.catalog.catalog_model, **catalog_route),
        )
        add(
            "GET",
            "/v1/catalog/providers",
            self.route(self.catalog.catalog_providers, **catalog_route),
        )
        add(
            "GET",
            "/v1/catalog/providers/{provider_id}",
            self.route(self.catalog.catalog_provider, **catalog_route),
        )
        add(
            "GET",
            "/v1/catalog/categories",
            self.route(self.catalog.catalog_categories, **catalog_route),
        )
        add(
            "GET",
            "/v1/catalog/capability-groups",
            self.route(self.catalog.catalog_capability_groups, **catalog_route),
        )
        add("*", "/{tail:.*}", self.route(self.not_found, **catalog_route))
        return app

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


def build_api_app(
    state: FakeState, *, early_hook: Callable[[str], Awaitable[object]] | None = None
) -> web.Application:
    """Return the aiohttp application serving the API origin over *state*."""
    api = _Api(state)
    api.early_hook = early_hook
    return api.build()
