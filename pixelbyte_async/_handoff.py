"""
Handing a webhook event to the event loops it belongs to, and running hooks.

`hand_out` feeds an event to waiters' futures and attached clients (each a
`WebhookObserver`), each on its own loop; `call_on` runs a callback on a loop from
any thread (``call_soon_threadsafe``; dropped if the loop is closed).  `HookRunner`
calls ``on_event``/``on_unknown`` hooks and runs the awaitables they return as tasks
on the right loop, keeping each task until it ends.  `DelayedCalls` runs callbacks
a fixed delay later with one timer per loop (the ``unknown_grace`` checks).
`finish_anyway` and `to_the_end` await a task, or a coroutine, to its end even if
the caller is cancelled.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import inspect
import logging
import threading
import weakref
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine, Generator, Iterable
from typing import Any, Generic, Protocol, TypeVar, cast

from ._clock import Clock, resolve
from ._signing import SignedDelivery, WebhookEvent


__all__ = [
    "DelayedCalls",
    "EventHook",
    "HookRunner",
    "WebhookObserver",
    "call_on",
    "finish_anyway",
    "hand_out",
    "to_the_end",
]

log = logging.getLogger("pixelbyte_async.webhooks")

EventHook = Callable[[WebhookEvent], Awaitable[None] | None]

T = TypeVar("T")

# What a timer's firing may run ahead of its own time, on a clock's rounding.
_ROUNDING = 1e-9


class WebhookObserver(Protocol):
    """
    What a receiver needs from a client attached to it (`PixelByte` is one).

    The receiver hands it every new event (on the loop the client was attached
    on) and asks whether it knows a job, so deliveries for nobody's jobs can be
    reported to ``on_unknown``; nothing else of the client is touched.
    """

    def _webhook_event(self, event: WebhookEvent) -> bool:
        """Observe *event*; return whether the job is this client's."""
        ...

    def _knows_job(self, job_id: str) -> bool:
        """Whether *job_id* is one of this client's jobs."""
        ...


_Loop = asyncio.AbstractEventLoop


def _running_loop() -> _Loop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


def call_on(loop: _Loop, callback: Callable[..., object], *args: Any) -> bool:
    """Run *callback* on *loop* from any thread; False if the loop is closed."""
    try:
        loop.call_soon_threadsafe(callback, *args)
    except RuntimeError:
        log.debug("event loop %r is closed; webhook hand-off dropped", loop)
        return False
    return True


def hand_out(
    delivery: SignedDelivery,
    futures: list[asyncio.Future[WebhookEvent]],
    clients: list[tuple[WebhookObserver, _Loop | None]],
    home: _Loop | None,
) -> tuple[bool, _Loop | None, _Loop | None]:
    """
    Feed waiters and clients on their loops; return ``(known, owner, here)``.

    The event is made (decoded) only if somebody is fed, here, before any hand-off.

    *known*: a waiter was pending or a client here knows the job; *owner*: the loop
    the hooks belong to (this one, else the first open loop fed, else *home*);
    *here*: this thread's running loop.
    """
    here = _running_loop()
    plan: dict[
        _Loop | None,
        tuple[list[asyncio.Future[WebhookEvent]], list[WebhookObserver]],
    ] = {}
    for future in futures:
        plan.setdefault(future.get_loop(), ([], []))[0].append(future)
    for client, attached_on in clients:
        # A client attached outside a loop is fed on the loop it was first
        # used on (PixelByte._loop, when it records one), else on the loop the
        # SDK was last seen on.
        used_on = getattr(client, "_loop", None)
        loop = (
            attached_on
            or (used_on if isinstance(used_on, _Loop) else None)
            or home
            or here
        )
        plan.setdefault(loop, ([], []))[1].append(client)
    known = bool(futures)
    if plan:
        event = delivery.event()
        for loop, (feed, observers) in plan.items():
            if loop is None or loop is here:
                known |= _feed(event, feed, observers)
            else:
                call_on(loop, _feed, event, feed, observers)
    owner = here or next(
        (loop for loop in (*plan, home) if loop is not None and not loop.is_closed()),
        None,
    )
    return known, owner, here


def _feed(
    event: WebhookEvent,
    futures: list[asyncio.Future[WebhookEvent]],
    clients: list[WebhookObserver],
) -> bool:
    """On the waiters' loop: resolve futures, tell clients; True if known."""
    known = _resolve(futures, event)
    for client in clients:
        known |= client._webhook_event(event)  # noqa: SLF001 -- client and receiver cooperate
    return known


def _resolve(
    futures: Iterable[asyncio.Future[WebhookEvent]], event: WebhookEvent
) -> bool:
    """Set *event* on the pending *futures* (on their loop); True if any was pending."""
    fed = False
    for future in futures:
        if not future.done():
            resolve(future, event)  # its waits resume in the next loop turn
            fed = True
    return fed


def _cancel(futures: Iterable[asyncio.Future[WebhookEvent]]) -> None:
    for future in futures:
        if not future.done():
            future.cancel()


