"""
The pytest plugin: ``pixelbyte_fake`` and ``pixelbyte_client`` under anyio and pytest-asyncio.

The first tests use the fixtures here, as this suite's own pytest loaded the plugin
through its ``pytest11`` entry point; the others run pytest on little test files in
a subprocess, as a user's project would (pytest-asyncio enabled there, while this
suite runs with ``-p no:asyncio``).
"""

from __future__ import annotations

import importlib.metadata
import subprocess
import sys
import textwrap

import pixelbyte_async.pytest_plugin
import pytest
from pixelbyte_async import KlingO1StartEndFrame, PixelByte
from pixelbyte_async.testing import FakePixelByte


PYTEST = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"]

REQUEST = KlingO1StartEndFrame(
    image_url="https://e.x/a.jpg", end_image_url="https://e.x/b.jpg"
)

# A test file that checks what the fixtures give (the runner's marker prepended).
CHECKS = """
from pixelbyte_async import KlingO1StartEndFrame, PixelByte
from pixelbyte_async.testing import FakePixelByte


async def test_fixtures(pixelbyte_fake, pixelbyte_client):
    assert isinstance(pixelbyte_fake, FakePixelByte)
    assert isinstance(pixelbyte_client, PixelByte)
    assert pixelbyte_client.config.base_url == pixelbyte_fake.url
    start = pixelbyte_fake.clock.monotonic()
    job = await pixelbyte_client.submit(
        KlingO1StartEndFrame(image_url="https://e.x/a.jpg", end_image_url="https://e.x/b.jpg")
    )
    await job.wait()
    assert pixelbyte_fake.ledger.double_charged() == []
    assert pixelbyte_fake.clock.monotonic() - start >= 240  # virtual seconds


async def test_a_second_test_gets_a_new_fake(pixelbyte_fake):
    assert len(pixelbyte_fake.jobs) == 0
"""


def run_pytest(tmp_path, files, *args, timeout=120):
    """Run pytest in *tmp_path* on *files* ({name: source}), as a user project would."""
    for name, source in files.items():
        (tmp_path / name).write_text(textwrap.dedent(source))
    return subprocess.run(  # noqa: S603 -- our own interpreter and files
        [*PYTEST, *args],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def test_the_plugin_is_registered_for_pytest():
    """pyproject's pytest11 entry point names the plugin module (pytest loads it)."""
    (entry,) = [
        e
        for e in importlib.metadata.entry_points(group="pytest11")
        if e.value == "pixelbyte_async.pytest_plugin"
    ]
    assert entry.name == "pixelbyte_async"
    assert entry.load() is pixelbyte_async.pytest_plugin


@pytest.mark.anyio
async def test_fake_is_started_and_client_bound_to_it(pixelbyte_fake, pixelbyte_client):
    """The fake serves; the client uses its key, URL and clock, and a memory ledger."""
    assert isinstance(pixelbyte_fake, FakePixelByte)
    assert isinstance(pixelbyte_client, PixelByte)
    assert pixelbyte_client.config.base_url == pixelbyte_fake.url
    assert type(pixelbyte_client.ledger).__name__ == "MemoryLedger"

    job = await pixelbyte_client.submit(REQUEST)
    done = await job.wait()  # 245 virtual seconds, on the shared clock

    assert done.status.value == "completed"
    assert list(pixelbyte_fake.jobs) == [job.id]
    assert pixelbyte_fake.ledger.double_charged() == []


@pytest.mark.anyio
@pytest.mark.pixelbyte_fake(fail_rate=1.0, seed=3)
async def test_the_marker_passes_options_to_the_fake(pixelbyte_fake):
    """``@pytest.mark.pixelbyte_fake(**options)`` configures the fake."""
    assert pixelbyte_fake.fail_rate == 1.0


def test_readme_style_test_passes_under_anyio(tmp_path):
    """An ``@pytest.mark.anyio`` test file gets the fixtures with no conftest at all."""
    result = run_pytest(
        tmp_path,
        {"test_app.py": "import pytest\npytestmark = pytest.mark.anyio\n" + CHECKS},
        "-W",
        "error",
        "-p",
        "no:asyncio",
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "2 passed" in result.stdout


@pytest.mark.parametrize(
    ("mode", "marker"),
    [
        ("strict", "import pytest\npytestmark = pytest.mark.asyncio\n"),
        ("auto", ""),
    ],
    ids=["strict", "auto"],
)
def test_fixtures_work_under_pytest_asyncio(tmp_path, mode, marker):
    """pytest-asyncio runs the fixtures on the test's loop, in strict and auto mode."""
    pytest.importorskip("pytest_asyncio")
    result = run_pytest(
        tmp_path,
        {
            "pytest.ini": f"""
                [pytest]
                asyncio_mode = {mode}
                asyncio_default_fixture_loop_scope = function
            """,
            "test_app.py": marker + CHECKS,
        },
        "-W",
        "error",
        "-p",
        "no:anyio",
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "2 passed" in result.stdout


def test_anyio_tests_work_with_pytest_asyncio_installed(tmp_path):
    """Both plugins loaded (strict mode): anyio tests and asyncio tests both pass."""
    pytest.importorskip("pytest_asyncio")
    result = run_pytest(
        tmp_path,
        {
            "pytest.ini": """
                [pytest]
                asyncio_default_fixture_loop_scope = function
            """,
            "test_anyio.py": "import pytest\npytestmark = pytest.mark.anyio\n" + CHECKS,
            "test_asyncio.py": "import pytest\npytestmark = pytest.mark.asyncio\n"
            + CHECKS,
        },
        "-W",
        "error",
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "4 passed" in result.stdout


def test_without_an_async_plugin_the_error_says_what_to_do(tmp_path):
    """No plugin to run the async fixture: a one-line failure naming the markers."""
    result = run_pytest(
        tmp_path,
        {"test_app.py": "def test_sync(pixelbyte_fake):\n    pass\n"},
        "-p",
        "no:asyncio",
        "-p",
        "no:anyio",
    )
    assert result.returncode == 1, result.stdout + result.stderr
    assert "pixelbyte_fake is an async fixture" in result.stdout
    assert "@pytest.mark.anyio" in result.stdout


def test_the_plugin_can_be_turned_off(tmp_path):
    """``-p no:pixelbyte_async`` removes the fixtures (and the marker)."""
    result = run_pytest(
        tmp_path,
        {"test_app.py": "def test_nothing():\n    pass\n"},
        "--fixtures",
        "-p",
        "no:pixelbyte_async",
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "pixelbyte_fake" not in result.stdout
