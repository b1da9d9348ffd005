"""
`pixelbyte_async.testing.FakePixelByte` is public API, so it is tested like any other.

These tests talk to the fake with a plain `aiohttp.ClientSession`, never the SDK client,
so the fake's behaviour is pinned down independently of the code it will test.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import io
import json
import os
import re
import signal
import sys
import uuid
from pathlib import Path
from typing import Any, NamedTuple

import aiohttp
import pytest
from aiohttp import web
from pixelbyte_async import testing
from pixelbyte_async._clock import VirtualClock
from pixelbyte_async._fake._util import parse_iso
from pixelbyte_async._fake._webhooks import sign
from pixelbyte_async.testing import (
    FakePixelByte,
    Fault,
    JobScript,
    input_fingerprint,
)


pytestmark = pytest.mark.anyio

KLING = "kling-plus/kling-o1-standard/start-end-frame-to-video"
KLING_PRO = "kling-plus/kling-o1-pro/start-end-frame-to-video"
ECHO = "test/echo-image/text-to-image"
KLING_INPUT = {
    "prompt": "Smooth cinematic transition from a sunrise to a starry night",
    "image_url": "https://example.com/image.jpg",
    "end_image_url": "https://example.com/end-image.jpg",
    "duration": "5",
}
REPO_ROOT = Path(testing.__file__).resolve().parents[1]
UNAUTHORIZED = "Missing or invalid Authorization header. Provide a valid API key as a Bearer token."


class Resp(NamedTuple):
    status: int
    body: Any
    headers: Any


def bearer(fake: FakePixelByte) -> dict[str, str]:
    return {"Authorization": f"Bearer {fake.api_key}"}


async def api(
    session: aiohttp.ClientSession,
    fake: FakePixelByte,
    method: str,
    path: str,
    body: Any = None,
    *,
    headers: dict[str, str] | None = None,
    params: dict[str, str] | None = None,
) -> Resp:
    """Call the fake's API; *headers* default to a valid Bearer key."""
    async with session.request(
        method,
        fake.url + path,
        json=body,
        headers=bearer(fake) if headers is None else headers,
        params=params,
    ) as r:
        return Resp(r.status, await r.json(content_type=None), r.headers)


async def submit(
    session: aiohttp.ClientSession,
    fake: FakePixelByte,
    model: str = KLING,
    input: dict[str, Any] | None = None,  # noqa: A002
    **extra: Any,
) -> Resp:
    body = {"model": model, "input": KLING_INPUT if input is None else input, **extra}
    return await api(session, fake, "POST", "/v1/jobs/submit", body)


async def submit_ok(
    session: aiohttp.ClientSession, fake: FakePixelByte, **kw: Any
) -> str:
    r = await submit(session, fake, **kw)
    assert r.status == 200, r.body
    return str(r.body["jobId"])


async def get_job(session, fake, job_id: str) -> dict[str, Any]:
    r = await api(session, fake, "GET", f"/v1/jobs/{job_id}")
    assert r.status == 200, r.body
    return dict(r.body)


def assert_error(r: Resp, status: int, code: str) -> dict[str, Any]:
    """Assert *r* is the error envelope with *status* and *code*; return ``error``."""
    assert (r.status, r.body["error"]["code"]) == (status, code), r.body
    assert r.body["success"] is False
    assert r.body["requestId"].startswith("req_")
    assert r.headers["X-Request-Id"] == r.body["requestId"]
    assert isinstance(r.body["error"]["details"], dict)
    return dict(r.body["error"])


@pytest.fixture(name="fake")
async def _fake():
    async with FakePixelByte() as fake:
        yield fake


@pytest.fixture(name="session")
async def _session():
    async with aiohttp.ClientSession() as session:
        yield session


# -- lifecycle ------------------------------------------------------------------------


async def test_two_origins_on_localhost(fake):
    """The API and the CDN listen on 127.0.0.1 on two different OS-chosen ports."""
    assert re.fullmatch(r"http://127\.0\.0\.1:\d+", fake.url)
    assert re.fullmatch(r"http://127\.0\.0\.1:\d+", fake.cdn_url)
    assert fake.url != fake.cdn_url
    assert fake.api_key == testing.SANDBOX_API_KEY == "pb_test_sandbox_key"
    assert fake.running
    assert "running" in repr(fake)


async def test_close_twice_is_harmless_and_restart_is_refused():
    """close() is idempotent; a closed fake cannot be started again."""
    fake = FakePixelByte()
    await fake.start()
    with pytest.raises(RuntimeError, match="running"):
        await fake.start()
    await fake.close()
    await fake.close()
    assert not fake.running
    with pytest.raises(RuntimeError, match="closed"):
        await fake.start()


async def test_url_before_start_raises():
    """A fake that never started has no URL."""
    fake = FakePixelByte()
    with pytest.raises(RuntimeError, match="not started"):
        _ = fake.url
    with pytest.raises(RuntimeError, match="not started"):
        _ = fake.cdn_url
    await fake.close()


@pytest.mark.parametrize(
    "kwargs",
    [
        {"clock": VirtualClock(), "time_scale": 2.0},
        {"envelope": "enveloped"},
        {"concurrent_job_limit": 0},
    ],
    ids=["clock-and-scale", "bad-envelope", "zero-limit"],
)
def test_constructor_rejects_bad_arguments(kwargs):
    """Contradictory or out-of-range arguments raise ValueError."""
    with pytest.raises(ValueError):
        FakePixelByte(**kwargs)


async def test_shared_clock_is_used(session):
    """A clock passed in is the one job timestamps come from."""
    clock = VirtualClock(start=1_760_000_000.0)
    async with FakePixelByte(clock=clock) as fake:
        assert fake.clock is clock
        r = await submit(session, fake)
        assert r.body["estimatedCompletionTime"] == "2025-10-09T08:57:25.000Z"
        fake.advance(10)
        assert clock.time() == 1_760_000_010.0


def test_public_names_are_exported_and_sorted():
    """testing.__all__ is in ruff's RUF022 order and lists every public name."""
    order = sorted(
        testing.__all__, key=lambda n: (not n.isupper(), not n[:1].isupper(), n)
    )
    assert order == testing.__all__
    public = {
        name
        for name, value in vars(testing).items()
        if not name.startswith("_")
        and getattr(value, "__module__", "").startswith("pixelbyte_async")
    }
    assert public <= set(testing.__all__)
    for name in testing.__all__:
        assert getattr(testing, name).__doc__ or name == "SANDBOX_API_KEY"


