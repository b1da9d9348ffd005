"""Tolerant decoding of every body shape the docs show (contract §2, §4, §11)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from pixelbyte_async import JobStatus, ResponseDecodeError
from pixelbyte_async._serde import (
    decode_catalog_model,
    decode_estimate,
    decode_job,
    decode_json,
    decode_upload,
    error_fields,
    items_of,
    parse_datetime,
    unwrap,
)


URL = "https://cdn.muvi.video/outputs/job_1/output_0.mp4"


def test_unwrap_envelope_and_flat():
    """An object-valued data key is unwrapped; a flat body is used as is."""
    assert unwrap({"success": True, "data": {"jobId": "j"}, "requestId": "r"}) == (
        {"jobId": "j"},
        "r",
    )
    assert unwrap({"jobId": "j", "requestId": "r"}) == (
        {"jobId": "j", "requestId": "r"},
        "r",
    )
    assert unwrap({"success": True, "data": [1, 2]}) == ([1, 2], None)
    assert unwrap([1]) == ([1], None)


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ({"output": URL}, URL),
        ({"output": {"url": URL, "contentType": "video/mp4"}}, URL),
        ({"output": {"videoUrl": URL}}, URL),
        ({"output": {"imageUrl": URL, "metadata": {}}}, URL),
        ({"output": None, "outputs": [{"url": URL, "type": "video"}]}, URL),
        ({"outputs": [URL]}, URL),
        ({"output": None, "outputs": None}, None),
        ({"output": 5, "outputs": "x"}, None),
    ],
    ids=[
        "string",
        "object-url",
        "videoUrl",
        "imageUrl",
        "outputs",
        "outputs-str",
        "none",
        "garbage",
    ],
)
def test_video_url_from_every_shape(body, expected):
    """The video URL is resolved from every documented output shape."""
    info = decode_job({"jobId": "job_1", "status": "completed", **body})
    assert expected == info.video_url


@pytest.mark.parametrize("key", ["jobId", "job_id", "id"])
def test_job_id_alternate_keys(key):
    """Ids are read from jobId, job_id or id."""
    assert decode_job({key: "job_x", "status": "pending"}).id == "job_x"


@pytest.mark.parametrize("key", ["costMicroCents", "estimatedCost", "cost"])
def test_cost_alternate_keys(key):
    """Cost is read from costMicroCents, estimatedCost or cost."""
    assert decode_job({"jobId": "j", key: 250000}).cost_micro_cents == 250000


@pytest.mark.parametrize(
    ("raw", "status"),
    [
        ("pending", JobStatus.PENDING),
        ("PROCESSING", JobStatus.PROCESSING),
        ("completed", JobStatus.COMPLETED),
        ("canceled", JobStatus.CANCELLED),
        ("throttled", JobStatus.UNKNOWN),
        (None, JobStatus.UNKNOWN),
        (42, JobStatus.UNKNOWN),
        *[
            (raw, JobStatus.COMPLETED)
            for raw in ("succeeded", "SUCCESS", "successful", "done", "Finished")
        ],
        ("complete", JobStatus.COMPLETED),
        *[
            (raw, JobStatus.FAILED)
            for raw in ("error", "errored", "failure", "expired", "Timeout")
        ],
        ("timed_out", JobStatus.FAILED),
        ("rejected", JobStatus.FAILED),
        ("canceled_by_user", JobStatus.CANCELLED),
        ("cancelled_by_user", JobStatus.CANCELLED),
        *[
            (raw, JobStatus.PENDING)
            for raw in ("queued", "waiting", "starting", "submitted", "created")
        ],
        *[
            (raw, JobStatus.PROCESSING)
            for raw in ("running", "in_progress", "In-Progress", " started ")
        ],
    ],
)
def test_status_is_lenient(raw, status):
    """Statuses decode case-insensitively; unknown values never crash."""
    info = decode_job({"jobId": "j", "status": raw})
    assert status == info.status
    assert not JobStatus.UNKNOWN.is_terminal


def test_full_reference_body():
    """The reference GET example decodes completely; extra keys are ignored."""
    info = decode_job(
        {
            "jobId": "job_abc123def456",
            "status": "completed",
            "progress": 100,
            "output": URL,
            "outputs": [
                {"url": URL, "type": "video", "thumbnail": "t", "posterImage": "p"}
            ],
            "error": None,
            "createdAt": "2026-02-18T15:00:00Z",
            "completedAt": "2026-02-18T15:02:30Z",
            "somethingNew": {"x": 1},
        },
        "req_1",
    )
    assert info.outputs[0].poster_image == "p"
    assert info.created_at == datetime(2026, 2, 18, 15, tzinfo=UTC)
    assert info.request_id == "req_1"
    assert info.progress == 100


def test_failed_error_shapes():
    """error may be an object or a string."""
    info = decode_job(
        {
            "jobId": "j",
            "status": "failed",
            "error": {"code": "GENERATION_FAILED", "message": "m"},
        }
    )
    assert info.error is not None
    assert (info.error.code, info.error.message) == ("GENERATION_FAILED", "m")
    assert decode_job({"jobId": "j", "error": "boom"}).error.message == "boom"


@pytest.mark.parametrize(
    "body",
    [None, [], "job", {"status": "pending"}, {"jobId": 5}, {"jobId": ""}],
)
def test_job_without_id_is_a_decode_error(body):
    """A job body without a usable id raises ResponseDecodeError."""
    with pytest.raises(ResponseDecodeError):
        decode_job(body)


def test_wrong_types_in_optional_fields_are_dropped():
    """Wrong types in optional fields do not crash decoding."""
    info = decode_job(
        {
            "jobId": "j",
            "progress": "half",
            "createdAt": 12,
            "completedAt": "yesterday",
            "costMicroCents": True,
            "model": 3,
        }
    )
    assert info.progress is None
    assert info.completed_at is None
    assert info.cost_micro_cents is None
    assert info.model is None
    assert info.created_at is not None
    assert decode_job({"jobId": "j", "progress": 10**400}).progress is None
    assert decode_job({"jobId": "j", "progress": "50"}).progress == 50.0
    assert decode_job({"jobId": "j", "progress": True}).progress is None


def test_decode_json_errors_carry_excerpt():
    """Non-JSON bodies raise ResponseDecodeError with an excerpt."""
    with pytest.raises(ResponseDecodeError, match="not JSON") as info:
        decode_json(b"<html>502 Bad Gateway</html>", status=502)
    assert "502 Bad Gateway" in info.value.body_excerpt
    with pytest.raises(ResponseDecodeError):
        decode_json(b'{"jobId": "tru', status=200)


def test_error_fields_tolerant():
    """Error bodies are read from the envelope, a string error, or top-level keys."""
    assert error_fields(
        {
            "success": False,
            "error": {"code": "C", "message": "m", "details": {"retryAfter": 3}},
            "requestId": "r",
        }
    ) == ("C", "m", {"retryAfter": 3}, "r")
    assert error_fields({"error": "bad"}) == (None, "bad", {}, None)
    assert error_fields({"code": "X", "message": "y"}) == ("X", "y", {}, None)
    assert error_fields("nope") == (None, None, {}, None)


def test_estimate_both_shapes():
    """Both documented estimate shapes decode."""
    est = decode_estimate(
        {
            "baseCostMicroCents": 250000,
            "estimatedCostMicroCents": 200000,
            "breakdown": [{"component": "base_generation", "costMicroCents": 250000}],
            "hasDiscount": True,
            "discounted": {"type": "volume", "percentage": 20},
        }
    )
    assert (est.estimated_cost_micro_cents, est.base_cost_micro_cents) == (
        200000,
        250000,
    )
    assert est.breakdown[0].component == "base_generation"
    assert est.usd == 0.2
    legacy = decode_estimate(
        {"estimatedCost": 120000, "baseCost": 40000, "factors": {}}
    )
    assert legacy.estimated_cost_micro_cents == 120000
    with pytest.raises(ResponseDecodeError):
        decode_estimate({"foo": 1})


def test_upload_and_catalog():
    """Uploads accept fileId for id; catalogue items accept nested providers."""
    up = decode_upload(
        {
            "uploadUrl": "https://s/u",
            "fileUrl": "https://c/f",
            "fileId": "u1",
            "expiresAt": "2026-01-01T00:00:00Z",
            "maxSize": 10,
        }
    )
    assert (up.id, up.max_size, up.expires_at.year) == ("u1", 10, 2026)
    with pytest.raises(ResponseDecodeError):
        decode_upload({"fileUrl": "x"})
    model = decode_catalog_model(
        {
            "slug": "a/b/c",
            "provider": {"id": "p", "name": "P"},
            "tags": ["x", 1],
            "inputSchema": {"type": "object"},
        }
    )
    assert (model.provider, model.tags, model.input_schema) == (
        "P",
        ("x",),
        {"type": "object"},
    )
    assert items_of([1], "models") == [1]
    assert items_of({"models": [2]}, "models") == [2]
    with pytest.raises(ResponseDecodeError):
        items_of({"x": 1}, "models")


def test_parse_datetime():
    """ISO with Z, offsets, naive (taken as UTC) and epoch seconds parse; junk is None."""
    assert parse_datetime("2026-02-18T15:30:00Z") == datetime(
        2026, 2, 18, 15, 30, tzinfo=UTC
    )
    assert parse_datetime("2026-02-18T15:30:00.000Z") is not None
    assert parse_datetime("2026-02-18T15:30:00").tzinfo is UTC
    assert parse_datetime(0) == datetime(1970, 1, 1, tzinfo=UTC)
    for junk in ("", "soon", None, True, float("nan"), [], 1e300, 10**400):
        assert parse_datetime(junk) is None


def test_a_body_nested_thousands_deep_is_a_typed_decode_error():
    """Issue 24: a hostile answer never escapes as a bare RecursionError."""
    from pixelbyte_async import ResponseDecodeError
    from pixelbyte_async._hub._codec import parse_event
    from pixelbyte_async._serde import decode_json

    deep = b'{"a":' * 100_000 + b"1" + b"}" * 100_000
    with pytest.raises(ResponseDecodeError):
        decode_json(deep, status=200)
    assert parse_event(deep) is None
