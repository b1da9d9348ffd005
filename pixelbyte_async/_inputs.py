"""
Typed request inputs, validated before anything is sent, and the local price table.
"""

from __future__ import annotations

import contextlib
import io
import ipaddress
import json
import os
import stat
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import IO, Any, ClassVar, Protocol, TypeGuard, runtime_checkable
from urllib.parse import urlsplit

import attrs

from ._errors import ValidationError


__all__ = [
    "KLING_O1_PRO_SEF",
    "KLING_O1_STANDARD_SEF",
    "PRICES",
    "FrameSource",
    "KlingO1StartEndFrame",
    "ModelInput",
    "Price",
    "local_cost",
    "usd",
    "validate_webhook_url",
]

KLING_O1_STANDARD_SEF = "kling-plus/kling-o1-standard/start-end-frame-to-video"
KLING_O1_PRO_SEF = "kling-plus/kling-o1-pro/start-end-frame-to-video"

IMAGE_MAX_BYTES = 10 * 1024 * 1024
PROMPT_MAX_CHARS = 2500

#: What a frame may be: an https URL (a ``str`` is *always* a URL, never opened),
#: or a local image given by type, which `PixelByte.submit` uploads first: a
#: `pathlib.Path` (any ``os.PathLike``), ``bytes``, or a binary file object.
FrameSource = str | os.PathLike[str] | bytes | IO[bytes]

_SNIFF_BYTES = 16
#: How deep a raw input may nest (the API's bodies are a few levels deep).
_MAX_DEPTH = 64
_IMAGE_TYPES_TEXT = "a JPEG, PNG, WebP or GIF image"


@attrs.frozen(kw_only=True)
class Price:
    """
    A model's price as the docs state it, in micro-cents (1,000,000 = US$1).

    Attributes:
        per_second: Price per second of output (video models), or ``None``.
        flat: Price per job (flat-priced models), or ``None``.
        typical_seconds: How long a job typically takes (for polling).

    .. versionadded:: 0.1.0

    """

    per_second: int | None = None
    flat: int | None = None
    typical_seconds: float | None = None
    default_duration: int = 5
    max_duration: int = 10

    @property
    def highest(self) -> int | None:
        """The most one job can cost (the longest duration), or ``None``."""
        if self.flat is not None:
            return self.flat
        return None if self.per_second is None else self.per_second * self.max_duration

    def cost(self, input: Mapping[str, Any]) -> int | None:  # noqa: A002 -- API field name
        """Return the cost of a job with *input*, or ``None`` if it cannot be told."""
        if self.flat is not None:
            return self.flat
        if self.per_second is None:
            return None
        duration = input.get("duration", self.default_duration)
        try:
            seconds = int(str(duration))
        except ValueError:
            return None
        return self.per_second * seconds


#: Prices from the model pages (contract §10); the server's word (estimate) wins.
PRICES: Mapping[str, Price] = {
    KLING_O1_STANDARD_SEF: Price(per_second=50_000, typical_seconds=240),
    KLING_O1_PRO_SEF: Price(per_second=70_000, typical_seconds=240),
    "kling-plus/kling-o1-standard/image-to-video": Price(
        per_second=50_000, typical_seconds=240
    ),
    "kling-plus/kling-o1-pro/image-to-video": Price(
        per_second=70_000, typical_seconds=240
    ),
    "kling-plus/kling-o1-standard/text-to-video": Price(
        per_second=50_000, typical_seconds=240
    ),
    "kling-plus/kling-o1-pro/text-to-video": Price(
        per_second=70_000, typical_seconds=240
    ),
    "kling-plus/kling-o1-standard/reference-to-video": Price(
        per_second=50_000, typical_seconds=240
    ),
    "kling-plus/kling-o1-pro/reference-to-video": Price(
        per_second=70_000, typical_seconds=240
    ),
    "kling-plus/kling-o1-standard/video-edit": Price(flat=30_000, typical_seconds=180),
    "kling-plus/kling-o1-pro/video-edit": Price(flat=40_000, typical_seconds=180),
    "kling-plus/kling-o1-pro/video-edit-fast": Price(flat=30_000, typical_seconds=120),
}