# -- auth -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("headers", "code"),
    [
        ({}, "UNAUTHORIZED"),
        ({"Authorization": "Bearer pb_wrong"}, "INVALID_API_KEY"),
        ({"Authorization": "Token pb_test_sandbox_key"}, "UNAUTHORIZED"),
        ({"Authorization": "Bearer "}, "UNAUTHORIZED"),
        ({"x-api-key": "pb_test_sandbox_key"}, "UNAUTHORIZED"),
    ],
    ids=["missing", "wrong-key", "wrong-scheme", "empty-token", "x-api-key-on-jobs"],
)
async def test_jobs_need_bearer(fake, session, headers, code):
    """Job endpoints accept only a Bearer token with the right key."""
    r = await api(session, fake, "GET", "/v1/jobs", headers=headers)
    error = assert_error(r, 401, code)
    if code == "UNAUTHORIZED":
        assert error["message"] == UNAUTHORIZED


async def test_uploads_need_bearer(fake, session):
    """Upload endpoints need the Bearer key too."""
    r = await api(session, fake, "POST", "/v1/uploads/presign", {}, headers={})
    assert_error(r, 401, "UNAUTHORIZED")


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        ({"x-api-key": "pb_test_sandbox_key"}, 200),
        ({"Authorization": "Bearer pb_test_sandbox_key"}, 200),
        ({"Authorization": "Bearer pb_wrong", "x-api-key": "pb_test_sandbox_key"}, 200),
        ({"x-api-key": "pb_wrong"}, 401),
        ({}, 401),
    ],
    ids=["x-api-key", "bearer", "either-right", "wrong", "missing"],
)
async def test_models_accept_x_api_key_or_bearer(fake, session, headers, status):
    """Models and providers take the key as x-api-key or Bearer."""
    for path in ("/v1/models", "/v1/providers"):
        r = await api(session, fake, "GET", path, headers=headers)
        assert r.status == status


async def test_catalog_is_public(fake, session):
    """Catalogue endpoints need no key at all."""
    r = await api(session, fake, "GET", "/v1/catalog/models", headers={})
    assert r.status == 200


async def test_require_auth_false_accepts_anything(session):
    """With require_auth=False no key is checked."""
    async with FakePixelByte(require_auth=False) as fake:
        r = await api(session, fake, "GET", "/v1/jobs", headers={})
        assert r.status == 200
        fake.require_auth = True
        r = await api(session, fake, "GET", "/v1/jobs", headers={})
        assert r.status == 401


async def test_custom_api_key(session):
    """The key is configurable and the default one is then refused."""
    async with FakePixelByte(api_key="pb_custom") as fake:
        assert (await api(session, fake, "GET", "/v1/jobs")).status == 200
        r = await api(
            session,
            fake,
            "GET",
            "/v1/jobs",
            headers={"Authorization": "Bearer pb_test_sandbox_key"},
        )
        assert_error(r, 401, "INVALID_API_KEY")


async def test_unknown_route_is_enveloped_404(fake, session):
    """Unknown paths answer the error envelope with NOT_FOUND."""
    assert_error(await api(session, fake, "GET", "/v2/nothing"), 404, "NOT_FOUND")


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


# -- job lifecycle --------------------------------------------------------------------


async def test_lifecycle_follows_the_clock(fake, session):
    """pending for 5 s, processing for 240 s, then completed; all on virtual time."""
    job_id = await submit_ok(session, fake)
    job = await get_job(session, fake, job_id)
    assert (job["status"], job["progress"], job["output"], job["completedAt"]) == (
        "pending",
        0,
        None,
        None,
    )
    assert job["model"] == KLING
    assert job["error"] is None
    fake.advance(4.999)
    assert (await get_job(session, fake, job_id))["status"] == "pending"
    fake.advance(0.001)
    job = await get_job(session, fake, job_id)
    assert (job["status"], job["progress"]) == ("processing", 50)
    fake.advance(239.99)
    assert (await get_job(session, fake, job_id))["status"] == "processing"
    fake.advance(0.01)
    job = await get_job(session, fake, job_id)
    assert (job["status"], job["progress"]) == ("completed", 100)
    created = parse_iso(job["createdAt"])
    assert parse_iso(job["completedAt"]) == pytest.approx(created + 245, abs=1e-3)
    assert fake.jobs[job_id].status == "completed"
    assert fake.jobs[job_id].status_at(created + 1) == "pending"


async def test_unknown_job_is_404(fake, session):
    """An unknown job id is JOB_NOT_FOUND."""
    r = await api(session, fake, "GET", "/v1/jobs/job_000000000000")
    assert_error(r, 404, "JOB_NOT_FOUND")


async def test_wrapped_job_carries_cost(session):
    """The wrapped (quickstart) job view also carries cost."""
    async with FakePixelByte(envelope="wrapped") as fake:
        r = await submit(session, fake)
        job_id = r.body["data"]["jobId"]
        r = await api(session, fake, "GET", f"/v1/jobs/{job_id}")
        assert r.body["data"]["cost"] == 250_000


@pytest.mark.parametrize(
    "shape",
    ["reference", "object", "video_url", "outputs_only", "image_url", "none"],
)
async def test_output_shapes(fake, session, shape):
    """Completed jobs can report every documented output shape."""
    fake.script_next(JobScript(output_shape=shape))
    job_id = await submit_ok(session, fake)
    fake.advance(245)
    job = await get_job(session, fake, job_id)
    assert job["status"] == "completed"
    url = f"{fake.cdn_url}/outputs/{job_id}/output_0.mp4"
    item = {
        "url": url,
        "type": "video",
        "thumbnail": f"{fake.cdn_url}/outputs/{job_id}/thumb_0.jpg",
        "posterImage": f"{fake.cdn_url}/outputs/{job_id}/poster_0.jpg",
    }
    expected = {
        "reference": (url, [item]),
        "object": (
            {"url": url, "contentType": "video/mp4", "durationSeconds": 5},
            None,
        ),
        "video_url": ({"videoUrl": url}, None),
        "outputs_only": (None, [item]),
        "image_url": (
            {
                "imageUrl": url,
                "metadata": {"width": 160, "height": 90, "format": "mp4"},
            },
            None,
        ),
        "none": (None, None),
    }[shape]
    assert (job["output"], job["outputs"]) == expected


async def test_image_model_output(fake, session):
    """The image model's output is a PNG served by the CDN."""
    job_id = await submit_ok(session, fake, model=ECHO, input={"prompt": "x"})
    fake.advance(10)
    job = await get_job(session, fake, job_id)
    assert job["output"] == f"{fake.cdn_url}/outputs/{job_id}/output_0.png"
    assert job["outputs"][0]["type"] == "image"
    async with session.get(job["output"]) as r:
        assert r.headers["Content-Type"] == "image/png"
        assert (await r.read()).startswith(b"\x89PNG\r\n\x1a\n")


