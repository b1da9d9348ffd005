"""
``transition`` and ``wait``: follow one job with a progress display, then download it.

`transition` submits a Kling O1 start-end frame job (with no frames under
``--sandbox``, the demo frames `_png` draws) and `wait` adopts an existing one; both
watch it with `_Progress` (`_follow`), say how to resume after Ctrl-C, and write its
output (`_download`).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import struct
import time
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Self, TextIO

import anyio

from pixelbyte_async._client import PixelByte
from pixelbyte_async._cmdline import _CLIError
from pixelbyte_async._errors import DownloadError, ValidationError
from pixelbyte_async._inputs import KlingO1StartEndFrame, check_local_frames
from pixelbyte_async._job import Job
from pixelbyte_async._models import JobInfo

from ._connection import _client
from ._output import _cost, _job_json, _job_line, _print_json, _ticking, _wants_rich
from ._preflight import _check_output_file
from ._resume import _resume_hint


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


#: The library's names of the frames, and the command line's.
_CLI_NAMES = {"image_url": "START", "end_image_url": "END", "prompt": "--prompt"}


@contextlib.contextmanager
def _cli_words() -> Iterator[None]:
    """Say a `ValidationError` of the request in the command line's words."""
    try:
        yield
    except ValidationError as exc:
        name = _CLI_NAMES.get(exc.field or "")
        if name is None:
            raise
        message = str(exc)
        if exc.field and message.startswith(exc.field):
            message = name + message[len(exc.field) :]
        raise ValidationError(message, field=exc.field) from exc


def _progress_text(
    info: JobInfo, *, elapsed: float, expected: float, scale: float
) -> str:
    """
    One progress line: status, elapsed vs expected seconds, cost.

    Seconds are real ones: a sandbox's virtual seconds are divided by its *scale*.
    """
    cost = _cost(info.cost_micro_cents)
    if info.status.is_terminal:
        took = ""
        if info.created_at is not None and info.completed_at is not None:
            seconds = (info.completed_at - info.created_at).total_seconds()
            took = f"  took {seconds:.0f}s" + (" (sandbox time)" if scale != 1 else "")
        return f"{info.id} {info.status.value:<10}{took}  {cost}"
    shown = f"{elapsed:5.0f}s / ~{expected / scale:.0f}s"
    if scale != 1:
        shown += f" (sandbox x{scale:g})"
    return f"{info.id} {info.status.value:<10} {shown}  {cost}"


class _Progress:
    """Status, elapsed vs ETA and cost: rich when installed, plain lines otherwise."""

    def __init__(
        self,
        pb: PixelByte,
        job: Job,
        *,
        stream: TextIO,
        quiet: bool,
        scale: float = 1.0,
    ) -> None:
        self._pb = pb
        self._job = job
        self._stream = stream
        self._quiet = quiet
        self._scale = scale
        self._started = pb.clock.time()
        self._started_real = time.monotonic()
        self._rich: Any = None
        self._task: Any = None

    def _expected(self) -> float:
        eta = self._job.estimated_completion_time
        if eta is None:
            return 240.0
        return max(1.0, eta.timestamp() - self._started)

    def _describe(self, info: JobInfo) -> str:
        return _progress_text(
            info,
            elapsed=time.monotonic() - self._started_real,
            expected=self._expected(),
            scale=self._scale,
        )

    def __enter__(self) -> Self:
        if self._quiet or not _wants_rich(self._stream):
            return self
        from rich.console import Console  # noqa: PLC0415 -- optional 'cli' extra
        from rich.progress import BarColumn, Progress, TextColumn  # noqa: PLC0415

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
        elapsed = (time.monotonic() - self._started_real) * self._scale
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


