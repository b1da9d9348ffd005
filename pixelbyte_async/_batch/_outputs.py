"""
A batch's outputs on disk: one file per row, ``{out_dir}/{key}{suffix}``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import anyio

from pixelbyte_async._errors import DownloadError, MissingOutputError, TransportError
from pixelbyte_async._files import on_disk
from pixelbyte_async._journal import Journal, JournalRow

from ._outcomes import Outcomes
from ._rows import Entry
from ._types import BatchItemStatus


if TYPE_CHECKING:
    from pixelbyte_async._job import Job


__all__ = ["Outputs"]

log = logging.getLogger("pixelbyte_async")

#: A download's temporary file (see `pixelbyte_async._files.stream_to_file`).
_PART = re.compile(r"\..+\.[0-9a-f]{8}\.part")


class Outputs:
    """
    Where a batch downloads its outputs (*out_dir*), and what is there already.

    A file the journal recorded at its size is not fetched again.  With
    *posters* (for the batch report), each output's poster image goes next to it.
    """

    def __init__(
        self,
        out_dir: Path,
        *,
        journal: Journal,
        outcomes: Outcomes,
        posters: bool = True,
    ) -> None:
        self._out_dir = out_dir
        self._posters = posters
        self._journal = journal
        self._outcomes = outcomes
        self._swept: asyncio.Future[None] | None = None

    async def _sweep_leftovers(self) -> None:
        """
        Remove what killed runs left mid-download (``.<name>.<hex>.part``), once.

        Once per run, before its first download: a look per download read the
        whole folder each time (quadratic in rows).  This run holds the journal,
        so no other run of the batch writes there meanwhile.
        """
        if self._swept is None:
            self._swept = asyncio.ensure_future(self._remove_parts())
        await asyncio.shield(self._swept)

    async def _remove_parts(self) -> None:
        folder = anyio.Path(self._out_dir)
        if not await folder.is_dir():
            return
        async for leftover in folder.glob(".*.part"):
            if _PART.fullmatch(leftover.name):  # ours: .<name>.<8 hex>.part
                with contextlib.suppress(OSError):
                    await leftover.unlink()

    def target(self, entry: Entry, url: str | None) -> Path:
        """Where *entry*'s output (from *url*) goes."""
        return self._out_dir / f"{entry.key}{_suffix(url)}"

    async def intact(self, entry: Entry, row: JournalRow) -> bool:
        """Whether the recorded output file is where we want it, at its size."""
        if row.output_path is None or row.output_bytes is None:
            return False
        if Path(row.output_path) != self.target(entry, row.output_url):
            return False
        try:
            stat = await anyio.Path(row.output_path).stat()
        except OSError:
            return False
        return stat.st_size == row.output_bytes

    async def download(
        self, entry: Entry, job: Job, *, ended_at: float | None = None
    ) -> None:
        """
        Download *job*'s output for *entry*, journal and report it.

        *job* is completed; its end (seen at *ended_at*) is journaled with the
        file in one commit, or alone if the download fails.
        """
        target = self.target(entry, job.video_url)
        await self._sweep_leftovers()  # a killed run's temporary files
        # The poster comes meanwhile (a small file: its latency, not its bytes).
        poster = asyncio.ensure_future(self._poster(entry, job))
        try:
            path = await job.download(target, overwrite=True)
            size = (await on_disk(path.stat)).st_size
        except MissingOutputError as exc:
            await _cancel(poster)
            await self._ended(entry, job, ended_at)
            self._outcomes.emit(
                entry, BatchItemStatus.FAILED, job_id=job.id, error=str(exc)
            )
            return
        except (DownloadError, TransportError, OSError) as exc:
            await _cancel(poster)
            await self._ended(entry, job, ended_at)
            self._outcomes.emit(
                entry,
                BatchItemStatus.UNFINISHED,
                job_id=job.id,
                output_url=job.video_url,
                error=f"download failed ({exc}); run the batch again to retry it",
            )
            return
        except BaseException:
            await _cancel(poster)
            raise
        await self._journal.downloaded(
            entry.key,
            path=str(path),
            size=size,
            poster=await poster,
            output_url=job.video_url,
            ended_at=ended_at,
        )
        self._outcomes.emit(
            entry,
            BatchItemStatus.COMPLETED,
            job_id=job.id,
            output_url=job.video_url,
            path=path,
        )

    async def _ended(self, entry: Entry, job: Job, at: float | None) -> None:
        """Journal that *job* completed (its output is not on disk)."""
        await self._journal.status(
            entry.key, status=job.status.value, output_url=job.video_url, at=at
        )

    async def _poster(self, entry: Entry, job: Job) -> str | None:
        """
        Download *job*'s poster image next to its output, for the batch report.

        ``{key}.poster.jpg``; a row without one (or whose poster cannot be
        fetched) is still a finished row: the report shows it without a picture.
        """
        url = job.poster_url
        if url is None or not self._posters:
            return None
        target = self._out_dir / f"{entry.key}.poster{_suffix(url, '.jpg')}"
        try:
            return str(await job.download_poster(target, overwrite=True))
        except (DownloadError, TransportError, MissingOutputError, OSError) as exc:
            log.info("batch row %s: no poster image (%s)", entry.key, exc)
            return None


async def _cancel(task: asyncio.Future[Any]) -> None:
    """Cancel *task* and wait for it to end (a download removes its ``.part``)."""
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


def _suffix(url: str | None, default: str = ".mp4") -> str:
    try:
        path = urlsplit(url or "").path
    except ValueError:  # e.g. an unusable URL recorded by an older version
        return default
    suffix = PurePosixPath(path).suffix.lower()
    return suffix if re.fullmatch(r"\.[a-z0-9]{1,5}", suffix) else default
