"""HTTP plumbing shared by the fake's two origins: envelopes, errors, faults, drops."""

from __future__ import annotations

import asyncio
import json
from typing import Any, Literal, TypeAlias

import attrs
from aiohttp import web

from ._faults import Fault
from ._state import Envelope
from ._util import json_number


__all__ = [
    "ApiError",
    "Call",
    "Group",
    "Reply",
    "drop_connection",
    "error_response",
    "fault_response",
    "garble",
    "hold_until_gone",
    "render",
]

#: Which family an endpoint belongs to; decides the envelope in ``"mixed"`` mode.
Group: TypeAlias = Literal["jobs", "models", "catalog", "uploads"]

_NO_BODY: Any = object()

_HTML_PAGE = """<html>
<head><title>{status} {reason}</title></head>
<body>
<center><h1>{status} {reason}</h1></center>
<hr><center>nginx</center>
</body>
</html>
"""


class ApiError(Exception):
    """
    Raised by a handler to answer with the error envelope.

    Args:
        status: HTTP status.
        code: ``error.code``.
        message: ``error.message``.
        details: ``error.details``.

    """

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        details: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.details = details or {}


@attrs.frozen(kw_only=True)
class Call:
    """One API request as a handler sees it."""

    request: web.Request
    request_id: str
    now: float
    body: Any = _NO_BODY

    def json_object(self, *, code: str = "INVALID_INPUT") -> dict[str, Any]:
        """
        Return the JSON object body.

        Raises:
            ApiError: 400 *code* when the body is missing, not JSON or not an object.

        """
        if self.body is _NO_BODY:
            raise ApiError(400, code, "Request body must be a JSON object.")
        if not isinstance(self.body, dict):
            raise ApiError(400, code, "Request body must be a JSON object.")
        return self.body


def parse_body(raw: bytes) -> Any:
    """Return the parsed JSON of *raw*, or the no-body sentinel when it is not JSON."""
    if not raw.strip():
        return _NO_BODY
    try:
        return json.loads(raw)
    except ValueError:
        return _NO_BODY


def recorded_json(body: Any) -> Any:
    """Return *body* for `RecordedRequest.json` (`None` for the no-body sentinel)."""
    return None if body is _NO_BODY else body


@attrs.frozen(kw_only=True)
class Reply:
    """
    A successful answer before the envelope is applied.

    Args:
        payload: The object (or, for catalogue lists, the array) to send.
        status: HTTP status.
        list_key: For catalogue lists: the wrapper key of the ``flat`` and
            ``wrapped`` forms (``mixed`` sends the bare array, as the docs' examples).
        request_id_in_flat: Add ``requestId`` to a flat body (submit does).
        wrapped_extra: Fields only the enveloped (quickstart) flavour carries.

    """

    payload: Any
    status: int = 200
    list_key: str | None = None
    request_id_in_flat: bool = False
    wrapped_extra: dict[str, Any] = attrs.field(factory=dict)


def _headers(request_id: str) -> dict[str, str]:
    return {"X-Request-Id": request_id}


def render(
    reply: Reply, *, envelope: Envelope, group: Group, request_id: str
) -> web.Response:
    """Apply the envelope of *group* under *envelope* and build the response."""
    wrapped = envelope == "wrapped" or (envelope == "mixed" and group == "uploads")
    payload = reply.payload
    if reply.list_key is not None and envelope != "mixed":
        payload = {reply.list_key: payload}
    if wrapped:
        if isinstance(payload, dict):
            payload = {**payload, **reply.wrapped_extra}
        body: Any = {"success": True, "data": payload, "requestId": request_id}
    elif reply.request_id_in_flat and isinstance(payload, dict):
        body = {**payload, "requestId": request_id}
    else:
        body = payload
    return web.json_response(body, status=reply.status, headers=_headers(request_id))


def error_response(
    request_id: str,
    status: int,
    code: str,
    message: str,
    details: dict[str, Any] | None = None,
    *,
    headers: dict[str, str] | None = None,
) -> web.Response:
    """Build the ``success: false`` error envelope."""
    body = {
        "success": False,
        "error": {"code": code, "message": message, "details": details or {}},
        "requestId": request_id,
    }
    return web.json_response(
        body, status=status, headers={**_headers(request_id), **(headers or {})}
    )


def fault_response(fault: Fault, request_id: str) -> web.Response:
    """Build the response of a ``status`` or ``html`` fault."""
    status = fault.http_status or 500
    if fault.kind == "html":
        reason = web.Response(status=status).reason
        return web.Response(
            status=status,
            text=_HTML_PAGE.format(status=status, reason=reason),
            content_type="text/html",
            headers=_headers(request_id),
        )
    details: dict[str, Any] = {}
    if fault.retry_after is not None:
        details["retryAfter"] = json_number(fault.retry_after)
    headers = {}
    if fault.retry_after_header is not None:
        headers["Retry-After"] = fault.retry_after_header
    return error_response(
        request_id,
        status,
        fault.code or "INTERNAL_ERROR",
        fault.message or "Injected fault.",
        details,
        headers=headers,
    )


def garble(response: web.StreamResponse, fault: Fault) -> web.Response:
    """Return *response* with its body cut in half (never valid JSON)."""
    raw = response.body if isinstance(response, web.Response) else None
    body = raw if isinstance(raw, bytes) else b""
    cut = body[: len(body) // 2] if len(body) > 1 else b'{"success":'
    headers = {k: v for k, v in response.headers.items() if k.lower() == "x-request-id"}
    return web.Response(
        status=fault.http_status or 200,
        body=cut,
        content_type="application/json",
        headers=headers,
    )


def drop_connection(request: web.BaseRequest) -> None:
    """
    Close the client's connection without writing a response.

    The handler must still return a response object; aiohttp then fails to write
    it to the closed transport and quietly drops it.
    """
    transport = request.transport
    request.protocol.force_close()
    if (
        transport is not None and not transport.is_closing()
    ):  # pragma: no cover -- force_close closes it; belt and braces
        transport.abort()


async def hold_until_gone(request: web.BaseRequest, limit: float) -> None:
    """Keep *request*'s connection open until the client closes it (at most *limit* s)."""
    loop = asyncio.get_running_loop()
    end = loop.time() + limit
    while loop.time() < end:
        transport = request.transport
        if transport is None or transport.is_closing():
            return
        await asyncio.sleep(0.005)


async def fault_before(
    fault: Fault | None, request: web.BaseRequest, request_id: str
) -> web.StreamResponse | None:
    """
    Apply the part of *fault* that acts before the handler runs.

    Returns the response to send instead of handling (a dropped connection, an error
    answer), or ``None`` to go on (no fault, after a delay, or a fault that acts
    afterwards).
    """
    if fault is None:
        return None
    if fault.kind == "delay":
        await asyncio.sleep(fault.seconds)
    elif fault.kind == "drop_before":
        drop_connection(request)
        return web.Response()
    elif fault.kind in {"status", "html"}:
        return fault_response(fault, request_id)
    return None