async def _follow(
    pb: PixelByte, job: Job, args: argparse.Namespace, err: TextIO, resume: str
) -> None:
    """Watch *job* with a progress display until it ends; raise if it failed."""
    try:
        scale = float(args.time_scale) if args.sandbox else 1.0
        with _Progress(
            pb, job, stream=err, quiet=args.quiet or args.json, scale=scale
        ) as progress:
            ticker = asyncio.ensure_future(_ticking(progress.tick))
            try:
                watch = job.watch(timeout=args.timeout)
                async with contextlib.aclosing(
                    watch  # type: ignore[type-var]  # Job.watch is an async generator
                ) as snapshots:
                    async for info in snapshots:
                        progress.changed(info)
            finally:
                ticker.cancel()
        job.raise_for_status()
    except (KeyboardInterrupt, asyncio.CancelledError):
        print(
            f"\nStopped waiting. {resume}"
            if args.sandbox
            else f"\nStopped waiting. Job {job.id} keeps running (and is paid for); "
            f"it was not cancelled. {resume}",
            file=err,
        )
        raise


def _frame(value: str, name: str) -> str | Path:
    """
    A frame named on the command line: a URL stays a str, anything else is a file.

    The library never opens a str (it is always a URL); here the user typed a path,
    so it becomes a `Path`, checked before anything is sent.
    """
    if "://" in value:
        return value
    path = Path(value)
    if not path.is_file():
        raise ValidationError(
            f"{name} frame {value!r} is neither an https:// URL nor a file "
            "(no such file)",
            field="image_url" if name == "START" else "end_image_url",
        )
    return path


async def _transition(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    start: Any = args.start
    end: Any = args.end
    if (start is None) != (end is None):
        raise _CLIError(
            "give both START and END frames, or neither (sandbox demo)", family="usage"
        )
    if start is None:
        if not args.sandbox:
            raise _CLIError(
                "START and END frames are required (or use --sandbox)", family="usage"
            )
        start = _png(160, 90, *DEMO_START)
        end = _png(160, 90, *DEMO_END)
    else:
        start, end = _frame(start, "START"), _frame(end, "END")
    prompt = args.prompt
    if prompt is None and args.sandbox:
        prompt = "Smooth cinematic transition from a sunrise mountain peak to a starry night sky"
    with _cli_words():
        request = KlingO1StartEndFrame(
            image_url=start,
            end_image_url=end,
            prompt=prompt,
            duration=args.duration,
            pro=args.pro,
        )
        # Local frames now, before anything is shown as submitted (in a thread:
        # a stat and a few bytes each); the submit checks them again as it reads.
        await anyio.to_thread.run_sync(check_local_frames, request)
    _check_output_file(Path(args.output), "-o")
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
        with _cli_words():
            job = await pb.submit(request, webhook_url=args.webhook_url)
        await _follow(pb, job, args, err, _resume_hint(args, "wait", job=job.id))
        path = await _download(job, args)
    size = path.stat().st_size
    if args.json:
        _print_json(
            {
                "jobId": job.id,
                "status": job.status.value,
                "videoUrl": job.video_url,
                "costMicroCents": job.cost_micro_cents,
                "output": str(path),
                "bytes": size,
                "sandbox": bool(args.sandbox),
            },
            out,
        )
    elif not args.quiet:
        print(f"Wrote {path} ({size} bytes)", file=err)
    return 0


async def _download(job: Job, args: argparse.Namespace) -> Path:
    """Write *job*'s output to ``-o``; if that fails now, say how to fetch it later."""
    try:
        return await job.download(args.output)
    except DownloadError as exc:
        disk = exc.__cause__
        if not isinstance(disk, OSError):
            raise
        what = f"cannot write -o {args.output} ({disk.strerror or disk})"
        if args.sandbox:
            what += (
                "; the --sandbox job ends with this process (nothing was charged): "
                "run the command again with another -o"
            )
        else:
            again = _resume_hint(
                args, "wait", doing="download it", job=job.id, output=f"{job.id}.mp4"
            )
            what += f"; job {job.id} completed and is paid for. {again}"
        raise ValidationError(what, field="output") from exc


async def _wait(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    if args.output is not None:
        _check_output_file(Path(args.output), "-o")
    async with _client(args) as pb:
        job = await pb.get_job(args.job)
        await _follow(pb, job, args, err, _resume_hint(args))
        path = None if args.output is None else await _download(job, args)
    if args.json:
        result = _job_json(job.info)
        if path is not None:
            result["output"] = str(path)
        _print_json(result, out)
    else:
        print(_job_line(job.info), file=out)
        if path is not None and not args.quiet:
            print(f"Wrote {path} ({path.stat().st_size} bytes)", file=err)
    return 0
