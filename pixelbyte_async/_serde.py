"""
The one cattrs converter, and the tolerant readers for every body shape the docs show.

Rules (contract §2, §4, §13): a body with an object-valued ``data`` key is unwrapped;
ids come as ``jobId``/``job_id``/``id``; cost as ``costMicroCents``/``estimatedCost``/
``cost``; the video URL is found in ``output`` (str) → ``output.url`` →
``output.videoUrl`` → ``output.imageUrl`` → ``outputs[].url``, skipping URLs that
cannot be downloaded (`url_problem`); unknown statuses and extra keys never crash;
wrong types in required places raise `ResponseDecodeError`.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import re
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime
from typing import Any, TypeVar
from urllib.parse import urlsplit

import attrs
import cattrs
from cattrs.gen import make_dict_structure_fn, override

from ._errors import ResponseDecodeError
from ._models import (
    CatalogModel,
    Estimate,
    EstimateLine,
    JobErrorInfo,
    JobInfo,
    JobOutput,
    JobStatus,
    Upload,
)


__all__ = [
    "decode_estimate",
    "decode_job",
    "decode_json",
    "decode_status",
    "decode_upload",
    "error_fields",
    "job_id_of",
    "parse_datetime",
    "unwrap",
    "url_problem",
]

T = TypeVar("T")

log = logging.getLogger("pixelbyte_async")

# Unknown statuses already warned about.  Bounded: a server inventing a new status
# on every poll must not grow memory, nor the log.
_UNKNOWN_STATUSES_SEEN: set[str] = set()
_UNKNOWN_STATUSES_MAX = 100
_SHOWN_CHARS = 80


def _to_camel(name: str) -> str:
    first, *rest = name.split("_")
    return first + "".join(part.capitalize() for part in rest)


def parse_datetime(value: object) -> datetime | None:
    """Parse an ISO 8601 timestamp (``Z`` allowed) or Unix seconds; else ``None``."""
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        seconds = lenient_float(value)
        if seconds is None:
            return None
        try:
            return datetime.fromtimestamp(seconds, tz=UTC)
        except (OverflowError, OSError, ValueError):
            return None
    if not isinstance(value, str) or not value:
        return None
    return _parse_iso(value)


@functools.lru_cache(maxsize=4096)
def _parse_iso(value: str) -> datetime | None:
    # Cached: a job's createdAt and ETA come back unchanged on every poll, and
    # datetimes are immutable.
    try:
        # Python 3.11's fromisoformat reads "Z" and fractional seconds itself.
        parsed = datetime.fromisoformat(value)
    except ValueError:
        try:
            parsed = datetime.fromisoformat(value.strip().replace("z", "Z"))
        except ValueError:
            return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _lenient_int(value: object) -> int | None:
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and math.isfinite(value):
        return round(value)
    if isinstance(value, str):
        try:
            number = float(value)
        except ValueError:
            return None
        return round(number) if math.isfinite(number) else None
    return None


def lenient_float(value: object) -> float | None:
    """A finite float from a number or numeric string; anything else is ``None``."""
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, int | float | str):
        try:
            number = float(value)
        except (ValueError, OverflowError):  # "half", or an int beyond float range
            return None
        return number if math.isfinite(number) else None
    return None


def _opt_str(value: object) -> str | None:
    return value if isinstance(value, str) else None


def _make_converter() -> cattrs.Converter:
    conv = cattrs.Converter(forbid_extra_keys=False)
    conv.register_structure_hook(datetime, lambda v, _: parse_datetime(v))
    conv.register_structure_hook_func(
        lambda t: t == (datetime | None), lambda v, _: parse_datetime(v)
    )
    conv.register_structure_hook_func(
        lambda t: t == (int | None), lambda v, _: _lenient_int(v)
    )
    conv.register_structure_hook_func(
        lambda t: t == (float | None), lambda v, _: lenient_float(v)
    )
    conv.register_structure_hook_func(
        lambda t: t == (str | None), lambda v, _: _opt_str(v)
    )
    for cls in (EstimateLine, JobOutput, Upload, CatalogModel, JobErrorInfo):
        overrides = {
            f.name: override(rename=_to_camel(f.name)) for f in attrs.fields(cls)
        }
        hook = make_dict_structure_fn(cls, conv, **overrides)  # type: ignore[arg-type]  # overrides are per-field kwargs
        conv.register_structure_hook(cls, hook)
    return conv


_CONVERTER = _make_converter()


def _structure(data: Any, cls: type[T]) -> T:
    try:
        return _CONVERTER.structure(data, cls)
    except (cattrs.BaseValidationError, ValueError, TypeError, KeyError) as exc:
        detail = (
            "; ".join(cattrs.transform_error(exc))
            if isinstance(exc, cattrs.BaseValidationError)
            else str(exc)
        )
        raise ResponseDecodeError(f"unexpected {cls.__name__} shape: {detail}") from exc


def decode_json(content: bytes, *, status: int) -> Any:
    """Parse a JSON body or raise `ResponseDecodeError` with an excerpt."""
    try:
        return json.loads(content)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        # RecursionError: a hostile body nested thousands deep.
        excerpt = content[:200].decode("utf-8", "replace")
        raise ResponseDecodeError(
            f"HTTP {status}: response is not JSON: {excerpt!r}",
            status=status,
            body_excerpt=excerpt,
        ) from exc


def unwrap(body: Any) -> tuple[Any, str | None]:
    """Return ``(payload, request_id)``: ``body["data"]`` when it is an object."""
    if isinstance(body, dict):
        rid = _opt_str(body.get("requestId") or body.get("request_id"))
        data = body.get("data")
        if isinstance(data, dict) or (isinstance(data, list) and "success" in body):
            return data, rid
        return body, rid
    return body, None


def error_fields(
    body: Any,
) -> tuple[str | None, str | None, dict[str, Any], str | None]:
    """
    Read ``(code, message, details, request_id)`` from any error body.

    Tolerates ``error`` as an object or a string and ``message``/``code`` at the top.
    """
    if not isinstance(body, dict):
        return None, None, {}, None
    rid = _opt_str(body.get("requestId") or body.get("request_id"))
    err = body.get("error")
    code: str | None = None
    message: str | None = None
    details: dict[str, Any] = {}
    if isinstance(err, dict):
        code = _opt_str(err.get("code"))
        message = _opt_str(err.get("message"))
        raw_details = err.get("details")
        if isinstance(raw_details, dict):
            details = raw_details
    elif isinstance(err, str):
        message = err
    code = code or _opt_str(body.get("code"))
    message = message or _opt_str(body.get("message"))
    return code, message, details, rid


def _require_object(data: Any, what: str) -> Mapping[str, Any]:
    if not isinstance(data, Mapping):
        raise ResponseDecodeError(
            f"expected a JSON object for {what}, got {type(data).__name__}"
        )
    return data


def _shown(value: str) -> str:
    """*value* cut to a log-friendly length (log it with ``%r``: escapes, quotes)."""
    return value if len(value) <= _SHOWN_CHARS else value[:_SHOWN_CHARS] + "..."


def decode_status(raw: object, job_id: str) -> JobStatus:
    """Decode a job status; warn once per distinct value the SDK does not know."""
    status = JobStatus.parse(raw)
    if status is JobStatus.UNKNOWN and raw is not None:
        key = _shown(raw) if isinstance(raw, str) else f"<{type(raw).__name__}>"
        seen = _UNKNOWN_STATUSES_SEEN
        if key not in seen and len(seen) < _UNKNOWN_STATUSES_MAX:
            seen.add(key)
            log.warning(
                "job %r has status %r, unknown to this SDK: it counts as not "
                "finished, so waiting goes on until its deadline (logged once per "
                "status)",
                _shown(job_id),
                key,
            )
    return status


def job_id_of(data: Mapping[str, Any]) -> str:
    for key in ("jobId", "job_id", "id"):
        value = data.get(key)
        if isinstance(value, str) and value:
            return value
    raise ResponseDecodeError("job body has no jobId/job_id/id string")


def _outputs(data: Mapping[str, Any]) -> tuple[JobOutput, ...]:
    raw = data.get("outputs")
    found: list[JobOutput] = []
    if isinstance(raw, list):
        for item in raw:
            if isinstance(item, str) and item:
                found.append(JobOutput(url=item))
            elif isinstance(item, dict) and isinstance(item.get("url"), str):
                found.append(_structure(item, JobOutput))
    output = data.get("output")
    if not found and isinstance(output, dict):
        url = resolve_output_url(output) or next(_url_candidates(output), None)
        if url:
            found.append(
                JobOutput(
                    url=url,
                    type="video" if "videoUrl" in output else None,
                    content_type=_opt_str(output.get("contentType")),
                    duration_seconds=lenient_float(output.get("durationSeconds")),
                )
            )
    return tuple(found)


def _url_candidates(output: object) -> Iterator[str]:
    """The URLs in ``output`` (a string, or an object with url/videoUrl/imageUrl)."""
    if isinstance(output, str) and output:
        yield output
    elif isinstance(output, dict):
        for key in ("url", "videoUrl", "video_url", "imageUrl", "image_url"):
            value = output.get(key)
            if isinstance(value, str) and value:
                yield value


def resolve_output_url(output: object) -> str | None:
    """Find the first usable URL in ``output`` (see `url_problem`), if any."""
    return next((u for u in _url_candidates(output) if url_problem(u) is None), None)


#: C0 controls and DEL: one regex scan instead of a Python loop per character.
_CONTROL = re.compile("[\x00-\x1f\x7f]")


# Cached: a finished job's URLs come back unchanged on every GET (and strings in,
# strings or None out, nothing mutable).
@functools.lru_cache(maxsize=4096)
def url_problem(url: str) -> str | None:
    """
    Say why *url* cannot be downloaded, or return ``None`` when it can.

    Usable means: an absolute ``http``/``https`` URL with a host, a port that is a
    number in 1..65535, and no whitespace or control characters where they break
    it.  urllib raises `ValueError` for a bad port only when asked for it, deep in
    a download: checked here, it is a typed error instead.
    """
    if _CONTROL.search(url) is not None:
        return "it contains control characters"
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:  # "Port out of range 0-65535", "Invalid IPv6 URL" ...
        return str(exc)
    if parts.scheme.lower() not in {"http", "https"}:
        return "it is not an http(s) URL"
    if not parts.hostname or any(ch.isspace() for ch in parts.netloc):
        return "it has no valid host"
    if port == 0:
        return "port 0 is not a port"
    return None


def _video_url(
    output: object, outputs: tuple[JobOutput, ...]
) -> tuple[str | None, str | None]:
    """
    Return ``(usable, raw)``: the first usable URL and the first URL of all.

    The documented order, then every output: the first usable URL wins; the first
    one of all is kept as sent, so an unusable one can still be named.
    """
    raw: str | None = None
    for candidate in (*_url_candidates(output), *(o.url for o in outputs)):
        if raw is None:
            raw = candidate
        if url_problem(candidate) is None:
            return candidate, raw
    return None, raw


_COST_KEYS = ("costMicroCents", "estimatedCost", "cost", "cost_micro_cents")


def decode_job(
    data: Any, request_id: str | None = None, *, fallback: JobInfo | None = None
) -> JobInfo:
    """
    Decode any documented job body (submit, get, list item, cancel, webhook).

    Fields the body lacks (the cost, the ETA …) are taken from *fallback*, the
    previous snapshot, so the result needs no second merging pass.
    """
    obj = _require_object(data, "a job")
    get = obj.get
    job_id = job_id_of(obj)
    raw_status = get("status")
    output = get("output")
    outputs = _outputs(obj) if (get("outputs") or isinstance(output, dict)) else ()
    url, raw_url = _video_url(output, outputs)
    err = get("error")
    error: JobErrorInfo | None = None
    if isinstance(err, dict):
        error = JobErrorInfo(
            code=_opt_str(err.get("code")), message=_opt_str(err.get("message")) or ""
        )
    elif isinstance(err, str) and err:
        error = JobErrorInfo(message=err)
    cost = None
    for key in _COST_KEYS:
        raw = get(key)
        if raw is not None:
            cost = _lenient_int(raw)
            if cost is not None:
                break
    refunded = get("refundedMicroCents")
    model = _opt_str(get("model") or get("modelSlug"))
    eta = parse_datetime(get("estimatedCompletionTime"))
    created = parse_datetime(get("createdAt"))
    refunded_value = None if refunded is None else _lenient_int(refunded)
    if fallback is not None:
        model = model if model is not None else fallback.model
        cost = cost if cost is not None else fallback.cost_micro_cents
        eta = eta if eta is not None else fallback.estimated_completion_time
        created = created if created is not None else fallback.created_at
        if refunded_value is None:
            refunded_value = fallback.refunded_micro_cents
    return JobInfo(
        id=job_id,
        status=decode_status(raw_status, job_id),
        raw_status=_opt_str(raw_status),
        progress=lenient_float(get("progress")),
        model=model,
        video_url=url,
        raw_output_url=raw_url,
        outputs=outputs,
        error=error,
        cost_micro_cents=cost,
        refunded_micro_cents=refunded_value,
        estimated_completion_time=eta,
        created_at=created,
        completed_at=parse_datetime(get("completedAt")),
        request_id=request_id or _opt_str(get("requestId")),
    )


def decode_estimate(data: Any) -> Estimate:
    """Decode either documented estimate shape (§4.2 reference or pricing page)."""
    obj = _require_object(data, "an estimate")
    estimated = _lenient_int(obj.get("estimatedCostMicroCents"))
    if estimated is None:
        estimated = _lenient_int(obj.get("estimatedCost"))
    if estimated is None:
        raise ResponseDecodeError("estimate body has no estimatedCostMicroCents")
    base = _lenient_int(obj.get("baseCostMicroCents"))
    if base is None:
        base = _lenient_int(obj.get("baseCost"))
    lines: list[EstimateLine] = []
    breakdown = obj.get("breakdown")
    if isinstance(breakdown, list):
        for item in breakdown:
            if isinstance(item, dict):
                cost = _lenient_int(item.get("costMicroCents"))
                if cost is not None:
                    lines.append(
                        EstimateLine(
                            component=str(item.get("component", "")),
                            cost_micro_cents=cost,
                        )
                    )
    discount = obj.get("discounted")
    return Estimate(
        estimated_cost_micro_cents=estimated,
        base_cost_micro_cents=base,
        breakdown=tuple(lines),
        has_discount=bool(obj.get("hasDiscount", False)),
        discount=discount if isinstance(discount, dict) else None,
    )


def decode_upload(data: Any) -> Upload:
    """Decode a presign or upload-status body."""
    obj = dict(_require_object(data, "an upload"))
    if "id" not in obj and "fileId" in obj:
        obj["id"] = obj["fileId"]
    if not isinstance(obj.get("id"), str) or not isinstance(obj.get("fileUrl"), str):
        raise ResponseDecodeError("upload body lacks id/fileId or fileUrl")
    for key in ("fileUrl", "uploadUrl"):
        url = obj.get(key)
        if not isinstance(url, str):
            continue
        problem = url_problem(url)
        if problem is not None:
            raise ResponseDecodeError(
                f"upload body has an unusable {key} {_shown(url)!r}: {problem}"
            )
    return _structure(obj, Upload)


def decode_catalog_model(data: Any) -> CatalogModel:
    """Decode one catalogue model."""
    obj = dict(_require_object(data, "a catalog model"))
    if not isinstance(obj.get("slug"), str):
        raise ResponseDecodeError("catalog model has no slug")
    provider = obj.get("provider")
    if isinstance(provider, dict):
        obj["provider"] = _opt_str(provider.get("name") or provider.get("id"))
    tags = obj.get("tags")
    obj["tags"] = (
        [t for t in tags if isinstance(t, str)] if isinstance(tags, list) else []
    )
    for key in ("pricing", "inputSchema"):
        if not isinstance(obj.get(key), dict):
            obj.pop(key, None)
    return _structure(obj, CatalogModel)


def items_of(data: Any, key: str) -> list[Any]:
    """Return a list from a bare array or from ``data[key]`` (catalogue quirk §4.7)."""
    if isinstance(data, list):
        return data
    if isinstance(data, dict) and isinstance(data.get(key), list):
        return list(data[key])
    raise ResponseDecodeError(f"expected a list or an object with {key!r}")
