"""
`CatalogCalls`: the part of `PixelByte` for prices, the model catalog and uploads.

A mixin of `PixelByte`, split off by concern so each file reads in one sitting; it
uses only the client parts declared below, which `PixelByte.__init__` sets.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import IO, TYPE_CHECKING, Any
from urllib.parse import quote

from ._errors import ValidationError
from ._inputs import ModelInput, check_input, check_slug, local_cost
from ._models import CatalogModel, Estimate, Upload
from ._serde import decode_catalog_model, decode_estimate, items_of


if TYPE_CHECKING:
    from ._files import Files
    from ._pipeline import RequestPipeline


__all__ = ["CatalogCalls"]


class CatalogCalls:
    """`PixelByte`'s calls for prices, the catalog and uploads; see `PixelByte`."""

    _pipeline: RequestPipeline
    _files: Files

    def _check_open(self) -> None:
        raise NotImplementedError  # PixelByte's

    async def estimate(
        self,
        model: str | ModelInput,
        input: Mapping[str, Any] | None = None,  # noqa: A002 -- the API's field name
        *,
        version: str | None = None,
        local: bool = False,
        timeout: float | None = None,
    ) -> Estimate:
        """
        Estimate a job's cost without creating it.

        With ``local=True`` the SDK's price table answers offline (raises
        `ValidationError` for models it does not know).
        """
        if isinstance(model, str):
            slug = check_slug(model)
            payload = check_input(input or {})
        else:
            slug = model.model_slug
            payload = _estimate_input(model)
        if local:
            cost = local_cost(slug, payload)
            if cost is None:
                raise ValidationError(f"no local price for {slug}", field="model")
            return Estimate(
                estimated_cost_micro_cents=cost,
                base_cost_micro_cents=cost,
                source="local",
            )
        body: dict[str, Any] = {"model": slug, "input": payload}
        if version is not None:
            body["version"] = version
        data, _ = await self._pipeline.request(
            "POST", "/v1/jobs/estimate", json_body=body, timeout=timeout
        )
        return decode_estimate(data)

    async def models(self, *, timeout: float | None = None) -> list[CatalogModel]:
        """List the public model catalogue."""
        data, _ = await self._pipeline.request(
            "GET", "/v1/catalog/models", timeout=timeout, auth="optional"
        )
        return [decode_catalog_model(item) for item in items_of(data, "models")]

    async def model(self, slug: str, *, timeout: float | None = None) -> CatalogModel:
        """Fetch one catalogue model, including its ``inputSchema``."""
        check_slug(slug)
        data, _ = await self._pipeline.request(
            "GET",
            f"/v1/catalog/models/{quote(slug, safe='/')}",
            timeout=timeout,
            auth="optional",
        )
        return decode_catalog_model(data)

    # -- uploads and downloads ---------------------------------------------------------

    async def upload(
        self,
        source: os.PathLike[str] | bytes | IO[bytes],
        *,
        filename: str | None = None,
        content_type: str | None = None,
        timeout: float | None = None,
    ) -> str:
        """
        Upload a local file (or bytes) for use as a job input and return its URL.

        Uses presign + PUT; the file is deleted by the API after 60 minutes.  The type
        (sniffed from the content for images) and size are checked before anything
        is sent.

        *source* is a `pathlib.Path` (any ``os.PathLike``), ``bytes`` or a binary
        file object; a ``str`` is refused, never opened, so a string from an
        untrusted user cannot make the server upload its own files.
        """
        info = await self.upload_file(
            source, filename=filename, content_type=content_type, timeout=timeout
        )
        return info.file_url

    async def upload_file(
        self,
        source: os.PathLike[str] | bytes | IO[bytes],
        *,
        filename: str | None = None,
        content_type: str | None = None,
        timeout: float | None = None,
    ) -> Upload:
        """Like `upload`, but return the whole `Upload` (id, expiry …)."""
        self._check_open()
        return await self._files.upload(
            source, filename=filename, content_type=content_type, timeout=timeout
        )


def _estimate_input(model: ModelInput) -> dict[str, Any]:
    try:
        return model.to_input()
    except ValidationError:
        duration = getattr(model, "duration", None)
        return {} if duration is None else {"duration": str(duration)}