def priced_by(model: str, input: Mapping[str, Any]) -> Mapping[str, Any] | None:  # noqa: A002 -- API field name
    """
    What of *input* the list price of *model* depends on, or ``None`` if unknown.

    Inputs with the same answer cost the same at list prices (a batch asks the
    API's estimate once for them).
    """
    price = PRICES.get(model)
    if price is None or (price.flat is None and price.per_second is None):
        return None
    if price.flat is not None:
        return {}
    return {"duration": str(input.get("duration", price.default_duration))}


def usd(micro_cents: float) -> str:
    """Return *micro_cents* in dollars, for people: ``$1,234.50``."""
    return f"${micro_cents / 1_000_000:,.2f}"


def local_cost(model: str, input: Mapping[str, Any]) -> int | None:  # noqa: A002 -- API field name
    """Return the cost from the local price table, or ``None`` for unknown models."""
    price = PRICES.get(model)
    return None if price is None else price.cost(input)


@runtime_checkable
class ModelInput(Protocol):
    """
    What `PixelByte.submit` accepts besides a slug and a raw mapping.

    Implement `model_slug` and `to_input`; ``frame_fields`` names the fields that may
    hold local files to upload first.
    """

    @property
    def model_slug(self) -> str:
        """The model slug to submit to."""
        ...

    def to_input(self) -> dict[str, Any]:
        """Return the ``input`` object for the API."""
        ...


def is_loopback(host: str | None) -> bool:
    """Whether *host* is ``localhost`` or a loopback address."""
    if not host:
        return False
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _acceptable_url(value: str) -> bool:
    """An absolute https URL, or http to a loopback host (the sandbox)."""
    parts = urlsplit(value)
    return (parts.scheme == "https" and bool(parts.netloc)) or (
        parts.scheme == "http" and is_loopback(parts.hostname)
    )


def check_text(value: str, field: str) -> str:
    """
    Require *value* to be encodable as UTF-8, as everything sent as JSON must be.

    A lone surrogate (U+D800..U+DFFF, left by a bad decode or ``surrogateescape``)
    would reach the API as an escape it cannot read; refused here, it costs nothing.
    """
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValidationError(
            f"{field} is not valid UTF-8 text: character {exc.start} is a lone "
            "surrogate (text decoded with errors='surrogateescape'?)",
            field=field,
        ) from None
    return value


def _check_texts(value: object, field: str, depth: int = 0) -> None:
    """`check_text` for every string (keys too) in a JSON-like *value*."""
    if isinstance(value, str):
        check_text(value, field)
    elif depth > _MAX_DEPTH:
        raise ValidationError(f"{field} is nested too deeply", field=field)
    elif isinstance(value, Mapping):
        for key, item in value.items():
            name = f"{field}.{key}" if isinstance(key, str) else field
            if isinstance(key, str):
                check_text(key, f"{field} key")
            _check_texts(item, name, depth + 1)
    elif isinstance(value, list | tuple):
        for index, item in enumerate(value):
            _check_texts(item, f"{field}[{index}]", depth + 1)


def check_url(value: str, field: str) -> str:
    """
    Require an absolute https URL (http only for loopback hosts, i.e. the sandbox).
    """
    check_text(value, field)
    if _acceptable_url(value):
        return value
    raise ValidationError(
        f"{field} must be an https:// URL, got {value!r}", field=field
    )


def check_slug(slug: object) -> str:
    """Require a plausible model slug (``provider/model/capability``), or raise."""
    if (
        not isinstance(slug, str)
        or not slug
        or any(ch.isspace() for ch in slug)
        or slug.startswith("/")
        or slug.endswith("/")
    ):
        raise ValidationError(f"invalid model slug {slug!r}", field="model")
    return slug


def check_input(value: object) -> dict[str, Any]:
    """Require a JSON-serialisable mapping (a raw ``input``) and return a copy."""
    if not isinstance(value, Mapping):
        raise ValidationError("input must be a mapping", field="input")
    payload = dict(value)
    _check_texts(payload, "input")
    try:
        json.dumps(payload, allow_nan=False)
    except (TypeError, ValueError, RecursionError) as exc:
        raise ValidationError(
            f"input is not JSON-serialisable: {exc}", field="input"
        ) from exc
    return payload


