"""
Start-up stays light (issue 25): what is imported, never how long it takes.

``import pixelbyte_async`` and the command line's ``--help`` and usage errors import
no aiohttp: the client and its transport load with the first of their names, and a
command's module when that command runs.  Checked in fresh interpreters with
``python -X importtime``, which lists every module imported; no timing is asserted
(these machines are noisy: ``bench/bench_import.py`` measures).
"""

from __future__ import annotations

import asyncio
import importlib
import re
import subprocess
import sys

import pytest


HEAVY = ("aiohttp", "pixelbyte_async._client", "pixelbyte_async._transport")


def imported_modules(*args: str) -> tuple[set[str], subprocess.CompletedProcess[str]]:
    """Every module ``python -X importtime *args`` imports, and the run itself."""
    done = subprocess.run(  # noqa: S603 -- our own interpreter and arguments
        [sys.executable, "-X", "importtime", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    names = {
        match[1]
        for match in re.finditer(
            r"^import time:\s+\d+ \|\s+\d+ \|\s*(\S+)$", done.stderr, re.MULTILINE
        )
    }
    assert "pixelbyte_async" in names, done.stderr[-2000:]  # importtime did list them
    return names, done


def heavy(names: set[str]) -> list[str]:
    """The client's modules and aiohttp's among *names*."""
    return sorted(
        n for n in names if any(n == h or n.startswith(f"{h}.") for h in HEAVY)
    )


@pytest.mark.parametrize(
    ("argv", "code"),
    [
        (["--help"], 0),
        (["transition", "--help"], 0),
        (["batch", "--help"], 0),
        (["batch", "resolve", "--help"], 0),
        (["jobs", "tracked", "--help"], 0),
        (["audit", "--help"], 0),
        (["webhook", "listen", "--help"], 0),
        (["sandbox", "--help"], 0),
        (["transition", "--no-such-option"], 2),
        (["no-such-command"], 2),
        ([], 2),
        (["audit"], 2),  # needs --since or --journal: refused after parsing
        (["jobs", "--limit", "0"], 2),
    ],
    ids=lambda value: " ".join(value) if isinstance(value, list) else str(value),
)
def test_help_and_usage_errors_import_no_aiohttp(argv, code):
    """``pixelbyte-async [COMMAND] --help`` and a usage error never load the client."""
    names, done = imported_modules("-m", "pixelbyte_async", *argv)
    assert done.returncode == code, done.stderr[-2000:]
    if code == 0:
        assert "usage: pixelbyte-async" in done.stdout
    else:
        assert "error:" in done.stderr
    assert heavy(names) == []
    assert "asyncio" not in names  # nor an event loop: nothing runs


def test_import_pixelbyte_async_imports_no_aiohttp():
    """The package imports quickly; `PixelByte` still resolves, and then aiohttp loads."""
    code = (
        "import sys\n"
        "import pixelbyte_async\n"
        f"heavy = [m for m in {HEAVY!r} if m in sys.modules]\n"
        "assert not heavy, heavy\n"
        "assert 'PixelByte' in dir(pixelbyte_async)\n"
        "from pixelbyte_async import PixelByte\n"
        "from pixelbyte_async._client import PixelByte as Real\n"
        "assert PixelByte is Real is pixelbyte_async.PixelByte\n"
        "assert 'aiohttp' in sys.modules\n"
    )
    names, done = imported_modules("-c", code)
    assert done.returncode == 0, done.stderr[-2000:]


def test_every_export_resolves_after_a_bare_import():
    """Each name of ``__all__`` resolves (lazily or not) and is listed by dir()."""
    code = (
        "import pixelbyte_async as p\n"
        "missing = [n for n in p.__all__ if n not in dir(p)]\n"
        "assert not missing, missing\n"
        "for name in p.__all__:\n"
        "    assert getattr(p, name) is not None, name\n"
        "from pixelbyte_async import *\n"
        "assert PixelByte is p.PixelByte and MockTransport is p.MockTransport\n"
    )
    done = subprocess.run(  # noqa: S603 -- our own interpreter and code
        [sys.executable, "-c", code], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr[-2000:]


def test_the_cli_imports_no_command_module_until_one_runs():
    """Importing the CLI loads its parser only; each command names a real coroutine."""
    code = (
        "import sys\n"
        "from pixelbyte_async import _cli\n"
        "parser = _cli._parser()\n"
        "loaded = [m for m in sys.modules if m.endswith(('_command', '_commands'))]\n"
        "assert not loaded, loaded\n"
        f"heavy = [m for m in {HEAVY!r} if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    done = subprocess.run(  # noqa: S603 -- our own interpreter and code
        [sys.executable, "-c", code], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr[-2000:]


def test_every_command_is_in_the_table_and_imports():
    """`_COMMANDS` has every command of the parser (but ``sandbox``), each importable."""
    from pixelbyte_async import _cli

    parser = _cli._parser()
    (sub,) = [a for a in parser._actions if a.dest == "command"]
    batch_words = set(_cli._BATCH_SUBCOMMANDS)  # 'batch resolve', 'batch report'
    assert set(_cli._COMMANDS) == (set(sub.choices) - {"sandbox"}) | batch_words
    assert set(_cli._COMMAND_HOMES) == set(_cli._COMMANDS)
    for word, (module, name) in _cli._COMMAND_HOMES.items():
        run = getattr(importlib.import_module(module, "pixelbyte_async._cli"), name)
        assert asyncio.iscoroutinefunction(run), word
        assert _cli._COMMANDS[word].__name__ == name
