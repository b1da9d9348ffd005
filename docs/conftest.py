"""
Run every Python example in the docs against a `FakePixelByte` (with Sybil).

How a page's examples run, so that the visible code stays what a user would write:

* A page is one session, like a REPL: its blocks run in order, in one namespace and
  on one event loop, in a fresh temporary working directory.
* A `FakePixelByte` serves for the whole page, and `PixelByte()` connects to it:
  the harness fills in ``api_key``, ``base_url`` and ``clock`` (the fake's virtual
  clock, so a 240 s job ends in milliseconds) unless the example passes them.
* The namespace starts with ``pb`` (an open client bound to the fake) and ``fake``,
  for short snippets such as ``job = await pb.submit(...)``.
* Top-level ``await`` works, as in ``python -m asyncio``; ``asyncio.run(x)`` at the
  top level of a block runs *x* on the page's loop instead of a new one, so a full
  program that ends in ``asyncio.run(main())`` runs unchanged.
* Blocks that start with ``>>>`` are doctests (synchronous code only).
* ``__page__.redis_url()`` starts a ``redis-server`` of the page's own (on a free
  port, stopped with the page) for the pages about the Redis hub; without one the
  page is skipped locally and fails under CI, as the hub's tests do.
* ``% skip: next "reason"`` skips the next block (code that needs a bot token, say);
  ``% invisible-code-block: python`` runs setup the reader does not need to see.
* A ``{code-block} python`` captioned ``tests/...`` is a file of pytest tests: it is
  skipped here and run under pytest, with the page's other captioned files, by
  ``tests/test_docs.py``.
* The recipes import the real frameworks they are about (aiogram, discord.py,
  FastAPI, Django: the ``recipes`` dependency group) and drive them offline: no
  stand-ins.  Environment variables a page sets are undone after it.
"""

from __future__ import annotations

import ast
import asyncio
import doctest
import inspect
import os
import sys
import tempfile
import unittest
from pathlib import Path
from typing import Any

import pixelbyte_async
import pytest
from pixelbyte_async.testing import FakePixelByte
from sybil import Example, Sybil
from sybil.evaluators.python import pad
from sybil.parsers.myst import CodeBlockParser, PythonCodeBlockParser, SkipParser


_RealPixelByte = pixelbyte_async.PixelByte

#: Real seconds one block may take before it counts as hung.
BLOCK_TIMEOUT = 20.0


class _AsyncioRunToAwait(ast.NodeTransformer):
    """Turn a top-level ``asyncio.run(x)`` into ``await x`` (functions untouched)."""

    def visit_FunctionDef(self, node: ast.FunctionDef) -> ast.AST:
        return node

    def visit_AsyncFunctionDef(self, node: ast.AsyncFunctionDef) -> ast.AST:
        return node

    def visit_Lambda(self, node: ast.Lambda) -> ast.AST:
        return node

    def visit_Call(self, node: ast.Call) -> ast.AST:
        func = node.func
        if (
            isinstance(func, ast.Attribute)
            and func.attr == "run"
            and isinstance(func.value, ast.Name)
            and func.value.id == "asyncio"
            and len(node.args) == 1
            and not node.keywords
        ):
            return ast.copy_location(ast.Await(value=node.args[0]), node)
        return self.generic_visit(node)