def validate_webhook_url(value: str | None) -> str | None:
    """Validate a webhook URL as the API does (https only) before sending."""
    if value is None:
        return None
    return check_url(value, "webhook_url")


def is_binary_file(value: object) -> TypeGuard[IO[bytes]]:
    """Whether *value* is a readable binary file object (not text, not a path)."""
    return (
        not isinstance(value, str | bytes | bytearray | memoryview | os.PathLike)
        and callable(getattr(value, "read", None))
        and not isinstance(value, io.TextIOBase)
    )


def check_frame_url(value: str, field: str) -> str:
    """
    Require *value*, an untrusted string, to be an https URL; never open it.

    The message is the same whatever the string names on this machine, so it tells
    nobody which files exist.
    """
    check_text(value, field)
    if _acceptable_url(value):
        return value
    raise ValidationError(
        f"{field} must be an https:// URL; a string is never read as a local file "
        "(pass pathlib.Path(...), bytes or a binary file object for a local image)",
        field=field,
    )


def check_image(
    field: str, data: bytes, name: str, limit: int = IMAGE_MAX_BYTES
) -> None:
    """
    Require *data* (read with `read_local`: at most *limit* + 1 bytes) to be an image.
    """
    if not data:
        raise ValidationError(f"{field}: {name} is empty", field=field)
    if len(data) > limit:
        raise ValidationError(
            f"{field}: {name} is over {limit} bytes; images may be at most {limit}",
            field=field,
        )
    if sniff_image_type(data[:_SNIFF_BYTES]) is None:
        raise ValidationError(
            f"{field}: {name} is not {_IMAGE_TYPES_TEXT}", field=field
        )


def _check_frame(field: str, value: object) -> FrameSource:
    """
    Check a frame as far as it can be without touching a file.

    Strings, bytes and in-memory streams are checked at once; paths and other file
    objects when `PixelByte.submit` reads them (in a thread, within the limit): a
    constructor never blocks, whatever a path names (a FIFO, a device, a file that
    is replaced before the submit).
    """
    if isinstance(value, str):
        return check_frame_url(value, field)
    if isinstance(value, bytes | bytearray | memoryview):
        data = bytes(value)
        check_image(field, data[: IMAGE_MAX_BYTES + 1], "the image")
        return data
    if isinstance(value, os.PathLike):
        return value  # the caller's own decision to read a local file: on submit
    if is_binary_file(value):
        if isinstance(value, io.BytesIO):
            held = value.getbuffer()
            try:
                head = bytes(held[value.tell() : value.tell() + IMAGE_MAX_BYTES + 1])
            finally:
                held.release()
            check_image(field, head, "the file")
        return value
    raise ValidationError(
        f"{field} must be an https URL (str), a pathlib.Path, bytes or a binary "
        f"file, not {type(value).__name__}",
        field=field,
    )


#: Bytes read at a time from a local file or stream.
_READ_CHUNK = 1024 * 1024


@contextlib.contextmanager
def _regular_file(path: Path, field: str) -> Iterator[tuple[IO[bytes], os.stat_result]]:
    """
    Open *path* to read, if it is a regular file; yield it and its ``stat``.

    The check is made on the opened descriptor, after symlinks, and the open does
    not wait (``O_NONBLOCK``): a FIFO, a device or a socket is refused, never
    waited on.  An `OSError`, opening or reading, is a `ValidationError`.
    """
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0)
    try:
        fd = os.open(path, flags)
        with os.fdopen(fd, "rb", buffering=0) as file:
            info = os.fstat(file.fileno())
            if not stat.S_ISREG(info.st_mode):
                raise ValidationError(
                    f"{field}: {path} is not a regular file (a FIFO, device or "
                    "socket is never read)",
                    field=field,
                )
            yield file, info
    except OSError as exc:
        raise ValidationError(
            f"{field}: cannot read {path}: {exc.strerror or exc}", field=field
        ) from exc


