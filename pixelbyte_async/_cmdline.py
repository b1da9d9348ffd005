"""
Command-line plumbing shared by the CLI and the sandbox process.

``pixelbyte-async`` and ``python -m pixelbyte_async.testing`` are two programs with
one exit-code table (`EXIT_CODES`, documented in ``--help``; no two programs give one
code two meanings), one `_CLIError`, one way to print a failure on one line, the
checked numeric option types, `_Parser` (no abbreviations, no secret in a usage
error) and ``--debug``.  It imports only `_errors`, so the fake's process module and
the CLI both build on it without importing each other.
"""

from __future__ import annotations

import argparse
import errno
import math
import traceback
from collections.abc import Callable, Sequence
from typing import Any, NoReturn, TextIO

from pixelbyte_async._errors import PixelByteError


#: Exit codes per error family (documented in ``--help``): the CLI's and the sandbox
#: process's (one table, so no two programs give one code two meanings).
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
    "budget": 10,
    "needs_attention": 11,
    "not_found": 12,
    "journal": 13,
    "webhook_invalid": 14,
    "cannot_listen": 15,
    "interrupted": 130,
}


class _CLIError(PixelByteError):
    """A failure the command line finds itself, reported under *family*'s exit code."""

    def __init__(self, message: str, *, family: str) -> None:
        super().__init__(message)
        self.family = family


def _print_error(
    exc: BaseException,
    args: argparse.Namespace,
    err: TextIO,
    *,
    cause: BaseException | None = None,
) -> None:
    """The one line of an error on *err*; under ``--debug``, its traceback first."""
    if getattr(args, "debug", False):
        traceback.print_exception(cause or exc, file=err)
    print(f"error: {exc}", file=err)


def _cannot_listen(
    exc: OSError, *, host: str, port: int, option: str, host_option: str
) -> _CLIError:
    """One line for a server that could not bind: where, why and what to do."""
    reason = (exc.strerror or str(exc)).rsplit(": ", 1)[-1]
    if exc.errno in {errno.EADDRINUSE, errno.EACCES}:
        todo = f"choose another port with {option} (0: any free one)"
    else:
        todo = f"check the host given with {host_option}"
    where = f"[{host}]" if ":" in host else host
    return _CLIError(
        f"cannot listen on {where}:{port}: {reason}; {todo}", family="cannot_listen"
    )


# -- option types and parsing -----------------------------------------------------


def _float_type(*, minimum: float, inclusive: bool) -> Callable[[str], float]:
    """An argparse type: a finite number above (or at least) *minimum*."""
    rule = f">= {minimum:g}" if inclusive else f"> {minimum:g}"

    def parse(value: str) -> float:
        try:
            number = float(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {value!r}") from None
        if not math.isfinite(number) or not (
            number >= minimum if inclusive else number > minimum
        ):
            raise argparse.ArgumentTypeError(f"must be a number {rule}, got {value!r}")
        return number

    return parse


def _int_type(*, minimum: int, maximum: int | None = None) -> Callable[[str], int]:
    """An argparse type: a whole number in [*minimum*, *maximum*]."""
    rule = f">= {minimum}" if maximum is None else f"{minimum}..{maximum}"

    def parse(value: str) -> int:
        try:
            number = int(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a whole number: {value!r}") from None
        if number < minimum or (maximum is not None and number > maximum):
            raise argparse.ArgumentTypeError(f"must be {rule}, got {value!r}")
        return number

    return parse


# Every numeric option takes one of these (a test checks it): durations, rates and
# scales are > 0; a grace period, a tolerance or a Unix time may be 0.
_positive = _float_type(minimum=0, inclusive=False)
_non_negative = _float_type(minimum=0, inclusive=True)
_count = _int_type(minimum=1)
_micro_cents = _int_type(minimum=0)
_port = _int_type(minimum=0, maximum=65535)


class _Parser(argparse.ArgumentParser):
    """
    argparse with no abbreviated options and one-line usage errors.

    ``--api KEY`` must not pass as ``--api-key KEY``: every option is spelt in
    full, so nothing can reach a secret-bearing option by another name.
    Subparsers are of this class too (argparse uses the parent's class).  An
    error message never repeats a word that may be a secret (see `_hidden_words`).
    """

    hidden: frozenset[str] = frozenset()

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs["allow_abbrev"] = False
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        for word in self.hidden:
            message = message.replace(word, "***")
        self.exit(
            EXIT_CODES["usage"],
            f"{self.prog}: error: {message} (see {self.prog} --help)\n",
        )


def _all_parsers(parser: argparse.ArgumentParser) -> list[argparse.ArgumentParser]:
    """*parser* and every subparser under it."""
    found = [parser]
    for action in parser._actions:  # noqa: SLF001 -- argparse has no public walk
        if isinstance(action, argparse._SubParsersAction):  # noqa: SLF001 -- (same)
            for sub in action.choices.values():
                found += _all_parsers(sub)
    return found


#: Options whose values are secrets: never printed, not even in a resume hint.
_SECRET_OPTIONS = {"--api-key": "api_key", "--webhook-secret": "webhook_secret"}


def _is_number(word: str) -> bool:
    try:
        float(word)
    except ValueError:
        return False
    return True


def _hidden_words(
    parser: argparse.ArgumentParser, words: Sequence[str]
) -> frozenset[str]:
    """
    The words of *words* that a usage error must not repeat.

    The value of a secret option, and of any option that is not ours (a typo or an
    abbreviation such as ``--api-ke KEY``, or ``--api-key`` given to a command that
    does not take it): it may be a key.  Short words are left alone, so messages
    stay readable (no key is that short).
    """
    known = {
        option
        for each in _all_parsers(parser)
        for action in each._actions  # noqa: SLF001 -- argparse has no public walk
        for option in action.option_strings
    }
    hidden: set[str] = set()
    for n, word in enumerate(words):
        if word == "--":
            break
        if not word.startswith("-") or _is_number(word):
            continue
        name, equals, value = word.partition("=")
        if name in _SECRET_OPTIONS or name not in known:
            if not equals and n + 1 < len(words):
                value = words[n + 1]
            hidden.add(value)
    return frozenset(word for word in hidden if len(word) >= 6)  # noqa: PLR2004 -- see above


def _debug_option(add_argument: Callable[..., Any], *, top: bool) -> None:
    # Accepted before and after the command; a subcommand's copy never resets it.
    add_argument(
        "--debug",
        action="store_true",
        default=False if top else argparse.SUPPRESS,
        help="on an error, also print its traceback",
    )
