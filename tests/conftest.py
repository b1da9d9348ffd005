"""Shared fixtures: the anyio backend, the fake server, a client bound to it."""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import AsyncIterator, Callable

import anyio
import pytest
from hypothesis import settings
from pixelbyte_async import PixelByte, RetryPolicy
from pixelbyte_async.testing import FakePixelByte


# CI runs the property tests with a fixed seed, so a submission's CI verdict does not
# depend on luck; local runs keep exploring new examples.
settings.register_profile("ci", derandomize=True, deadline=None)
if os.environ.get("CI"):
    settings.load_profile("ci")


@pytest.fixture(name="anyio_backend")
def _anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(name="fake")
async def _fake() -> AsyncIterator[FakePixelByte]:
    async with FakePixelByte() as fake:
        yield fake


def bound_client(fake: FakePixelByte, **kwargs: object) -> PixelByte:
    """A client pointed at *fake*, sharing its virtual clock; no jitter."""
    kwargs.setdefault("retry", RetryPolicy(jitter=False, wait_initial=0.5))
    return PixelByte(
        api_key=fake.api_key,
        base_url=fake.url,
        clock=fake.clock,
        **kwargs,  # type: ignore[arg-type]
    )


@pytest.fixture(name="pb")
async def _pb(fake: FakePixelByte) -> AsyncIterator[PixelByte]:
    async with bound_client(fake) as pb:
        yield pb


def write_rows(path, count, **extra):
    rows = [
        {
            "id": f"r{n}",
            "start": f"https://e.x/{n}.jpg",
            "end": "https://e.x/end.jpg",
            "prompt": f"row {n}",
            "duration": 5,
            **extra,
        }
        for n in range(count)
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


async def until(condition: Callable[[], bool], timeout: float = 15.0) -> None:
    """Poll *condition* (state of another process or of the fake) every 10 ms."""
    with anyio.fail_after(timeout):
        while True:
            if condition():
                return
            await asyncio.sleep(0.01)


def subprocess_env(fake: FakePixelByte) -> dict[str, str]:
    """The environment of a CLI subprocess that talks to *fake*."""
    return {
        **os.environ,
        "PIXELBYTE_BASE_URL": fake.url,
        "PIXELBYTE_API_KEY": fake.api_key,
    }


@pytest.fixture(autouse=True)
def _own_ledger(tmp_path_factory, monkeypatch):
    """
    Every test records its submits in a ledger of its own (never the user's).

    The processes a test starts inherit it through the environment, as the
    processes of one machine share the default ledger.
    """
    path = tmp_path_factory.mktemp("ledger") / "ledger.sqlite3"
    monkeypatch.setenv("PIXELBYTE_LEDGER", str(path))
    return path
