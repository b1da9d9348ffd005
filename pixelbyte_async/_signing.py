"""
Signing and verifying deliveries: the low layer under the public `webhooks` module.

Owns the signature headers and their tolerance, `sign`, `signature_headers` and
`verify`, the verified `WebhookEvent`, `SignedDelivery` (what a receiver works with:
verified, its job decoded only on demand), and the submit-attempt nonce on the
``webhookUrl`` (`new_attempt_id`, `tag_webhook_url`).  It imports nothing above
``_serde``, so the client, the reconciler and the batch can tag URLs without the
receiver or the server.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import secrets
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any
from urllib.parse import parse_qsl, unquote_plus

import attrs

from ._errors import ResponseDecodeError, WebhookVerificationError
from ._models import JobInfo, JobStatus
from ._serde import decode_job, decode_status, job_id_of


SIGNATURE_HEADER = "X-PixelByte-Signature"
TIMESTAMP_HEADER = "X-PixelByte-Timestamp"
#: Seconds a delivery's timestamp may differ from now, either way.
DEFAULT_TOLERANCE = 300.0
#: Largest body accepted (a job's payload is a few hundred bytes).
DEFAULT_MAX_BODY = 256 * 1024
#: The ``webhookUrl`` query parameter that carries a submit attempt's nonce.
ATTEMPT_PARAM = "pb_attempt"

#: Deepest nesting of arrays and objects accepted in a body (a payload nests 3 deep):
#: deeper bodies are ``malformed``, before the JSON parser could recurse into them.
MAX_DEPTH = 64

_TIMESTAMP_RE = re.compile(r"^[0-9]{1,12}$")
# A JSON string (its escapes included), and the brackets left once strings are gone.
_JSON_STRING_RE = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_BRACKET_RE = re.compile(r"[\[\]{}]")
_SIGNATURE_RE = re.compile(r"^sha256=([0-9a-fA-F]{64})$")
_ATTEMPT_RE = re.compile(r"[A-Za-z0-9_-]{1,64}")
#: The job id prefix of a probe delivery (`probe_body`).
PROBE_PREFIX = "probe_"
#: The ``status`` of a probe delivery: unknown to older receivers, which take it for
#: a job that has not ended (answered 200, dispatched to nobody).
PROBE_STATUS = "probe"

Secrets = str | bytes | Sequence[str | bytes]


@attrs.frozen(kw_only=True)
class WebhookEvent:
    """
    A verified delivery.

    Attributes:
        job_id: The job it is about.
        status: The job's status (``completed`` or ``failed``).
        job: The payload decoded like a GET of the job (output URL resolved from
            every documented shape).
        timestamp: The delivery's ``X-PixelByte-Timestamp``.
        payload: The JSON body as sent.
        attempt: The ``pb_attempt`` nonce of the URL the delivery was sent to (see
            `tag_webhook_url`), or None.  Not covered by the signature: use it to
            attribute a job to a submit attempt, never to authenticate.

    .. versionadded:: 0.1.0
    .. versionchanged:: 0.2.0 *attempt*.

    """

    job_id: str
    status: JobStatus
    job: JobInfo
    timestamp: int
    payload: Mapping[str, Any] = attrs.field(repr=False)
    attempt: str | None = None

    @property
    def video_url(self) -> str | None:
        """The output URL, when the payload carries one."""
        return self.job.video_url


def is_probe(payload: Mapping[str, Any]) -> bool:
    """Whether a verified body is a probe (`probe_body`), not a job's delivery."""
    job_id = payload.get("jobId")
    return (
        payload.get("probe") is True
        and payload.get("status") == PROBE_STATUS
        and isinstance(job_id, str)
        and job_id.startswith(PROBE_PREFIX)
    )


def is_probe_id(job_id: str) -> bool:
    """Whether *job_id* names a probe (real job ids never start with ``probe_``)."""
    return job_id.startswith(PROBE_PREFIX)


def probe_body(nonce: str) -> bytes:
    """
    The body of a probe delivery (see `PixelByte.check_webhooks`).

    ``{"jobId": "probe_<nonce>", "status": "probe", "probe": true}``: a receiver of
    this SDK answers it 200 ``probe`` and dispatches nothing; an older one sees a
    job with a status it does not know (not ended), answers 200 and hands it to
    nobody.
    """
    return json.dumps(
        {"jobId": PROBE_PREFIX + nonce, "status": PROBE_STATUS, "probe": True},
        separators=(",", ":"),
    ).encode()