def read_local(value: os.PathLike[str] | IO[bytes], *, limit: int, field: str) -> bytes:
    """
    Read a local file or binary stream: at most *limit* + 1 bytes.

    Blocking: run it in a worker thread.  A path must name a regular file (see
    `_regular_file`: a FIFO is refused without waiting on it); a stream is read in
    chunks until it ends or exceeds *limit*, so an endless pipe costs *limit*
    bytes, never more.
    """
    if isinstance(value, os.PathLike):
        with _regular_file(Path(value), field) as (file, _):
            return _read_upto(file, limit, field)
    return _read_upto(value, limit, field)


def check_known_input(model: str, input: Mapping[str, Any]) -> None:  # noqa: A002 -- API field name
    """
    Check a raw *input* for a model the SDK types, as its typed request would.

    The fields the typed request knows are checked (frames, prompt, duration);
    others are left to the API.  Unknown models are not checked.
    """
    if model in {KLING_O1_STANDARD_SEF, KLING_O1_PRO_SEF}:
        KlingO1StartEndFrame(
            image_url=input.get("image_url"),  # type: ignore[arg-type]
            end_image_url=input.get("end_image_url"),  # type: ignore[arg-type]
            prompt=input.get("prompt"),
            duration=input.get("duration", 5),
            pro=model == KLING_O1_PRO_SEF,
        )
        for name in ("image_url", "end_image_url"):
            if not isinstance(input.get(name), str):
                raise ValidationError(f"{name} must be an https URL", field=name)


def check_local_frames(request: object) -> None:
    """
    Check the frames of *request* that are paths, now.

    Each must be a regular file, not empty, within the limit, and an image by its
    first bytes.

    Blocking (a few bytes and a ``stat`` per path): for synchronous code that wants
    every problem up front, like `read_batch_file`.  `PixelByte.submit` checks them
    again as it reads them (the file may change in between).
    """
    for field in getattr(request, "frame_fields", ()):
        value = getattr(request, field)
        if not isinstance(value, os.PathLike):
            continue
        path = Path(value)
        with _regular_file(path, field) as (file, info):
            head = file.read(_SNIFF_BYTES)
        size = info.st_size
        if size > IMAGE_MAX_BYTES:
            raise ValidationError(
                f"{field}: {path.name} is {size} bytes; images may be at most "
                f"{IMAGE_MAX_BYTES}",
                field=field,
            )
        check_image(field, head if size else b"", path.name)


def _read_upto(file: IO[bytes], limit: int, field: str) -> bytes:
    parts: list[bytes] = []
    total = 0
    while total <= limit:
        chunk = file.read(min(_READ_CHUNK, limit + 1 - total))
        if chunk is None:  # a raw stream in non-blocking mode with nothing to read
            raise ValidationError(
                f"{field}: the stream has no data ready (non-blocking streams are "
                "not supported)",
                field=field,
            )
        if not isinstance(chunk, bytes | bytearray):
            raise ValidationError(
                f"{field}: a file object must be opened in binary mode", field=field
            )
        if not chunk:
            break
        parts.append(bytes(chunk))
        total += len(chunk)
    return b"".join(parts)


def sniff_image_type(data: bytes) -> str | None:
    """Return the image MIME type from magic bytes, or ``None``."""
    if data.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    if data[:6] in {b"GIF87a", b"GIF89a"}:
        return "image/gif"
    return None


def _frame_validator(
    instance: object, attribute: attrs.Attribute[Any], value: object
) -> None:
    del instance
    _check_frame(attribute.name, value)


def _to_duration(value: int | str) -> int:
    # Typed as what callers should pass (it is the constructor's signature in the
    # docs and in help()); anything else gets a clear error, 5.0 is taken too.
    raw: object = value
    if isinstance(raw, bool):
        raise ValidationError(
            "duration must be a whole number of seconds", field="duration"
        )
    if isinstance(raw, int):
        return raw
    if isinstance(raw, str):
        text = raw.strip()
        # isdecimal() alone admits digits int() refuses (superscripts): ASCII only.
        if text.isascii() and text.isdecimal():
            return int(text)
    if isinstance(raw, float) and raw.is_integer():
        return int(raw)
    raise ValidationError(
        f"duration must be a whole number of seconds, got {raw!r}", field="duration"
    )


