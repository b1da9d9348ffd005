"""
Files: uploads of local inputs (presign + PUT) and downloads of outputs.

Downloads stream into a temporary file that is renamed into place only when whole
and of the announced size; the API key goes only to the API's own origin (never to
the CDN or the upload host).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import ipaddress
import logging
import mimetypes
import os
import secrets
import time
from collections.abc import AsyncIterator, Callable, Mapping
from pathlib import Path
from typing import IO, Any, TypeVar
from urllib.parse import urljoin, urlsplit

import anyio
import attrs

from ._errors import (
    DownloadError,
    PixelByteError,
    RequestTimeout,
    ResponseDecodeError,
    TransportError,
    ValidationError,
    loggable_url,
)
from ._inputs import (
    IMAGE_MAX_BYTES,
    ModelInput,
    check_image,
    check_url,
    is_binary_file,
    is_loopback,
    read_local,
    sniff_image_type,
)
from ._models import Upload
from ._pipeline import RequestPipeline
from ._serde import decode_upload, url_problem
from ._telemetry import http_call
from ._transport import Request, StreamResponse, Transport


__all__ = ["Files", "on_disk", "stream_to_file"]

log = logging.getLogger("pixelbyte_async")

T = TypeVar("T")

#: What the upload endpoint accepts, and the largest file of each type.
UPLOAD_TYPES: Mapping[str, int] = {
    "image/jpeg": 10 * 1024**2,
    "image/png": 10 * 1024**2,
    "image/webp": 10 * 1024**2,
    "image/gif": 10 * 1024**2,
    "video/mp4": 100 * 1024**2,
    "video/webm": 100 * 1024**2,
    "audio/mpeg": 50 * 1024**2,
    "audio/wav": 50 * 1024**2,
}
#: The most an upload's source is read before its type is known.
_UPLOAD_MAX = max(UPLOAD_TYPES.values())


class Files:
    """The uploads and downloads of one client, through its request pipeline."""

    def __init__(self, pipeline: RequestPipeline) -> None:
        self._pipeline = pipeline

    async def upload(
        self,
        source: os.PathLike[str] | bytes | IO[bytes],
        *,
        filename: str | None = None,
        content_type: str | None = None,
        timeout: float | None = None,
    ) -> Upload:
        """Check *source* (type sniffed, size), presign and PUT it: see `PixelByte.upload`."""
        data, name = await _read_source(source, filename, limit=_UPLOAD_MAX)
        sniffed = sniff_image_type(data)
        guessed = mimetypes.guess_type(name)[0] or ""
        if sniffed is None and content_type is None and guessed.startswith("image/"):
            raise ValidationError(
                f"cannot upload {name!r}: it is named like an image but is not a "
                "JPEG, PNG, WebP or GIF image",
                field="source",
            )
        ctype = content_type or sniffed or guessed
        if ctype not in UPLOAD_TYPES:
            raise ValidationError(
                f"cannot upload {name!r}: type {ctype or 'unknown'} is not one of "
                f"{', '.join(UPLOAD_TYPES)}",
                field="content_type",
            )
        if not data:
            raise ValidationError(f"{name!r} is empty", field="source")
        if len(data) > UPLOAD_TYPES[ctype]:
            size = "over" if len(data) > _UPLOAD_MAX else f"{len(data)} bytes,"
            raise ValidationError(
                f"{name!r} is {size} {ctype} uploads may be at most "
                f"{UPLOAD_TYPES[ctype]} bytes",
                field="source",
            )
        if "." not in name:
            name += mimetypes.guess_extension(ctype) or ""
        deadline = self._pipeline.clock.monotonic() + (
            timeout or self._pipeline.config.timeout
        )
        payload, rid = await self._pipeline.request(
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
        await self._put(upload.upload_url, data, ctype, deadline)
        log.debug("uploaded %s (%d bytes) request_id=%s", name, len(data), rid)
        return upload

    async def _put(self, url: str, data: bytes, ctype: str, deadline: float) -> None:
        headers = {**self._pipeline.headers_for(url), "Content-Type": ctype}

        async def put(remaining: float) -> None:
            with http_call("PUT", url, kind="upload") as call:
                resp = await self._pipeline.transport.send(
                    Request(
                        method="PUT",
                        url=url,
                        headers=headers,
                        content=data,
                        timeout=remaining,
                    )
                )
                call.response(resp.status)
            if resp.status >= 300:  # noqa: PLR2004 -- HTTP non-success
                raise self._pipeline.api_error(resp.status, None, resp, "PUT", "upload")

        await self._pipeline.retrying(
            put, deadline=deadline, decide=self._pipeline.decide_safe, what="PUT upload"
        )

    async def upload_frames(self, model: ModelInput, deadline: float) -> ModelInput:
        """Upload *model*'s local frames within *deadline*; return it with their URLs."""
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
                remaining = deadline - self._pipeline.clock.monotonic()
                if remaining <= 0:
                    raise RequestTimeout(
                        "submit: the deadline passed while uploading local frames; "
                        "nothing was submitted",
                        request_sent=False,
                    )
                # Read (in a thread, within the limit) and checked as an image
                # before anything is sent: a frame is never a video or a FIFO.
                data, filename = await _read_source(
                    value, None, limit=IMAGE_MAX_BYTES, field=name
                )
                check_image(name, data, _shown_name(value))
                uploaded = await self.upload(
                    data,
                    filename=filename,
                    timeout=min(remaining, self._pipeline.config.timeout),
                )
                done[key] = uploaded.file_url
            changes[name] = done[key]
        if not changes:
            return model
        for url in changes.values():
            check_url(url, "upload")
        evolved: ModelInput = attrs.evolve(model, **changes)  # type: ignore[misc]  # typed inputs are attrs classes
        return evolved

    async def download(
        self, url: str, path: Path, *, timeout: float | None, overwrite: bool
    ) -> Path:
        """Download *url* to *path* (atomically), retrying transport trouble."""
        self._pipeline.guard()
        config = self._pipeline.config
        sandbox = is_sandbox(config.base_url)
        problem = download_url_problem(url, sandbox=sandbox)
        if problem is not None:
            raise DownloadError(f"cannot download {loggable_url(url)!r}: {problem}")
        headers = self._pipeline.headers_for(url)
        budget = timeout or config.download_timeout
        deadline = self._pipeline.clock.monotonic() + budget

        async def fetch(remaining: float) -> Path:
            return await stream_to_file(
                self._pipeline.transport,
                url,
                path,
                headers=headers,
                timeout=remaining,
                max_bytes=config.max_download_bytes,
                overwrite=overwrite,
                sandbox=sandbox,
            )

        def decide(exc: PixelByteError, attempt: int) -> float | None:
            # Only transport trouble is worth another try; a bad size is final.
            if not isinstance(exc, TransportError):
                return None
            return self._pipeline.decide_safe(exc, attempt)

        return await self._pipeline.retrying(
            fetch, deadline=deadline, decide=decide, what="download"
        )


