"""
A chat-bot recipe's bot in a process of its own, for ``tests/test_recipes_bots.py``.

``python tests/recipe_bot_process.py telegram|discord [--wait] [ARGS]`` runs the bot
of ``docs/recipes/<name>.md`` offline, against the API of ``$PIXELBYTE_BASE_URL``
(a `FakePixelByte`) with the ledger of ``$PIXELBYTE_LEDGER``:

* **telegram**: the page's own ``main()``, its ``Bot`` given the page's
  ``RecordingSession``, which here also answers ``getMe``, and ``getUpdates`` with
  the update of ``/transition ARGS`` (once, if *ARGS* are given);
* **discord**: the page's ``TransitionBot`` with its ``RecordingHTTP``, started as
  ``login()`` starts it (``setup_hook``), then ``/transition ARGS`` through its
  command tree if *ARGS* are given.

Every message the bot sends is printed as ``sent LINE`` as it is sent.  With
``--wait`` the process loads everything, prints ``ready`` and starts the bot only
once a line comes on stdin (aiogram takes seconds to import: a test starts the next
bot early).  It runs until killed.

`load_recipe` and `run_until_handled`, which ``test_recipes_bots.py`` and
``test_recipes_web.py`` use too, live here, so that this process needs nothing of
pytest.
"""

from __future__ import annotations

import ast
import asyncio
import inspect
import os
import re
import sys
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio


if TYPE_CHECKING:
    from pixelbyte_async import PixelByte
    from pixelbyte_async.testing import FakePixelByte


RECIPES = Path(__file__).parent.parent / "docs" / "recipes"
_BLOCK = re.compile(r"^```python\n(?P<code>.*?)^```$", re.MULTILINE | re.DOTALL)
TOKEN = "123456:not-a-real-token"


def python_blocks(page: Path) -> list[tuple[int, str]]:
    """Return ``(first line, code)`` of every visible Python block of *page*."""
    text = page.read_text()
    return [
        (text.count("\n", 0, match.start("code")), match["code"])
        for match in _BLOCK.finditer(text)
    ]


def load_recipe(name: str, namespace: dict[str, Any] | None = None) -> dict[str, Any]:
    """
    Run the definitions of ``docs/recipes/<name>.md`` in *namespace* (a fresh one).

    Blocks that need no top-level ``await`` are the recipe's code and its test
    doubles; the others are examples of use, which the docs tests run.
    """
    page = RECIPES / f"{name}.md"
    namespace = {} if namespace is None else namespace
    namespace.setdefault("__name__", f"recipe_{name}")
    with warnings.catch_warnings():
        # discord.py imports the stdlib's audioop, deprecated in Python 3.11 and 3.12.
        warnings.filterwarnings("ignore", "'audioop' is deprecated", DeprecationWarning)
        for line, code in python_blocks(page):
            compiled = compile(
                "\n" * line + code,  # tracebacks point into the page
                str(page),
                "exec",
                flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT,
                dont_inherit=True,
            )
            if not compiled.co_flags & inspect.CO_COROUTINE:
                exec(compiled, namespace)  # noqa: S102 -- our own docs
    return namespace


async def run_until_handled(
    fake: FakePixelByte, pb: PixelByte, *, step: float = 30.0, timeout: float = 10.0
) -> None:
    """
    Move the fake's clock on until the ledger has no tracked job left to handle.

    The tests run on a clock that moves only when told (``autojump=False``): on an
    autojump clock, the SDK's scan for orphaned jobs after ``resume()`` would move
    time on all the time.
    """
    with anyio.fail_after(timeout):
        while await pb.ledger.tracked():
            fake.advance(step)
            await asyncio.sleep(0.005)


class Printed(list[str]):
    """A log that prints each line as it is added (the test reads them)."""

    def append(self, line: str) -> None:
        super().append(line)
        sys.stdout.write(f"sent {line}\n")
        sys.stdout.flush()


def telegram(args: str | None) -> Any:
    """The Telegram page's ``main()``, with a bot that polls a recording session."""
    ns = load_recipe("telegram")
    from aiogram.methods import GetMe, GetUpdates
    from aiogram.types import User

    updates = [] if args is None else [ns["command"](f"/transition {args}")]

    class PollingSession(ns["RecordingSession"]):
        """The page's session, answering getMe and getUpdates as Telegram would."""

        async def make_request(self, bot: Any, method: Any, timeout: Any = None) -> Any:
            if isinstance(method, GetMe):
                return User(id=bot.id, is_bot=True, first_name="Transitions")
            if isinstance(method, GetUpdates):
                if updates:
                    return [updates.pop()]
                await asyncio.sleep(0.2)  # a long poll that found nothing
                return []
            return await super().make_request(bot, method, timeout)

    session = PollingSession()
    session.log = Printed()

    class OfflineBot(ns["Bot"]):
        def __init__(self, token: str, **kwargs: Any) -> None:
            super().__init__(token, session=session, **kwargs)

    ns["Bot"] = OfflineBot  # what the page's main() makes
    os.environ["TELEGRAM_BOT_TOKEN"] = TOKEN
    return ns["main"]


def discord(args: str | None) -> Any:
    """The Discord page's bot, started as login() starts it, offline."""
    ns = load_recipe("discord")

    async def run() -> None:
        async with ns["PixelByte"]() as pb, ns["TransitionBot"](pb) as bot:
            ns["offline"](bot).log = Printed()
            await bot.setup_hook()  # what login() runs
            if args is not None:
                start, end, *prompt = args.split(maxsplit=2)
                interaction = ns["RecordingInteraction"](bot)
                interaction.sent = Printed()
                await bot.tree.get_command("transition").callback(
                    interaction,
                    ns["attachment"](bot, start),
                    ns["attachment"](bot, end),
                    prompt[0] if prompt else None,
                )
            await asyncio.sleep(3600)

    return run


def main() -> None:
    name, *rest = sys.argv[1:]
    wait = "--wait" in rest
    args = [a for a in rest if a != "--wait"]
    run = {"telegram": telegram, "discord": discord}[name](args[0] if args else None)
    if wait:
        sys.stdout.write("ready\n")
        sys.stdout.flush()
        sys.stdin.readline()
    asyncio.run(run())


if __name__ == "__main__":
    main()
