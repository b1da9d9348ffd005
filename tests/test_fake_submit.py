"""
`FakePixelByte` submits and estimates: prices, rejections, webhook URLs, envelopes.
"""

from __future__ import annotations

import re

import pytest
from pixelbyte_async._fake._util import parse_iso
from pixelbyte_async.testing import FakePixelByte

from fake_helpers import (
    ECHO,
    KLING,
    KLING_INPUT,
    KLING_PRO,
    api,
    assert_error,
    bearer,
    session_fixture,  # noqa: F401 -- the session fixture
    submit,
)


pytestmark = pytest.mark.anyio

# -- submit ---------------------------------------------------------------------------


async def test_submit_flat_response(fake, session):
    """Submit answers the reference page's flat body and charges the ledger."""
    r = await submit(session, fake)
    assert r.status == 200
    body = r.body
    assert set(body) == {
        "jobId",
        "requestId",
        "status",
        "estimatedCompletionTime",
        "costMicroCents",
    }
    assert re.fullmatch(r"job_[0-9a-f]{12}", body["jobId"])
    assert body["requestId"] == r.headers["X-Request-Id"]
    assert body["status"] == "pending"
    assert body["costMicroCents"] == 250_000
    assert body["estimatedCompletionTime"].endswith("Z")
    job = fake.jobs[body["jobId"]]
    assert parse_iso(body["estimatedCompletionTime"]) == pytest.approx(
        job.created_at + 5 + 240, abs=1e-3
    )
    assert job.model == KLING
    assert job.input == KLING_INPUT
    assert job.version == "v1.0"
    assert job.request_id == body["requestId"]
    assert [(e.kind, e.micro_cents, e.job_id) for e in fake.ledger.entries] == [
        ("charge", 250_000, job.id)
    ]


@pytest.mark.parametrize(
    ("model", "duration", "cost"),
    [
        (KLING, "3", 150_000),
        (KLING, "10", 500_000),
        (KLING, None, 250_000),
        (KLING_PRO, "5", 350_000),
        (KLING_PRO, "10", 700_000),
    ],
    ids=["std-3", "std-10", "std-default", "pro-5", "pro-10"],
)
async def test_kling_cost_is_per_second(fake, session, model, duration, cost):
    """Kling O1 costs its per-second price times the (string) duration."""
    value = {k: v for k, v in KLING_INPUT.items() if k != "duration"}
    if duration is not None:
        value["duration"] = duration
    r = await submit(session, fake, model, value)
    assert r.body["costMicroCents"] == cost
    assert fake.ledger.charged_micro_cents == cost


async def test_flat_priced_image_model(fake, session):
    """The test image model costs a flat 10,000 and runs 5 s after a 5 s queue."""
    r = await submit(session, fake, ECHO, {"prompt": "a cat"})
    assert r.body["costMicroCents"] == 10_000
    job = fake.jobs[r.body["jobId"]]
    assert job.script.processing_seconds == 5
    fake.advance(10)
    assert job.status == "completed"


async def test_two_part_slug_means_default_capability(fake, session):
    """provider/model resolves to the model's default capability."""
    r = await submit(session, fake, "kling-plus/kling-o1-standard")
    assert r.status == 200
    assert fake.jobs[r.body["jobId"]].model == KLING


@pytest.mark.parametrize(
    ("body", "status", "code", "field"),
    [
        (
            {"model": "acme/nothing/text-to-video", "input": {}},
            404,
            "MODEL_NOT_FOUND",
            None,
        ),
        ({"model": "Not A Slug!", "input": {}}, 400, "INVALID_MODEL_SLUG", None),
        ({"modelSlug": KLING, "input": KLING_INPUT}, 400, "INVALID_INPUT", "model"),
        ({"model": KLING}, 400, "INVALID_INPUT", "input"),
        ({"model": KLING, "input": "text"}, 400, "INVALID_INPUT", "input"),
        (
            {"model": KLING, "input": {**KLING_INPUT, "image_url": None}},
            400,
            "INVALID_INPUT",
            "image_url",
        ),
        (
            {"model": KLING, "input": {"image_url": "https://e.com/a.jpg"}},
            400,
            "INVALID_INPUT",
            "end_image_url",
        ),
        (
            {"model": KLING, "input": {**KLING_INPUT, "duration": 5}},
            400,
            "INVALID_INPUT",
            "duration",
        ),
        (
            {"model": KLING, "input": {**KLING_INPUT, "duration": "11"}},
            400,
            "INVALID_INPUT",
            "duration",
        ),
        (
            {"model": KLING, "input": {**KLING_INPUT, "prompt": "x" * 2501}},
            400,
            "INVALID_INPUT",
            "prompt",
        ),
        (
            {"model": KLING, "input": {**KLING_INPUT, "end_image_url": "ftp://e/b"}},
            400,
            "INVALID_INPUT",
            "end_image_url",
        ),
        (
            {
                "model": KLING,
                "input": {**KLING_INPUT, "start_frame_url": "https://e/a"},
            },
            400,
            "INVALID_INPUT",
            "start_frame_url",
        ),
        ({"model": ECHO, "input": {"prompt": "  "}}, 400, "INVALID_INPUT", "prompt"),
        (
            {"model": KLING, "version": "v9", "input": KLING_INPUT},
            404,
            "MODEL_VERSION_NOT_FOUND",
            None,
        ),
        (
            {"model": KLING, "version": "v0.9", "input": KLING_INPUT},
            400,
            "MODEL_VERSION_NOT_ACTIVE",
            None,
        ),
        (
            {"model": KLING, "input": KLING_INPUT, "webhookUrl": "http://e.com/h"},
            400,
            "INVALID_WEBHOOK_URL",
            None,
        ),
        (
            {"model": KLING, "input": KLING_INPUT, "webhookUrl": "not a url"},
            400,
            "INVALID_WEBHOOK_URL",
            None,
        ),
        ([1, 2], 400, "INVALID_INPUT", None),
    ],
    ids=[
        "unknown-model",
        "bad-slug",
        "legacy-modelSlug",
        "no-input",
        "input-not-object",
        "image-url-null",
        "end-image-missing",
        "numeric-duration",
        "duration-out-of-range",
        "prompt-too-long",
        "url-not-http",
        "unknown-field",
        "blank-required-prompt",
        "unknown-version",
        "disabled-version",
        "http-webhook",
        "garbage-webhook",
        "body-not-object",
    ],
)
async def test_submit_rejections_create_nothing(
    fake, session, *, body, status, code, field
):
    """Every rejected submit names its problem and creates and charges nothing."""
    r = await api(session, fake, "POST", "/v1/jobs/submit", body)
    error = assert_error(r, status, code)
    if field is not None:
        assert error["details"]["field"] == field
    assert dict(fake.jobs) == {}
    assert fake.ledger.entries == []


