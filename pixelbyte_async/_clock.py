"""
Time as a seam: every wait, deadline and timestamp in the SDK goes through a `Clock`.

The default `SystemClock` is the real one.  `VirtualClock` is a clock whose time only
moves when told to (``time_scale=0``) or moves faster than real time (``time_scale>1``);
`pixelbyte_async.testing.FakePixelByte` shares one with the client so that a 240 s job
finishes in milliseconds without a test ever really sleeping.
"""

from __future__ import annotations

import asyncio
import time
from typing import Protocol, runtime_checkable


__all__ = ["Clock", "SystemClock", "VirtualClock"]


@runtime_checkable
class Clock(Protocol):
    """
    The source of time for the SDK.

    *time* is wall-clock Unix seconds (compared with the server's ISO timestamps such as
    ``estimatedCompletionTime``); *monotonic* measures deadlines; *sleep* waits.
    """

    def time(self) -> float:
        """Return wall-clock time in Unix seconds."""
        ...

    def monotonic(self) -> float:
        """Return a monotonic time in seconds for measuring deadlines."""
        ...

    async def sleep(self, seconds: float) -> None:
        """Wait *seconds*."""
        ...


class SystemClock:
    """The real clock: `time.time`, `time.monotonic` and `asyncio.sleep`."""

    def time(self) -> float:
        """Return `time.time()`."""
        return time.time()

    def monotonic(self) -> float:
        """Return `time.monotonic()`."""
        return time.monotonic()

    async def sleep(self, seconds: float) -> None:
        """Sleep for real (cancellable)."""
        await asyncio.sleep(max(0.0, seconds))

    def __repr__(self) -> str:
        return "SystemClock()"


class VirtualClock:
    """
    A clock for tests, sandboxes and benchmarks.

    With ``time_scale=0`` (the default) time stands still until `advance` is called or
    somebody sleeps: a sleep of *n* seconds moves the clock to at least *n* seconds
    after the moment the sleep began and returns after one turn of the event loop.  Many
    concurrent sleepers therefore jump time forward together, like trio's autojump clock.

    With ``time_scale=k > 0`` virtual time runs *k* times faster than real time and a
    sleep of *n* virtual seconds really sleeps ``n / k`` seconds.

    Args:
        start: The wall-clock time (Unix seconds) the clock starts at; default: now.
        time_scale: How many virtual seconds pass per real second (0 = frozen).

    """

    def __init__(self, *, start: float | None = None, time_scale: float = 0.0) -> None:
        if time_scale < 0:
            raise ValueError("time_scale must be >= 0")
        self._start_wall = time.time() if start is None else float(start)
        self._real_origin = time.monotonic()
        self._offset = 0.0
        self.time_scale = float(time_scale)

    def _elapsed(self) -> float:
        real = (time.monotonic() - self._real_origin) * self.time_scale
        return real + self._offset

    def time(self) -> float:
        """Return the virtual wall-clock time."""
        return self._start_wall + self._elapsed()

    def monotonic(self) -> float:
        """Return virtual seconds elapsed since the clock was made."""
        return self._elapsed()

    def advance(self, seconds: float) -> None:
        """Move time forward by *seconds* (never backwards)."""
        if seconds < 0:
            raise ValueError("time only moves forward")
        self._offset += seconds

    async def sleep(self, seconds: float) -> None:
        """Sleep *seconds* of virtual time."""
        seconds = max(0.0, seconds)
        if self.time_scale > 0:
            await asyncio.sleep(seconds / self.time_scale)
            return
        target = self._elapsed() + seconds
        await asyncio.sleep(0)
        if self._elapsed() < target:
            self._offset += target - self._elapsed()

    def __repr__(self) -> str:
        return (
            f"VirtualClock(time_scale={self.time_scale}, elapsed={self._elapsed():.3f})"
        )