class HookRunner:
    """
    Calls hooks; runs the awaitables they return as tasks, kept until they end.

    *lock* is the receiver's: it guards the set of tasks, which any thread may ask
    the size of.
    """

    def __init__(self, lock: threading.Lock) -> None:
        self._lock = lock
        self._hook_tasks: set[asyncio.Task[None]] = set()

    def __len__(self) -> int:
        """How many hook tasks are running (read with the lock held)."""
        return len(self._hook_tasks)

    def run(self, hook: EventHook, event: WebhookEvent, owner: _Loop | None) -> None:
        """Call *hook* here; an awaitable it returns runs on this loop or *owner*."""
        try:
            result = hook(event)
        except Exception:
            log.exception("webhook hook failed for %s", event.job_id)
            return
        if not inspect.isawaitable(result):
            return
        if _running_loop() is not None:
            self._spawn(result, event)
            return
        if owner is not None and call_on(owner, self._spawn, result, event):
            return
        log.warning(
            "webhook hook for %s returned an awaitable outside an event "
            "loop; use a plain function with synchronous frameworks",
            event.job_id,
        )
        if inspect.iscoroutine(result):
            result.close()

    def _spawn(self, awaitable: Awaitable[None], event: WebhookEvent) -> None:
        """On a loop: run a hook's awaitable as a task, kept until it ends."""

        async def run() -> None:
            try:
                await awaitable
            except Exception:
                log.exception("webhook hook failed for %s", event.job_id)

        task = asyncio.ensure_future(run())
        with self._lock:
            self._hook_tasks.add(task)
        task.add_done_callback(self._forget_task)

    def _forget_task(self, task: asyncio.Task[None]) -> None:
        with self._lock:
            self._hook_tasks.discard(task)

    async def aclose(self) -> None:
        """Wait for hook tasks of this event loop still running."""
        loop = asyncio.get_running_loop()
        with self._lock:
            tasks = [t for t in self._hook_tasks if t.get_loop() is loop]
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)


class DelayedCalls(Generic[T]):
    """
    Call *callback(item)* *delay* seconds after each `add`, on the loop it was added on.

    The delay is one number and the clock is monotonic, so items come due in the
    order they were added: one timer per loop, for the oldest item, serves them all
    (a timer each would cost a heap of thousands of timers under load).  The timer
    runs every item due by then and is set again for the next.  An item due before
    the newest one (the delay was lowered) gets a timer of its own; outside an event
    loop the callback runs at once.  *lock* guards the table of queues, one per loop;
    each queue is touched only on its own loop.
    """

    def __init__(
        self, clock: Clock, callback: Callable[[T], None], lock: threading.Lock
    ) -> None:
        self._clock = clock
        self._callback = callback
        self._lock = lock
        # loop -> (clock.monotonic() an item is due, item), oldest first.
        self._queues: weakref.WeakKeyDictionary[_Loop, deque[tuple[float, T]]] = (
            weakref.WeakKeyDictionary()
        )

    def add(self, item: T, delay: float) -> None:
        """Call back with *item* after *delay* seconds (now, outside an event loop)."""
        loop = _running_loop()
        if loop is None:
            # A synchronous framework (a Django or Flask view) and no event loop in
            # the process: no submit that the delivery could be racing.
            self._callback(item)
            return
        due = self._clock.monotonic() + max(0.0, delay)
        queue = self._queues.get(loop)
        if queue is None:
            with self._lock:
                queue = self._queues.setdefault(loop, deque())
        if queue and due < queue[-1][0]:
            self._clock.call_later(delay, functools.partial(self._callback, item))
            return
        if not queue:
            self._clock.call_later(delay, functools.partial(self._run_due, queue))
        queue.append((due, item))

    def _run_due(self, queue: deque[tuple[float, T]]) -> None:
        """The timer: call back every item due (the first always), set it again."""
        now = self._clock.monotonic() + _ROUNDING
        while queue:
            item = queue.popleft()[1]
            try:
                self._callback(item)
            except Exception:
                log.exception("a delayed webhook check failed")
            if queue and queue[0][0] > now:
                break
        if queue:
            delay = queue[0][0] - self._clock.monotonic() - _ROUNDING
            self._clock.call_later(delay, functools.partial(self._run_due, queue))


async def finish_anyway(awaitable: asyncio.Future[T]) -> T:
    """Await *awaitable* to its end even if we are cancelled meanwhile."""
    try:
        return await asyncio.shield(awaitable)
    except asyncio.CancelledError:
        with contextlib.suppress(Exception):
            await asyncio.wait({awaitable})
        raise


async def to_the_end(step: Coroutine[Any, Any, T], *, inline: bool) -> T:
    """
    Await the coroutine *step* to its end, even if the caller is cancelled meanwhile.

    With *inline*, it runs on the caller's task until it first waits: no task
    and no turn of the loop where it need not wait (the memory and SQLite
    ledgers write on the loop), where `asyncio.shield` costs three, in the
    chain of a batch's one-at-a-time submits; if it waits, the rest goes on in
    a task of its own.  Only for steps whose waits are tied to no task (no
    ``asyncio.timeout`` or anyio cancel scope open across a wait, as in
    redis-py): without *inline* the whole step is a task of its own, shielded.
    """
    if not inline:
        return await asyncio.shield(step)
    try:
        pending = step.send(None)
    except StopIteration as done:
        return cast("T", done.value)
    return await asyncio.shield(asyncio.ensure_future(_Rest(step, pending)))


class _Rest(Generic[T]):
    """The rest of a coroutine that ran up to its first wait, on *pending*."""

    def __init__(self, coro: Coroutine[Any, Any, T], pending: Any) -> None:
        self._coro = coro
        self._pending = pending

    def __await__(self) -> Generator[Any, None, T]:
        coro, value = self._coro, self._pending
        while True:
            thrown: BaseException | None = None
            try:
                yield value  # what the coroutine waits for, to the task
            except BaseException as exc:  # noqa: BLE001 -- thrown in by the task
                thrown = exc
            try:
                value = coro.send(None) if thrown is None else coro.throw(thrown)
            except StopIteration as done:
                return cast("T", done.value)