def sign_with_keys(keys: Sequence[hmac.HMAC], body: bytes, timestamp: int) -> str:
    """`sign` with the first of *keys* (from `signing_keys`): no secret needed."""
    mac = keys[0].copy()
    mac.update(str(timestamp).encode() + b"." + body)
    return "sha256=" + mac.hexdigest()


def _secret_bytes(secrets: Secrets) -> list[bytes]:
    items: Iterable[str | bytes] = (
        [secrets] if isinstance(secrets, str | bytes) else secrets
    )
    out = [s.encode() if isinstance(s, str) else bytes(s) for s in items]
    if not out or any(not s for s in out):
        raise ValueError("a webhook secret must be a non-empty string")
    return out


def _body_bytes(body: bytes | bytearray | memoryview | str) -> bytes:
    if isinstance(body, str):
        # Accepted for convenience; frameworks that decode bodies may alter them, so
        # prefer the raw bytes (request.body() / request.get_data()).
        return body.encode()
    return bytes(body)


def new_attempt_id() -> str:
    """
    Return a fresh nonce for one submit attempt (16 URL-safe characters).

    .. versionadded:: 0.2.0
    """
    return secrets.token_urlsafe(12)


def tag_webhook_url(url: str, attempt: str) -> str:
    """
    Return *url* with its ``pb_attempt`` query parameter set to *attempt*.

    Any earlier ``pb_attempt`` is replaced; other parameters and the fragment are
    kept exactly as written.

    Raises:
        ValueError: *attempt* is not 1-64 characters of ``[A-Za-z0-9_-]``.

    .. versionadded:: 0.2.0

    """
    if not isinstance(attempt, str) or not _ATTEMPT_RE.fullmatch(attempt):
        msg = f"attempt must be 1-64 characters of [A-Za-z0-9_-], not {attempt!r}"
        raise ValueError(msg)
    base, hashmark, fragment = url.partition("#")
    path, _, query = base.partition("?")
    kept = [
        part
        for part in query.split("&")
        if part and unquote_plus(part.partition("=")[0]) != ATTEMPT_PARAM
    ]
    kept.append(f"{ATTEMPT_PARAM}={attempt}")
    return f"{path}?{'&'.join(kept)}{hashmark}{fragment}"


def _attempt_from(url: str | None) -> str | None:
    """The valid ``pb_attempt`` of a URL, path or query string; else None."""
    if not url or not isinstance(url, str):
        return None
    if "?" in url:
        query = url.partition("?")[2]
    elif "://" in url or url.startswith("/"):
        return None
    else:
        query = url
    query = query.partition("#")[0]
    values = [
        value
        for key, value in parse_qsl(query, keep_blank_values=True)
        if key == ATTEMPT_PARAM
    ]
    if not values or any(value != values[0] for value in values):
        return None
    return values[0] if _ATTEMPT_RE.fullmatch(values[0]) else None


def sign(body: bytes | str, secret: str | bytes, timestamp: int | str) -> str:
    """
    Return the ``X-PixelByte-Signature`` value for *body* sent at *timestamp*.

    For your tests and fixtures (the API signs real deliveries).

    .. versionadded:: 0.1.0
    """
    key = secret.encode() if isinstance(secret, str) else secret
    message = str(timestamp).encode() + b"." + _body_bytes(body)
    return "sha256=" + hmac.new(key, message, hashlib.sha256).hexdigest()


def signature_headers(
    body: bytes | str, secret: str | bytes, *, timestamp: int | None = None
) -> dict[str, str]:
    """
    Return both signature headers for *body*, as the API would send them.

    .. versionadded:: 0.1.0
    """
    ts = int(time.time()) if timestamp is None else int(timestamp)
    return {
        TIMESTAMP_HEADER: str(ts),
        SIGNATURE_HEADER: sign(body, secret, ts),
        "Content-Type": "application/json",
    }


def _header(headers: Mapping[str, str], name: str) -> str | None:
    value = headers.get(name)
    if value is None:
        lower = name.lower()
        for key, candidate in headers.items():
            if isinstance(key, str) and key.lower() == lower:
                value = candidate
                break
    if value is None:
        return None
    return value if isinstance(value, str) else str(value)


