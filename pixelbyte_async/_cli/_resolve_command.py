"""
``batch resolve``: a person settles a row the batch set aside (`resolve_batch_row`).
"""

from __future__ import annotations

import argparse
from typing import TextIO

from pixelbyte_async._batch import resolve_batch_row
from pixelbyte_async._cmdline import EXIT_CODES

from ._connection import _client
from ._output import _print_json


async def _resolve(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    async with _client(args) as pb:
        await resolve_batch_row(
            pb,
            args.journal,
            args.row,
            adopt=args.adopt,
            resend=args.resend,
            settle=args.settle,
        )
    if args.json:
        state = "submitted" if args.adopt is not None else "planned"
        _print_json({"key": args.row, "state": state, "jobId": args.adopt}, out)
    elif args.adopt is not None:
        print(
            f"{args.row}: job {args.adopt} is now its job (journaled); run the batch "
            "again to wait for it and download it.",
            file=out,
        )
    else:
        print(
            f"{args.row}: none of its candidates is its job (journaled); the next run "
            "of the batch sends it again.",
            file=out,
        )
    del err
    return EXIT_CODES["ok"]
