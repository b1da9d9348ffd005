"""
``batch report``: rebuild a batch's ``report.html`` from its journal, offline.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TextIO

from pixelbyte_async._cmdline import EXIT_CODES
from pixelbyte_async._report import write_batch_report

from ._output import _print_json


def _journal_of(args: argparse.Namespace) -> Path:
    """``--journal``, FILE when it is a journal itself, else FILE.journal.sqlite."""
    if args.journal is not None:
        return Path(args.journal)
    given = Path(args.file)
    try:
        with given.open("rb") as fh:
            if fh.read(16) == b"SQLite format 3\0":
                return given
    except OSError:
        pass  # a batch file that is gone: its journal may still be there
    return given.with_name(given.name + ".journal.sqlite")


async def _report_command(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    journal = _journal_of(args)
    path = (await write_batch_report(journal, args.out)).absolute()
    if args.json:
        _print_json({"report": str(path), "journal": str(journal.absolute())}, out)
    else:
        print(f"Report written: {path} (open it in a browser)", file=out)
    del err
    return EXIT_CODES["ok"]
