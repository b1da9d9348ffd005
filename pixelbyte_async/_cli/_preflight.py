"""
What a command refuses before it sends anything or pays for anything.

`_check_connection`: a malformed ``$PIXELBYTE_BASE_URL`` or a missing API key;
`_check_output_file` and `_check_output_dir`: an output place that could not be
written.  Each failure is one line with its exit code.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from pixelbyte_async._cmdline import _CLIError
from pixelbyte_async._config import clean_key
from pixelbyte_async._errors import ValidationError

from ._options import _base_url_problem


#: Commands that never need an API key: the public catalogue, and (with --local) the
#: SDK's price table.  ``webhook`` and ``sandbox`` take no API options at all.
_KEYLESS = frozenset({"models"})


def _check_connection(args: argparse.Namespace) -> None:
    """
    Refuse, before anything is printed or sent, what cannot reach the API.

    A malformed ``$PIXELBYTE_BASE_URL`` (``--base-url`` is checked while parsing) is
    a usage error; a missing key an auth error that names both ways to give one.
    """
    if not hasattr(args, "sandbox") or args.sandbox:
        return  # webhook commands talk to no API; the sandbox brings its own
    if args.base_url is None:
        env_url = os.environ.get("PIXELBYTE_BASE_URL")
        problem = None if not env_url else _base_url_problem(env_url)
        if problem is not None:
            raise _CLIError(
                f"$PIXELBYTE_BASE_URL {problem}; fix or unset it, or pass --base-url",
                family="usage",
            )
    if args.command in _KEYLESS or (args.command == "estimate" and args.local):
        return
    key = (
        args.api_key
        if args.api_key is not None
        else os.environ.get("PIXELBYTE_API_KEY")
    )
    try:
        key = clean_key(key)
    except ValidationError as exc:
        where = "--api-key" if args.api_key is not None else "$PIXELBYTE_API_KEY"
        raise _CLIError(f"{where}: {exc}", family="auth") from None
    if not key:
        raise _CLIError(
            "no API key: set PIXELBYTE_API_KEY (or pass --api-key, which other "
            "local users can see); --sandbox needs none",
            family="auth",
        )


def _check_output_file(path: Path, option: str) -> None:
    """
    Refuse an output file that could not be written, before anything is paid for.

    The download creates missing directories, so the nearest existing one must be a
    writable directory; the file itself must not be a directory.
    """
    if path.is_dir():
        raise ValidationError(
            f"{option} {path} is a directory; give a file name such as "
            f"{path / 'video.mp4'}",
            field="output",
        )
    _check_writable_place(path.parent, option, path)


def _check_output_dir(path: Path, option: str) -> None:
    """Refuse an output directory that could not be created or written."""
    if path.exists() and not path.is_dir():
        raise ValidationError(
            f"{option} {path} is a file, not a directory; give a directory "
            "(it is created if missing)",
            field="out",
        )
    _check_writable_place(path, option, path)


def _check_writable_place(directory: Path, option: str, given: Path) -> None:
    existing = directory.absolute()
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise ValidationError(
            f"cannot write {option} {given}: {existing} is a file, not a directory",
            field="output",
        )
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ValidationError(
            f"cannot write {option} {given}: {existing} is not writable; choose "
            "another place",
            field="output",
        )