async def test_failed_job_is_refunded(fake, session):
    """A failing script ends failed with an error, and the ledger refunds it."""
    fake.script_next(JobScript(outcome="failed", processing_seconds=10))
    job_id = await submit_ok(session, fake)
    assert fake.ledger.charged_micro_cents == 250_000
    fake.advance(15)
    assert fake.ledger.charged_micro_cents == 0
    [charge, refund] = fake.ledger.for_job(job_id)
    assert (refund.kind, refund.reason, refund.micro_cents) == (
        "refund",
        "failed",
        250_000,
    )
    assert refund.time == pytest.approx(charge.time + 15)
    job = await get_job(session, fake, job_id)
    assert (job["status"], job["progress"], job["output"], job["outputs"]) == (
        "failed",
        0,
        None,
        None,
    )
    assert job["error"] == {
        "code": "GENERATION_FAILED",
        "message": "Generation failed. Credits have been refunded.",
    }
    assert job["completedAt"] is not None
    assert len(fake.ledger) == 2


async def test_complete_now_and_fail_now(fake, session):
    """complete_now/fail_now end a running job at once; ended jobs refuse them."""
    first = await submit_ok(session, fake)
    second = await submit_ok(session, fake)
    fake.advance(1)
    done = fake.complete_now(first)
    assert done.status == "completed"
    assert (await get_job(session, fake, first))["status"] == "completed"
    fake.fail_now(second, code="INTERNAL_ERROR", message="Model inference failed")
    job = await get_job(session, fake, second)
    assert job["error"] == {
        "code": "INTERNAL_ERROR",
        "message": "Model inference failed",
    }
    assert fake.ledger.charged_micro_cents == 250_000
    with pytest.raises(ValueError, match="already completed"):
        fake.fail_now(first)
    with pytest.raises(KeyError):
        fake.complete_now("job_nope")


async def test_complete_now_rescues_a_failing_script(fake, session):
    """complete_now overrides a failing script, so no refund is entered."""
    fake.script_next(JobScript(outcome="failed"))
    job_id = await submit_ok(session, fake)
    fake.complete_now(job_id)
    fake.advance(1000)
    assert fake.jobs[job_id].status == "completed"
    assert fake.ledger.charged_micro_cents == 250_000


async def test_scripts_are_consumed_in_order(fake, session):
    """script_next feeds the next created jobs; then the default script applies."""
    fake.set_default_script(JobScript(queue_seconds=0, processing_seconds=1))
    fake.script_next(JobScript(queue_seconds=100), JobScript(outcome="failed"))
    r = await submit(session, fake, KLING, {"image_url": "https://e/a"})  # rejected
    assert r.status == 400
    a = await submit_ok(session, fake)
    b = await submit_ok(session, fake)
    c = await submit_ok(session, fake)
    fake.advance(1)
    assert [fake.jobs[j].status for j in (a, b, c)] == [
        "pending",
        "pending",
        "completed",
    ]
    assert fake.jobs[a].script.processing_seconds == 240
    assert fake.jobs[b].script.outcome == "failed"


# -- list -----------------------------------------------------------------------------


async def test_list_paginates_newest_first(fake, session):
    """Cursors walk every job once, newest first; the last page has no cursor."""
    ids = [await submit_ok(session, fake) for _ in range(5)]
    seen: list[str] = []
    cursor = None
    pages = 0
    while True:
        params = {"limit": "2"} | ({"cursor": cursor} if cursor else {})
        r = await api(session, fake, "GET", "/v1/jobs", params=params)
        assert set(r.body) == {"jobs", "nextCursor", "hasMore"}
        seen += [j["jobId"] for j in r.body["jobs"]]
        pages += 1
        if not r.body["hasMore"]:
            assert r.body["nextCursor"] is None
            break
        cursor = r.body["nextCursor"]
        json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
    assert seen == ids[::-1]
    assert pages == 3
    item = r.body["jobs"][0]
    assert set(item) == {
        "jobId",
        "status",
        "progress",
        "model",
        "createdAt",
        "completedAt",
    }


async def test_list_default_limit_is_20(fake, session):
    """Without limit a page holds 20 jobs."""
    for _ in range(21):
        await submit_ok(session, fake, model=ECHO, input={"prompt": "x"})
    r = await api(session, fake, "GET", "/v1/jobs")
    assert (len(r.body["jobs"]), r.body["hasMore"]) == (20, True)


async def test_list_filters(fake, session):
    """status and modelId (a slug) filter the list."""
    kling = await submit_ok(session, fake)
    fake.advance(10)
    echo = await submit_ok(session, fake, model=ECHO, input={"prompt": "x"})
    r = await api(session, fake, "GET", "/v1/jobs", params={"modelId": ECHO})
    assert [j["jobId"] for j in r.body["jobs"]] == [echo]
    r = await api(session, fake, "GET", "/v1/jobs", params={"status": "processing"})
    assert [j["jobId"] for j in r.body["jobs"]] == [kling]
    r = await api(session, fake, "GET", "/v1/jobs", params={"status": "completed"})
    assert r.body == {"jobs": [], "nextCursor": None, "hasMore": False}


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"limit": "0"}, "limit"),
        ({"limit": "101"}, "limit"),
        ({"limit": "ten"}, "limit"),
        ({"cursor": "!!!"}, "cursor"),
        ({"cursor": base64.b64encode(b'{"jobId":"job_x"}').decode()}, "cursor"),
        ({"status": "running"}, "status"),
    ],
    ids=[
        "limit-0",
        "limit-101",
        "limit-text",
        "cursor-garbage",
        "cursor-unknown",
        "status",
    ],
)
async def test_list_rejects_bad_parameters(fake, session, params, field):
    """Out-of-range limits, foreign cursors and unknown statuses are INVALID_INPUT."""
    r = await api(session, fake, "GET", "/v1/jobs", params=params)
    assert assert_error(r, 400, "INVALID_INPUT")["details"]["field"] == field


async def test_list_accepts_limit_100(fake, session):
    """limit=100 is the maximum and is accepted."""
    r = await api(session, fake, "GET", "/v1/jobs", params={"limit": "100"})
    assert r.status == 200


# -- cancel ---------------------------------------------------------------------------


async def test_cancel_pending_refunds(fake, session):
    """Cancelling a pending job refunds it in full, once."""
    job_id = await submit_ok(session, fake)
    r = await api(session, fake, "POST", f"/v1/jobs/{job_id}/cancel")
    assert r.body == {
        "jobId": job_id,
        "status": "cancelled",
        "refundedMicroCents": 250_000,
    }
    assert fake.ledger.charged_micro_cents == 0
    assert [e.reason for e in fake.ledger.for_job(job_id)] == ["submit", "cancelled"]
    job = await get_job(session, fake, job_id)
    assert (job["status"], job["output"]) == ("cancelled", None)
    assert job["completedAt"] is not None
    fake.advance(1000)
    assert fake.jobs[job_id].status == "cancelled"
    r = await api(session, fake, "POST", f"/v1/jobs/{job_id}/cancel")
    assert (
        assert_error(r, 400, "JOB_CANNOT_BE_CANCELLED")["details"]["status"]
        == "cancelled"
    )
    assert fake.ledger.charged_micro_cents == 0


