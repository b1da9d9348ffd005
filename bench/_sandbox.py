"""
The in-process sandbox the fan-out, batch and polling benchmarks share.

Imported by the scripts as ``from _sandbox import ...`` (a script's own folder is
first on ``sys.path``); its name does not start with ``bench_``, so ``nox -s bench``
does not run it.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from pixelbyte_async import KlingO1StartEndFrame, PixelByte
from pixelbyte_async.testing import FakePixelByte


def kling(prompt: str) -> KlingO1StartEndFrame:
    """A start-end-frame input; distinct prompts are distinct jobs (and charges)."""
    return KlingO1StartEndFrame(
        image_url="https://e.x/a.jpg", end_image_url="https://e.x/b.jpg", prompt=prompt
    )


@contextlib.asynccontextmanager
async def sandbox(
    *, time_scale: float | None = None, limit: int | None = 10
) -> AsyncIterator[tuple[FakePixelByte, PixelByte]]:
    """A fake API (its clock *time_scale* times real time, else frozen) and a client."""
    options = {} if time_scale is None else {"time_scale": time_scale}
    async with (
        FakePixelByte(**options) as fake,
        PixelByte(
            api_key=fake.api_key,
            base_url=fake.url,
            clock=fake.clock,
            max_concurrent_jobs=limit,
            ledger=None,
        ) as pb,
    ):
        yield fake, pb
