"""
The fake's CDN origin: job outputs and upload storage, on a different port.

A different port is a different origin, so a client that leaks its API key to the CDN
(or follows the API's base URL for downloads) is caught: every request is recorded
with its ``Authorization`` header in `FakeState.cdn_requests`.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Awaitable, Callable
from typing import TypeAlias

from aiohttp import web

from ._catalog import MODELS
from ._http import drop_connection, fault_before, garble
from ._jobs import cdn_files
from ._records import CdnRequest
from ._state import FakeState
from ._util import read_data


__all__ = ["build_cdn_app"]

Handler: TypeAlias = Callable[[web.Request], Awaitable[web.StreamResponse]]

_RANGE_RE = re.compile(r"^bytes=(\d*)-(\d*)$")
_CHUNK = 64 * 1024


def _s3_error(status: int, code: str, message: str) -> web.Response:
    body = (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f"<Error><Code>{code}</Code><Message>{message}</Message></Error>"
    )
    return web.Response(status=status, text=body, content_type="application/xml")


def _byte_range(header: str | None, size: int) -> tuple[int, int] | bool | None:
    """
    Parse a single ``Range`` header.

    Returns:
        ``(first, last)`` inclusive; `None` to serve everything (no or unsupported
        header); `False` when the range cannot be satisfied.

    """
    if header is None:
        return None
    match = _RANGE_RE.match(header.strip())
    if match is None:
        return None
    first, last = match.groups()
    if not first and not last:
        return None
    if not first:
        length = int(last)
        if length == 0:
            return False
        return max(0, size - length), size - 1
    start = int(first)
    if start >= size:
        return False
    end = min(int(last), size - 1) if last else size - 1
    if end < start:
        return None
    return start, end


def serve_bytes(request: web.Request, data: bytes, content_type: str) -> web.Response:
    """Serve *data* with ``Content-Length``, an ``ETag`` and single-range support."""
    headers = {
        "Accept-Ranges": "bytes",
        "ETag": f'"{hashlib.md5(data, usedforsecurity=False).hexdigest()}"',
        "Cache-Control": "public, max-age=86400",
    }
    wanted = _byte_range(request.headers.get("Range"), len(data))
    if wanted is False:
        headers["Content-Range"] = f"bytes */{len(data)}"
        return web.Response(status=416, headers=headers)
    if isinstance(wanted, tuple):
        first, last = wanted
        headers["Content-Range"] = f"bytes {first}-{last}/{len(data)}"
        return web.Response(
            status=206,
            body=data[first : last + 1],
            content_type=content_type,
            headers=headers,
        )
    return web.Response(body=data, content_type=content_type, headers=headers)


class _Cdn:
    """The CDN origin's handlers over one `FakeState`."""

    def __init__(self, state: FakeState) -> None:
        self.state = state
        self.files: dict[str, bytes] = {}

    def data(self, name: str) -> bytes:
        """Return (and cache) the package data file *name*."""
        if name not in self.files:
            self.files[name] = read_data(name)
        return self.files[name]

    def route(self, fn: Handler) -> Handler:
        """Wrap a handler with recording and fault injection."""

        async def handle(request: web.Request) -> web.StreamResponse:
            state = self.state
            fault = state.faults.take("cdn", request.method, request.path)
            state.cdn_requests.append(
                CdnRequest(
                    method=request.method,
                    path=request.path,
                    authorization=request.headers.get("Authorization"),
                    time=state.now(),
                    headers=dict(request.headers),
                    fault=fault.kind if fault else None,
                )
            )
            early = await fault_before(fault, request, "req_cdn")
            if early is not None:
                return early
            response = await fn(request)
            if fault is not None and fault.kind == "drop_after":
                drop_connection(request)
            elif fault is not None and fault.kind == "garbage":
                return garble(response, fault)
            return response

        return handle

    def build(self) -> web.Application:
        """Return the aiohttp application of the CDN origin."""
        app = web.Application()
        router = app.router
        router.add_get("/outputs/{job_id}/{name}", self.route(self.output))
        router.add_put(
            "/storage/temp/{file_id}/{filename}", self.route(self.put_upload)
        )
        router.add_get("/temp/{file_id}/{filename}", self.route(self.get_upload))
        router.add_route("*", "/{tail:.*}", self.route(self.not_found))
        return app

    async def output(self, request: web.Request) -> web.StreamResponse:
        """``GET /outputs/{jobId}/{name}``: files of completed jobs only."""
        job = self.state.jobs.get(request.match_info["job_id"])
        if job is None or job.status_at(self.state.now()) != "completed":
            return _s3_error(404, "NoSuchKey", "The specified key does not exist.")
        files = cdn_files(MODELS[job.model])
        entry = files.get(request.match_info["name"])
        if entry is None:
            return _s3_error(404, "NoSuchKey", "The specified key does not exist.")
        data_name, content_type = entry
        return serve_bytes(request, self.data(data_name), content_type)

    async def put_upload(self, request: web.Request) -> web.StreamResponse:
        """``PUT /storage/temp/{fileId}/{filename}``: the presigned upload."""
        state = self.state
        upload = state.uploads.get(request.match_info["file_id"])
        if upload is None or upload.filename != request.match_info["filename"]:
            return _s3_error(404, "NoSuchUpload", "The presigned URL is unknown.")
        if state.now() >= upload.upload_deadline:
            return _s3_error(403, "AccessDenied", "Request has expired")
        if request.content_type.lower() != upload.content_type:
            return _s3_error(
                403,
                "SignatureDoesNotMatch",
                f"Content-Type must be {upload.content_type}",
            )
        if (
            request.content_length is not None
            and request.content_length > upload.max_size
        ):
            return self._too_large(upload.max_size)
        chunks: list[bytes] = []
        size = 0
        while chunk := await request.content.read(_CHUNK):
            size += len(chunk)
            if size > upload.max_size:
                return self._too_large(upload.max_size)
            chunks.append(chunk)
        upload.data = b"".join(chunks)
        upload.uploaded_at = state.now()
        etag = hashlib.md5(upload.data, usedforsecurity=False).hexdigest()
        return web.Response(status=200, headers={"ETag": f'"{etag}"'})

    def _too_large(self, max_size: int) -> web.Response:
        # The rest of the body is never read, so this connection cannot be reused.
        response = _s3_error(
            413,
            "EntityTooLarge",
            f"Your proposed upload exceeds the maximum allowed size of {max_size} bytes",
        )
        response.force_close()
        return response

    async def get_upload(self, request: web.Request) -> web.StreamResponse:
        """``GET /temp/{fileId}/{filename}``: the uploaded file, for 60 minutes."""
        state = self.state
        upload = state.uploads.get(request.match_info["file_id"])
        if (
            upload is None
            or upload.data is None
            or upload.filename != request.match_info["filename"]
            or upload.status_at(state.now()) == "expired"
        ):
            return _s3_error(404, "NoSuchKey", "The specified key does not exist.")
        return serve_bytes(request, upload.data, upload.content_type)

    async def not_found(self, request: web.Request) -> web.StreamResponse:  # noqa: ARG002 -- handler signature
        """Anything else."""
        return _s3_error(404, "NoSuchKey", "The specified key does not exist.")


def build_cdn_app(state: FakeState) -> web.Application:
    """Return the aiohttp application serving the CDN origin over *state*."""
    return _Cdn(state).build()