@pytest.mark.parametrize(("seconds", "status"), [(5, "processing"), (245, "completed")])
async def test_cancel_running_or_done_is_refused(fake, session, seconds, status):
    """Only pending jobs can be cancelled."""
    job_id = await submit_ok(session, fake)
    fake.advance(seconds)
    r = await api(session, fake, "POST", f"/v1/jobs/{job_id}/cancel")
    assert (
        assert_error(r, 400, "JOB_CANNOT_BE_CANCELLED")["details"]["status"] == status
    )
    assert fake.ledger.charged_micro_cents == 250_000


async def test_cancel_unknown_job(fake, session):
    """Cancelling an unknown job is JOB_NOT_FOUND."""
    r = await api(session, fake, "POST", "/v1/jobs/job_000000000000/cancel")
    assert_error(r, 404, "JOB_NOT_FOUND")


# -- limits and balance ---------------------------------------------------------------


async def test_concurrency_limit(session):
    """Over the limit submit is 429 with retryAfter and creates no job."""
    async with FakePixelByte(concurrent_job_limit=2) as fake:
        await submit_ok(session, fake)
        await submit_ok(session, fake)
        r = await submit(session, fake)
        error = assert_error(r, 429, "CONCURRENT_JOBS_EXCEEDED")
        assert error["details"]["retryAfter"] == 30
        assert len(fake.jobs) == 2
        assert fake.ledger.charged_micro_cents == 500_000
        fake.concurrency_retry_after = 7
        assert fake.concurrency_retry_after == 7
        r = await submit(session, fake)
        assert r.body["error"]["details"]["retryAfter"] == 7
        fake.advance(245)
        await submit_ok(session, fake)
        fake.concurrent_job_limit = None
        assert fake.concurrent_job_limit is None
        await submit_ok(session, fake)


async def test_balance(session):
    """Submits beyond the balance are 402; refunds restore it."""
    async with FakePixelByte(balance_micro_cents=300_000) as fake:
        job_id = await submit_ok(session, fake)
        assert fake.balance_micro_cents == 50_000
        r = await submit(session, fake)
        assert assert_error(r, 402, "INSUFFICIENT_BALANCE")["details"] == {
            "requiredMicroCents": 250_000,
            "balanceMicroCents": 50_000,
        }
        assert len(fake.jobs) == 1
        await api(session, fake, "POST", f"/v1/jobs/{job_id}/cancel")
        assert fake.balance_micro_cents == 300_000
        fake.balance_micro_cents = 1_000_000
        assert fake.balance_micro_cents == 1_000_000
        await submit_ok(session, fake)
        assert fake.balance_micro_cents == 750_000


async def test_unlimited_balance_is_none(fake):
    """Without a starting balance there is no balance to report."""
    assert fake.balance_micro_cents is None


# -- ledger ---------------------------------------------------------------------------


def test_input_fingerprint_ignores_key_order():
    """The fingerprint is the SHA-256 of canonical JSON of model and input."""
    a = input_fingerprint(KLING, {"a": 1, "b": "é"})
    assert a == input_fingerprint(KLING, {"b": "é", "a": 1})
    assert a != input_fingerprint(KLING_PRO, {"a": 1, "b": "é"})
    canonical = '{"input":{"a":1,"b":"é"},"model":"' + KLING + '"}'
    assert a == hashlib.sha256(canonical.encode()).hexdigest()


async def test_double_charge_detection(fake, session):
    """A blind resubmit after a dropped answer is visible as a double charge."""
    fake.inject(Fault.drop_after(), method="POST", path="/v1/jobs/submit")
    with pytest.raises((aiohttp.ServerDisconnectedError, aiohttp.ClientOSError)):
        await submit(session, fake)
    await submit_ok(session, fake)
    fp = input_fingerprint(KLING, KLING_INPUT)
    assert fake.ledger.charges_by_fingerprint() == {fp: 2}
    assert fake.ledger.double_charged() == [fp]
    assert "charged_micro_cents=500000" in repr(fake.ledger)


async def test_resubmit_after_failure_is_not_double_charged(fake, session):
    """Paying again after a refunded failure is not a double charge."""
    fake.script_next(JobScript(outcome="failed", queue_seconds=0, processing_seconds=1))
    await submit_ok(session, fake)
    fake.advance(1)
    await submit_ok(session, fake)
    fp = input_fingerprint(KLING, KLING_INPUT)
    assert fake.ledger.charges_by_fingerprint() == {fp: 2}
    assert fake.ledger.double_charged() == []


# -- faults ---------------------------------------------------------------------------


async def test_status_fault(fake, session):
    """A status fault answers the envelope (with retry hints) and creates no job."""
    handle = fake.inject(
        Fault.status(
            503, "PUBSUB_PUBLISH_FAILED", retry_after=2, retry_after_header="3"
        ),
        method="POST",
        path="/v1/jobs/submit",
        times=2,
    )
    for _ in range(2):
        r = await submit(session, fake)
        error = assert_error(r, 503, "PUBSUB_PUBLISH_FAILED")
        assert error["details"] == {"retryAfter": 2}
        assert error["message"] == "Failed to queue the job. Please retry."
        assert r.headers["Retry-After"] == "3"
    assert dict(fake.jobs) == {}
    assert (handle.hits, handle.remaining, handle.active) == (2, 0, False)
    await submit_ok(session, fake)
    assert [r.fault for r in fake.requests] == ["status", "status", None]


async def test_status_fault_default_message_and_float_retry(fake, session):
    """Unknown codes get a generic message; fractional retryAfter stays fractional."""
    fake.inject(Fault.status(500, "WEIRD", retry_after=1.5))
    r = await api(session, fake, "GET", "/v1/jobs")
    error = assert_error(r, 500, "WEIRD")
    assert error["details"]["retryAfter"] == 1.5
    assert "Retry-After" not in r.headers


async def test_faults_match_method_and_path_globs_in_order(fake, session):
    """Faults hit only matching requests, first injected first."""
    fake.inject(
        Fault.status(500, "INTERNAL_ERROR"), method="GET", path="/v1/jobs/job_*"
    )
    fake.inject(Fault.status(503, "PUBSUB_PUBLISH_FAILED"), method="post")
    fake.inject(Fault.status(502, "BAD_GATEWAY"), method="POST")
    job_id = await submit(session, fake)
    assert job_id.status == 503
    assert (await submit(session, fake)).status == 502
    job_id = await submit_ok(session, fake)
    assert (await api(session, fake, "GET", "/v1/jobs")).status == 200
    assert (await api(session, fake, "GET", f"/v1/jobs/{job_id}")).status == 500
    assert (await api(session, fake, "GET", f"/v1/jobs/{job_id}")).status == 200


