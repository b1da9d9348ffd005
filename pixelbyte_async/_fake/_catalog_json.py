"""
The fake's model table as the API shows it: providers, models and the catalogue.

The JSON of ``GET /v1/providers``, ``/v1/models`` and ``/v1/catalog/...`` (contract
sections 4.6 and 4.7), made from the specs in `_catalog`.
"""

from __future__ import annotations

from typing import Any

from ._catalog import MODELS, PROVIDERS, ModelSpec, ProviderSpec


__all__ = [
    "catalog_capability_groups",
    "catalog_categories",
    "catalog_model_detail",
    "catalog_model_item",
    "catalog_provider",
    "model_detail",
    "model_summary",
    "provider_json",
]


def provider_json(provider: ProviderSpec) -> dict[str, Any]:
    """Return a provider as ``GET /v1/providers`` shows it."""
    return {
        "id": provider.id,
        "name": provider.name,
        "description": provider.description,
        "logoUrl": provider.logo_url,
        "website": provider.website,
        "color": provider.color,
        "categories": list(provider.categories),
        "isActive": True,
    }


def model_summary(model: ModelSpec, *, with_provider: bool = True) -> dict[str, Any]:
    """Return a model as ``GET /v1/models`` lists it."""
    out: dict[str, Any] = {"id": model.id}
    if with_provider:
        out["providerId"] = model.provider_id
        out["providerName"] = PROVIDERS[model.provider_id].name
    out.update(
        {
            "name": model.name,
            "description": model.description,
            "category": model.category,
            "currentVersion": model.current_version,
            "versionCount": len(model.versions),
            "currentVersionPricing": model.credits_pricing(),
        }
    )
    return out


def model_detail(model: ModelSpec) -> dict[str, Any]:
    """Return a model as ``GET /v1/models/{modelId}`` shows it."""
    out = model_summary(model)
    del out["versionCount"], out["currentVersionPricing"]
    out["versions"] = [
        {
            "versionId": v.version_id,
            "status": v.status,
            "inputSchema": model.input_schema(),
            "outputSchema": model.output_schema(),
            "pricing": {
                **model.credits_pricing(),
                "baseCostMicroCents": model.base_micro_cents,
            },
            "rateLimits": {"requestsPerMinute": 10, "requestsPerDay": 500},
        }
        for v in model.versions
    ]
    return out


def _catalog_provider_ref(model: ModelSpec) -> dict[str, Any]:
    provider = PROVIDERS[model.provider_id]
    return {"id": provider.id, "name": provider.name, "logoUrl": provider.logo_url}


def catalog_model_item(model: ModelSpec) -> dict[str, Any]:
    """Return a model as ``GET /v1/catalog/models`` lists it."""
    return {
        "slug": model.slug,
        "provider": _catalog_provider_ref(model),
        "name": model.name,
        "category": model.category,
        "capability": model.capability,
        "pricing": model.catalog_pricing(),
        "tags": list(model.tags),
        "ratings": {"average": 4.6, "count": 128},
    }


def catalog_model_detail(model: ModelSpec) -> dict[str, Any]:
    """Return a model as ``GET /v1/catalog/models/{slug}`` shows it."""
    family = model.slug.rsplit("/", 1)[0] + "/"
    return {
        "slug": model.slug,
        "provider": _catalog_provider_ref(model),
        "name": model.name,
        "description": model.description,
        "category": model.category,
        "capability": model.capability,
        "inputSchema": model.input_schema(),
        "pricing": model.catalog_pricing(),
        "siblings": [
            {"slug": m.slug, "capability": m.capability}
            for m in MODELS.values()
            if m.slug.startswith(family) and m.slug != model.slug
        ],
    }


def catalog_provider(
    provider: ProviderSpec, *, with_models: bool = False
) -> dict[str, Any]:
    """Return a provider as the catalogue shows it (optionally with its models)."""
    models = [m for m in MODELS.values() if m.provider_id == provider.id]
    out = provider_json(provider)
    del out["categories"], out["isActive"]
    out["modelCount"] = len(models)
    if with_models:
        out["models"] = [
            {
                "slug": m.slug,
                "name": m.name,
                "description": m.description,
                "category": m.category,
                "capability": m.capability,
                "pricing": m.catalog_pricing(),
                "tags": list(m.tags),
            }
            for m in models
        ]
    return out


def catalog_categories() -> list[dict[str, Any]]:
    """Return ``GET /v1/catalog/categories``: categories with model counts."""
    descriptions = {"video": "Video generation", "image": "Image generation"}
    return [
        {
            "id": cat,
            "name": cat.capitalize(),
            "description": descriptions[cat],
            "modelCount": sum(1 for m in MODELS.values() if m.category == cat),
        }
        for cat in ("video", "image")
    ]


def catalog_capability_groups() -> list[dict[str, Any]]:
    """Return ``GET /v1/catalog/capability-groups``."""
    groups = (
        ("text-to-video", "Text to Video", "film", "#7C3AED"),
        ("image-to-video", "Image to Video", "image-play", "#2563EB"),
        ("start-end-frame-to-video", "Start-End Frame to Video", "frames", "#0891B2"),
        ("text-to-image", "Text to Image", "image", "#DB2777"),
    )
    return [
        {
            "id": gid,
            "displayName": name,
            "label": name,
            "icon": icon,
            "color": color,
            "order": order,
        }
        for order, (gid, name, icon, color) in enumerate(groups, start=1)
    ]
