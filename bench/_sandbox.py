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

from pixelbyte_async import ClientConfig, KlingO1StartEndFrame, PixelByte
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
                fake.webhook_secret, host="127.0.0.1", port=0, **_receiving(fake)
            )
            await server.start()
            stack.push_async_callback(server.close)
            extra["webhook"] = server
        # The client's deadlines are on the sandbox's clock: at x6,000 the 60 s of
        # an API call are 10 ms of real time, and a garbage collection of the
        # process's heap fails calls that never went out.  They stay the real
        # API's in real seconds here.
        speed = max(1.0, time_scale or 1.0)
        pb = await stack.enter_async_context(
            PixelByte(
                api_key=fake.api_key,
                base_url=fake.url,
                clock=fake.clock,
                max_concurrent_jobs=limit,
                ledger=None,
                timeout=60.0 * speed,
                config=ClientConfig(
                    submit_timeout=900.0 * speed, download_timeout=600.0 * speed
                ),
                **extra,
            )
        )
        yield fake, pb


def _receiving(fake: FakePixelByte) -> dict[str, Any]:
    """`FakePixelByte.receiver_options` (the same by hand for an older tree)."""
    options = getattr(fake, "receiver_options", None)
    if options is not None:
        return dict(options)
    stretch = 5.0 * max(1.0, fake.clock.time_scale)
    return {
        "clock": fake.clock,
        "tolerance": 300.0 + stretch,
        "retention": 1800.0 + 2 * stretch,
    }
