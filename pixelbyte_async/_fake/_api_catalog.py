"""
The API's read-only model handlers: ``/v1/models``, ``/v1/providers``, ``/v1/catalog``.

Everything they show comes from the static tables of `_catalog`.
"""

from __future__ import annotations

from ._catalog import MODELS, PROVIDERS, ProviderSpec, resolve_model
from ._catalog_json import (
    catalog_capability_groups,
    catalog_categories,
    catalog_model_detail,
    catalog_model_item,
    catalog_provider,
    model_detail,
    model_summary,
    provider_json,
)
from ._http import ApiError, Call, Reply


__all__ = ["CatalogHandlers"]


class CatalogHandlers:
    """The models, providers and catalogue endpoints (no state: the tables are fixed)."""

    # -- models and providers -------------------------------------------------------

    def list_models(self, call: Call) -> Reply:  # noqa: ARG002 -- uniform handler signature
        """``GET /v1/models``."""
        return Reply(payload={"models": [model_summary(m) for m in MODELS.values()]})

    def get_model(self, call: Call) -> Reply:
        """``GET /v1/models/{modelId}`` (an id like ``model_klingo1std``, not a slug)."""
        model_id = call.request.match_info["model_id"]
        for model in MODELS.values():
            if model.id == model_id:
                return Reply(payload=model_detail(model))
        raise ApiError(
            404,
            "MODEL_NOT_FOUND",
            f"Model '{model_id}' not found.",
            {"modelId": model_id},
        )

    def list_providers(self, call: Call) -> Reply:  # noqa: ARG002 -- uniform handler signature
        """``GET /v1/providers``."""
        return Reply(
            payload={"providers": [provider_json(p) for p in PROVIDERS.values()]}
        )

    def provider_models(self, call: Call) -> Reply:
        """``GET /v1/providers/{providerId}/models``."""
        provider = self._provider(call)
        models = [m for m in MODELS.values() if m.provider_id == provider.id]
        return Reply(
            payload={
                "provider": provider_json(provider),
                "models": [model_summary(m, with_provider=False) for m in models],
            }
        )

    def _provider(self, call: Call) -> ProviderSpec:
        provider_id = call.request.match_info["provider_id"]
        provider = PROVIDERS.get(provider_id)
        if provider is None:
            raise ApiError(
                404,
                "NOT_FOUND",
                f"Provider '{provider_id}' not found.",
                {"providerId": provider_id},
            )
        return provider

    # -- catalogue ------------------------------------------------------------------

    def catalog_models(self, call: Call) -> Reply:
        """``GET /v1/catalog/models`` with optional category/capability/provider filters."""
        query = call.request.query
        items = [
            catalog_model_item(m)
            for m in MODELS.values()
            if query.get("category", m.category) == m.category
            and query.get("capability", m.capability) == m.capability
            and query.get("provider", m.provider_id) == m.provider_id
        ]
        return Reply(payload=items, list_key="models")

    def catalog_model(self, call: Call) -> Reply:
        """``GET /v1/catalog/models/{slug}`` (the slug contains slashes)."""
        slug = call.request.match_info["slug"]
        model = resolve_model(slug)
        if model is None:
            raise ApiError(
                404, "MODEL_NOT_FOUND", f"Model '{slug}' not found.", {"model": slug}
            )
        return Reply(payload=catalog_model_detail(model))

    def catalog_providers(self, call: Call) -> Reply:  # noqa: ARG002 -- uniform handler signature
        """``GET /v1/catalog/providers``."""
        return Reply(
            payload=[catalog_provider(p) for p in PROVIDERS.values()],
            list_key="providers",
        )

    def catalog_provider(self, call: Call) -> Reply:
        """``GET /v1/catalog/providers/{id}``."""
        return Reply(payload=catalog_provider(self._provider(call), with_models=True))

    def catalog_categories(self, call: Call) -> Reply:  # noqa: ARG002 -- uniform handler signature
        """``GET /v1/catalog/categories``."""
        return Reply(payload=catalog_categories(), list_key="categories")

    def catalog_capability_groups(self, call: Call) -> Reply:  # noqa: ARG002 -- uniform handler signature
        """``GET /v1/catalog/capability-groups``."""
        return Reply(payload=catalog_capability_groups(), list_key="capabilityGroups")
