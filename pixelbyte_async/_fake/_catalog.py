"""
The fake's model table: what it accepts, what it charges and what the catalogue shows.

Values follow the API contract (sections 4.6, 4.7 and 10): the two Kling O1
start-end-frame models priced per second, plus a flat-priced test image model so
generic code paths are exercised too.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, Literal
from urllib.parse import urlsplit

import attrs


__all__ = [
    "MODELS",
    "PROVIDERS",
    "InputError",
    "InputField",
    "ModelSpec",
    "ModelVersion",
    "ProviderSpec",
    "is_valid_slug",
    "resolve_model",
]

_SLUG_RE = re.compile(r"^[a-z0-9][a-z0-9._-]*(?:/[a-z0-9][a-z0-9._-]*){1,2}$")


class InputError(ValueError):
    """
    A job input failed validation.

    Args:
        field: The offending input field (``input`` for the object as a whole).
        reason: What is wrong with it, phrased to follow the field name.

    """

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field} {reason}")
        self.field = field
        self.reason = reason


@attrs.frozen(kw_only=True)
class InputField:
    """One documented input field of a model."""

    name: str
    kind: Literal["text", "url", "enum"]
    description: str
    required: bool = False
    max_length: int | None = None
    choices: tuple[str, ...] = ()
    default: str | None = None

    def check(self, value: Any) -> None:
        """
        Raise `InputError` unless *value* is acceptable for this field.

        Args:
            value: The value sent for the field.

        Raises:
            InputError: The value has the wrong type or is out of range.

        """
        if not isinstance(value, str):
            raise InputError(self.name, f"must be a string, got {_json_type(value)}")
        if self.kind == "url":
            parts = urlsplit(value)
            if parts.scheme not in {"http", "https"} or not parts.netloc:
                raise InputError(self.name, "must be an http(s) URL")
        elif self.kind == "enum":
            if value not in self.choices:
                choices = ", ".join(f'"{c}"' for c in self.choices)
                raise InputError(self.name, f"must be one of {choices}")
        else:
            if self.required and not value.strip():
                raise InputError(self.name, "must not be empty")
            if self.max_length is not None and len(value) > self.max_length:
                raise InputError(
                    self.name, f"must be at most {self.max_length} characters"
                )

    def schema(self) -> dict[str, Any]:
        """Return the JSON Schema of this field."""
        out: dict[str, Any] = {"type": "string", "description": self.description}
        if self.kind == "url":
            out["format"] = "uri"
        if self.choices:
            out["enum"] = list(self.choices)
        if self.max_length is not None:
            out["maxLength"] = self.max_length
        if self.default is not None:
            out["default"] = self.default
        return out


@attrs.frozen(kw_only=True)
class ModelVersion:
    """A version of a model; only ``active`` and ``deprecated`` ones accept jobs."""

    version_id: str
    status: Literal["active", "deprecated", "disabled", "deleted"]


@attrs.frozen(kw_only=True)
class ProviderSpec:
    """A provider as the models and catalogue endpoints describe it."""

    id: str
    name: str
    description: str
    logo_url: str
    website: str
    color: str
    categories: tuple[str, ...]


@attrs.frozen(kw_only=True)
class ModelSpec:
    """A model the fake knows: validation rules, pricing, timing and catalogue data."""

    slug: str
    id: str
    provider_id: str
    name: str
    description: str
    category: Literal["video", "image"]
    capability: str
    pricing: Literal["per_second", "flat"]
    base_micro_cents: int
    typical_seconds: float
    fields: tuple[InputField, ...]
    versions: tuple[ModelVersion, ...]
    tags: tuple[str, ...] = ()
    duration_field: str | None = None

    @property
    def current_version(self) -> str:
        """Return the newest active version id."""
        return next(v.version_id for v in self.versions if v.status == "active")

    def version(self, version_id: str) -> ModelVersion | None:
        """Return the version *version_id*, or `None` when it does not exist."""
        return next((v for v in self.versions if v.version_id == version_id), None)

    def validate(self, value: Any, *, complete: bool = True) -> None:
        """
        Check a job input against the model's rules.

        Args:
            value: The ``input`` object of a submit or estimate body.
            complete: Whether required fields must be present (submit) or not
                (estimate, which only needs the price-relevant fields).

        Raises:
            InputError: The first problem found, naming the field.

        """
        if not isinstance(value, dict):
            raise InputError("input", f"must be an object, got {_json_type(value)}")
        known = {f.name: f for f in self.fields}
        for name in value:
            if name not in known:
                raise InputError(name, "is not an input of this model")
        for field in self.fields:
            if field.name in value:
                field.check(value[field.name])
            elif complete and field.required:
                raise InputError(field.name, "is required")

    def duration_seconds(self, value: Mapping[str, Any]) -> int | None:
        """Return the requested video length in seconds, or `None` for images."""
        if self.duration_field is None:
            return None
        field = next(f for f in self.fields if f.name == self.duration_field)
        return int(value.get(field.name, field.default))

    def cost(self, value: Mapping[str, Any]) -> int:
        """Return the cost in micro-cents of a job with the (validated) input *value*."""
        if self.pricing == "per_second":
            return self.base_micro_cents * (self.duration_seconds(value) or 1)
        return self.base_micro_cents

    def default_cost(self) -> int:
        """Return the cost of a job that uses every default."""
        return self.cost({})

    def input_schema(self) -> dict[str, Any]:
        """Return the JSON Schema of the model's input."""
        return {
            "type": "object",
            "properties": {f.name: f.schema() for f in self.fields},
            "required": [f.name for f in self.fields if f.required],
            "additionalProperties": False,
        }

    def output_schema(self) -> dict[str, Any]:
        """Return the JSON Schema of the model's output, as the models API shows it."""
        key = "videoUrl" if self.category == "video" else "imageUrl"
        return {
            "type": "object",
            "properties": {key: {"type": "string", "format": "uri"}},
        }

    def catalog_pricing(self) -> dict[str, Any]:
        """Return the ``pricing`` object of the catalogue endpoints."""
        return {
            "type": self.pricing,
            "baseCostMicroCents": self.base_micro_cents,
            "unit": "second" if self.pricing == "per_second" else "generation",
            "defaultCostMicroCents": self.default_cost(),
            "currency": "micro-cents",
        }

    def credits_pricing(self) -> dict[str, Any]:
        """Return the credit-denominated pricing of the models API."""
        return {
            "baseCredits": self.base_micro_cents // 1000,
            "unit": "per_second" if self.pricing == "per_second" else "per_generation",
        }


