"""
`FakePixelByte` checks API keys as the API does: Bearer for jobs and uploads, either
header for models, none for the catalogue.
"""

from __future__ import annotations

import pytest
from pixelbyte_async.testing import FakePixelByte

from fake_helpers import (
    api,
    assert_error,
    session_fixture,  # noqa: F401 -- the session fixture
)


pytestmark = pytest.mark.anyio

UNAUTHORIZED = "Missing or invalid Authorization header. Provide a valid API key as a Bearer token."


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