async def test_unlimited_fault_until_cancelled(fake, session):
    """times=None applies a fault until its handle is cancelled or faults cleared."""
    handle = fake.inject(Fault.status(500, "INTERNAL_ERROR"), times=None)
    for _ in range(3):
        assert (await api(session, fake, "GET", "/v1/jobs")).status == 500
    handle.cancel()
    assert (await api(session, fake, "GET", "/v1/jobs")).status == 200
    fake.inject(Fault.status(500, "INTERNAL_ERROR"), times=None)
    fake.clear_faults()
    assert (await api(session, fake, "GET", "/v1/jobs")).status == 200
    with pytest.raises(ValueError, match="times"):
        fake.inject(Fault.drop_before(), times=0)
    with pytest.raises(ValueError, match="seconds"):
        Fault.delay(-1)


async def test_delay_fault_lets_clients_time_out(fake, session):
    """A delay fault holds the answer for real seconds; the work still happens."""
    fake.inject(Fault.delay(0.05), path="/v1/jobs/submit")
    with pytest.raises(TimeoutError):
        async with session.post(
            fake.url + "/v1/jobs/submit",
            json={"model": KLING, "input": KLING_INPUT},
            headers=bearer(fake),
            timeout=aiohttp.ClientTimeout(total=0.01),
        ):
            pass  # pragma: no cover
    await asyncio.sleep(0.08)
    assert len(fake.jobs) == 1
    fake.inject(Fault.delay(0.001))
    assert (await api(session, fake, "GET", "/v1/jobs")).status == 200


async def test_drop_before_creates_nothing(fake, session):
    """drop_before closes the connection unanswered and does nothing."""
    fake.inject(Fault.drop_before(), method="POST", path="/v1/jobs/submit")
    with pytest.raises((aiohttp.ServerDisconnectedError, aiohttp.ClientOSError)):
        await submit(session, fake)
    assert dict(fake.jobs) == {}
    assert fake.ledger.entries == []
    assert fake.requests[-1].fault == "drop_before"
    await submit_ok(session, fake)


async def test_drop_after_creates_and_charges(fake, session):
    """drop_after does the work, then closes the connection unanswered."""
    fake.inject(Fault.drop_after(), method="POST", path="/v1/jobs/submit")
    with pytest.raises((aiohttp.ServerDisconnectedError, aiohttp.ClientOSError)):
        await submit(session, fake)
    [job] = fake.jobs.values()
    assert fake.ledger.charged_micro_cents == job.cost == 250_000


async def test_html_fault(fake, session):
    """html answers a proxy's error page and creates nothing."""
    fake.inject(Fault.html(), path="/v1/jobs/submit")
    async with session.post(
        fake.url + "/v1/jobs/submit",
        json={"model": KLING, "input": KLING_INPUT},
        headers=bearer(fake),
    ) as r:
        assert r.status == 502
        assert r.content_type == "text/html"
        assert "<h1>502 Bad Gateway</h1>" in await r.text()
    assert dict(fake.jobs) == {}


async def test_garbage_fault(fake, session):
    """garbage sends half a JSON body after doing the work."""
    fake.inject(Fault.garbage(), path="/v1/jobs/submit")
    async with session.post(
        fake.url + "/v1/jobs/submit",
        json={"model": KLING, "input": KLING_INPUT},
        headers=bearer(fake),
    ) as r:
        assert r.status == 200
        assert r.content_type == "application/json"
        text = await r.text()
    with pytest.raises(json.JSONDecodeError):
        json.loads(text)
    assert text.startswith('{"jobId"')
    assert len(fake.jobs) == 1


async def test_cdn_faults(fake, session):
    """Faults can target the CDN origin; API faults never hit it."""
    job_id = await submit_ok(session, fake)
    fake.advance(245)
    url = f"{fake.cdn_url}/outputs/{job_id}/output_0.mp4"
    fake.inject(Fault.status(500, "INTERNAL_ERROR"))  # api origin only
    # aiohttp's client retries an idempotent request once after a drop: drop twice.
    fake.inject(Fault.drop_before(), origin="cdn", path="/outputs/*", times=2)
    with pytest.raises((aiohttp.ServerDisconnectedError, aiohttp.ClientOSError)):
        async with session.get(url) as r:
            await r.read()  # pragma: no cover
    fake.inject(Fault.html(503), origin="cdn")
    async with session.get(url) as r:
        assert r.status == 503
    async with session.get(url) as r:
        assert r.status == 200
    faults = [r.fault for r in fake.cdn_requests]
    assert faults == ["drop_before", "drop_before", "html", None]
    assert (await api(session, fake, "GET", "/v1/jobs")).status == 500


async def test_cdn_drop_after_and_garbage(fake, session):
    """drop_after and garbage work on the CDN too."""
    job_id = await submit_ok(session, fake)
    fake.advance(245)
    url = f"{fake.cdn_url}/outputs/{job_id}/output_0.mp4"
    fake.inject(Fault.drop_after(), origin="cdn", times=2)
    with pytest.raises((aiohttp.ServerDisconnectedError, aiohttp.ClientOSError)):
        async with session.get(url) as r:
            await r.read()  # pragma: no cover
    fake.inject(Fault.garbage(), origin="cdn")
    async with session.get(url) as r:
        assert len(await r.read()) == 7553 // 2


# -- uploads --------------------------------------------------------------------------


async def presign(
    session, fake, filename="frame.png", content_type="image/png"
) -> Resp:
    return await api(
        session,
        fake,
        "POST",
        "/v1/uploads/presign",
        {"filename": filename, "contentType": content_type},
    )


@pytest.mark.parametrize(
    ("content_type", "max_size"),
    [
        ("image/jpeg", 10_485_760),
        ("image/png", 10_485_760),
        ("image/webp", 10_485_760),
        ("image/gif", 10_485_760),
        ("video/mp4", 104_857_600),
        ("video/webm", 104_857_600),
        ("audio/mpeg", 52_428_800),
        ("audio/wav", 52_428_800),
    ],
)
async def test_presign(fake, session, content_type, max_size):
    """Presign returns CDN URLs, a UUID, a 60-minute expiry and the type's max size."""
    r = await presign(session, fake, "my file.bin", content_type)
    assert r.body["success"] is True
    data = r.body["data"]
    file_id = data["fileId"]
    assert uuid.UUID(file_id).version == 4
    assert data["uploadUrl"] == f"{fake.cdn_url}/storage/temp/{file_id}/my%20file.bin"
    assert data["fileUrl"] == f"{fake.cdn_url}/temp/{file_id}/my%20file.bin"
    assert data["maxSize"] == max_size
    upload = fake.uploads[file_id]
    assert parse_iso(data["expiresAt"]) == pytest.approx(upload.created_at + 3600)