class _Page:
    """One docs page's session: an event loop, a fake, a client and a temp dir."""

    def __init__(self) -> None:
        self.runner = asyncio.Runner()
        self.fake = FakePixelByte()
        self._tmp = tempfile.TemporaryDirectory(prefix="pixelbyte-docs-")
        self._cwd = Path.cwd()
        self._environ = dict(os.environ)
        self.pb: pixelbyte_async.PixelByte | None = None
        self._redis: Any = None

    def redis_url(self) -> str:
        """The URL of a redis-server of this page's own, started on first use."""
        if self._redis is None:
            sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
            try:
                from redis_fixture import RedisServer, require_redis  # noqa: PLC0415
            finally:
                sys.path.pop(0)
            require_redis()
            directory = Path(self._tmp.name) / "redis"
            directory.mkdir()
            server = RedisServer(directory)
            server.start()
            self._redis = server
        return str(self._redis.url)

    def open(self, namespace: dict[str, Any]) -> None:
        os.chdir(self._tmp.name)
        # The page's submits are recorded in a ledger of its own, not the user's.
        os.environ["PIXELBYTE_LEDGER"] = str(
            Path(self._tmp.name) / ".ledger" / "ledger.sqlite3"
        )
        self.runner.run(self.fake.start())
        fake = self.fake

        class PixelByte(_RealPixelByte):
            """`pixelbyte_async.PixelByte`, pointed at the page's fake by default."""

            def __init__(self, **kwargs: Any) -> None:
                kwargs.setdefault("api_key", fake.api_key)
                kwargs.setdefault("base_url", fake.url)
                kwargs.setdefault("clock", fake.clock)
                super().__init__(**kwargs)

        pixelbyte_async.PixelByte = PixelByte  # type: ignore[misc]  # undone in close()
        self.pb = PixelByte()
        # Not "__main__": a page's `if __name__ == "__main__": web.run_app(...)`
        # must not start a server.
        namespace.update(
            __name__="docs_page", __page__=self, pb=self.pb, fake=self.fake
        )

    def run(self, coro: Any) -> Any:
        async def bounded() -> Any:
            async with asyncio.timeout(BLOCK_TIMEOUT):
                return await coro

        return self.runner.run(bounded())

    def close(self) -> None:
        try:
            if self.pb is not None:
                self.runner.run(self.pb.aclose())
            self.runner.run(self.fake.close())
        finally:
            self.runner.close()
            if self._redis is not None:
                self._redis.stop()
            pixelbyte_async.PixelByte = _RealPixelByte  # type: ignore[misc]
            _restore_environ(self._environ)
            os.chdir(self._cwd)
            self._tmp.cleanup()


def _restore_environ(saved: dict[str, str]) -> None:
    """Undo the changes a page made to `os.environ` (and only those)."""
    for key in os.environ.keys() - saved.keys():
        del os.environ[key]
    for key, value in saved.items():
        if os.environ.get(key) != value:
            os.environ[key] = value


def _setup(namespace: dict[str, Any]) -> None:
    _Page().open(namespace)


def _teardown(namespace: dict[str, Any]) -> None:
    namespace["__page__"].close()


def _evaluate(example: Example) -> None:
    """Run one block: top-level ``await`` allowed, ``asyncio.run(x)`` on the page loop."""
    __tracebackhide__ = True
    caption = (example.region.lexemes.get("options") or {}).get("caption", "")
    if caption.startswith("tests/"):
        msg = f"{caption} runs under pytest in tests/test_docs.py"
        raise unittest.SkipTest(msg)
    page: _Page = example.namespace["__page__"]
    source = pad(example.parsed, example.line + example.parsed.line_offset)
    tree = _AsyncioRunToAwait().visit(ast.parse(source, example.path))
    code = compile(
        ast.fix_missing_locations(tree),
        example.path,
        "exec",
        flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT,
        dont_inherit=True,
    )
    if code.co_flags & inspect.CO_COROUTINE:
        page.run(eval(code, example.namespace))  # noqa: S307 -- our own docs
    else:
        exec(code, example.namespace)  # noqa: S102 -- our own docs
    example.namespace.pop("__builtins__", None)


class _PythonBlocks(PythonCodeBlockParser):
    """Python blocks run by `_evaluate`; ``>>>`` blocks stay doctests."""

    def __init__(self) -> None:
        super().__init__(
            doctest_optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE
        )
        self.codeblock_parser = CodeBlockParser("python", _evaluate)


pytest_collect_file = Sybil(
    parsers=[_PythonBlocks(), SkipParser()],
    patterns=["*.md"],
    setup=_setup,
    teardown=_teardown,
).pytest()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    """A skipped example is reported at its line in the page, not inside pytest."""
    del call
    outcome = yield
    report = outcome.get_result()
    example = getattr(item, "example", None)
    if report.skipped and isinstance(report.longrepr, tuple) and example is not None:
        reason = report.longrepr[2]
        report.longrepr = (str(example.path), example.line, reason)
