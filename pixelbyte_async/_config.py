"""
Client configuration: one frozen value, with the API key masked in every repr.
"""

from __future__ import annotations

import os
from typing import Any

import attrs

from ._errors import ValidationError
from ._polling import PollPolicy
from ._retry import RetryPolicy


__all__ = ["DEFAULT_BASE_URL", "ClientConfig", "clean_key", "mask_key"]

DEFAULT_BASE_URL = "https://api.muvi.video"


def mask_key(key: str | None) -> str:
    """
    Return a form of *key* that is safe to log: ``pb_***``, ``***`` or ``<none>``.

    Only the documented ``pb_`` prefix is ever shown.  Any other key shows nothing:
    the leading part of a foreign key (``sk_live_``, or a key with no prefix at all)
    can be secret, or enough to tell whose it is.
    """
    if not key:
        return "<none>"
    return "pb_***" if key.startswith("pb_") else "***"


class _SecretStr(str):
    """A str whose repr never shows its value."""

    __slots__ = ()

    def __repr__(self) -> str:
        return repr(mask_key(str.__str__(self)))


def clean_key(value: str | None) -> str | None:
    """
    Return the API key *value* without surrounding whitespace (``None`` if empty).

    A key read with ``$(cat key.txt)`` or from a file keeps its newline; that is
    stripped.  Whitespace or a control character *inside* the key is a copy
    gone wrong, refused here (the key itself is never shown) instead of reaching
    an HTTP header.

    Raises:
        ValidationError: The key holds whitespace or control characters inside.

    """
    if value is None:
        return None
    value = value.strip()
    if any(ch.isspace() or not ch.isprintable() for ch in value):
        raise ValidationError(
            "the API key has whitespace or control characters inside it (not "
            "shown); copy it again from the dashboard",
            field="api_key",
        )
    return value or None


def _secret(value: str | None) -> str | None:
    value = clean_key(value)
    return None if value is None else _SecretStr(value)


def _masked_repr(value: str | None) -> str:
    return repr(mask_key(value))


def _normalize_base_url(value: str) -> str:
    value = value.strip().rstrip("/")
    value = value.removesuffix("/v1")
    if not value.startswith(("https://", "http://")):
        raise ValueError(f"base_url must start with https:// or http://, got {value!r}")
    return value


def _positive_or_none(_: object, attribute: attrs.Attribute[Any], value: Any) -> None:
    if value is not None and value <= 0:
        raise ValueError(f"{attribute.name} must be > 0 or None, got {value!r}")


@attrs.frozen(kw_only=True)
class ClientConfig:
    """
    Everything that shapes a `PixelByte` client.

    Args:
        api_key: The API key (``pb_…``); default ``$PIXELBYTE_API_KEY``.
        base_url: API base; default ``$PIXELBYTE_BASE_URL`` or ``https://api.muvi.video``.
        timeout: Overall deadline in seconds of one API call, retries included.
        max_concurrent_jobs: Jobs in flight (submitted, not yet seen terminal) at once
            per client; ``None`` for no limit.
        max_connections: Open sockets at most (the aiohttp connector limit).
        retry: Retry policy for calls that are safe to retry.
        poll: Polling policy for `Job.wait` / `Job.watch`.
        submit_timeout: Deadline of the submit request itself, 429
            ``CONCURRENT_JOBS_EXCEEDED`` back-offs included (not the slot wait).
        slot_timeout: Longest wait for a free job slot (``max_concurrent_jobs``);
            ``None`` (default) queues as long as it takes, as ``asyncio.gather`` over
            hundreds of inputs needs.
        download_timeout: Deadline of a download.
        max_download_bytes: Downloads larger than this are refused.
        user_agent: Sent as ``User-Agent``.

    .. versionadded:: 0.1.0

    """

    api_key: str | None = attrs.field(
        default=None, converter=_secret, repr=_masked_repr
    )
    base_url: str = attrs.field(default=DEFAULT_BASE_URL, converter=_normalize_base_url)
    timeout: float = attrs.field(default=60.0, validator=_positive_or_none)
    max_concurrent_jobs: int | None = attrs.field(
        default=10, validator=_positive_or_none
    )
    max_connections: int = attrs.field(default=20, validator=attrs.validators.ge(1))
    retry: RetryPolicy = attrs.field(factory=RetryPolicy)
    poll: PollPolicy = attrs.field(factory=PollPolicy)
    submit_timeout: float = attrs.field(default=900.0, validator=_positive_or_none)
    slot_timeout: float | None = attrs.field(default=None, validator=_positive_or_none)
    download_timeout: float = attrs.field(default=600.0, validator=_positive_or_none)
    max_download_bytes: int = attrs.field(default=2 * 1024**3)
    user_agent: str = "pixelbyte-async"

    @classmethod
    def from_env(cls, **overrides: Any) -> ClientConfig:
        """
        Build a config from ``PIXELBYTE_API_KEY`` / ``PIXELBYTE_BASE_URL`` and *overrides*.

        *api_key* and *base_url* overrides that are ``None`` fall back to the
        environment.
        """
        values = dict(overrides)
        for name in ("api_key", "base_url"):
            if values.get(name) is None:
                values.pop(name, None)
        values.setdefault("api_key", os.environ.get("PIXELBYTE_API_KEY") or None)
        env_url = os.environ.get("PIXELBYTE_BASE_URL")
        if env_url:
            values.setdefault("base_url", env_url)
        return cls(**values)