def verify(
    body: bytes | bytearray | memoryview | str,
    headers: Mapping[str, str],
    secret: Secrets,
    *,
    tolerance: float = DEFAULT_TOLERANCE,
    now: float | None = None,
    max_body: int = DEFAULT_MAX_BODY,
    url: str | None = None,
) -> WebhookEvent:
    """
    Verify a delivery and return its event, or raise `WebhookVerificationError`.

    Args:
        body: The raw request body, exactly as received.
        headers: The request headers (any case-insensitive or plain mapping).
        secret: The webhook secret, or several (rotation: any may match).
        tolerance: Seconds the timestamp may be off, in the past or the future.
        now: Current Unix time (default `time.time()`), for tests.
        max_body: Larger bodies are refused (``too_large``).
        url: The URL the delivery was sent to, or just its query string: its valid
            ``pb_attempt`` becomes ``event.attempt`` (not part of the signature).

    Raises:
        WebhookVerificationError: ``.reason`` is one of ``missing_header``,
            ``malformed`` (headers, or a signed body without a job id or nesting
            arrays and objects more than 64 deep), ``mismatch``, ``stale``,
            ``future``, ``too_large`` or ``not_json``.  Never `TypeError`,
            `ValueError` or `RecursionError` on hostile input.

    .. versionadded:: 0.1.0
    .. versionchanged:: 0.3.0 A body nested more than 64 deep is ``malformed``.

    """
    delivery = read_delivery(
        body,
        headers,
        signing_keys(secret),
        tolerance=tolerance,
        now=now,
        max_body=max_body,
        url=url,
    )
    return delivery.event()


def signing_keys(secret: Secrets) -> list[hmac.HMAC]:
    """An HMAC-SHA256 keyed with each secret, to `copy` per delivery (see `read_delivery`)."""
    return [hmac.new(key, digestmod=hashlib.sha256) for key in _secret_bytes(secret)]


def read_delivery(  # noqa: C901 -- one check per documented reason
    body: bytes | bytearray | memoryview | str,
    headers: Mapping[str, str],
    keys: Sequence[hmac.HMAC],
    *,
    tolerance: float,
    now: float | None,
    max_body: int,
    url: str | None,
) -> SignedDelivery:
    """What `verify` checks, with *keys* from `signing_keys`; the job decoded on demand."""
    raw = _body_bytes(body)
    if len(raw) > max_body:
        raise WebhookVerificationError(
            f"body of {len(raw)} bytes exceeds {max_body}", reason="too_large"
        )
    ts_header = _header(headers, TIMESTAMP_HEADER)
    sig_header = _header(headers, SIGNATURE_HEADER)
    if ts_header is None or sig_header is None:
        missing = TIMESTAMP_HEADER if ts_header is None else SIGNATURE_HEADER
        raise WebhookVerificationError(f"{missing} is missing", reason="missing_header")
    ts_text = ts_header.strip()
    if not _TIMESTAMP_RE.fullmatch(ts_text):
        raise WebhookVerificationError(
            "timestamp is not Unix seconds", reason="malformed"
        )
    candidates: list[bytes] = []
    for part in sig_header.replace(" ", ",").split(","):
        if not part:
            continue
        match = _SIGNATURE_RE.fullmatch(part)
        if match is None:
            continue
        candidates.append(match.group(1).lower().encode("ascii"))
    if not candidates:
        raise WebhookVerificationError(
            "signature is not 'sha256=<64 hex digits>'", reason="malformed"
        )
    message = ts_text.encode("ascii") + b"." + raw
    matched = False
    for key in keys:
        mac = key.copy()
        mac.update(message)
        expected = mac.hexdigest().encode("ascii")
        for candidate in candidates:
            # Bytes on both sides: compare_digest never raises here.
            matched |= hmac.compare_digest(expected, candidate)
    if not matched:
        raise WebhookVerificationError("signature does not match", reason="mismatch")
    timestamp = int(ts_text)
    current = time.time() if now is None else now
    if timestamp < current - tolerance:
        raise WebhookVerificationError(
            f"timestamp is {current - timestamp:.0f}s old (tolerance {tolerance:g}s)",
            reason="stale",
        )
    if timestamp > current + tolerance:
        raise WebhookVerificationError(
            f"timestamp is {timestamp - current:.0f}s in the future", reason="future"
        )
    return _read(raw, timestamp, _attempt_from(url))


def _nests_deeper(raw: bytes, limit: int) -> bool:
    """
    Whether the JSON in *raw* nests arrays and objects more than *limit* deep.

    A body cannot nest deeper than it has opening brackets, so a payload (a few) costs
    two counts; the others are decoded as `json.loads` would, and their brackets
    outside strings walked.  Not JSON (or not text): False, the parser says so.
    """
    if raw.count(b"{") + raw.count(b"[") <= limit:
        return False
    try:
        text = raw.decode(json.detect_encoding(raw), "surrogatepass")
    except UnicodeDecodeError:
        return False
    depth = 0
    for bracket in _BRACKET_RE.findall(_JSON_STRING_RE.sub("", text)):
        depth += 1 if bracket in "[{" else -1
        if depth > limit:
            return True
    return False