@pytest.mark.parametrize(
    ("body", "code"),
    [
        ({"filename": "a.txt", "contentType": "text/plain"}, "INVALID_CONTENT_TYPE"),
        ({"contentType": "image/png"}, "VALIDATION_ERROR"),
        ({"filename": "a.png"}, "VALIDATION_ERROR"),
        ({"filename": "../", "contentType": "image/png"}, "VALIDATION_ERROR"),
        (None, "VALIDATION_ERROR"),
    ],
    ids=["content-type", "no-filename", "no-content-type", "bad-filename", "no-body"],
)
async def test_presign_rejections(fake, session, body, code):
    """Presign validates its body."""
    r = await api(session, fake, "POST", "/v1/uploads/presign", body)
    assert_error(r, 400, code)
    assert dict(fake.uploads) == {}


async def test_upload_round_trip_and_expiry(fake, session):
    """PUT stores the bytes, fileUrl serves them for 60 minutes, then 404."""
    data = (await presign(session, fake)).body["data"]
    async with session.put(
        data["uploadUrl"], data=b"\x89PNG fake", headers={"Content-Type": "image/png"}
    ) as r:
        assert r.status == 200
        assert r.headers["ETag"]
    async with session.get(data["fileUrl"]) as r:
        assert (r.status, r.content_type, await r.read()) == (
            200,
            "image/png",
            b"\x89PNG fake",
        )
    r = await api(session, fake, "GET", f"/v1/uploads/{data['fileId']}")
    info = r.body["data"]
    assert (info["id"], info["filename"], info["contentType"], info["status"]) == (
        data["fileId"],
        "frame.png",
        "image/png",
        "pending",
    )
    assert info["fileUrl"] == data["fileUrl"]
    fake.advance(3600)
    r = await api(session, fake, "GET", f"/v1/uploads/{data['fileId']}")
    assert r.body["data"]["status"] == "expired"
    async with session.get(data["fileUrl"]) as r:
        assert r.status == 404


async def test_unknown_upload(fake, session):
    """An unknown upload id is NOT_FOUND."""
    r = await api(session, fake, "GET", f"/v1/uploads/{uuid.uuid4()}")
    assert_error(r, 404, "NOT_FOUND")


async def test_put_rules(fake, session):
    """PUT needs the presigned Content-Type, the 15-minute window and maxSize."""
    data = (await presign(session, fake)).body["data"]
    url = data["uploadUrl"]
    async with session.put(url, data=b"x", headers={"Content-Type": "image/jpeg"}) as r:
        assert r.status == 403
        assert "SignatureDoesNotMatch" in await r.text()
    too_big = io.BytesIO(b"\0" * (10_485_760 + 1))
    async with session.put(
        url, data=too_big, headers={"Content-Type": "image/png"}
    ) as r:
        assert r.status == 413
    async with session.put(
        url.replace(data["fileId"], str(uuid.uuid4())),
        data=b"x",
        headers={"Content-Type": "image/png"},
    ) as r:
        assert r.status == 404
    fake.advance(15 * 60)
    async with session.put(url, data=b"x", headers={"Content-Type": "image/png"}) as r:
        assert r.status == 403
        assert "expired" in await r.text()
    async with session.get(data["fileUrl"]) as r:
        assert r.status == 404  # never uploaded


async def test_put_too_large_streamed(fake, session):
    """A chunked body that outgrows maxSize is refused with 413 too."""
    data = (await presign(session, fake)).body["data"]

    async def chunks():
        for _ in range(11):
            yield b"\0" * 1_048_576

    async with session.put(
        data["uploadUrl"], data=chunks(), headers={"Content-Type": "image/png"}
    ) as r:
        assert r.status == 413


async def test_submit_checks_referenced_uploads(fake, session):
    """Inputs naming this fake's uploads must point at files that were PUT."""
    data = (await presign(session, fake)).body["data"]
    value = {**KLING_INPUT, "image_url": data["fileUrl"]}
    r = await submit(session, fake, input=value)
    assert assert_error(r, 400, "INVALID_INPUT")["details"]["field"] == "image_url"
    async with session.put(
        data["uploadUrl"], data=b"png", headers={"Content-Type": "image/png"}
    ) as resp:
        assert resp.status == 200
    assert (await submit(session, fake, input=value)).status == 200
    fake.advance(3600)
    r = await submit(session, fake, input=value)
    assert "expired" in assert_error(r, 400, "INVALID_INPUT")["message"]


# -- CDN ------------------------------------------------------------------------------


async def test_output_is_a_real_mp4_without_auth(fake, session):
    """The output is the packaged MP4, and the CDN records the missing auth header."""
    job_id = await submit_ok(session, fake)
    fake.advance(245)
    url = (await get_job(session, fake, job_id))["output"]
    async with session.get(url) as r:
        body = await r.read()
        assert r.status == 200
        assert r.headers["Content-Type"] == "video/mp4"
        assert int(r.headers["Content-Length"]) == len(body)
    assert body[4:8] == b"ftyp"
    assert 1000 < len(body) < 20_000
    assert fake.cdn_requests[-1].authorization is None
    assert fake.cdn_requests[-1].path == f"/outputs/{job_id}/output_0.mp4"
    async with session.get(url, headers=bearer(fake)) as r:
        await r.read()
    assert fake.cdn_requests[-1].authorization == f"Bearer {fake.api_key}"
    assert len(fake.cdn_requests_for("GET", "/outputs/*")) == 2


async def test_thumbnail_and_unknown_files(fake, session):
    """Thumbnails are JPEGs; unknown names and unfinished jobs are 404."""
    job_id = await submit_ok(session, fake)
    base = f"{fake.cdn_url}/outputs/{job_id}"
    async with session.get(f"{base}/output_0.mp4") as r:
        assert r.status == 404  # not completed yet
    fake.advance(245)
    async with session.get(f"{base}/thumb_0.jpg") as r:
        assert r.content_type == "image/jpeg"
        assert (await r.read()).startswith(b"\xff\xd8")
    async with session.get(f"{base}/output_9.mp4") as r:
        assert r.status == 404
    async with session.get(f"{fake.cdn_url}/outputs/job_nope/output_0.mp4") as r:
        assert r.status == 404
    async with session.get(f"{fake.cdn_url}/elsewhere") as r:
        assert r.status == 404


@pytest.mark.parametrize(
    ("range_header", "status", "content_range", "length"),
    [
        ("bytes=0-99", 206, "bytes 0-99/7553", 100),
        ("bytes=7500-", 206, "bytes 7500-7552/7553", 53),
        ("bytes=-10", 206, "bytes 7543-7552/7553", 10),
        ("bytes=7553-", 416, "bytes */7553", 0),
        ("bytes=0-1,5-6", 200, None, 7553),
    ],
    ids=["first-100", "open-ended", "suffix", "unsatisfiable", "multi-ignored"],
)
async def test_range_requests(
    fake, session, *, range_header, status, content_range, length
):
    """The CDN supports single byte ranges so downloads can resume."""
    job_id = await submit_ok(session, fake)
    fake.advance(245)
    url = f"{fake.cdn_url}/outputs/{job_id}/output_0.mp4"
    async with session.get(url, headers={"Range": range_header}) as r:
        assert r.status == status
        assert r.headers.get("Content-Range") == content_range
        assert len(await r.read()) == length


