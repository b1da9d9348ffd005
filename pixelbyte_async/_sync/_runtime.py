"""
The machinery behind `SyncPixelByte`: one `PixelByte` on one event loop in one thread.

`SyncRuntime` starts a daemon thread running an asyncio loop and anyio's
`~anyio.from_thread.BlockingPortal` (the portal of
`anyio.from_thread.start_blocking_portal`), creates and enters the async client
there, and runs every call of the facade as a task of that portal while the calling
thread blocks.  Everything the SDK promises (deadlines, the ledger, job slots, the
settle horizon) lives in the async client; this module only carries calls across.

The thread is started here as ``start_blocking_portal`` starts its own, because that
context manager joins its thread without a time limit on exit: closing at
interpreter exit (for a client nobody closed) must never hang, so every step of the
shutdown here has a deadline.
"""

from __future__ import annotations

import asyncio
import atexit
import functools
import logging
import os
import threading
import warnings
from collections.abc import Awaitable, Callable
from concurrent.futures import CancelledError, Future
from typing import TYPE_CHECKING, Any, Literal, TypeVar

import anyio
from anyio.from_thread import BlockingPortal

from pixelbyte_async._client import PixelByte
from pixelbyte_async._errors import ClientClosedError, EventLoopMismatch


if TYPE_CHECKING:
    from pixelbyte_async._config import ClientConfig


__all__ = ["CLOSE_TIMEOUT", "STOP_TIMEOUT", "SyncRuntime", "refuse_in_loop"]

log = logging.getLogger("pixelbyte_async")

T = TypeVar("T")

#: Seconds the async client's ``aclose`` may take when the facade closes.
CLOSE_TIMEOUT = 10.0
#: Seconds the loop thread may then take to stop (tasks cancelled, loop closed).
STOP_TIMEOUT = 5.0


def refuse_in_loop(what: str) -> None:
    """
    Raise `EventLoopMismatch` if this thread runs an event loop: never block it.

    Blocking a running loop's thread stalls everything on that loop, and deadlocks
    when the call needs that loop (the client's own loop, or a session borrowed
    from it).  Checked before anything blocks.
    """
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return
    raise EventLoopMismatch(
        f"SyncPixelByte.{what}() blocks its thread, and this thread is running an "
        "event loop (is this an 'async def'?): blocking it would stall that loop, "
        "or deadlock.  In async code use PixelByte instead: "
        "'async with PixelByte() as pb: job = await pb.submit(...)'"
    )


def _serve(ready: Future[BlockingPortal], abandoned: threading.Event) -> None:
    """The loop thread: run a blocking portal until it is stopped."""

    async def main() -> None:
        async with BlockingPortal() as portal:
            ready.set_result(portal)
            if not abandoned.is_set():
                await portal.sleep_until_stopped()

    try:
        anyio.run(main, backend="asyncio")
    except BaseException as exc:  # noqa: BLE001 -- handed to the thread that waits for it
        if not ready.done():
            ready.set_exception(exc)
        else:
            log.debug("the SyncPixelByte loop thread ended with %r", exc)


async def _open_client(kwargs: dict[str, Any]) -> PixelByte:
    """Create and enter the async client, on the loop it will belong to."""
    client = PixelByte(**kwargs)
    try:
        await client.__aenter__()
    except BaseException:
        await client.aclose()
        raise
    return client


