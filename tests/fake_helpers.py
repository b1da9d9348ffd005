"""
What the tests of `FakePixelByte` share: model slugs, a plain-aiohttp API caller.

These tests talk to the fake with a plain `aiohttp.ClientSession`, never the SDK
client, so the fake's behaviour is pinned down independently of the code it will
test.  Import ``session_fixture`` (``# noqa: F401``) to get the ``session`` fixture.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import aiohttp
import pytest
from pixelbyte_async.testing import FakePixelByte


KLING = "kling-plus/kling-o1-standard/start-end-frame-to-video"
KLING_PRO = "kling-plus/kling-o1-pro/start-end-frame-to-video"
ECHO = "test/echo-image/text-to-image"
KLING_INPUT = {
    "prompt": "Smooth cinematic transition from a sunrise to a starry night",
    "image_url": "https://example.com/image.jpg",
    "end_image_url": "https://example.com/end-image.jpg",
    "duration": "5",
}


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


@pytest.fixture(name="session")
async def session_fixture():
    async with aiohttp.ClientSession() as session:
        yield session
