"""
Stand-ins for the frameworks in the recipes (discord.py, aiogram, FastAPI, Django).

The recipes' framework glue runs in the docs tests against `FakePixelByte` with these
stand-ins installed in `sys.modules`: just the names the recipes use, recording what
the bot or view would have sent.  The real libraries are not dependencies of the SDK;
the glue was also run by hand with discord.py 2.7 and aiogram 3.31.
"""

from __future__ import annotations

import sys
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any


def _identity_decorator(*_args: Any, **_kwargs: Any) -> Callable[[Any], Any]:
    return lambda fn: fn


# -- discord.py -------------------------------------------------------------------------


class _Intents:
    @classmethod
    def default(cls) -> _Intents:
        return cls()


class _Client:
    def __init__(self, *, intents: _Intents) -> None:
        self.intents = intents
        self.closed = False

    async def close(self) -> None:
        self.closed = True

    def run(self, token: str) -> None:  # pragma: no cover -- behind __main__
        raise RuntimeError(f"the stand-in cannot connect to Discord ({len(token)})")


class _CommandTree:
    def __init__(self, client: _Client) -> None:
        self.client = client

    def command(self, **_kwargs: Any) -> Callable[[Any], Any]:
        return lambda fn: fn

    async def sync(self) -> None:
        return None


class Attachment:
    """A stand-in for `discord.Attachment`: just its URL."""

    def __init__(self, url: str) -> None:
        self.url = url


class File:
    """A stand-in for `discord.File` (reads the size at once, as upload would)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.size = self.path.stat().st_size


class _Followup:
    def __init__(self, sent: list[Any]) -> None:
        self._sent = sent

    async def send(self, text: str | None = None, *, file: File | None = None) -> None:
        self._sent.append(file if file is not None else text)


class _Response:
    def __init__(self) -> None:
        self.deferred = False

    async def defer(self, *, thinking: bool = False) -> None:
        self.deferred = thinking or True


class _Guild:
    filesize_limit = 25 * 1024**2


class Interaction:
    """A stand-in for `discord.Interaction` that records what was sent."""

    def __init__(self) -> None:
        self.sent: list[Any] = []
        self.response = _Response()
        self.followup = _Followup(self.sent)
        self.guild = _Guild()


# -- aiogram --------------------------------------------------------------------------


class _Dispatcher:
    def message(self, *_filters: Any) -> Callable[[Any], Any]:
        return lambda fn: fn

    async def start_polling(self, *_a: Any, **_k: Any) -> None:  # pragma: no cover
        raise RuntimeError("the stand-in cannot reach Telegram")


class Message:
    """A stand-in for `aiogram.types.Message` that records the answers."""

    def __init__(self) -> None:
        self.answers: list[Any] = []

    async def answer(self, text: str) -> None:
        self.answers.append(text)

    async def answer_video(self, video: Any, caption: str | None = None) -> None:
        self.answers.append(video)
        self.caption = caption


class CommandObject:
    """A stand-in for `aiogram.filters.CommandObject`."""

    def __init__(self, args: str | None) -> None:
        self.args = args


class FSInputFile:
    """A stand-in for `aiogram.types.FSInputFile` (reads the size at once)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.size = self.path.stat().st_size


# -- FastAPI and Django ---------------------------------------------------------------


class _FastAPI:
    def post(self, _path: str) -> Callable[[Any], Any]:
        return lambda fn: fn


class Request:
    """A stand-in for a Starlette/FastAPI request: raw body and headers."""

    def __init__(self, body: bytes, headers: dict[str, str]) -> None:
        self._body = body
        self.headers = headers

    async def body(self) -> bytes:
        return self._body


class Response:
    """A stand-in for a Starlette/FastAPI response."""

    def __init__(self, status_code: int = 200) -> None:
        self.status_code = status_code


class HttpResponse:
    """A stand-in for `django.http.HttpResponse`."""

    def __init__(self, status: int = 200) -> None:
        self.status_code = status


class DjangoRequest:
    """A stand-in for a Django request: ``body`` bytes and ``headers``."""

    def __init__(self, body: bytes, headers: dict[str, str]) -> None:
        self.body = body
        self.headers = headers


def _module(name: str, **attrs: Any) -> types.ModuleType:
    module = types.ModuleType(name)
    for key, value in attrs.items():
        setattr(module, key, value)
    return module


def _modules(framework: str) -> dict[str, types.ModuleType]:
    if framework == "discord":
        app_commands = _module(
            "discord.app_commands",
            CommandTree=_CommandTree,
            describe=_identity_decorator,
        )
        return {
            "discord": _module(
                "discord",
                Client=_Client,
                Intents=_Intents,
                Interaction=Interaction,
                Attachment=Attachment,
                File=File,
                app_commands=app_commands,
            ),
            "discord.app_commands": app_commands,
        }
    if framework == "aiogram":
        return {
            "aiogram": _module("aiogram", Bot=object, Dispatcher=_Dispatcher),
            "aiogram.filters": _module(
                "aiogram.filters",
                Command=lambda name: name,
                CommandObject=CommandObject,
            ),
            "aiogram.types": _module(
                "aiogram.types", FSInputFile=FSInputFile, Message=Message
            ),
        }
    if framework == "fastapi":
        return {
            "fastapi": _module(
                "fastapi", FastAPI=_FastAPI, Request=Request, Response=Response
            )
        }
    if framework == "django":
        csrf = _module("django.views.decorators.csrf", csrf_exempt=lambda fn: fn)
        return {
            "django": _module("django"),
            "django.http": _module("django.http", HttpResponse=HttpResponse),
            "django.views": _module("django.views"),
            "django.views.decorators": _module("django.views.decorators"),
            "django.views.decorators.csrf": csrf,
        }
    raise ValueError(f"no stand-in for {framework!r}")


def install(framework: str) -> None:
    """Put the stand-in for *framework* into `sys.modules` (unless the real one is)."""
    for name, module in _modules(framework).items():
        sys.modules.setdefault(name, module)


def uninstall(framework: str) -> None:
    """Remove the stand-in for *framework* from `sys.modules` (never the real one)."""
    for name, module in _modules(framework).items():
        current = sys.modules.get(name)
        if (
            current is not None
            and type(current) is type(module)
            and (getattr(current, "__file__", None) is None)
        ):
            del sys.modules[name]