async def test_head_request(fake, session):
    """HEAD reports the length without a body."""
    job_id = await submit_ok(session, fake)
    fake.advance(245)
    async with session.head(f"{fake.cdn_url}/outputs/{job_id}/output_0.mp4") as r:
        assert r.status == 200
        assert r.headers["Content-Length"] == "7553"


# -- models and catalogue -------------------------------------------------------------


async def test_models_and_providers(fake, session):
    """The models API lists models by id and providers with their models."""
    r = await api(session, fake, "GET", "/v1/models")
    models = {m["id"]: m for m in r.body["models"]}
    std = models["model_klingo1std"]
    assert std["providerId"] == "kling-plus"
    assert std["currentVersionPricing"] == {"baseCredits": 50, "unit": "per_second"}
    r = await api(session, fake, "GET", "/v1/models/model_klingo1std")
    versions = {v["versionId"]: v for v in r.body["versions"]}
    assert versions["v1.0"]["status"] == "active"
    assert versions["v0.9"]["status"] == "disabled"
    assert versions["v1.0"]["inputSchema"]["required"] == ["image_url", "end_image_url"]
    assert versions["v1.0"]["rateLimits"] == {
        "requestsPerMinute": 10,
        "requestsPerDay": 500,
    }
    assert_error(
        await api(session, fake, "GET", "/v1/models/model_x"), 404, "MODEL_NOT_FOUND"
    )
    r = await api(session, fake, "GET", "/v1/providers")
    assert {p["id"] for p in r.body["providers"]} == {"kling-plus", "test"}
    r = await api(session, fake, "GET", "/v1/providers/kling-plus/models")
    assert r.body["provider"]["name"] == "Kling Plus"
    assert {m["id"] for m in r.body["models"]} == {
        "model_klingo1std",
        "model_klingo1pro",
    }
    r = await api(session, fake, "GET", "/v1/providers/nope/models")
    assert_error(r, 404, "NOT_FOUND")


@pytest.mark.parametrize(
    ("envelope", "path", "key"),
    [
        ("mixed", "/v1/catalog/models", None),
        ("flat", "/v1/catalog/models", "models"),
        ("wrapped", "/v1/catalog/models", "models"),
        ("mixed", "/v1/catalog/providers", None),
        ("flat", "/v1/catalog/providers", "providers"),
        ("mixed", "/v1/catalog/categories", None),
        ("flat", "/v1/catalog/capability-groups", "capabilityGroups"),
    ],
)
async def test_catalog_lists(session, envelope, path, key):
    """Catalogue lists are bare arrays in mixed mode and keyed objects otherwise."""
    async with FakePixelByte(envelope=envelope) as fake:
        r = await api(session, fake, "GET", path, headers={})
        body = r.body["data"] if envelope == "wrapped" else r.body
        items = body if key is None else body[key]
        assert isinstance(items, list)
        assert items


async def test_catalog_content(fake, session):
    """Catalogue items carry slugs, pricing, counts and filters work."""
    r = await api(session, fake, "GET", "/v1/catalog/models", headers={})
    assert {m["slug"] for m in r.body} == {KLING, KLING_PRO, ECHO}
    r = await api(
        session, fake, "GET", "/v1/catalog/models", params={"category": "image"}
    )
    [echo] = r.body
    assert echo["pricing"]["type"] == "flat"
    assert echo["provider"] == {
        "id": "test",
        "name": "PixelByte Test",
        "logoUrl": "https://cdn.muvi.video/providers/test.png",
    }
    r = await api(session, fake, "GET", "/v1/catalog/categories")
    assert {c["id"]: c["modelCount"] for c in r.body} == {"video": 2, "image": 1}
    r = await api(session, fake, "GET", "/v1/catalog/providers")
    assert {p["id"]: p["modelCount"] for p in r.body} == {"kling-plus": 2, "test": 1}
    r = await api(session, fake, "GET", "/v1/catalog/providers/kling-plus")
    assert len(r.body["models"]) == 2
    assert_error(
        await api(session, fake, "GET", "/v1/catalog/providers/x"), 404, "NOT_FOUND"
    )
    r = await api(session, fake, "GET", "/v1/catalog/capability-groups")
    assert "start-end-frame-to-video" in {g["id"] for g in r.body}


@pytest.mark.parametrize("slug", [KLING, "kling-plus/kling-o1-standard"])
async def test_catalog_model_detail(fake, session, slug):
    """The catalogue detail (slug with slashes) has the input schema and pricing."""
    r = await api(session, fake, "GET", f"/v1/catalog/models/{slug}", headers={})
    assert r.body["slug"] == KLING
    schema = r.body["inputSchema"]
    assert schema["required"] == ["image_url", "end_image_url"]
    assert schema["properties"]["duration"]["enum"] == [str(n) for n in range(3, 11)]
    assert schema["properties"]["duration"]["default"] == "5"
    assert schema["properties"]["prompt"]["maxLength"] == 2500
    assert r.body["pricing"]["baseCostMicroCents"] == 50_000
    assert r.body["pricing"]["defaultCostMicroCents"] == 250_000


async def test_catalog_unknown_model(fake, session):
    """An unknown catalogue slug is MODEL_NOT_FOUND."""
    r = await api(session, fake, "GET", "/v1/catalog/models/acme/nothing")
    assert_error(r, 404, "MODEL_NOT_FOUND")


# -- records --------------------------------------------------------------------------


async def test_requests_are_recorded(fake, session):
    """Every API request is recorded with headers (incl. Authorization), JSON and query."""
    await submit_ok(session, fake)
    await api(session, fake, "GET", "/v1/jobs", params={"limit": "5"})
    [sub] = fake.requests_for("POST", "/v1/jobs/submit")
    assert sub.json == {"model": KLING, "input": KLING_INPUT}
    assert sub.headers["Authorization"] == f"Bearer {fake.api_key}"
    assert sub.method == "POST"
    assert sub.time == pytest.approx(fake.clock.time())
    assert sub.request_id.startswith("req_")
    [listing] = fake.requests_for("get", "/v1/jobs")
    assert listing.query == {"limit": "5"}
    assert listing.json is None
    assert fake.count("*", "/v1/jobs*") == 2
    assert fake.count("POST", "*") == 1
    fake.reset_records()
    assert fake.requests == []
    assert fake.cdn_requests == []
    assert len(fake.jobs) == 1


# -- webhooks -------------------------------------------------------------------------


class Receiver(NamedTuple):
    url: str
    hits: list[tuple[dict[str, str], bytes]]
    statuses: list[int]


@pytest.fixture(name="receiver")
async def _receiver():
    hits: list[tuple[dict[str, str], bytes]] = []
    statuses: list[int] = []

    async def hook(request: web.Request) -> web.Response:
        hits.append((dict(request.headers), await request.read()))
        return web.Response(status=statuses.pop(0) if statuses else 200)

    app = web.Application()
    app.router.add_post("/hook", hook)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    port = runner.addresses[0][1]
    yield Receiver(f"http://127.0.0.1:{port}/hook", hits, statuses)
    await runner.cleanup()


