"""Small helpers shared by the fake server: ids, timestamps, JSON and fingerprints."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import math
import secrets
from importlib import resources
from typing import Any


_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)

#: Tolerance when comparing virtual timestamps, so float rounding in
#: ``start + 245 - start`` never leaves a job one femtosecond short of done.
EPSILON = 1e-6


def new_request_id() -> str:
    """Return a fresh request id like ``req_3f1c0a9b2e4d6f80``."""
    return f"req_{secrets.token_hex(8)}"


def new_job_id() -> str:
    """Return a fresh job id like ``job_abc123def456`` (12 hex characters)."""
    return f"job_{secrets.token_hex(6)}"


def floor_ms(timestamp: float) -> float:
    """Round Unix *timestamp* down to a whole millisecond."""
    return math.floor(timestamp * 1000) / 1000


def iso(timestamp: float) -> str:
    """Format Unix *timestamp* as ISO 8601 UTC with milliseconds and a ``Z``."""
    moment = _EPOCH + dt.timedelta(milliseconds=round(timestamp * 1000))
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def parse_iso(text: str) -> float:
    """Parse an ISO 8601 timestamp (``Z`` or offset) into Unix seconds."""
    moment = dt.datetime.fromisoformat(text)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=dt.UTC)
    return moment.timestamp()


def json_number(value: float) -> int | float:
    """Return *value* as an `int` when it is integral, so JSON shows ``30`` not ``30.0``."""
    return int(value) if float(value).is_integer() else value


def canonical_json(value: Any) -> bytes:
    """Serialise *value* deterministically: sorted keys, no whitespace, UTF-8."""
    return json.dumps(
        value, sort_keys=True, separators=(",", ":"), ensure_ascii=False
    ).encode()


def input_fingerprint(model: str, input: Any) -> str:  # noqa: A002 -- mirrors the API's field name
    """
    Return the fingerprint the fake's ledger uses to spot duplicate charges.

    It is the SHA-256 hex digest of the canonical JSON of ``{"model": model, "input":
    input}``, so two submits of the same model and input share a fingerprint no matter
    how their keys were ordered.

    Args:
        model: The model slug.
        input: The job input as sent in the submit body.

    """
    return hashlib.sha256(canonical_json({"model": model, "input": input})).hexdigest()


def read_data(name: str) -> bytes:
    """Return the bytes of the package data file *name* (in ``pixelbyte_async/_data``)."""
    return (resources.files("pixelbyte_async") / "_data" / name).read_bytes()
