"""
`FakePixelByte`: the public face of the fake server, and its lifecycle.

This module owns starting and stopping the two origins (API and CDN), their URLs and
the background webhook sender; the clock and knobs come from `FakeSettings`, the
test controls (scripts, faults, records, webhooks) from `FakeControls`.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import types
from typing import Any, Literal, Self

from aiohttp import web

from pixelbyte_async._clock import VirtualClock

from ._api import build_api_app
from ._cdn import build_cdn_app
from ._controls import FakeControls
from ._records import Ledger
from ._settings import ENVELOPES, FakeSettings, check_eta_error, check_fail_rate
from ._state import Envelope, FakeState
from ._webhooks import WebhookSender


__all__ = ["SANDBOX_API_KEY", "FakePixelByte"]

#: The API key a `FakePixelByte` accepts unless told otherwise.  Not a secret.
SANDBOX_API_KEY = "pb_test_sandbox_key"

_AUTO_WEBHOOK_INTERVAL = 0.05
_SHUTDOWN_TIMEOUT = 1.0
#: Real seconds of delay a delivery's timestamp may have beyond the API's
#: tolerance, however fast the sandbox's clock runs (`receiver_options`).
_REAL_DELAY = 5.0
#: The API's timestamp tolerance for deliveries, and how long a receiver keeps
#: delivered events by default: `DEFAULT_TOLERANCE` and `WebhookReceiver`'s
#: *retention* (the fake uses layers 0-1 only; a test holds them equal).
_API_TOLERANCE = 300.0
_RETENTION = 1800.0


class FakePixelByte(FakeSettings, FakeControls):
    """
    A local PixelByte API: a real `aiohttp.web` server for tests and sandboxes.

    It serves the API (``/v1/...``) on `url` and job outputs and upload storage on a
    second port, `cdn_url`, which is a different origin like the real CDN.  Jobs move
    through ``pending`` → ``processing`` → ``completed``/``failed`` on a
    `~pixelbyte_async._clock.VirtualClock` (`clock`) that stands still unless
    advanced (``time_scale=0``, the default) or runs *time_scale* times faster than
    real time.  Give the same clock to the client and a 240 s job finishes at once.

    Everything observable is recorded (`requests`, `cdn_requests`, `ledger`,
    `webhook_deliveries`), and `inject` makes chosen requests fail.

    .. code-block:: python

        async with FakePixelByte() as fake:
            ...  # point the client at fake.url with fake.api_key, clock=fake.clock
            fake.advance(245)
            assert fake.ledger.double_charged() == []

    Args:
        api_key: The key the fake accepts.
        host: The interface to listen on.
        port: The API port; 0 lets the OS choose.
        cdn_port: The CDN port; 0 lets the OS choose.
        time_scale: Virtual seconds per real second for the clock made when *clock*
            is not given; 0 freezes time until `advance` or a client sleeping on
            `clock` moves it.
        clock: A clock to share instead of making one.
        envelope: How success bodies look: ``"mixed"`` (as the docs show: jobs,
            models and catalogue flat, uploads wrapped), ``"flat"`` (bare objects) or
            ``"wrapped"`` (``{"success": true, "data": ..., "requestId": ...}``).
            Errors always use the ``success: false`` envelope.
        concurrent_job_limit: How many pending or processing jobs are allowed before
            submit answers 429 ``CONCURRENT_JOBS_EXCEEDED``; `None`: unlimited.
        concurrency_retry_after: ``details.retryAfter`` (seconds) of that 429, as
            the real API says it (see `concurrency_retry_after`: a fake with a
            *speedup* says less).
        balance_micro_cents: Starting balance; submits costing more than what is
            left get 402 ``INSUFFICIENT_BALANCE``; `None`: unlimited.
        require_auth: Whether API keys are checked at all.
        allow_http_webhooks: Accept ``http://`` webhook URLs on loopback hosts
            (for local receivers); other http URLs are refused as the API does.
        webhook_secret: The secret webhooks are signed with.
        auto_webhooks: Deliver webhooks from a background task, each when it falls
            due (its job ends, or a retry's time comes), as the API does, several
            at once (one slow receiver holds up no other job's delivery); with
            an autojump clock (the default) it looks every 50 ms of real time.
            Otherwise call `deliver_webhooks`.
        speedup: Jobs run this many times faster than their scripts (and the
            models' typical times) say, while the clock and every timestamp stay
            as they are: with ``time_scale=1`` that is a sandbox in real time whose
            Kling job takes 240 / *speedup* seconds (``python -m
            pixelbyte_async.testing --time-scale``).  The 429's ``retryAfter``
            shrinks alike (see `concurrency_retry_after`).
        clock_offset: How far the server's clock runs ahead of *clock* (seconds;
            negative: behind): ``createdAt``, every other timestamp and the
            ``Date`` of its answers are off by that much, as a real server's clock
            may be.  Every answer is dated (``Date``) by the server's clock.

            .. versionadded:: 0.3.0
        report_costs: Whether answers say what a job cost (the submit's
            ``costMicroCents``, the enveloped job's ``cost``); ``False`` models an
            API that reports no charges, which the docs leave open.

            .. versionadded:: 0.3.0
        fail_rate: The share of unscripted jobs that fail, 0 to 1 (`fail_rate`).

            .. versionadded:: 0.3.0
        seed: Seeds the draws of *fail_rate*: the same seed and the same
            submits fail the same jobs.  `None`: different ones every run.

            .. versionadded:: 0.3.0
        eta_error: How far off the announced ETA is, as a share of the job's run
            (`eta_error`; ``-0.5``: half as long).

            .. versionadded:: 0.3.0

    Raises:
        ValueError: Conflicting or out-of-range arguments.

    """

    def __init__(
        self,
        *,
        api_key: str = SANDBOX_API_KEY,
        host: str = "127.0.0.1",
        port: int = 0,
        cdn_port: int = 0,
        time_scale: float = 0.0,
        clock: VirtualClock | None = None,
        envelope: Envelope = "mixed",
        concurrent_job_limit: int | None = None,
        concurrency_retry_after: int = 30,
        balance_micro_cents: int | None = None,
        require_auth: bool = True,
        allow_http_webhooks: bool = False,
        webhook_secret: str = "whsec_test_sandbox",  # noqa: S107 -- a public sandbox value, not a secret
        auto_webhooks: bool = False,
        speedup: float = 1.0,
        clock_offset: float = 0.0,
        report_costs: bool = True,
        fail_rate: float = 0.0,
        seed: int | None = None,
        eta_error: float = 0.0,
    ) -> None:
        if clock is not None and time_scale:
            raise ValueError("pass either clock or time_scale, not both")
        if envelope not in ENVELOPES:
            raise ValueError(f"envelope must be one of {ENVELOPES}, not {envelope!r}")
        if concurrent_job_limit is not None and concurrent_job_limit < 1:
            raise ValueError("concurrent_job_limit must be >= 1 or None")
        if not speedup > 0:
            raise ValueError("speedup must be > 0")
        self._state = FakeState(
            clock=clock or VirtualClock(time_scale=time_scale),
            api_key=api_key,
            envelope=envelope,
            require_auth=require_auth,
            allow_http_webhooks=allow_http_webhooks,
            concurrent_job_limit=concurrent_job_limit,
            concurrency_retry_after=concurrency_retry_after,
            initial_balance=balance_micro_cents,
            webhook_secret=webhook_secret,
            speedup=float(speedup),
            clock_offset=float(clock_offset),
            report_costs=report_costs,
            fail_rate=check_fail_rate(fail_rate),
            chance=random.Random(seed),  # noqa: S311 -- test outcomes, not security
            eta_error=check_eta_error(eta_error),
        )
        self._host = host
        self._port = port
        self._cdn_port = cdn_port
        self._auto_webhooks = auto_webhooks
        self._webhooks = WebhookSender(self._state)
        self._ledger = Ledger(self._state.ledger_entries, self._state.settle)
        self._runners: list[web.AppRunner] = []
        self._url: str | None = None
        self._cdn_url: str | None = None
        self._webhook_task: asyncio.Task[None] | None = None
        self._phase: Literal["new", "running", "closed"] = "new"

    # -- lifecycle --------------------------------------------------------------------

    async def start(self) -> None:
        """
        Start listening on both ports.

        Raises:
            RuntimeError: It is already running, or was closed.

        """
        if self._phase != "new":
            raise RuntimeError(f"FakePixelByte cannot start: it is {self._phase}")
        self._phase = "running"
        try:
            self._url = await self._listen(
                build_api_app(self._state, early_hook=self._webhooks.deliver_now),
                self._port,
            )
            self._cdn_url = await self._listen(
                build_cdn_app(self._state), self._cdn_port
            )
        except BaseException:
            await self.close()
            raise
        self._state.cdn_url = self._cdn_url
        if self._auto_webhooks:
            self._webhook_task = asyncio.create_task(
                self._webhooks.run(_AUTO_WEBHOOK_INTERVAL)
            )

    async def _listen(self, app: web.Application, port: int) -> str:
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=_SHUTDOWN_TIMEOUT)
        await runner.setup()
        self._runners.append(runner)
        await web.TCPSite(runner, self._host, port).start()
        bound_port = runner.addresses[0][1]
        host = f"[{self._host}]" if ":" in self._host else self._host
        return f"http://{host}:{bound_port}"

    async def close(self) -> None:
        """Stop both servers and the webhook sender.  Closing twice is harmless."""
        self._phase = "closed"
        if self._webhook_task is not None:
            self._webhook_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._webhook_task
            self._webhook_task = None
        while self._runners:
            await self._runners.pop().cleanup()
        await self._webhooks.close()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: types.TracebackType | None,
    ) -> None:
        await self.close()

    @property
    def running(self) -> bool:
        """Return whether the servers are listening."""
        return self._phase == "running"

    @property
    def url(self) -> str:
        """
        Return the API base URL, like ``http://127.0.0.1:PORT`` (no ``/v1``).

        Raises:
            RuntimeError: The fake was never started.

        """
        if self._url is None:
            raise RuntimeError("FakePixelByte is not started; use 'async with'")
        return self._url

    @property
    def cdn_url(self) -> str:
        """
        Return the CDN base URL (outputs and upload storage; another origin).

        Raises:
            RuntimeError: The fake was never started.

        """
        if self._cdn_url is None:
            raise RuntimeError("FakePixelByte is not started; use 'async with'")
        return self._cdn_url

    @property
    def api_key(self) -> str:
        """Return the API key the fake accepts."""
        return self._state.api_key

    @property
    def webhook_secret(self) -> str:
        """Return the secret webhooks are signed with."""
        return self._state.webhook_secret

    @property
    def receiver_options(self) -> dict[str, Any]:
        """
        Return the options of a webhook receiver for this fake's deliveries.

        Its clock, and the receiver's timestamp tolerance stretched with the
        clock's speed: the API's 300 s are 50 ms of real time at
        ``time_scale=6000``, less than a busy event loop can delay a delivery,
        which would be rejected as stale.  The tolerance is 300 s plus five
        real seconds, and the retention of delivered events (which must outlast
        it) grows to match::

            server = WebhookServer(
                fake.webhook_secret, host="127.0.0.1", port=0, **fake.receiver_options
            )

        .. versionadded:: 0.5.0
        """
        stretch = _REAL_DELAY * max(1.0, self.clock.time_scale)
        return {
            "clock": self.clock,
            "tolerance": _API_TOLERANCE + stretch,
            "retention": _RETENTION + 2 * stretch,
        }

    def __repr__(self) -> str:
        where = self._url or "not started"
        return f"<FakePixelByte {self._phase} at {where}>"
