"""
`FakePixelByte` models, providers and the public catalogue.
"""

from __future__ import annotations

import pytest
from pixelbyte_async.testing import FakePixelByte

from fake_helpers import (
    ECHO,
    KLING,
    KLING_PRO,
    api,
    assert_error,
    session_fixture,  # noqa: F401 -- the session fixture
)


pytestmark = pytest.mark.anyio

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
