"""
The in-process sandbox the fan-out, batch and polling benchmarks share.

Imported by the scripts as ``from _sandbox import ...`` (a script's own folder is
first on ``sys.path``); its name does not start with ``bench_``, so ``nox -s bench``
does not run it.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

from pixelbyte_async import KlingO1StartEndFrame, PixelByte
from pixelbyte_async.testing import FakePixelByte
from pixelbyte_async.webhooks import WebhookServer


def kling(prompt: str) -> KlingO1StartEndFrame:
    """A start-end-frame input; distinct prompts are distinct jobs (and charges)."""
    return KlingO1StartEndFrame(
        image_url="https://e.x/a.jpg", end_image_url="https://e.x/b.jpg", prompt=prompt
    )


@contextlib.asynccontextmanager
async def sandbox(
    *, time_scale: float | None = None, limit: int | None = 10, webhooks: bool = False
) -> AsyncIterator[tuple[FakePixelByte, PixelByte]]:
    """
    A fake API (its clock *time_scale* times real time, else frozen) and a client.

    *webhooks*: the client receives the fake's signed deliveries on a local
    `WebhookServer` (as ``--sandbox --listen`` does).
    """
    options: dict[str, Any] = {} if time_scale is None else {"time_scale": time_scale}
    if webhooks:
        options |= {"allow_http_webhooks": True, "auto_webhooks": True}
    async with contextlib.AsyncExitStack() as stack:
        fake = await stack.enter_async_context(FakePixelByte(**options))
        extra: dict[str, Any] = {}
        if webhooks:
            # Its timestamp tolerance stretched with the clock's speed: at
            # x6,000 the API's 300 s are 50 ms, less than a busy loop delays a
            # delivery (see FakePixelByte.receiver_options).
            server = WebhookServer(
                fake.webhook_secret, host="127.0.0.1", port=0, **fake.receiver_options
            )
            await server.start()
            stack.push_async_callback(server.close)
            extra["webhook"] = server
        pb = await stack.enter_async_context(
            PixelByte(
                api_key=fake.api_key,
                base_url=fake.url,
                clock=fake.clock,
                max_concurrent_jobs=limit,
                ledger=None,
                **extra,
            )
        )
        yield fake, pb
