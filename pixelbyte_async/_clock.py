"""
Time as a seam: every wait, deadline and timestamp in the SDK goes through a `Clock`.

The default `SystemClock` is the real one.  `VirtualClock` is a clock whose time only
moves when told to (``time_scale=0``) or moves faster than real time (``time_scale>1``);
`pixelbyte_async.testing.FakePixelByte` shares one with the client so that a 240 s job
finishes in milliseconds without a test ever really sleeping.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import heapq
import itertools
import math
import threading
import time
import weakref
from collections.abc import Callable
from typing import Any, Protocol, TypeVar, runtime_checkable


__all__ = [
    "Clock",
    "ServerOffset",
    "SystemClock",
    "Timer",
    "VirtualClock",
    "resolve",
    "sleep_or_until",
]

T = TypeVar("T")

# The `sleep_or_until` sleepers of each watched future, so that `resolve` wakes
# them in the loop turn that follows (a done callback costs a turn more: first
# the callback runs, then the sleeping task).  Weak: a future nobody holds goes.
# Loops may run in several threads: the registry is shared, under a lock.
_sleepers: weakref.WeakKeyDictionary[asyncio.Future[Any], list[Callable[[], None]]] = (
    weakref.WeakKeyDictionary()
)
_sleepers_lock = threading.Lock()


class Timer(Protocol):
    """A scheduled callback that can be cancelled (`asyncio.TimerHandle` is one)."""

    def cancel(self) -> None:
        """Do not run the callback (no-op if it already ran)."""
        ...


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

    def call_later(self, seconds: float, callback: Callable[[], None]) -> Timer:
        """Run *callback* (on the running loop) after *seconds*; no task involved."""
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

    def call_later(self, seconds: float, callback: Callable[[], None]) -> Timer:
        """Schedule *callback* with the running loop's `call_later`."""
        return asyncio.get_running_loop().call_later(max(0.0, seconds), callback)

    def __repr__(self) -> str:
        return "SystemClock()"


class _VirtualTimer:
    __slots__ = ("callback", "cancelled")

    def __init__(self, callback: Callable[[], None]) -> None:
        self.callback = callback
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class VirtualClock:
    """
    A clock for tests, sandboxes and benchmarks.

    With ``time_scale=0`` (the default) time stands still until `advance` is called or,
    with *autojump* (the default), somebody sleeps: a sleep of *n* seconds moves the
    clock to at least *n* seconds after the moment the sleep began and returns after
    one turn of the event loop.  Many concurrent sleepers therefore jump time forward
    together, like trio's autojump clock.  With ``autojump=False`` sleeps and timers
    wait until `advance` moves time past their deadline: the test drives time.

    With ``time_scale=k > 0`` virtual time runs *k* times faster than real time and a
    sleep of *n* virtual seconds really sleeps ``n / k`` seconds.

    Args:
        start: The wall-clock time (Unix seconds) the clock starts at; default: now.
        time_scale: How many virtual seconds pass per real second (0 = frozen).
        autojump: With a frozen clock, let sleepers move time (see above).
        origin: The `time.monotonic` reading at which virtual time started.  The
            monotonic clock is shared by all processes of a machine, so a clock
            built with another process's *start*, *time_scale* and *origin* (see
            `share`) keeps the same virtual time as that process's clock, as long
            as neither calls `advance`.

    """

    def __init__(
        self,
        *,
        start: float | None = None,
        time_scale: float = 0.0,
        autojump: bool = True,
        origin: float | None = None,
    ) -> None:
        if time_scale < 0:
            raise ValueError("time_scale must be >= 0")
        self._start_wall = time.time() if start is None else float(start)
        self._real_origin = time.monotonic() if origin is None else float(origin)
        self._offset = 0.0
        self.time_scale = float(time_scale)
        self.autojump = autojump
        self._timers: list[tuple[float, int, _VirtualTimer]] = []
        self._seq = itertools.count()

    def share(self) -> str:
        """
        Describe this clock as ``"start,time_scale,origin"`` for another process.

        `VirtualClock.from_shared` rebuilds it there (the sandbox process prints it as
        ``PIXELBYTE_SANDBOX_CLOCK``).
        """
        return f"{self._start_wall!r},{self.time_scale!r},{self._real_origin!r}"

    @classmethod
    def from_shared(cls, value: str, *, autojump: bool = True) -> VirtualClock:
        """Rebuild a clock described by `share` (in this or another process)."""
        start, scale, origin = (float(part) for part in value.split(","))
        return cls(start=start, time_scale=scale, origin=origin, autojump=autojump)

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
        """Move time forward by *seconds* (never backwards) and fire due timers."""
        if seconds < 0:
            raise ValueError("time only moves forward")
        self._offset += seconds
        self._fire_due()

    def _fire_due(self) -> None:
        now = self._elapsed()
        while self._timers and self._timers[0][0] <= now:
            _, _, timer = heapq.heappop(self._timers)
            if not timer.cancelled:
                timer.cancelled = True
                timer.callback()

    def call_later(self, seconds: float, callback: Callable[[], None]) -> Timer:
        """Run *callback* after *seconds* of virtual time (no task involved)."""
        seconds = max(0.0, seconds)
        loop = asyncio.get_running_loop()
        if self.time_scale > 0:
            return loop.call_later(seconds / self.time_scale, callback)
        timer = _VirtualTimer(callback)
        target = self._elapsed() + seconds
        heapq.heappush(self._timers, (target, next(self._seq), timer))
        if self.autojump:

            def jump() -> None:
                if not timer.cancelled and self._elapsed() < target:
                    self._offset += target - self._elapsed()
                self._fire_due()

            loop.call_soon(jump)
        elif seconds == 0:
            loop.call_soon(self._fire_due)
        return timer

    async def sleep(self, seconds: float) -> None:
        """Sleep *seconds* of virtual time."""
        seconds = max(0.0, seconds)
        if self.time_scale > 0:
            await asyncio.sleep(seconds / self.time_scale)
            return
        if self.autojump:
            target = self._elapsed() + seconds
            await asyncio.sleep(0)
            if self._elapsed() < target:
                self._offset += target - self._elapsed()
            self._fire_due()
            return
        await sleep_or_until(self, seconds)

    def __repr__(self) -> str:
        return (
            f"VirtualClock(time_scale={self.time_scale}, elapsed={self._elapsed():.3f})"
        )