def _shown_name(value: object) -> str:
    """How a frame is named in an error: its path, else "the file"."""
    if isinstance(value, os.PathLike):
        return str(Path(value))
    return "the image" if isinstance(value, bytes) else "the file"


async def _read_source(
    source: os.PathLike[str] | bytes | IO[bytes],
    filename: str | None,
    *,
    limit: int,
    field: str = "source",
) -> tuple[bytes, str]:
    """
    The bytes (at most *limit* + 1) and the name of a local *source*.

    Files are read in a worker thread, never on the loop; a ``str`` is refused.
    """
    if isinstance(source, bytes | bytearray | memoryview):
        return bytes(source), filename or "upload"
    if isinstance(source, os.PathLike) or is_binary_file(source):
        data = await anyio.to_thread.run_sync(
            functools.partial(read_local, source, limit=limit, field=field)
        )
        named = (
            os.fspath(source)
            if isinstance(source, os.PathLike)
            else str(getattr(source, "name", "upload"))
        )
        return data, filename or Path(named).name
    raise ValidationError(
        "upload takes a pathlib.Path, bytes or a binary file object; a str is never "
        "opened as a file (use pathlib.Path(...) for a local file)",
        field=field,
    )


#: Redirects one download follows; each target is checked like the first URL.
MAX_REDIRECTS = 5


def is_sandbox(base_url: str) -> bool:
    """Whether the API at *base_url* is a sandbox: plain http on this machine."""
    parts = urlsplit(base_url)
    return parts.scheme == "http" and is_loopback(parts.hostname)


