"""
Typed request inputs, validated before anything is sent, and the local price table.
"""

from __future__ import annotations

import io
import ipaddress
import json
import os
from collections.abc import Mapping
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


def check_url(value: str, field: str) -> str:
    """
    Require an absolute https URL (http only for loopback hosts, i.e. the sandbox).
    """
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
    try:
        json.dumps(payload, allow_nan=False)
    except (TypeError, ValueError) as exc:
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
    if _acceptable_url(value):
        return value
    raise ValidationError(
        f"{field} must be an https:// URL; a string is never read as a local file "
        "(pass pathlib.Path(...), bytes or a binary file object for a local image)",
        field=field,
    )


def _check_image_bytes(field: str, head: bytes, size: int, name: str) -> None:
    if size == 0:
        raise ValidationError(f"{field}: {name} is empty", field=field)
    if size > IMAGE_MAX_BYTES:
        raise ValidationError(
            f"{field}: {name} is {size} bytes; images may be at most {IMAGE_MAX_BYTES}",
            field=field,
        )
    if sniff_image_type(head) is None:
        raise ValidationError(
            f"{field}: {name} is not {_IMAGE_TYPES_TEXT}", field=field
        )


def _check_frame(field: str, value: object) -> FrameSource:
    if isinstance(value, str):
        return check_frame_url(value, field)
    if isinstance(value, bytes | bytearray | memoryview):
        data = bytes(value)
        _check_image_bytes(field, data[:_SNIFF_BYTES], len(data), "the image")
        return data
    if isinstance(value, os.PathLike):
        # A path object is the caller's own decision to read a local file.
        path = Path(value)
        try:
            size = path.stat().st_size
            with path.open("rb") as file:
                head = file.read(_SNIFF_BYTES)
        except OSError as exc:
            raise ValidationError(
                f"{field}: cannot read {path}: {exc.strerror or exc}", field=field
            ) from exc
        _check_image_bytes(field, head, size, path.name)
        return value
    if is_binary_file(value):
        peeked, size = _peek(value)
        if peeked is not None:
            _check_image_bytes(field, peeked, size, "the file")
        return value
    raise ValidationError(
        f"{field} must be an https URL (str), a pathlib.Path, bytes or a binary "
        f"file, not {type(value).__name__}",
        field=field,
    )


def _peek(file: IO[bytes]) -> tuple[bytes | None, int]:
    """The first bytes and the size of a seekable binary *file* (position kept)."""
    try:
        if not file.seekable():
            return None, 0
        start = file.tell()
        head = file.read(_SNIFF_BYTES)
        size = file.seek(0, io.SEEK_END) - start
        file.seek(start)
    except (OSError, ValueError):
        return None, 0
    return head, size


def read_frame(value: os.PathLike[str] | bytes | IO[bytes]) -> bytes:
    """The bytes of a local frame (a path, bytes or a binary file)."""
    if isinstance(value, bytes):
        return value
    if isinstance(value, os.PathLike):
        return Path(value).read_bytes()
    data = value.read()
    if not isinstance(data, bytes):
        raise ValidationError("a frame's file object must be opened in binary mode")
    return data


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


def _to_duration(value: object) -> int:
    if isinstance(value, bool):
        raise ValidationError(
            "duration must be a whole number of seconds", field="duration"
        )
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        text = value.strip()
        # isdecimal() alone admits digits int() refuses (superscripts): ASCII only.
        if text.isascii() and text.isdecimal():
            return int(text)
    if isinstance(value, float) and value.is_integer():
        return int(value)
    raise ValidationError(
        f"duration must be a whole number of seconds, got {value!r}", field="duration"
    )


def _prompt_validator(
    instance: object, attribute: attrs.Attribute[Any], value: str | None
) -> None:
    del instance, attribute
    if value is None:
        return
    if not isinstance(value, str):
        raise ValidationError("prompt must be a string", field="prompt")
    if len(value) > PROMPT_MAX_CHARS:
        raise ValidationError(
            f"prompt is {len(value)} characters; at most {PROMPT_MAX_CHARS} are allowed",
            field="prompt",
        )


@attrs.frozen(kw_only=True)
class KlingO1StartEndFrame:
    """
    Kling O1 start-end frame to video: two frames and a prompt become a video.

    Validation happens when you build it, so bad input never costs money.

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