def test_signature_test_vector():
    """The fake signs webhooks as the contract's test vector says."""
    body = b'{"jobId":"job_abc123","status":"completed"}'
    assert sign("whsec_test", "1760000000", body) == (
        "sha256=3808736d8de9872ff32cb085bd9851cbad6f089e4e55195bbec1450e5295989e"
    )


async def test_webhook_delivery(session, receiver):
    """A finished job's webhook is POSTed once, signed over the exact body."""
    async with FakePixelByte(allow_http_webhooks=True) as fake:
        job_id = await submit_ok(session, fake, webhookUrl=receiver.url)
        assert await fake.deliver_webhooks() == []
        fake.advance(245)
        [delivery] = await fake.deliver_webhooks()
        assert delivery.ok
        assert await fake.deliver_webhooks() == []
        [(headers, body)] = receiver.hits
        assert body == delivery.body
        ts = headers["X-PixelByte-Timestamp"]
        assert int(ts) == int(fake.clock.time())
        expected = hmac.new(
            fake.webhook_secret.encode(), ts.encode() + b"." + body, hashlib.sha256
        ).hexdigest()
        assert headers["X-PixelByte-Signature"] == f"sha256={expected}"
        payload = json.loads(body)
        assert payload["jobId"] == job_id
        assert payload["status"] == "completed"
        assert payload["requestId"] == fake.jobs[job_id].request_id
        assert payload["output"].endswith("/output_0.mp4")
        assert payload["completedAt"].endswith("Z")
        assert fake.webhook_deliveries == [delivery]


async def test_webhook_failure_payload_and_retries(session, receiver):
    """Failed jobs send error; non-2xx answers are retried after 1, 4, ... s."""
    async with FakePixelByte(
        allow_http_webhooks=True, webhook_secret="whsec_x"
    ) as fake:
        fake.script_next(
            JobScript(outcome="failed", queue_seconds=0, processing_seconds=1)
        )
        await submit_ok(session, fake, webhookUrl=receiver.url)
        receiver.statuses.extend([500, 503])
        fake.advance(1)
        [first] = await fake.deliver_webhooks()
        assert (first.attempt, first.status, first.ok) == (1, 500, False)
        assert await fake.deliver_webhooks() == []
        fake.advance(1)
        [second] = await fake.deliver_webhooks()
        assert (second.attempt, second.status) == (2, 503)
        fake.advance(4)
        [third] = await fake.deliver_webhooks()
        assert third.ok
        payload = json.loads(third.body)
        assert payload["status"] == "failed"
        assert payload["error"]["code"] == "GENERATION_FAILED"
        assert "output" not in payload
        ts = third.headers["X-PixelByte-Timestamp"]
        assert third.headers["X-PixelByte-Signature"] == sign("whsec_x", ts, third.body)


async def test_webhook_unreachable_gives_up(session):
    """An unreachable receiver is retried five times and then abandoned."""
    async with FakePixelByte(allow_http_webhooks=True) as fake:
        fake.script_next(JobScript(queue_seconds=0, processing_seconds=0))
        await submit_ok(session, fake, webhookUrl="http://127.0.0.1:9/hook")
        attempts = []
        for delay in (0, 1, 4, 16, 64, 256, 1000):
            fake.advance(delay)
            attempts += await fake.deliver_webhooks()
        assert [a.attempt for a in attempts] == [1, 2, 3, 4, 5, 6]
        assert all(a.status is None and a.error for a in attempts)


async def test_cancelled_jobs_send_no_webhook(session, receiver):
    """Cancellation sends no webhook."""
    async with FakePixelByte(allow_http_webhooks=True) as fake:
        job_id = await submit_ok(session, fake, webhookUrl=receiver.url)
        await api(session, fake, "POST", f"/v1/jobs/{job_id}/cancel")
        fake.advance(1000)
        assert await fake.deliver_webhooks() == []


async def test_auto_webhooks(session, receiver):
    """With auto_webhooks a background task delivers without being asked."""
    async with FakePixelByte(allow_http_webhooks=True, auto_webhooks=True) as fake:
        await submit_ok(session, fake, webhookUrl=receiver.url)
        fake.advance(245)
        for _ in range(100):
            if receiver.hits:
                break
            await asyncio.sleep(0.01)
        assert len(receiver.hits) == 1


# -- time scale and the command line ----------------------------------------------------


async def test_time_scale_runs_time(session):
    """With time_scale > 0 virtual time flows by itself."""
    async with FakePixelByte(time_scale=2000) as fake:
        job_id = await submit_ok(session, fake, model=ECHO, input={"prompt": "x"})
        await asyncio.sleep(0.02)  # 40 virtual seconds
        assert (await get_job(session, fake, job_id))["status"] == "completed"


async def test_command_line_sandbox():
    """python -m pixelbyte_async.testing serves until SIGINT and exits 0."""
    root = str(REPO_ROOT)
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([root, os.environ.get("PYTHONPATH", "")]),
    }
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "pixelbyte_async.testing",
        "--port",
        "0",
        "--time-scale",
        "10",
        "--api-key",
        "pb_cli",
        stdout=asyncio.subprocess.PIPE,
        env=env,
    )
    assert proc.stdout is not None
    try:
        lines: dict[str, str] = {}
        async with asyncio.timeout(10):
            while "PIXELBYTE_CDN_URL" not in lines:
                key, _, value = (
                    (await proc.stdout.readline()).decode().strip().partition("=")
                )
                lines[key] = value
        assert lines["PIXELBYTE_API_KEY"] == "pb_cli"
        async with (
            aiohttp.ClientSession() as session,
            session.get(
                lines["PIXELBYTE_BASE_URL"] + "/v1/jobs",
                headers={"Authorization": "Bearer pb_cli"},
            ) as r,
        ):
            assert r.status == 200
    finally:
        proc.send_signal(signal.SIGINT)
        async with asyncio.timeout(10):
            assert await proc.wait() == 0


def test_virtual_clock_can_be_shared_across_processes():
    """A clock rebuilt from share() keeps the same virtual time (monotonic is shared)."""
    import subprocess

    from pixelbyte_async import VirtualClock

    clock = VirtualClock(time_scale=10)
    code = (
        "from pixelbyte_async import VirtualClock; import sys; "
        "c = VirtualClock.from_shared(sys.argv[1]); print(c.time())"
    )
    before = clock.time()
    out = subprocess.run(  # noqa: S603 -- our own interpreter
        [sys.executable, "-c", code, clock.share()],
        capture_output=True,
        text=True,
        check=True,
    )
    after = clock.time()
    assert before <= float(out.stdout) <= after
    assert VirtualClock.from_shared(clock.share()).time_scale == 10
