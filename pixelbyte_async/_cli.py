"""
``pixelbyte-async``: a thin command line over the public API.

``transition`` turns two frames into a video, showing progress, and writes the .mp4.
``--sandbox`` runs it against an in-process `FakePixelByte`, so it works with no key
and no network.  It holds no logic the library lacks.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import struct
import sys
import zlib
from collections.abc import AsyncIterator, Sequence
from typing import Any, Self, TextIO

from ._client import PixelByte
from ._errors import (
    AmbiguousSubmitError,
    AuthenticationError,
    InsufficientBalance,
    JobError,
    PermissionDenied,
    PixelByteError,
    ServerError,
    TransportError,
    ValidationError,
    WaitTimeout,
)
from ._inputs import KlingO1StartEndFrame
from ._job import Job
from ._models import JobInfo


__all__ = ["EXIT_CODES", "main"]

#: Exit codes per error family (documented in ``--help``).
EXIT_CODES: dict[str, int] = {
    "ok": 0,
    "error": 1,
    "usage": 2,
    "validation": 3,
    "auth": 4,
    "balance": 5,
    "job_failed": 6,
    "timeout": 7,
    "unavailable": 8,
    "ambiguous_submit": 9,
    "interrupted": 130,
}


def _exit_code(exc: BaseException) -> int:
    table: list[tuple[type[BaseException], str]] = [
        (ValidationError, "validation"),
        (AuthenticationError, "auth"),
        (PermissionDenied, "auth"),
        (InsufficientBalance, "balance"),
        (JobError, "job_failed"),
        (WaitTimeout, "timeout"),
        (AmbiguousSubmitError, "ambiguous_submit"),
        (TransportError, "unavailable"),
        (ServerError, "unavailable"),
    ]
    for cls, family in table:
        if isinstance(exc, cls):
            return EXIT_CODES[family]
    return EXIT_CODES["error"]


def _png(
    width: int, height: int, top: tuple[int, int, int], bottom: tuple[int, int, int]
) -> bytes:
    """Return a vertical-gradient PNG (stdlib only): the sandbox's demo frames."""
    rows = bytearray()
    for y in range(height):
        f = y / max(1, height - 1)
        pixel = bytes(round(a + (b - a) * f) for a, b in zip(top, bottom, strict=True))
        rows += b"\x00" + pixel * width

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(bytes(rows), 9))
        + chunk(b"IEND", b"")
    )


DEMO_START = ((255, 183, 94), (120, 60, 140))  # sunrise
DEMO_END = ((8, 12, 40), (40, 40, 90))  # starry night


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pixelbyte-async",
        description="PixelByte generation API from the command line.",
        epilog="Exit codes: "
        + ", ".join(f"{code} {name}" for name, code in EXIT_CODES.items()),
    )
    sub = parser.add_subparsers(dest="command", required=True)
    tr = sub.add_parser(
        "transition",
        help="Kling O1 start-end frame to video",
        description="Turn two frames into a video (Kling O1) and download it.",
    )
    tr.add_argument("start", nargs="?", help="start frame: https URL or local image")
    tr.add_argument("end", nargs="?", help="end frame: https URL or local image")
    tr.add_argument("--prompt", default=None, help="what happens in between")
    tr.add_argument(
        "--duration", default="5", help="seconds of video, 3..10 (default 5)"
    )
    tr.add_argument(
        "-o", "--output", default="transition.mp4", help="where to write the video"
    )
    tr.add_argument("--pro", action="store_true", help="use Kling O1 Pro")
    tr.add_argument("--webhook-url", default=None, help="https URL notified when done")
    tr.add_argument(
        "--timeout", type=float, default=None, help="wait at most this many seconds"
    )
    tr.add_argument(
        "--sandbox",
        action="store_true",
        help="run against an in-process fake API (no key, no network, no charge)",
    )
    tr.add_argument(
        "--time-scale",
        type=float,
        default=60.0,
        help="sandbox only: virtual seconds per real second (default 60)",
    )
    tr.add_argument("--json", action="store_true", help="print the result as JSON")
    tr.add_argument("--quiet", action="store_true", help="no progress display")
    return parser


@contextlib.asynccontextmanager
async def _client(args: argparse.Namespace) -> AsyncIterator[PixelByte]:
    if not args.sandbox:
        async with PixelByte() as pb:
            yield pb
        return
    from .testing import FakePixelByte  # noqa: PLC0415 -- only the sandbox needs it

    async with (
        FakePixelByte(time_scale=args.time_scale) as fake,
        PixelByte(api_key=fake.api_key, base_url=fake.url, clock=fake.clock) as pb,
    ):
        yield pb