def _prompt_validator(
    instance: object, attribute: attrs.Attribute[Any], value: str | None
) -> None:
    del instance, attribute
    if value is None:
        return
    if not isinstance(value, str):
        raise ValidationError("prompt must be a string", field="prompt")
    check_text(value, "prompt")
    if len(value) > PROMPT_MAX_CHARS:
        raise ValidationError(
            f"prompt is {len(value)} characters; at most {PROMPT_MAX_CHARS} are allowed",
            field="prompt",
        )


@attrs.frozen(kw_only=True)
class KlingO1StartEndFrame:
    """
    Kling O1 start-end frame to video: two frames and a prompt become a video.

    Validation happens when you build it, so bad input never costs money; a
    local file (a path or a file object) is checked when `PixelByte.submit`
    reads it, before anything is uploaded or submitted.

    Args:
        image_url: The start frame: an https URL (a ``str`` is always taken as
            a URL and never opened, so untrusted input is safe here), or a local
            image given by type: a `pathlib.Path`, ``bytes`` or a binary file
            object (uploaded by `PixelByte.submit` first).
        end_image_url: The end frame, likewise.
        prompt: What happens in between (at most 2,500 characters).
        duration: Seconds of video, 3..10 (``int`` or a numeric string).
        pro: Use the Pro tier (70,000 instead of 50,000 micro-cents per second).

    Raises:
        ValidationError: On any invalid field (``.field`` names it).

    .. versionadded:: 0.1.0

    """

    MIN_DURATION: ClassVar[int] = 3
    MAX_DURATION: ClassVar[int] = 10

    image_url: FrameSource = attrs.field(validator=_frame_validator)
    end_image_url: FrameSource = attrs.field(validator=_frame_validator)
    prompt: str | None = attrs.field(default=None, validator=_prompt_validator)
    duration: int = attrs.field(default=5, converter=_to_duration)
    pro: bool = False

    @duration.validator
    def _check_duration(self, attribute: attrs.Attribute[int], value: int) -> None:
        del attribute
        if not self.MIN_DURATION <= value <= self.MAX_DURATION:
            raise ValidationError(
                f"duration must be {self.MIN_DURATION}..{self.MAX_DURATION} seconds, "
                f"got {value}",
                field="duration",
            )

    @property
    def model_slug(self) -> str:
        """The slug of the chosen tier."""
        return KLING_O1_PRO_SEF if self.pro else KLING_O1_STANDARD_SEF

    @property
    def frame_fields(self) -> tuple[str, ...]:
        """The fields that hold frames (uploaded first when local)."""
        return ("image_url", "end_image_url")

    @property
    def cost_micro_cents(self) -> int:
        """The price from the local table (per-second price × duration)."""
        price = PRICES[self.model_slug]
        assert price.per_second is not None  # noqa: S101 -- table invariant
        return price.per_second * self.duration

    def to_input(self) -> dict[str, Any]:
        """
        Return the API ``input`` (duration as the string the API documents).

        Raises:
            ValidationError: If a frame is still a local file (submit uploads it).

        """
        for name in self.frame_fields:
            value = getattr(self, name)
            if not isinstance(value, str):
                raise ValidationError(
                    f"{name} is a local file; PixelByte.submit uploads it first",
                    field=name,
                )
        body: dict[str, Any] = {
            "image_url": self.image_url,
            "end_image_url": self.end_image_url,
            "duration": str(self.duration),
        }
        if self.prompt is not None:
            body["prompt"] = self.prompt
        return body

    def __repr__(self) -> str:
        def show(value: object) -> str:
            if isinstance(value, bytes):
                return f"<{len(value)} bytes>"
            if isinstance(value, str | os.PathLike):
                return repr(os.fspath(value))
            return f"<{type(value).__name__}>"

        return (
            f"KlingO1StartEndFrame(image_url={show(self.image_url)}, "
            f"end_image_url={show(self.end_image_url)}, prompt={self.prompt!r}, "
            f"duration={self.duration}, pro={self.pro})"
        )
