"""
Downloads write in 1 MiB blocks on the loop, or in a worker thread on a slow disk.

Both ways keep what a download always promised: the file appears whole or not at
all (the ``.part`` file goes on any failure, cancellation included), the size is
checked against the limit and against ``Content-Length``.
"""

from __future__ import annotations

import asyncio
import gzip
import hashlib
from collections.abc import AsyncIterator

import pixelbyte_async._files as files
import pytest
from aiohttp import web
from pixelbyte_async import (
    ClientConfig,
    DownloadError,
    KlingO1StartEndFrame,
    MockTransport,
    PixelByte,
    RetryPolicy,
    TransportError,
)
from pixelbyte_async._transport import Request, Response

from conftest import bound_client, until


pytestmark = pytest.mark.anyio

MIB = 1 << 20
BODY = hashlib.sha256(b"x").digest() * (5 * MIB // 32)  # 5 MiB, not all one byte


#: The Accept-Encoding of each request to /gzip (reset by the fixture).
ACCEPT_ENCODINGS: list[str] = []


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

    async def gzipped(request: web.Request) -> web.Response:
        # A CDN that compresses whatever it was asked: Content-Length is the
        # compressed size.
        seen.append(request.headers.get("Accept-Encoding", ""))
        packed = gzip.compress(BODY[:MIB])
        return web.Response(
            body=packed,
            headers={"Content-Encoding": "gzip", "Content-Type": "video/mp4"},
        )

    async def loop(_: web.Request) -> web.Response:
        raise web.HTTPFound("/loop")

    async def hop(request: web.Request) -> web.Response:
        n = int(request.match_info["n"])
        target = "/whole" if n == 0 else f"/hop/{n - 1}"
        raise web.HTTPFound(target)

    app = web.Application()
    seen = ACCEPT_ENCODINGS
    seen.clear()
    app.router.add_get("/gzip", gzipped)
    app.router.add_get("/hop/{n}", hop)
    app.router.add_get("/loop", loop)
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


#: An API on loopback http: a sandbox, whose outputs may be http on loopback too.
SANDBOX_API = "http://127.0.0.1:9"


def client(**config: object) -> PixelByte:
    config.setdefault("base_url", SANDBOX_API)
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


# Issue 24, findings 6 and 7: encodings, schemes and redirects.


async def test_a_compressed_answer_is_asked_away_and_still_read(server, tmp_path):
    """Identity is asked for; a CDN that compresses anyway is read whole."""
    async with client() as pb:
        target = tmp_path / "out.mp4"
        await pb._files.download(f"{server}/gzip", target, timeout=30, overwrite=False)
    assert target.read_bytes() == BODY[:MIB]
    assert ACCEPT_ENCODINGS == ["identity"]


async def test_redirects_are_followed_a_bounded_number_of_times(server, tmp_path):
    async with client() as pb:
        target = tmp_path / "out.mp4"
        await pb._files.download(f"{server}/hop/4", target, timeout=30, overwrite=False)
        assert target.read_bytes() == BODY
        with pytest.raises(DownloadError, match="redirects"):
            await pb._files.download(
                f"{server}/hop/9", tmp_path / "far.mp4", timeout=30, overwrite=False
            )
        with pytest.raises(DownloadError, match="redirect loop"):
            await pb._files.download(
                f"{server}/loop", tmp_path / "loop.mp4", timeout=30, overwrite=False
            )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.mp4"]


def cdn(routes: dict[str, tuple[int, str]]) -> MockTransport:
    """A CDN without sockets: path -> (status, Location); 200 gives BODY's first KiB."""

    def answer(request: Request) -> Response:
        status, location = routes[request.url]
        headers = {"Location": location} if location else {}
        return Response(status=status, headers=headers, content=BODY[:1024])

    return MockTransport(answer)


API = "https://api.muvi.video"


@pytest.mark.parametrize(
    ("first", "routes", "why"),
    [
        ("http://cdn.example/a.mp4", {}, "https"),
        ("https://127.0.0.1/a.mp4", {}, "loopback"),
        (
            "https://cdn.example/a.mp4",
            {"https://cdn.example/a.mp4": (302, "http://cdn.example/b")},
            "https",
        ),
        (
            "https://cdn.example/a.mp4",
            {"https://cdn.example/a.mp4": (302, "https://localhost/x")},
            "loopback",
        ),
        (
            "https://cdn.example/a.mp4",
            {"https://cdn.example/a.mp4": (301, "https://10.0.0.7/x")},
            "private",
        ),
        (
            "https://cdn.example/a.mp4",
            {"https://cdn.example/a.mp4": (302, "file:///etc/passwd")},
            "https",
        ),
        (
            "https://cdn.example/a.mp4",
            {"https://cdn.example/a.mp4": (302, "")},
            "Location",
        ),
        (
            "https://cdn.example/a.mp4",
            {
                "https://cdn.example/a.mp4": (302, "/b.mp4"),
                "https://cdn.example/b.mp4": (307, "https://cdn.example/a.mp4"),
            },
            "redirect loop",
        ),
    ],
)
async def test_forbidden_targets_are_a_typed_error_not_retried(
    tmp_path, first, routes, why
):
    """
    Against the real API: https only, no loopback or private hosts, each hop
    checked like the first, a loop or a bad target is one DownloadError (no retry).
    """
    transport = cdn(routes)
    async with PixelByte(
        config=ClientConfig(api_key="pb_test_dl", base_url=API),
        transport=transport,
        ledger=None,
    ) as pb:
        with pytest.raises(DownloadError, match=why):
            await pb._files.download(
                first, tmp_path / "o.mp4", timeout=30, overwrite=False
            )
    assert len(transport.requests) == len(routes)
    assert list(tmp_path.iterdir()) == []


async def test_an_https_redirect_chain_arrives(tmp_path):
    transport = cdn(
        {
            "https://cdn.example/a.mp4": (302, "https://edge.example/b.mp4?sig=1"),
            "https://edge.example/b.mp4?sig=1": (200, ""),
        }
    )
    async with PixelByte(
        config=ClientConfig(api_key="pb_test_dl", base_url=API),
        transport=transport,
        ledger=None,
    ) as pb:
        target = tmp_path / "o.mp4"
        await pb._files.download(
            "https://cdn.example/a.mp4", target, timeout=30, overwrite=False
        )
    assert target.read_bytes() == BODY[:1024]
    # The key goes to the API's origin only: never to a CDN, nor after a hop.
    assert all("Authorization" not in r.headers for r in transport.requests)


# Issue 25: a folder as the target, and the disk's own errors, typed.


async def test_a_folder_as_the_target_gets_the_job_id(fake, tmp_path):
    async with bound_client(fake) as pb:
        job = await pb.submit(
            KlingO1StartEndFrame(
                image_url="https://e.x/a.jpg", end_image_url="https://e.x/b.jpg"
            )
        )
        done = await job.wait(timeout=900)
        path = await done.download(tmp_path)
        assert path == tmp_path / f"{job.id}.mp4"
        assert path.stat().st_size > 0
        # A file where the folder should be: a typed error naming the path.
        blocker = tmp_path / "file"
        blocker.write_bytes(b"x")
        with pytest.raises(DownloadError, match=str(blocker)):
            await done.download(blocker / "sub" / "out.mp4")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file", f"{job.id}.mp4"]