class _Progress:
    """Status, elapsed vs ETA and cost: rich when installed, plain lines otherwise."""

    def __init__(self, pb: PixelByte, job: Job, *, stream: TextIO, quiet: bool) -> None:
        self._pb = pb
        self._job = job
        self._stream = stream
        self._quiet = quiet
        self._started = pb.clock.time()
        self._rich: Any = None
        self._task: Any = None

    def _expected(self) -> float:
        eta = self._job.estimated_completion_time
        if eta is None:
            return 240.0
        return max(1.0, eta.timestamp() - self._started)

    def _describe(self, info: JobInfo) -> str:
        cost = info.cost_micro_cents
        money = f"${cost / 1_000_000:.2f}" if cost is not None else "?"
        elapsed = self._pb.clock.time() - self._started
        return (
            f"{info.id} {info.status.value:<10} {elapsed:5.0f}s / ~{self._expected():.0f}s"
            f"  cost {money}"
        )

    def __enter__(self) -> Self:
        if self._quiet:
            return self
        try:
            from rich.progress import (  # noqa: PLC0415 -- optional 'cli' extra
                BarColumn,
                Progress,
                TextColumn,
            )
        except ImportError:
            return self
        if not self._stream.isatty() and os.environ.get("PIXELBYTE_FORCE_RICH") != "1":
            return self
        from rich.console import Console  # noqa: PLC0415

        self._rich = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            console=Console(file=self._stream),
            transient=False,
        )
        self._rich.__enter__()
        self._task = self._rich.add_task(self._describe(self._job.info), total=100)
        return self

    def tick(self) -> None:
        if self._rich is None:
            return
        info = self._job.info
        elapsed = self._pb.clock.time() - self._started
        done = (
            100.0
            if info.status.is_terminal
            else min(99.0, 100 * elapsed / self._expected())
        )
        self._rich.update(self._task, completed=done, description=self._describe(info))

    def changed(self, info: JobInfo) -> None:
        if self._quiet:
            return
        if self._rich is None:
            print(self._describe(info), file=self._stream, flush=True)
        else:
            self.tick()

    def __exit__(self, *exc: object) -> None:
        if self._rich is not None:
            self.tick()
            self._rich.__exit__(None, None, None)


async def _transition(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    start: Any = args.start
    end: Any = args.end
    if (start is None) != (end is None):
        raise ValidationError(
            "give both START and END frames, or neither (sandbox demo)"
        )
    if start is None:
        if not args.sandbox:
            raise ValidationError(
                "START and END frames are required (or use --sandbox)"
            )
        start = _png(160, 90, *DEMO_START)
        end = _png(160, 90, *DEMO_END)
    prompt = args.prompt
    if prompt is None and args.sandbox:
        prompt = "Smooth cinematic transition from a sunrise mountain peak to a starry night sky"
    request = KlingO1StartEndFrame(
        image_url=start,
        end_image_url=end,
        prompt=prompt,
        duration=args.duration,
        pro=args.pro,
    )
    async with _client(args) as pb:
        if not args.quiet and not args.json:
            where = (
                "sandbox (fake API, no charge)" if args.sandbox else pb.config.base_url
            )
            print(
                f"Submitting {request.model_slug} ({request.duration}s, "
                f"~${request.cost_micro_cents / 1_000_000:.2f}) to {where}",
                file=err,
            )
        job = await pb.submit(request, webhook_url=args.webhook_url)
        try:
            with _Progress(
                pb, job, stream=err, quiet=args.quiet or args.json
            ) as progress:
                ticker = asyncio.ensure_future(_tick(progress))
                try:
                    async for info in job.watch(timeout=args.timeout):
                        progress.changed(info)
                finally:
                    ticker.cancel()
            job.raise_for_status()
        except (KeyboardInterrupt, asyncio.CancelledError):
            print(
                f"\nStopped waiting. Job {job.id} keeps running (and is paid for); "
                f"it was not cancelled.",
                file=err,
            )
            raise
        path = await job.download(args.output)
    size = path.stat().st_size
    if args.json:
        print(
            json.dumps(
                {
                    "jobId": job.id,
                    "status": job.status.value,
                    "videoUrl": job.video_url,
                    "costMicroCents": job.cost_micro_cents,
                    "output": str(path),
                    "bytes": size,
                    "sandbox": bool(args.sandbox),
                }
            ),
            file=out,
        )
    elif not args.quiet:
        print(f"Wrote {path} ({size} bytes)", file=err)
    return 0


async def _tick(progress: _Progress) -> None:
    while True:
        progress.tick()
        await asyncio.sleep(0.1)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI and return its exit code."""
    parser = _parser()
    args = parser.parse_args(argv)
    out, err = sys.stdout, sys.stderr
    commands = {"transition": _transition}
    try:
        return asyncio.run(commands[args.command](args, out, err))
    except KeyboardInterrupt:
        return EXIT_CODES["interrupted"]
    except PixelByteError as exc:
        print(f"error: {exc}", file=err)
        if isinstance(exc, AmbiguousSubmitError):
            print(
                "The job may exist and be charged; it was not re-submitted. "
                "Check 'jobs' before trying again.",
                file=err,
            )
        return _exit_code(exc)