async def test_submit_body_not_json(fake, session):
    """A body that is not JSON is INVALID_INPUT and is recorded with json=None."""
    async with session.post(
        fake.url + "/v1/jobs/submit", data=b"{nope", headers=bearer(fake)
    ) as r:
        assert r.status == 400
        assert (await r.json())["error"]["code"] == "INVALID_INPUT"
    assert fake.requests[-1].json is None


async def test_webhook_urls(session):
    """https webhooks are accepted; http only with allow_http_webhooks."""
    async with FakePixelByte() as fake:
        r = await submit(session, fake, webhookUrl="https://example.com/hook")
        assert r.status == 200
        assert fake.jobs[r.body["jobId"]].webhook_url == "https://example.com/hook"
        fake.allow_http_webhooks = True
        assert fake.allow_http_webhooks
        r = await submit(session, fake, webhookUrl="http://127.0.0.1:9/hook")
        assert r.status == 200


async def test_wrapped_submit_has_quickstart_fields(session):
    """The wrapped flavour nests the body in data and adds model and createdAt."""
    async with FakePixelByte(envelope="wrapped") as fake:
        r = await submit(session, fake)
        assert r.body["success"] is True
        assert r.body["requestId"] == r.headers["X-Request-Id"]
        data = r.body["data"]
        assert data["model"] == KLING
        assert data["costMicroCents"] == 250_000
        assert data["status"] == "pending"
        assert "requestId" not in data
        assert parse_iso(data["createdAt"]) == fake.jobs[data["jobId"]].created_at


@pytest.mark.parametrize(
    ("envelope", "path", "wrapped"),
    [
        ("mixed", "/v1/jobs", False),
        ("mixed", "/v1/models", False),
        ("mixed", "/v1/catalog/categories", False),
        ("flat", "/v1/jobs", False),
        ("wrapped", "/v1/jobs", True),
        ("wrapped", "/v1/models", True),
    ],
)
async def test_envelopes(session, envelope, path, wrapped):
    """Each envelope style wraps exactly the endpoints it should."""
    async with FakePixelByte(envelope=envelope) as fake:
        r = await api(session, fake, "GET", path)
        assert r.status == 200
        is_wrapped = isinstance(r.body, dict) and r.body.get("success") is True
        assert is_wrapped == wrapped
        if wrapped:
            assert r.body["requestId"] == r.headers["X-Request-Id"]


async def test_envelope_can_change_at_runtime(fake, session):
    """fake.envelope is a live setting."""
    fake.envelope = "wrapped"
    assert "data" in (await api(session, fake, "GET", "/v1/jobs")).body
    with pytest.raises(ValueError):
        fake.envelope = "weird"  # type: ignore[assignment]


@pytest.mark.parametrize(
    ("envelope", "wrapped"), [("mixed", True), ("flat", False), ("wrapped", True)]
)
async def test_upload_envelope(session, envelope, wrapped):
    """Uploads are wrapped in mixed mode (as their docs show) and flat in flat mode."""
    async with FakePixelByte(envelope=envelope) as fake:
        r = await api(
            session,
            fake,
            "POST",
            "/v1/uploads/presign",
            {"filename": "a.png", "contentType": "image/png"},
        )
        data = r.body["data"] if wrapped else r.body
        assert "uploadUrl" in data
        assert ("success" in r.body) == wrapped


# -- estimate -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "cost"),
    [
        ({"model": KLING, "input": {"duration": "10"}}, 500_000),
        ({"model": KLING}, 250_000),
        ({"model": KLING_PRO, "input": KLING_INPUT}, 350_000),
        ({"model": ECHO, "input": {}}, 10_000),
    ],
    ids=["duration-only", "no-input", "full-input", "flat"],
)
async def test_estimate(fake, session, body, cost):
    """Estimate prices an input (required fields optional) and creates nothing."""
    r = await api(session, fake, "POST", "/v1/jobs/estimate", body)
    assert r.body == {
        "baseCostMicroCents": cost,
        "estimatedCostMicroCents": cost,
        "breakdown": [{"component": "base_generation", "costMicroCents": cost}],
        "hasDiscount": False,
    }
    assert dict(fake.jobs) == {}
    assert fake.ledger.entries == []


async def test_estimate_rejects_bad_input(fake, session):
    """Estimate validates what it is given and knows its models."""
    r = await api(
        session,
        fake,
        "POST",
        "/v1/jobs/estimate",
        {"model": KLING, "input": {"duration": 5}},
    )
    assert_error(r, 400, "INVALID_INPUT")
    r = await api(session, fake, "POST", "/v1/jobs/estimate", {"model": "a/b/c"})
    assert_error(r, 404, "MODEL_NOT_FOUND")
