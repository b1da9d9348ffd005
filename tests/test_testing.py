"""
`pixelbyte_async.testing.FakePixelByte` is public API, so it is tested like any other.

This module covers the fake's lifecycle, the module's public names, its clock and
its command line; the ``test_fake_*`` modules cover each part of the API it serves
(their shared helpers are in ``fake_helpers``).
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import sys
from pathlib import Path

import aiohttp
import pytest
from pixelbyte_async import testing
from pixelbyte_async._clock import VirtualClock
from pixelbyte_async.testing import FakePixelByte

from fake_helpers import (
    ECHO,
    get_job,
    session_fixture,  # noqa: F401 -- the session fixture
    submit,
    submit_ok,
)


pytestmark = pytest.mark.anyio

REPO_ROOT = Path(testing.__file__).resolve().parents[1]


# -- lifecycle ------------------------------------------------------------------------


async def test_two_origins_on_localhost(fake):
    """The API and the CDN listen on 127.0.0.1 on two different OS-chosen ports."""
    assert re.fullmatch(r"http://127\.0\.0\.1:\d+", fake.url)
    assert re.fullmatch(r"http://127\.0\.0\.1:\d+", fake.cdn_url)
    assert fake.url != fake.cdn_url
    assert fake.api_key == testing.SANDBOX_API_KEY == "pb_test_sandbox_key"
    assert fake.running
    assert "running" in repr(fake)


async def test_close_twice_is_harmless_and_restart_is_refused():
    """close() is idempotent; a closed fake cannot be started again."""
    fake = FakePixelByte()
    await fake.start()
    with pytest.raises(RuntimeError, match="running"):
        await fake.start()
    await fake.close()
    await fake.close()
    assert not fake.running
    with pytest.raises(RuntimeError, match="closed"):
        await fake.start()


async def test_url_before_start_raises():
    """A fake that never started has no URL."""
    fake = FakePixelByte()
    with pytest.raises(RuntimeError, match="not started"):
        _ = fake.url
    with pytest.raises(RuntimeError, match="not started"):
        _ = fake.cdn_url
    await fake.close()


@pytest.mark.parametrize(
    "kwargs",
    [
        {"clock": VirtualClock(), "time_scale": 2.0},
        {"envelope": "enveloped"},
        {"concurrent_job_limit": 0},
    ],
    ids=["clock-and-scale", "bad-envelope", "zero-limit"],
)
def test_constructor_rejects_bad_arguments(kwargs):
    """Contradictory or out-of-range arguments raise ValueError."""
    with pytest.raises(ValueError):
        FakePixelByte(**kwargs)


async def test_shared_clock_is_used(session):
    """A clock passed in is the one job timestamps come from."""
    clock = VirtualClock(start=1_760_000_000.0)
    async with FakePixelByte(clock=clock) as fake:
        assert fake.clock is clock
        r = await submit(session, fake)
        assert r.body["estimatedCompletionTime"] == "2025-10-09T08:57:25.000Z"
        fake.advance(10)
        assert clock.time() == 1_760_000_010.0


def test_public_names_are_exported_and_sorted():
    """testing.__all__ is in ruff's RUF022 order and lists every public name."""
    order = sorted(
        testing.__all__, key=lambda n: (not n.isupper(), not n[:1].isupper(), n)
    )
    assert order == testing.__all__
    public = {
        name
        for name, value in vars(testing).items()
        if not name.startswith("_")
        and getattr(value, "__module__", "").startswith("pixelbyte_async")
    }
    assert public <= set(testing.__all__)
    for name in testing.__all__:
        assert getattr(testing, name).__doc__ or name == "SANDBOX_API_KEY"


# -- time scale and the command line ----------------------------------------------------


async def test_time_scale_runs_time(session):
    """With time_scale > 0 virtual time flows by itself."""
    async with FakePixelByte(time_scale=2000) as fake:
        job_id = await submit_ok(session, fake, model=ECHO, input={"prompt": "x"})
        await asyncio.sleep(0.02)  # 40 virtual seconds
        assert (await get_job(session, fake, job_id))["status"] == "completed"


async def test_command_line_sandbox():
    """python -m pixelbyte_async.testing serves until SIGINT and exits 0."""
    root = str(REPO_ROOT)
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([root, os.environ.get("PYTHONPATH", "")]),
    }
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "pixelbyte_async.testing",
        "--port",
        "0",
        "--time-scale",
        "10",
        "--api-key",
        "pb_cli",
        stdout=asyncio.subprocess.PIPE,
        env=env,
    )
    assert proc.stdout is not None
    try:
        lines: dict[str, str] = {}
        async with asyncio.timeout(10):
            while "PIXELBYTE_CDN_URL" not in lines:
                key, _, value = (
                    (await proc.stdout.readline()).decode().strip().partition("=")
                )
                lines[key] = value
        assert lines["PIXELBYTE_API_KEY"] == "pb_cli"
        async with (
            aiohttp.ClientSession() as session,
            session.get(
                lines["PIXELBYTE_BASE_URL"] + "/v1/jobs",
                headers={"Authorization": "Bearer pb_cli"},
            ) as r,
        ):
            assert r.status == 200
    finally:
        proc.send_signal(signal.SIGINT)
        async with asyncio.timeout(10):
            assert await proc.wait() == 0


def test_virtual_clock_can_be_shared_across_processes():
    """A clock rebuilt from share() keeps the same virtual time (monotonic is shared)."""
    import subprocess

    from pixelbyte_async import VirtualClock

    clock = VirtualClock(time_scale=10)
    code = (
        "from pixelbyte_async import VirtualClock; import sys; "
        "c = VirtualClock.from_shared(sys.argv[1]); print(c.time())"
    )
    before = clock.time()
    out = subprocess.run(  # noqa: S603 -- our own interpreter
        [sys.executable, "-c", code, clock.share()],
        capture_output=True,
        text=True,
        check=True,
    )
    after = clock.time()
    assert before <= float(out.stdout) <= after
    assert VirtualClock.from_shared(clock.share()).time_scale == 10
