"""
``pixelbyte-async``: a thin command line over the public API.

``transition`` turns two frames into a video, showing progress, and writes the .mp4;
``batch`` runs a JSONL/CSV file of transitions with a budget and a resumable
journal (`run_batch`); ``status``, ``wait``, ``cancel``, ``estimate``, ``jobs`` and
``models`` wrap one client call each; ``sandbox`` runs the fake API in the
foreground.  ``--sandbox`` runs any command against an in-process `FakePixelByte`,
so it works with no key and no network.  It holds no logic the library lacks.

Each command lives in its own module (``_transition_command``, ``_batch_command``,
``_job_commands``, ``_audit_command``, ``_webhook_commands``); the parser is
``_parser_tree``; what is printed, ``_output``.  The ``sandbox`` command is the
sandbox process of ``_fake._process``; exit codes and the one-line error are shared
with it through ``_cmdline``.  This package holds the entry point (`main`) and the
table of commands (`_COMMANDS`).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Callable, Coroutine, Sequence
from typing import Any, TextIO

from pixelbyte_async._cmdline import (
    EXIT_CODES,
    _all_parsers,
    _CLIError,
    _hidden_words,
    _Parser,
)
from pixelbyte_async._errors import PixelByteError
from pixelbyte_async._fake._process import _run_sandbox

from ._audit_command import _audit
from ._batch_command import _batch
from ._job_commands import _cancel, _estimate, _jobs, _models, _status
from ._output import _report
from ._parser_tree import _parser, _resolve_parser
from ._preflight import _check_connection
from ._resolve_command import _resolve
from ._transition_command import _transition, _wait
from ._webhook_commands import _webhook


__all__ = ["EXIT_CODES", "main"]


_Command = Callable[[argparse.Namespace, TextIO, TextIO], Coroutine[Any, Any, int]]


_COMMANDS: dict[str, _Command] = {
    "transition": _transition,
    "batch": _batch,
    "status": _status,
    "wait": _wait,
    "cancel": _cancel,
    "estimate": _estimate,
    "jobs": _jobs,
    "models": _models,
    "audit": _audit,
    "resolve": _resolve,
    "webhook": _webhook,
}


def _is_resolve(arguments: list[str]) -> bool:
    """Whether *arguments* are ``[--debug] batch resolve ...``."""
    words = [w for w in arguments if w != "--debug"]
    return words[:2] == ["batch", "resolve"]


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI and return its exit code."""
    arguments = list(sys.argv[1:] if argv is None else argv)
    parser, words = _parser(), arguments
    if _is_resolve(arguments):
        # 'batch resolve ROW ...': 'batch' itself takes a file name first.
        at = arguments.index("resolve")
        parser, words = _resolve_parser(), arguments[at + 1 :]
        if "--debug" in arguments[:at]:
            words.append("--debug")
    hidden = _hidden_words(parser, arguments)
    for each in _all_parsers(parser):
        if isinstance(each, _Parser):  # all are
            each.hidden = hidden
    args = parser.parse_args(words)
    if args.command == "audit" and args.since is None and not args.journal:
        parser.error(
            "audit needs --since WHEN, or --journal PATH to look from its lost submits"
        )
    if args.command == "sandbox":
        return _run_sandbox(args)
    out, err = sys.stdout, sys.stderr
    try:
        _check_connection(args)
        return asyncio.run(_COMMANDS[args.command](args, out, err))
    except KeyboardInterrupt:
        return EXIT_CODES["interrupted"]
    except PixelByteError as exc:
        return _report(exc, args, out, err)
    except OSError as exc:  # a local file or socket: still one line, not a traceback
        return _report(_CLIError(str(exc), family="error"), args, out, err, cause=exc)
