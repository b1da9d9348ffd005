"""
Downloads: the SDK's `Job.download` path against a bare aiohttp stream, side by side.

A local aiohttp server in its own process (pinned to the last core; the client
keeps the others) serves ``--mb`` megabytes with a ``Content-Length``.  Each round
downloads it once with a bare loop (what a user writes: ``iter_chunked(64 KiB)``
into a file opened with ``open()``, writes on the loop) and once through the SDK
(the same atomic ``.part`` file, size and truncation checks it always does),
interleaved, median of ``--rounds``.  Prints the ratio sdk/bare (goal >= 0.95)
and the peak RSS growth of a ``--big-mb`` download through the SDK (flat: it
never holds the body).  Writes bench/results/download.json.

    python bench/bench_download.py [--mb 100] [--rounds 7] [--big-mb 1024]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
from _pinning import pin_client, pin_to_last_cpu
from aiohttp import web
from pixelbyte_async import PixelByte


BLOCK = bytes(range(256)) * 4096  # 1 MiB


def serve() -> None:
    """The server process: GET /<n> answers n MiB; prints its port."""

    async def body(request: web.Request) -> web.StreamResponse:
        mib = int(request.match_info["mib"])
        response = web.StreamResponse(headers={"Content-Length": str(mib << 20)})
        await response.prepare(request)
        for _ in range(mib):
            await response.write(BLOCK)
        await response.write_eof()
        return response

    async def main() -> None:
        app = web.Application()
        app.router.add_get("/{mib}", body)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        print(runner.addresses[0][1], flush=True)
        await asyncio.Event().wait()

    asyncio.run(main())


async def bare(url: str, path: Path) -> float:
    """Seconds for a bare aiohttp download into *path*."""
    began = time.perf_counter()
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        with path.open("wb") as fh:
            async for chunk in response.content.iter_chunked(64 * 1024):
                fh.write(chunk)
    return time.perf_counter() - began


async def sdk(pb: PixelByte, url: str, path: Path) -> float:
    """Seconds for the SDK's download of *url* into *path* (atomic, checked)."""
    began = time.perf_counter()
    await pb._files.download(url, path, timeout=600, overwrite=True)  # noqa: SLF001 -- the path Job.download takes
    return time.perf_counter() - began


def rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


async def measure(base: str, ns: argparse.Namespace) -> dict[str, object]:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "out.bin"
        bares: list[float] = []
        sdks: list[float] = []
        async with PixelByte(api_key="pb_bench", ledger=None) as pb:
            await sdk(pb, f"{base}/1", out)  # warm: the session, the file system
            for _ in range(ns.rounds):
                bares.append(await bare(f"{base}/{ns.mb}", out))
                sdks.append(await sdk(pb, f"{base}/{ns.mb}", out))
            out.unlink()
            before = rss_mib()
            await sdk(pb, f"{base}/{ns.big_mb}", out)
            grown = rss_mib() - before
            size = out.stat().st_size
            out.unlink()
    bare_s, sdk_s = statistics.median(bares), statistics.median(sdks)
    return {
        "mb": ns.mb,
        "rounds": ns.rounds,
        "bare_mb_per_s": round(ns.mb / bare_s, 1),
        "sdk_mb_per_s": round(ns.mb / sdk_s, 1),
        "ratio_sdk_over_bare": round(bare_s / sdk_s, 3),
        "big_mb": ns.big_mb,
        "big_size_ok": size == ns.big_mb << 20,
        "big_peak_rss_growth_mib": round(grown, 1),
    }


def main(ns: argparse.Namespace) -> dict[str, object]:
    pin_client()
    # Earlier writes still being flushed by the kernel slow every write down,
    # the bare loop's and the SDK's unequally: start from a clean page cache.
    os.sync()
    server = subprocess.Popen(  # noqa: S603 -- our own script
        [sys.executable, __file__, "--serve"],
        stdout=subprocess.PIPE,
        text=True,
        preexec_fn=pin_to_last_cpu,  # noqa: PLW1509 -- pinning only
    )
    try:
        assert server.stdout is not None
        port = server.stdout.readline().strip()
        return asyncio.run(measure(f"http://127.0.0.1:{port}", ns))
    finally:
        server.terminate()
        server.wait()


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--serve":
        serve()
        sys.exit(0)
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--mb", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--big-mb", type=int, default=1024)
    args = parser.parse_args()
    report = main(args)
    for key, value in report.items():
        print(f"{key:>26}: {value}")
    met = "met" if report["ratio_sdk_over_bare"] >= 0.95 else "MISSED"  # type: ignore[operator]
    print(f"{'goal':>26}: sdk/bare >= 0.95 ({met})")
    out = Path(__file__).parent / "results" / "download.json"
    out.write_text(json.dumps(report, indent=2) + "\n")
