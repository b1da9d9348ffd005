"""
The batch report: ``DIR/report.html``, one self-contained page per batch.

Made from the journal and the files in the output folder, so it is the same
whether a batch writes it as it ends (or is interrupted) or
`write_batch_report` rebuilds it offline, later, from the journal file:

* `_data`: what the page shows, read from a journal's database (`collect`);
* `_charts`: the timeline, jobs in flight and spend, as inline SVG;
* `_page`: the HTML (inline CSS and JS; only files of its own folder linked).
"""

from __future__ import annotations

import functools
import os
import secrets
import time
from pathlib import Path

import anyio

from pixelbyte_async._journal import Journal, JournalError

from ._data import ReportData, ReportRow, ReportRun, collect
from ._page import render


__all__ = [
    "REPORT_NAME",
    "ReportData",
    "ReportRow",
    "ReportRun",
    "report_from",
    "write_batch_report",
]

#: The report's file name in the output folder.
REPORT_NAME = "report.html"


async def report_from(journal: Journal, out_dir: str | os.PathLike[str]) -> Path:
    """Write *out_dir*/report.html from an open *journal*; return its path."""
    data = await journal.read(
        functools.partial(collect, out_dir=out_dir, now=time.time())
    )
    return await anyio.to_thread.run_sync(_write, data, Path(out_dir))


async def write_batch_report(
    journal: str | os.PathLike[str], out_dir: str | os.PathLike[str]
) -> Path:
    """
    Rebuild a batch's ``report.html`` in *out_dir* from its *journal* file, offline.

    The page shows the batch's totals (rows done, failed, waiting and needing
    attention; spend charged and estimated against the budget; wall time), a
    timeline, jobs in flight and spend over time, and one card per row with its
    poster, prompt, duration, cost, status and video (files found in *out_dir*
    by name), or the API's error.  It needs no network: nothing is asked of
    the API, and the page loads nothing from outside its folder.  A batch
    running on the journal meanwhile is not disturbed (the journal is read from
    a snapshot).

    .. code-block:: python

        path = await write_batch_report("jobs.jsonl.journal.sqlite", "out")

    Returns:
        The report's path, ``{out_dir}/report.html``.

    Raises:
        JournalError: *journal* does not exist or is not a batch journal.
        OSError: The report could not be written.

    .. versionadded:: 0.5.0

    """
    path = Path(journal)
    if not await anyio.Path(path).is_file():
        raise JournalError(
            f"{path}: no such journal file; give the batch's journal (a batch "
            "without one, such as a --sandbox run's, writes its report only as "
            "it ends)"
        )
    opened = await Journal.open(path, readonly=True)
    try:
        return await report_from(opened, out_dir)
    finally:
        await opened.aclose()


def _write(data: ReportData, folder: Path) -> Path:
    """Write the page atomically (a temporary file, then a rename)."""
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / REPORT_NAME
    # Readable like any file the user makes (umask applies), unlike mkstemp's 0600.
    name = folder / f".{REPORT_NAME}.{secrets.token_hex(4)}.tmp"
    fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(render(data))
        name.replace(target)
    except BaseException:
        name.unlink(missing_ok=True)
        raise
    return target