def download_url_problem(url: str, *, sandbox: bool) -> str | None:
    """
    Say why the SDK will not download *url*, or return ``None`` when it will.

    Outputs come from the API's storage: https only, and never this machine or a
    private network (a redirect there is how a hostile answer reaches an internal
    service).  With a sandbox API (http on loopback) its own http URLs on this
    machine are fine too.
    """
    parts = urlsplit(url)
    host = parts.hostname
    if sandbox and parts.scheme in {"http", "https"} and is_loopback(host):
        return url_problem(url)
    if parts.scheme != "https":
        return (
            "only https:// outputs are downloaded (http:// only from a sandbox "
            "on this machine)"
        )
    problem = url_problem(url)
    if problem is not None:
        return problem
    if is_loopback(host):
        return "it points at this machine (loopback)"
    try:
        address = ipaddress.ip_address((host or "").strip("[]"))
    except ValueError:
        return None  # a name: resolved by the connection, as any client does
    if not address.is_global:
        return "it points at a private or reserved address"
    return None


async def stream_to_file(
    transport: Transport,
    url: str,
    target: Path,
    *,
    headers: dict[str, str],
    timeout: float,
    max_bytes: int,
    overwrite: bool,
    sandbox: bool = False,
) -> Path:
    """
    Download *url* into *target* atomically (used by `Job.download`).

    Follows at most `MAX_REDIRECTS` redirects, each target checked with
    `download_url_problem` (and sent no credentials); a loop or a refused target is
    a `DownloadError`.
    """
    if not overwrite and await on_disk(target.exists):
        raise DownloadError(f"{target} exists and overwrite=False")
    try:
        await on_disk(target.parent.mkdir, parents=True, exist_ok=True)
    except OSError as exc:
        raise DownloadError(
            f"cannot write {target}: {exc.strerror or exc} ({exc.filename})"
        ) from exc
    tmp = target.parent / f".{target.name}.{secrets.token_hex(4)}.part"
    host = urlsplit(url).hostname or "?"
    try:
        with anyio.fail_after(timeout):
            await _follow(
                transport,
                Request(
                    method="GET",
                    url=url,
                    # The length on the wire is then the length on disk.
                    headers={**headers, "Accept-Encoding": "identity"},
                    timeout=timeout,
                ),
                tmp,
                max_bytes=max_bytes,
                sandbox=sandbox,
            )
        # In a thread: replacing a big file frees its blocks, which takes time.
        await anyio.to_thread.run_sync(tmp.replace, target)
    except BaseException as exc:
        # Synchronous on purpose: the partial file must go even when cancelled.
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        if isinstance(exc, TimeoutError) and not isinstance(exc, RequestTimeout):
            raise RequestTimeout(f"download from {host} timed out") from exc
        if isinstance(exc, OSError) and not isinstance(exc, PixelByteError):
            # The disk's trouble (a file where a folder should be, no space, no
            # permission): typed, naming the path, and not retried.
            raise DownloadError(
                f"cannot write {target}: {exc.strerror or exc}"
            ) from exc
        raise
    return target


#: Bytes gathered before one write (1 MiB: a fraction of a millisecond into the
#: page cache).
_BLOCK = 1 << 20
#: The most bytes one read of a download's body asks for.
_READ = 64 << 10
#: A file-system call on the loop slower than this (a slow or network disk)
#: sends such calls to a worker thread for `_SLOW_FOR` seconds.
_SLOW_CALL = 0.02
_SLOW_FOR = 60.0


class _Disk:
    """Whether this process's file-system calls have been slow lately."""

    slow_until = 0.0

    @classmethod
    def slow(cls) -> bool:
        return time.monotonic() < cls.slow_until

    @classmethod
    def timed(cls, began: float) -> None:
        now = time.monotonic()
        if now - began > _SLOW_CALL:
            if not cls.slow():
                log.debug(
                    "file-system call took %.0f ms: threads for a while",
                    1e3 * (now - began),
                )
            cls.slow_until = now + _SLOW_FOR


