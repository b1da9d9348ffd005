"""
Downloads write in 1 MiB blocks on the loop, or in a worker thread on a slow disk.

Both ways keep what a download always promised: the file appears whole or not at
all (the ``.part`` file goes on any failure, cancellation included), the size is
checked against the limit and against ``Content-Length``.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator

import pixelbyte_async._files as files
import pytest
from aiohttp import web
from pixelbyte_async import (
    ClientConfig,
    DownloadError,
    PixelByte,
    RetryPolicy,
    TransportError,
)

from conftest import until


pytestmark = pytest.mark.anyio

MIB = 1 << 20
BODY = hashlib.sha256(b"x").digest() * (5 * MIB // 32)  # 5 MiB, not all one byte


@pytest.fixture(name="server")
async def server_fixture() -> AsyncIterator[str]:
    """GET /whole: 5 MiB; /cut: says 5 MiB, sends 3 and hangs up; /slow: stalls."""
    done = asyncio.Event()

    async def whole(_: web.Request) -> web.Response:
        return web.Response(body=BODY)

    async def cut(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Length": str(len(BODY))})
        await response.prepare(request)
        await response.write(BODY[: 3 * MIB])
        request.transport.close()  # type: ignore[union-attr]
        return response

    async def slow(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Length": str(len(BODY))})
        await response.prepare(request)
        await response.write(BODY[: 2 * MIB])
        await done.wait()  # the test cancels the download meanwhile
        return response

    app = web.Application()
    app.router.add_get("/whole", whole)
    app.router.add_get("/cut", cut)
    app.router.add_get("/slow", slow)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    yield f"http://127.0.0.1:{port}"
    done.set()
    await runner.cleanup()


def client(**config: object) -> PixelByte:
    return PixelByte(config=ClientConfig(api_key="pb_test_dl", **config), ledger=None)  # type: ignore[arg-type]


def slow_disk(monkeypatch) -> None:
    """Every file-system call counts as slow: the rest go to a worker thread."""
    monkeypatch.setattr(files, "_SLOW_CALL", -1.0)
    monkeypatch.setattr(files._Disk, "slow_until", 0.0)


def parts(folder) -> list[str]:
    return [p.name for p in folder.iterdir() if p.name.endswith(".part")]


@pytest.mark.parametrize("disk", ["fast", "slow"])
async def test_a_download_arrives_whole(server, tmp_path, monkeypatch, disk):
    if disk == "slow":  # every write counts as slow: the rest go to a thread
        slow_disk(monkeypatch)
    async with client() as pb:
        target = tmp_path / "out.mp4"
        await pb._files.download(f"{server}/whole", target, timeout=30, overwrite=False)
    assert target.read_bytes() == BODY
    assert parts(tmp_path) == []


@pytest.mark.parametrize("disk", ["fast", "slow"])
async def test_a_cut_download_leaves_nothing(server, tmp_path, monkeypatch, disk):
    if disk == "slow":
        slow_disk(monkeypatch)
    # Not tried again (each try is cut the same way): one try says it all.
    async with client(retry=RetryPolicy.disabled()) as pb:
        with pytest.raises((DownloadError, TransportError)):
            await pb._files.download(
                f"{server}/cut", tmp_path / "out.mp4", timeout=30, overwrite=False
            )
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("disk", ["fast", "slow"])
async def test_a_download_over_the_limit_stops_while_reading(
    server, tmp_path, monkeypatch, disk
):
    if disk == "slow":
        slow_disk(monkeypatch)
    async with client(max_download_bytes=2 * MIB + 5) as pb:
        with pytest.raises(DownloadError, match="limit"):
            await pb._files.download(
                f"{server}/whole", tmp_path / "out.mp4", timeout=30, overwrite=False
            )
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("disk", ["fast", "slow"])
async def test_a_cancelled_download_leaves_nothing(server, tmp_path, monkeypatch, disk):
    if disk == "slow":
        slow_disk(monkeypatch)
    async with client() as pb:
        task = asyncio.ensure_future(
            pb._files.download(
                f"{server}/slow", tmp_path / "out.mp4", timeout=30, overwrite=False
            )
        )
        await until(  # real time: bytes on a real socket
            lambda: (
                bool(parts(tmp_path))
                and (tmp_path / parts(tmp_path)[0]).stat().st_size >= MIB
            )
        )
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert list(tmp_path.iterdir()) == []


async def test_a_slow_disk_sends_file_calls_to_a_thread_for_a_while(
    tmp_path, monkeypatch
):
    """Quick calls run on the loop; after one slow call, threads for _SLOW_FOR."""
    import threading

    monkeypatch.setattr(files._Disk, "slow_until", 0.0)
    now = [1000.0]
    monkeypatch.setattr(files.time, "monotonic", lambda: now[0])
    loop_thread = threading.get_ident()

    def where() -> int:
        return threading.get_ident()

    assert await files.on_disk(where) == loop_thread

    def slow() -> int:
        now[0] += 0.05  # 50 ms: a network disk
        return threading.get_ident()

    assert await files.on_disk(slow) == loop_thread  # the slow one itself
    assert await files.on_disk(where) != loop_thread  # then a thread
    now[0] += files._SLOW_FOR + 1
    assert await files.on_disk(where) == loop_thread  # and back, later
