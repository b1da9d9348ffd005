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

Start-up stays light: the parser is built from light modules only (``_cmdline``,
``_options``, ``_fake._options``), and a command's module, which imports the client
and aiohttp, is imported only when that command runs, so ``--help`` and a usage
error print at once.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Coroutine, Sequence
from importlib import import_module
from typing import Any, TextIO

from pixelbyte_async._cmdline import (
    EXIT_CODES,
    _all_parsers,
    _CLIError,
    _hidden_words,
    _Parser,
)
from pixelbyte_async._errors import PixelByteError

from ._parser_tree import _parser, _report_parser, _resolve_parser
from ._preflight import _check_connection


__all__ = ["EXIT_CODES", "main"]


_Command = Callable[[argparse.Namespace, TextIO, TextIO], Coroutine[Any, Any, int]]


#: Where each command's coroutine lives: ``(module, name)``, imported when it runs.
_COMMAND_HOMES: dict[str, tuple[str, str]] = {
    "transition": ("._transition_command", "_transition"),
    "batch": ("._batch_command", "_batch"),
    "status": ("._job_commands", "_status"),
    "wait": ("._transition_command", "_wait"),
    "cancel": ("._job_commands", "_cancel"),
    "estimate": ("._job_commands", "_estimate"),
    "jobs": ("._job_commands", "_jobs"),
    "models": ("._job_commands", "_models"),
    "audit": ("._audit_command", "_audit"),
    "resolve": ("._resolve_command", "_resolve"),
    "report": ("._report_command", "_report_command"),
    "webhook": ("._webhook_commands", "_webhook"),
}


def _on_demand(module: str, name: str) -> _Command:
    """
    The command *name* of *module*, imported when it is called.

    Only the parser is imported up front: ``--help`` and a usage error never load
    the client (nor aiohttp); the one command that runs loads its own module.
    """

    def command(
        args: argparse.Namespace, out: TextIO, err: TextIO
    ) -> Coroutine[Any, Any, int]:
        run: _Command = getattr(import_module(module, __name__), name)
        return run(args, out, err)

    command.__name__ = command.__qualname__ = name
    command.__doc__ = f"``{module}.{name}``, imported on first use."
    return command


#: The command table (tests replace entries): each runs its module's coroutine.
_COMMANDS: dict[str, _Command] = {
    word: _on_demand(*home) for word, home in _COMMAND_HOMES.items()
}


#: ``batch WORD ...`` commands with a parser of their own.
_BATCH_SUBCOMMANDS = {"resolve": _resolve_parser, "report": _report_parser}


def _batch_subcommand(arguments: list[str]) -> str | None:
    """``resolve`` or ``report`` for ``[--debug] batch resolve|report ...``."""
    words = [w for w in arguments if w != "--debug"]
    if words[:1] == ["batch"] and words[1:2] and words[1] in _BATCH_SUBCOMMANDS:
        return words[1]
    return None


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI and return its exit code."""
    arguments = list(sys.argv[1:] if argv is None else argv)
    parser, words = _parser(), arguments
    subcommand = _batch_subcommand(arguments)
    if subcommand is not None:
        # 'batch resolve ROW ...': 'batch' itself takes a file name first.
        at = arguments.index(subcommand)
        parser, words = _BATCH_SUBCOMMANDS[subcommand](), arguments[at + 1 :]
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
    # Past parsing: what runs is imported now (the client, aiohttp, asyncio's loop).
    if args.command == "sandbox":
        from pixelbyte_async._fake._process import _run_sandbox  # noqa: PLC0415 -- only to serve

        return _run_sandbox(args)
    import asyncio  # noqa: PLC0415 -- not needed to print help

    from ._output import _report  # noqa: PLC0415 -- its error table imports batches

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