async def on_disk(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """
    Run a quick file-system call (create a file, write a block, stat, mkdir).

    On the loop while such calls are quick (a local disk answers in
    microseconds, where a worker-thread hop costs tens of them and a thread
    switch); in a worker thread for a minute after one took longer than 20 ms (a
    slow or network disk), so the loop stalls at most once on such a disk.  Never
    for reading files a caller names (a FIFO would block): only for the SDK's own
    new files and folders.
    """
    if _Disk.slow():
        return await anyio.to_thread.run_sync(functools.partial(fn, *args, **kwargs))
    began = time.monotonic()
    try:
        return fn(*args, **kwargs)
    finally:
        _Disk.timed(began)


def _create(path: Path) -> IO[bytes]:
    return path.open("wb")


async def _write_blocks(
    chunks: AsyncIterator[bytes], path: Path, *, max_bytes: int
) -> int:
    """
    Write *chunks* into *path*; return how many bytes.

    The chunks are gathered into 1 MiB blocks, each written at once (`on_disk`:
    on the loop while the disk is quick; measured: a worker thread per block ran
    at 0.74–0.95 of a bare aiohttp stream on a busy core, the loop at 0.99–1.05).
    On a slow disk each block is written in a worker thread while the loop reads
    the next.
    """
    fh = await on_disk(_create, path)
    written = 0
    block = bytearray()
    writing: asyncio.Future[int] | None = None
    try:
        async for chunk in chunks:
            written += len(chunk)
            if written > max_bytes:
                raise DownloadError(f"output exceeds the {max_bytes} byte limit")
            block += chunk
            if len(block) < _BLOCK:
                continue
            full, block = block, bytearray()
            if writing is not None:
                await writing
                writing = None
            if _Disk.slow():
                writing = asyncio.ensure_future(
                    anyio.to_thread.run_sync(fh.write, full)
                )
                continue
            began = time.monotonic()
            fh.write(full)
            _Disk.timed(began)
        if writing is not None:
            await writing
            writing = None
        if block:
            await on_disk(fh.write, block)
    finally:
        # Failed, timed out or cancelled mid-way too: the thread finishes with
        # the file before it is closed (and then removed by the caller).
        with anyio.CancelScope(shield=True):
            if writing is not None:
                await asyncio.wait({writing})
                if not writing.cancelled():
                    writing.exception()  # retrieved: the failure is raised already
            await on_disk(fh.close)
    return written


async def _follow(
    transport: Transport, request: Request, tmp: Path, *, max_bytes: int, sandbox: bool
) -> None:
    """Stream *request* into *tmp*, following checked redirects."""
    seen = {request.url}
    for _ in range(MAX_REDIRECTS + 1):
        host = urlsplit(request.url).hostname or "?"
        with http_call("GET", request.url, kind="download") as call:
            async with transport.stream(request) as resp:
                call.response(resp.status)
                if not 300 <= resp.status < 400:  # noqa: PLR2004 -- HTTP redirection
                    await _stream_into(resp, tmp, max_bytes=max_bytes, host=host)
                    return
                location = resp.headers.get("location")
        if not location:
            raise DownloadError(f"GET {host}: HTTP {resp.status} without a Location")
        target = urljoin(request.url, location.strip())
        problem = download_url_problem(target, sandbox=sandbox)
        if problem is not None:
            raise DownloadError(
                f"GET {host} was redirected to {loggable_url(target)!r}, which is "
                f"refused: {problem}"
            )
        if target in seen:
            raise DownloadError(
                f"GET {host}: redirect loop (back to {loggable_url(target)!r})"
            )
        seen.add(target)
        # A hop never carries the API key, wherever it points.
        headers = {
            k: v for k, v in request.headers.items() if k.lower() != "authorization"
        }
        request = attrs.evolve(request, url=target, headers=headers)
    raise DownloadError(
        f"GET {urlsplit(request.url).hostname}: more than {MAX_REDIRECTS} redirects"
    )


async def _stream_into(
    resp: StreamResponse, tmp: Path, *, max_bytes: int, host: str
) -> None:
    if resp.status != 200:  # noqa: PLR2004 -- HTTP OK
        raise DownloadError(f"GET {host}: HTTP {resp.status}")
    raw = resp.headers.get("content-length", "")
    declared = int(raw) if raw.isdigit() else None
    if declared is not None and declared > max_bytes:
        raise DownloadError(
            f"output is {declared} bytes, over the {max_bytes} byte limit"
        )
    # Identity was asked for; a server that encodes anyway declares the length of
    # the encoded bytes, which are decoded on the way in (and a cut stream fails
    # to decode): only an identity body's length can be compared.
    encoded = resp.headers.get("content-encoding", "identity").lower() != "identity"
    chunks = resp.iter_chunks(_READ)
    written = await _write_blocks(chunks, tmp, max_bytes=max_bytes)
    if declared is not None and not encoded and written != declared:
        raise DownloadError(f"output truncated: got {written} of {declared} bytes")
    if written == 0:
        raise DownloadError("output is empty")