async def sleep_or_until(
    clock: Clock,
    seconds: float,
    done: asyncio.Future[Any] | None = None,
    also: asyncio.Future[Any] | None = None,
) -> None:
    """
    Sleep *seconds* on *clock*, or less if *done* (or *also*) completes first.

    One timer and no task: thousands of waiters stay cheap.  The futures are only
    watched, never cancelled or awaited for their result.  A future completed with
    `resolve` wakes the sleeper a loop turn sooner than one completed otherwise.
    """
    wake: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def on_wake(_: object = None) -> None:
        if not wake.done():
            wake.set_result(None)

    watched = [f for f in (done, also) if f is not None]
    for future in watched:
        future.add_done_callback(on_wake)
        with _sleepers_lock:
            _sleepers.setdefault(future, []).append(on_wake)
    timer = clock.call_later(seconds, on_wake)
    try:
        await wake
    finally:
        timer.cancel()
        for future in watched:
            future.remove_done_callback(on_wake)
            with _sleepers_lock, contextlib.suppress(KeyError, ValueError):
                _sleepers[future].remove(on_wake)


def resolve(future: asyncio.Future[T], value: T) -> None:
    """
    Set *future*'s result and wake its `sleep_or_until` sleepers now.

    Call it on the future's loop.  The sleepers' tasks run in the next loop turn,
    where a plain ``set_result`` would first run their callbacks, then them.
    """
    future.set_result(value)
    with _sleepers_lock:
        sleepers = _sleepers.pop(future, ())
    for wake in sleepers:
        wake()


class ServerOffset:
    """
    How far the API's clock is ahead of ours (seconds), bounded by what it said.

    Every answer's ``Date`` header names the second the server was in while our
    request was out: seen between our times *sent* and *received*, it puts the
    offset in ``[date - received, date + 1 - sent]``.  The bounds of every answer
    are intersected, so they narrow to a fraction of a second after a few answers;
    they widen slowly with time (clocks drift) and start again from the newest
    answer when it disagrees with them (a clock was stepped).
    """

    __slots__ = ("_at", "_header", "_header_unix", "high", "low")

    #: How fast two clocks may drift apart (seconds per second): 100 ppm, an
    #: unsynchronised VM's quartz; NTP keeps real clocks far closer.
    DRIFT = 1e-4

    def __init__(self) -> None:
        self.low = -math.inf
        self.high = math.inf
        self._at = 0.0
        self._header: str | None = None
        self._header_unix = 0.0

    @property
    def known(self) -> bool:
        """Whether an answer has bounded the offset yet."""
        return self.high < math.inf

    def bounds(self, fallback: float) -> tuple[float, float]:
        """``(low, high)`` bounds of the offset; ``(-fallback, fallback)`` if unknown."""
        if not self.known:
            return (-fallback, fallback)
        return (self.low, self.high)

    def observe(self, header: str | None, *, sent: float, received: float) -> None:
        """Narrow the bounds by an answer dated *header*, between *sent* and *received*."""
        if not header:
            return
        if header != self._header:
            try:
                parsed = email.utils.parsedate_to_datetime(header)
            except (TypeError, ValueError):
                return
            if parsed.tzinfo is None:
                return  # not an HTTP date (those are always GMT)
            self._header, self._header_unix = header, parsed.timestamp()
        low = self._header_unix - received
        high = self._header_unix + 1.0 - sent
        if self.known:
            slack = self.DRIFT * max(0.0, received - self._at)
            low, high = max(low, self.low - slack), min(high, self.high + slack)
            if low > high:  # a clock was stepped: trust the newest answer alone
                low = self._header_unix - received
                high = self._header_unix + 1.0 - sent
        self.low, self.high, self._at = low, high, received