class SyncRuntime:
    """
    A loop thread, its portal and the `PixelByte` living there; see `SyncPixelByte`.

    Thread-safe: any thread may `call` at any time; `close` may race with calls
    (they then raise `ClientClosedError`) and with itself.
    """

    def __init__(self, client_kwargs: dict[str, Any], *, name: str) -> None:
        self._pid = os.getpid()
        self._lock = threading.Lock()
        self._state: Literal["open", "closing", "closed"] = "open"
        self._closed = threading.Event()
        self._shutdown_task: asyncio.Task[None] | None = None
        ready: Future[BlockingPortal] = Future()
        abandoned = threading.Event()
        self._thread = threading.Thread(
            target=_serve, args=(ready, abandoned), name=name, daemon=True
        )
        self._thread.start()
        try:
            self._portal = ready.result()
        except BaseException:
            abandoned.set()  # interrupted while starting: let the thread end
            raise
        try:
            self.client: PixelByte = self._wait(
                self._portal.start_task_soon(_open_client, client_kwargs)
            )
        except BaseException:
            self._stop_loop()
            raise
        _OPEN.add(self)

    # -- calls ---------------------------------------------------------------------

    @property
    def config(self) -> ClientConfig:
        """The async client's configuration (immutable)."""
        return self.client.config

    @property
    def closed(self) -> bool:
        """Whether it was closed, or belongs to another process (before a fork)."""
        return self._state != "open" or self.client.closed or os.getpid() != self._pid

    def call(self, func: Callable[[], Awaitable[T]], *, what: str) -> T:
        """
        Run ``await func()`` on the loop and block this thread until it is done.

        The result or exception is handed over unchanged.  If this thread is
        interrupted (Ctrl-C), the task is cancelled on the loop and the interrupt
        goes on; the loop keeps serving other calls.

        Raises:
            EventLoopMismatch: This thread runs an event loop.
            ClientClosedError: The client is closed, or was closed during the call.

        """
        refuse_in_loop(what)
        self._check_usable(what)
        try:
            future = self._portal.start_task_soon(func, name=f"SyncPixelByte.{what}")
        except RuntimeError as exc:  # the portal stopped since the check
            raise self._closed_error(what) from exc
        return self._wait(future, what=what)

    def _wait(self, future: Future[T], *, what: str = "__init__") -> T:
        try:
            return future.result()
        except CancelledError:
            # Only the portal's shutdown cancels a call's task (see `close`).
            raise self._closed_error(what) from None
        except BaseException:
            # KeyboardInterrupt, SystemExit ... in *this* thread: cancel the task (a
            # wait stops polling, as when an awaiting task is cancelled; the paid job
            # goes on).  A no-op when the exception is the call's own.
            future.cancel()
            raise

    def _check_usable(self, what: str) -> None:
        if os.getpid() != self._pid:
            raise ClientClosedError(
                f"SyncPixelByte.{what}(): this client was created in another process "
                "(before a fork) and its loop thread does not exist here; create "
                "one per process, on first use in that process"
            )
        if self._state != "open":
            raise self._closed_error(what)

    @staticmethod
    def _closed_error(what: str) -> ClientClosedError:
        return ClientClosedError(
            f"SyncPixelByte.{what}(): this client is closed; create a new one "
            "(use 'with SyncPixelByte() as pb:')"
        )

    # -- shutdown ------------------------------------------------------------------

    def close(self) -> None:
        """
        Close the async client, then stop the loop and its thread; idempotent.

        Every step has a deadline (`CLOSE_TIMEOUT`, then `STOP_TIMEOUT`), so this
        never hangs; calls still running are cancelled and raise
        `ClientClosedError` in their threads.  A second caller waits for the first.
        """
        with self._lock:
            state, self._state = self._state, "closing"
        if state != "open":
            if state == "closing" and not self._in_loop_thread():
                self._closed.wait(CLOSE_TIMEOUT + 2 * STOP_TIMEOUT)
            return
        try:
            if os.getpid() != self._pid:
                return  # a forked child: the loop thread is the parent's
            if self._in_loop_thread():
                # Collected on the loop itself, which cannot wait for itself.
                self._shutdown_soon()
                return
            self._close_from_outside()
        finally:
            self._state = "closed"
            self._closed.set()
            _OPEN.discard(self)

    def _in_loop_thread(self) -> bool:
        return threading.get_ident() == self._thread.ident

    def _close_from_outside(self) -> None:
        try:
            future = self._portal.start_task_soon(self._aclose_client)
        except RuntimeError:  # the loop is gone already
            return
        try:
            future.result(CLOSE_TIMEOUT + STOP_TIMEOUT)
        except Exception:  # closing goes on; logged
            log.warning("SyncPixelByte: closing the client failed", exc_info=True)
        self._stop_loop()

    async def _aclose_client(self) -> None:
        with anyio.move_on_after(CLOSE_TIMEOUT):
            await self.client.aclose()

    def _shutdown_soon(self) -> None:
        """Close from the loop thread: schedule the shutdown, wait for nothing."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # the loop is being torn down: it stops by itself
            return
        self._shutdown_task = loop.create_task(self._shutdown_here())

    async def _shutdown_here(self) -> None:
        await self._aclose_client()
        await self._portal.stop(cancel_remaining=True)

    def _stop_loop(self) -> None:
        """Stop the portal (cancelling what still runs) and join the thread, bounded."""
        try:
            stop = functools.partial(self._portal.stop, cancel_remaining=True)
            self._portal.start_task_soon(stop).result(STOP_TIMEOUT)
        except RuntimeError:
            pass  # stopped already
        except Exception:  # a wedged loop must not hang the caller
            log.warning("SyncPixelByte: its event loop did not stop", exc_info=True)
        self._thread.join(STOP_TIMEOUT)
        if self._thread.is_alive():
            log.warning("SyncPixelByte: its loop thread is still running; left behind")

    def collected(self) -> None:
        """The facade was garbage-collected: warn if it was open, and close."""
        if self._state != "open" or os.getpid() != self._pid:
            return
        try:
            warnings.warn(
                f"unclosed {self.describe()}; use 'with SyncPixelByte() as pb:' "
                "or 'pb.close()'",
                ResourceWarning,
                stacklevel=2,
            )
        finally:  # closed even when warnings are errors
            self.close()

    def describe(self) -> str:
        """The facade's repr."""
        client = repr(self.client).removeprefix("PixelByte(").removesuffix(")")
        return f"SyncPixelByte({client})"


#: Runtimes not closed yet; closed at interpreter exit (after the program's own
#: threads have ended, while the loop threads, daemons, still run).
_OPEN: set[SyncRuntime] = set()


@atexit.register
def _close_at_exit() -> None:
    for runtime in list(_OPEN):
        try:
            runtime.close()
        except Exception:  # exiting anyway; the others still close
            log.warning("SyncPixelByte: closing at exit failed", exc_info=True)
