"""
How to carry on after an interruption: the command to run, rebuilt from the options.

`_resume_command` rebuilds a command from the parsed options (never from
``sys.argv``, and never with a secret); `_resume_hint` wraps it in the sentence
printed after Ctrl-C, or says there is nothing to resume under ``--sandbox``.
"""

from __future__ import annotations

import argparse
import decimal
import shlex
from typing import Any

from pixelbyte_async._cmdline import _SECRET_OPTIONS

from ._options import _usd_to_micro_cents
from ._parser_tree import _parser


def _subcommand(name: str) -> argparse.ArgumentParser:
    for action in _parser()._actions:  # noqa: SLF001 -- argparse has no public walk
        if isinstance(action, argparse._SubParsersAction):  # noqa: SLF001 -- (same)
            return action.choices[name]  # type: ignore[no-any-return]
    raise LookupError(name)  # pragma: no cover -- every command has a subparser


def _shown(action: argparse.Action, value: Any) -> str:
    if action.type is _usd_to_micro_cents:
        return f"{decimal.Decimal(value) / 1_000_000:f}"
    return str(value)


def _resume_command(
    args: argparse.Namespace, command: str | None = None, **values: Any
) -> str:
    """
    The command that resumes this one, rebuilt from the parsed options.

    Never from ``sys.argv``: whatever spelling gave the API key (``--api-key KEY``,
    ``--api-key=KEY``, the environment), secret options are left out; the key comes
    from $PIXELBYTE_API_KEY or is given again.

    Args:
        args: The parsed options.
        command: The command to show (default: the one that ran).
        values: Options to set or override (``job=`` for ``wait``).

    """
    name = command or args.command
    given = {**vars(args), **values}
    positionals: list[str] = []
    options: list[str] = []
    for action in _subcommand(name)._actions:  # noqa: SLF001 -- no public walk
        if action.dest in _SECRET_OPTIONS.values() or action.dest not in given:
            continue
        value = given[action.dest]
        if not action.option_strings:
            if value is not None:
                positionals.append(str(value))
            continue
        if value is None or value == action.default:
            continue
        flag = next(  # the option's own long name, not an alias listed after it
            (o for o in action.option_strings if o.startswith("--")),
            action.option_strings[0],
        )
        if action.nargs == 0:  # a switch
            if value is True:
                options.append(flag)
            continue
        for item in value if isinstance(value, list) else [value]:
            text = _shown(action, item)
            options += [f"{flag}={text}"] if text.startswith("-") else [flag, text]
    if any(word.startswith("-") for word in positionals):
        words = [name, *options, "--", *positionals]
    else:
        words = [name, *positionals, *options]
    return shlex.join(["pixelbyte-async", *words])


#: Said instead of a resume hint under --sandbox: a later run starts a new, empty fake.
_SANDBOX_ENDS = (
    "nothing to resume: the --sandbox fake API ends with this process, and its jobs "
    "with it (nothing was charged); run the command again to start over"
)


def _resume_hint(
    args: argparse.Namespace,
    command: str | None = None,
    *,
    doing: str = "resume",
    **values: Any,
) -> str:
    """
    A sentence saying how to carry on after an interruption, that works as printed.

    Under ``--sandbox`` there is nothing to carry on (`_SANDBOX_ENDS`).  A key given
    with ``--api-key`` is never repeated, so the hint asks for $PIXELBYTE_API_KEY.
    *command* and *values* are as for `_resume_command`.
    """
    if args.sandbox:
        return _SANDBOX_ENDS[0].upper() + _SANDBOX_ENDS[1:] + "."
    hint = _resume_command(args, command, **values)
    if args.api_key is not None:
        return (
            "Set PIXELBYTE_API_KEY to your key (--api-key is never shown), then "
            f"{doing} with: {hint}"
        )
    return f"{doing[0].upper()}{doing[1:]} with: {hint}"
