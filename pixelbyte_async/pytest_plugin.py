"""
pytest fixtures for testing code that uses the SDK: a `FakePixelByte` and a client.

pytest loads this plugin by itself wherever the SDK is installed (the ``pytest11``
entry point ``pixelbyte_async``; ``-p no:pixelbyte_async`` turns it off).  It
provides two function-scoped async fixtures:

* ``pixelbyte_fake``: a started `FakePixelByte`, stopped after the test.  Mark a
  test (or a module) ``@pytest.mark.pixelbyte_fake(**options)`` to pass options to
  the fake (``fail_rate=0.2, seed=7``, ``allow_http_webhooks=True`` ...).
* ``pixelbyte_client``: a `PixelByte` client bound to that fake: its key, its URL and
  its virtual clock (so waiting takes no real time), with a ledger in memory
  (``ledger=None``: nothing is written outside the test).  Closed after the test.

They run on the event loop of the test, under anyio's pytest plugin
(``@pytest.mark.anyio``, on its ``asyncio`` backend: the SDK runs on asyncio, so a
``trio`` run of the test is skipped) or under pytest-asyncio 1.1 or later
(``@pytest.mark.asyncio`` in its strict mode, or its auto mode).

Nothing of the SDK is imported until a test asks for a fixture, so the plugin costs
nothing to the pytest runs of projects that never use it.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Any

import pytest


if TYPE_CHECKING:
    from pixelbyte_async import PixelByte
    from pixelbyte_async.testing import FakePixelByte


_MARKER = "pixelbyte_fake"

_NO_RUNNER = (
    "{name} is an async fixture: run the test under anyio's pytest plugin "
    "(@pytest.mark.anyio, an `async def` test) or pytest-asyncio "
    "(@pytest.mark.asyncio)"
)


def pytest_configure(config: pytest.Config) -> None:
    """Register the marker that passes options to ``pixelbyte_fake``."""
    config.addinivalue_line(
        "markers",
        f"{_MARKER}(**options): keyword arguments for the FakePixelByte of the "
        "pixelbyte_fake fixture (pixelbyte_async's pytest plugin)",
    )


def _fake_function() -> Callable[..., AsyncIterator[FakePixelByte]]:
    async def pixelbyte_fake(
        request: pytest.FixtureRequest,
    ) -> AsyncIterator[FakePixelByte]:
        """
        A started `pixelbyte_async.testing.FakePixelByte`, stopped after the test.

        ``@pytest.mark.pixelbyte_fake(**options)`` passes options to it.
        """
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            pytest.skip(
                "the PixelByte SDK runs on asyncio only (define an anyio_backend "
                "fixture that returns 'asyncio' to run the test on it alone)"
            )
        from pixelbyte_async.testing import FakePixelByte  # noqa: PLC0415 -- on first use

        marker = request.node.get_closest_marker(_MARKER)
        options: dict[str, Any] = dict(marker.kwargs) if marker is not None else {}
        async with FakePixelByte(**options) as fake:
            yield fake

    return pixelbyte_fake


def _client_function() -> Callable[..., AsyncIterator[PixelByte]]:
    async def pixelbyte_client(
        pixelbyte_fake: FakePixelByte,
    ) -> AsyncIterator[PixelByte]:
        """
        A `pixelbyte_async.PixelByte` client bound to ``pixelbyte_fake``.

        It uses the fake's key, URL and virtual clock, and a ledger in memory.
        """
        from pixelbyte_async import PixelByte  # noqa: PLC0415 -- on first use

        async with PixelByte(
            api_key=pixelbyte_fake.api_key,
            base_url=pixelbyte_fake.url,
            clock=pixelbyte_fake.clock,
            ledger=None,
        ) as client:
            yield client

    return pixelbyte_client


pixelbyte_fake = pytest.fixture(name="pixelbyte_fake")(_fake_function())
pixelbyte_client = pytest.fixture(name="pixelbyte_client")(_client_function())

# The same fixture functions, marked with `pytest_asyncio.fixture` on first use (a
# mark on the registered ones would let pytest-asyncio take them from anyio's plugin).
_MAKERS = {"pixelbyte_fake": _fake_function, "pixelbyte_client": _client_function}
_asyncio_twins: dict[str, Callable[..., Any]] = {}


def _asyncio_twin(name: str) -> Callable[..., Any]:
    if name not in _asyncio_twins:
        import pytest_asyncio  # noqa: PLC0415 -- loaded by pytest already

        function = _MAKERS[name]()
        pytest_asyncio.fixture(function)  # marks *function* as an asyncio fixture
        _asyncio_twins[name] = function
    return _asyncio_twins[name]


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_fixture_setup(
    fixturedef: pytest.FixtureDef[Any], request: pytest.FixtureRequest
) -> Any:
    """
    Hand this plugin's fixtures to the async plugin that runs the test.

    anyio's plugin runs them as they are, for a test it runs; pytest-asyncio runs
    them, in strict mode too, once they are marked as its fixtures (until they are
    torn down: it checks the mark again when the test runs).
    """
    if (
        fixturedef.argname not in _MAKERS
        or getattr(fixturedef.func, "__module__", None) != __name__
        or "anyio_backend" in request.fixturenames
    ):
        return (yield)  # not ours (the user's own fixture), or anyio's to run
    asyncio_plugin = sys.modules.get("pytest_asyncio.plugin")
    if asyncio_plugin is None or not request.config.pluginmanager.is_registered(
        asyncio_plugin
    ):
        pytest.fail(_NO_RUNNER.format(name=fixturedef.argname), pytrace=False)
    patch = pytest.MonkeyPatch()
    patch.setattr(fixturedef, "func", _asyncio_twin(fixturedef.argname))
    fixturedef.addfinalizer(patch.undo)
    try:
        return (yield)
    except BaseException:
        patch.undo()
        raise