def _json_type(value: Any) -> str:
    names = {bool: "boolean", int: "number", float: "number", str: "string"}
    if value is None:
        return "null"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return names.get(type(value), type(value).__name__)


def _kling_fields(max_seconds: int) -> tuple[InputField, ...]:
    return (
        InputField(
            name="prompt",
            kind="text",
            description="What should happen between the two frames.",
            max_length=2500,
        ),
        InputField(
            name="image_url",
            kind="url",
            description="URL of the start frame.",
            required=True,
        ),
        InputField(
            name="end_image_url",
            kind="url",
            description="URL of the end frame.",
            required=True,
        ),
        InputField(
            name="duration",
            kind="enum",
            description="Video length in seconds (a string).",
            choices=tuple(str(n) for n in range(3, max_seconds + 1)),
            default="5",
        ),
    )


PROVIDERS: dict[str, ProviderSpec] = {
    p.id: p
    for p in (
        ProviderSpec(
            id="kling-plus",
            name="Kling Plus",
            description="Kling video models on PixelByte's premium route.",
            logo_url="https://cdn.muvi.video/providers/kling-plus.png",
            website="https://klingai.com",
            color="#0A84FF",
            categories=("video",),
        ),
        ProviderSpec(
            id="test",
            name="PixelByte Test",
            description="Deterministic models that exist only in FakePixelByte.",
            logo_url="https://cdn.muvi.video/providers/test.png",
            website="https://developer.muvi.video",
            color="#888888",
            categories=("image",),
        ),
    )
}

MODELS: dict[str, ModelSpec] = {
    m.slug: m
    for m in (
        ModelSpec(
            slug="kling-plus/kling-o1-standard/start-end-frame-to-video",
            id="model_klingo1std",
            provider_id="kling-plus",
            name="Kling O1 Standard",
            description="Video that moves from a start frame to an end frame.",
            category="video",
            capability="start-end-frame-to-video",
            pricing="per_second",
            base_micro_cents=50_000,
            typical_seconds=240,
            fields=_kling_fields(10),
            versions=(
                ModelVersion(version_id="v1.0", status="active"),
                ModelVersion(version_id="v0.9", status="disabled"),
            ),
            tags=("video", "start-end-frame", "kling"),
            duration_field="duration",
        ),
        ModelSpec(
            slug="kling-plus/kling-o1-pro/start-end-frame-to-video",
            id="model_klingo1pro",
            provider_id="kling-plus",
            name="Kling O1 Pro",
            description="Higher-fidelity start-to-end-frame video.",
            category="video",
            capability="start-end-frame-to-video",
            pricing="per_second",
            base_micro_cents=70_000,
            typical_seconds=240,
            fields=_kling_fields(10),
            versions=(ModelVersion(version_id="v1.0", status="active"),),
            tags=("video", "start-end-frame", "kling", "pro"),
            duration_field="duration",
        ),
        ModelSpec(
            slug="test/echo-image/text-to-image",
            id="model_echoimage",
            provider_id="test",
            name="Echo Image",
            description="Returns a tiny PNG for any prompt; flat price, 5 s.",
            category="image",
            capability="text-to-image",
            pricing="flat",
            base_micro_cents=10_000,
            typical_seconds=5,
            fields=(
                InputField(
                    name="prompt",
                    kind="text",
                    description="Anything; it is ignored.",
                    required=True,
                    max_length=2500,
                ),
                InputField(
                    name="aspect_ratio",
                    kind="enum",
                    description="Aspect ratio of the image.",
                    choices=("1:1", "16:9", "9:16"),
                    default="1:1",
                ),
            ),
            versions=(ModelVersion(version_id="v1", status="active"),),
            tags=("image", "test"),
        ),
    )
}


def is_valid_slug(slug: str) -> bool:
    """Return whether *slug* looks like ``provider/model`` or ``provider/model/capability``."""
    return bool(_SLUG_RE.match(slug))


def resolve_model(slug: str) -> ModelSpec | None:
    """
    Return the model for *slug*, or `None`.

    A two-part ``provider/model`` slug means that model's default (first) capability.
    """
    if slug in MODELS:
        return MODELS[slug]
    if slug.count("/") == 1:
        prefix = slug + "/"
        return next((m for m in MODELS.values() if m.slug.startswith(prefix)), None)
    return None