def _read(raw: bytes, timestamp: int, attempt: str | None) -> SignedDelivery:
    """Parse a verified body; read its job id and status (the rest waits)."""
    if _nests_deeper(raw, MAX_DEPTH):
        raise WebhookVerificationError(
            f"body nests deeper than {MAX_DEPTH} levels",
            reason="malformed",
            signed=True,
        )
    try:
        payload = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise WebhookVerificationError(
            "body is not JSON", reason="not_json", signed=True
        ) from exc
    except RecursionError as exc:  # pragma: no cover -- refused above; a last guard
        raise WebhookVerificationError(
            "body nests too deep", reason="malformed", signed=True
        ) from exc
    if not isinstance(payload, dict):
        raise WebhookVerificationError(
            "body is not a JSON object", reason="not_json", signed=True
        )
    try:
        job_id = job_id_of(payload)
    except ResponseDecodeError as exc:
        raise WebhookVerificationError(
            "payload has no jobId", reason="malformed", signed=True
        ) from exc
    if is_probe(payload):
        # Not a job: no status to decode (nor to warn about as unknown).
        return SignedDelivery(
            job_id,
            JobStatus.UNKNOWN,
            timestamp,
            payload,
            attempt=attempt,
            raw=raw,
            probe=True,
        )
    status = decode_status(payload.get("status"), job_id)
    return SignedDelivery(job_id, status, timestamp, payload, attempt=attempt, raw=raw)


#: What a receiver remembers of a delivery nobody has asked for yet: the raw body, the
#: timestamp and the attempt (no container for the garbage collector to walk).
Compact = tuple[bytes, int, str | None]
#: What a receiver remembers of a delivery: its event, or the compact form.
Remembered = WebhookEvent | Compact


@attrs.define(eq=False)
class SignedDelivery:
    """
    A verified delivery: its job id and status read, its job decoded on demand.

    Decoding the job is most of a delivery's cost, and a retry or a delivery nobody
    waits for never needs it: `event` decodes it the first time it is asked for, and
    `remembered` is only what `restore` needs to make it.  ``decode_job`` raises
    only for a missing job id, read already.
    """

    job_id: str
    status: JobStatus
    timestamp: int
    payload: Mapping[str, Any]
    attempt: str | None = attrs.field(kw_only=True)
    #: The body as received; None for an event verified elsewhere (`of`).
    raw: bytes | None = attrs.field(kw_only=True)
    #: A probe (`probe_body`): answered, never dispatched.
    probe: bool = attrs.field(default=False, kw_only=True)
    _event: WebhookEvent | None = attrs.field(default=None, kw_only=True, alias="made")

    @classmethod
    def of(cls, event: WebhookEvent) -> SignedDelivery:
        """The delivery of an event already made (by `verify`)."""
        return cls(
            event.job_id,
            event.status,
            event.timestamp,
            event.payload,
            attempt=event.attempt,
            raw=None,
            made=event,
        )

    @property
    def decoded(self) -> bool:
        """Whether the event was made already."""
        return self._event is not None

    def event(self) -> WebhookEvent:
        """The `WebhookEvent`, decoded on first use."""
        if self._event is None:
            # A probe's "probe" status is no job status: decoded as none (unknown).
            info = decode_job({"jobId": self.job_id} if self.probe else self.payload)
            self._event = WebhookEvent(
                job_id=info.id,
                status=info.status,
                job=info,
                timestamp=self.timestamp,
                payload=self.payload,
                attempt=self.attempt,
            )
        return self._event

    def remembered(self) -> Remembered:
        """
        The compact form to remember (the event if there is no raw body).

        Compact even if the event was made to publish it to a hub: a decoded event
        is some ten objects that every full garbage collection walks, 50,000 of them
        kept by default; `restore` makes it again if somebody asks later.
        """
        if self.raw is None:
            return self.event()
        return (self.raw, self.timestamp, self.attempt)


def restore(record: Remembered) -> WebhookEvent:
    """The event of a remembered delivery, made again from a compact form."""
    if isinstance(record, WebhookEvent):
        return record
    return _read(*record).event()
