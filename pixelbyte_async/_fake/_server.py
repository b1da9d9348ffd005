"""`FakePixelByte`: the public face of the fake server."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import types
from collections.abc import Mapping
from fnmatch import fnmatchcase
from typing import Literal, Self

from aiohttp import web

from pixelbyte_async._clock import VirtualClock

from ._api import build_api_app
from ._cdn import build_cdn_app
from ._faults import Fault, FaultHandle, Origin
from ._jobs import FakeJob, FakeUpload, JobScript
from ._records import CdnRequest, Ledger, RecordedRequest, WebhookDelivery
from ._state import Envelope, FakeState
from ._webhooks import WebhookFault, WebhookOrder, WebhookSender


__all__ = ["SANDBOX_API_KEY", "FakePixelByte"]

#: The API key a `FakePixelByte` accepts unless told otherwise.  Not a secret.
SANDBOX_API_KEY = "pb_test_sandbox_key"

_log = logging.getLogger("pixelbyte_async.testing")
_ENVELOPES = ("mixed", "flat", "wrapped")
_AUTO_WEBHOOK_INTERVAL = 0.05
_SHUTDOWN_TIMEOUT = 1.0


class FakePixelByte:
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
        concurrency_retry_after: ``details.retryAfter`` (seconds) of that 429.
        balance_micro_cents: Starting balance; submits costing more than what is
            left get 402 ``INSUFFICIENT_BALANCE``; `None`: unlimited.
        require_auth: Whether API keys are checked at all.
        allow_http_webhooks: Accept ``http://`` webhook URLs on loopback hosts
            (for local receivers); other http URLs are refused as the API does.
        webhook_secret: The secret webhooks are signed with.
        auto_webhooks: Deliver due webhooks from a background task, polling every
            50 ms of real time; otherwise call `deliver_webhooks`.
        speedup: Jobs run this many times faster than their scripts (and the
            models' typical times) say, while the clock and every timestamp stay
            as they are: with ``time_scale=1`` that is a sandbox in real time whose
            Kling job takes 240 / *speedup* seconds (``python -m
            pixelbyte_async.testing --time-scale``).

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
    ) -> None:
        if clock is not None and time_scale:
            raise ValueError("pass either clock or time_scale, not both")
        if envelope not in _ENVELOPES:
            raise ValueError(f"envelope must be one of {_ENVELOPES}, not {envelope!r}")
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
            self._webhook_task = asyncio.create_task(self._deliver_forever())

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

    def __repr__(self) -> str:
        where = self._url or "not started"
        return f"<FakePixelByte {self._phase} at {where}>"

    # -- time -------------------------------------------------------------------------

    @property
    def clock(self) -> VirtualClock:
        """Return the clock every timestamp and job transition is read from."""
        return self._state.clock

    def advance(self, seconds: float) -> None:
        """
        Move virtual time forward by *seconds*.

        Args:
            seconds: How far; never negative.

        """
        self._state.clock.advance(seconds)

    # -- knobs --------------------------------------------------------------------------

    @property
    def envelope(self) -> Envelope:
        """Return (or set) the envelope style of success bodies."""
        return self._state.envelope

    @envelope.setter
    def envelope(self, value: Envelope) -> None:
        if value not in _ENVELOPES:
            raise ValueError(f"envelope must be one of {_ENVELOPES}, not {value!r}")
        self._state.envelope = value

    @property
    def price_factor(self) -> float:
        """
        This account's prices relative to list prices (default 1.0).

        ``1.1`` models an account that pays 10 % more than the public table: the
        estimate endpoint and the charges both say so, the SDK's local table does
        not.
        """
        return self._state.price_factor

    @price_factor.setter
    def price_factor(self, value: float) -> None:
        if not value > 0:
            raise ValueError("price_factor must be > 0")
        self._state.price_factor = float(value)

    @property
    def concurrent_job_limit(self) -> int | None:
        """Return (or set) the concurrent-job limit; `None` is unlimited."""
        return self._state.concurrent_job_limit

    @concurrent_job_limit.setter
    def concurrent_job_limit(self, value: int | None) -> None:
        self._state.concurrent_job_limit = value

    @property
    def concurrency_retry_after(self) -> int:
        """Return (or set) ``details.retryAfter`` of ``CONCURRENT_JOBS_EXCEEDED``."""
        return self._state.concurrency_retry_after

    @concurrency_retry_after.setter
    def concurrency_retry_after(self, value: int) -> None:
        self._state.concurrency_retry_after = value

    @property
    def balance_micro_cents(self) -> int | None:
        """
        Return (or set) the balance left after charges and refunds.

        `None` means the balance is not modelled and never runs out.
        """
        return self._state.balance()

    @balance_micro_cents.setter
    def balance_micro_cents(self, value: int | None) -> None:
        state = self._state
        state.initial_balance = None if value is None else value + state.net_charged()

    @property
    def require_auth(self) -> bool:
        """Return (or set) whether API keys are checked."""
        return self._state.require_auth

    @require_auth.setter
    def require_auth(self, value: bool) -> None:
        self._state.require_auth = value

    @property
    def allow_http_webhooks(self) -> bool:
        """Return (or set) whether ``http://`` webhook URLs are accepted."""
        return self._state.allow_http_webhooks

    @allow_http_webhooks.setter
    def allow_http_webhooks(self, value: bool) -> None:
        self._state.allow_http_webhooks = value

    # -- scripting jobs -------------------------------------------------------------

    def set_default_script(self, script: JobScript) -> None:
        """
        Make *script* the lifecycle of every job not scripted by `script_next`.

        Args:
            script: The new default.

        """
        self._state.default_script = script

    def script_next(self, *scripts: JobScript) -> None:
        """
        Queue lifecycles for the next jobs created, in order.

        Only submits that create a job consume a script (not rejected or faulted ones).

        Args:
            scripts: One script per upcoming job.

        """
        self._state.scripted.extend(scripts)

    @property
    def jobs(self) -> Mapping[str, FakeJob]:
        """
        Return a read-only view of all jobs by id, oldest first.

        Jobs of a late-creation fault appear once their creation time has come.
        """
        self._state.settle()
        return types.MappingProxyType(self._state.jobs)

    @property
    def uploads(self) -> Mapping[str, FakeUpload]:
        """Return a read-only view of all presigned uploads by file id."""
        return types.MappingProxyType(self._state.uploads)

    def complete_now(self, job_id: str) -> FakeJob:
        """
        Make a pending or processing job complete at this instant.

        Args:
            job_id: The job.

        Raises:
            KeyError: No such job.
            ValueError: The job already ended.

        """
        return self._state.force_terminal(job_id, "completed")

    def fail_now(
        self,
        job_id: str,
        *,
        code: str = "GENERATION_FAILED",
        message: str = "Generation failed. Credits have been refunded.",
    ) -> FakeJob:
        """
        Make a pending or processing job fail (and be refunded) at this instant.

        Args:
            job_id: The job.
            code: ``error.code`` to report.
            message: ``error.message`` to report.

        Raises:
            KeyError: No such job.
            ValueError: The job already ended.

        """
        return self._state.force_terminal(job_id, "failed", code=code, message=message)

    # -- faults -----------------------------------------------------------------------

    def inject(
        self,
        fault: Fault,
        *,
        method: str = "*",
        path: str = "*",
        times: int | None = 1,
        origin: Origin = "api",
    ) -> FaultHandle:
        """
        Apply *fault* to the next *times* requests matching *method* and *path*.

        Faults are consulted in the order they were injected; each request gets at
        most one.  Note that aiohttp's client silently retries an idempotent
        request (GET, HEAD, PUT, ...) once when its connection is dropped, so a
        drop fault must be injected with ``times=2`` to reach a GET's caller.

        Args:
            fault: What goes wrong; see `Fault`.
            method: `fnmatch` glob for the HTTP method (``"*"``: any).
            path: `fnmatch` glob for the URL path, e.g. ``"/v1/jobs/*"``.
            times: How many matching requests; `None` for all of them.
            origin: ``"api"`` or ``"cdn"``.

        Returns:
            A handle to watch (``hits``) or `FaultHandle.cancel` it.

        """
        if times is not None and times < 1:
            raise ValueError("times must be >= 1 or None")
        handle = FaultHandle(
            fault=fault, method=method, path=path, origin=origin, remaining=times
        )
        self._state.faults.handles.append(handle)
        return handle

    def clear_faults(self) -> None:
        """Forget every injected fault."""
        self._state.faults.handles.clear()

    # -- records ----------------------------------------------------------------------

    @property
    def requests(self) -> list[RecordedRequest]:
        """Return (a copy of) the API requests received, oldest first."""
        return list(self._state.requests)

    @property
    def cdn_requests(self) -> list[CdnRequest]:
        """Return (a copy of) the CDN requests received, oldest first."""
        return list(self._state.cdn_requests)

    def requests_for(self, method: str, path_glob: str) -> list[RecordedRequest]:
        """
        Return the API requests matching *method* and *path_glob* (`fnmatch`).

        Args:
            method: HTTP method (a glob; case-insensitive).
            path_glob: URL path glob, e.g. ``"/v1/jobs/job_*"``.

        """
        return [
            r
            for r in self._state.requests
            if fnmatchcase(r.method, method.upper()) and fnmatchcase(r.path, path_glob)
        ]

    def count(self, method: str, path_glob: str) -> int:
        """
        Return how many API requests match *method* and *path_glob*.

        Args:
            method: HTTP method (a glob; case-insensitive).
            path_glob: URL path glob.

        """
        return len(self.requests_for(method, path_glob))

    def cdn_requests_for(self, method: str, path_glob: str) -> list[CdnRequest]:
        """
        Return the CDN requests matching *method* and *path_glob*.

        Args:
            method: HTTP method (a glob; case-insensitive).
            path_glob: URL path glob, e.g. ``"/outputs/*"``.

        """
        return [
            r
            for r in self._state.cdn_requests
            if fnmatchcase(r.method, method.upper()) and fnmatchcase(r.path, path_glob)
        ]

    def reset_records(self) -> None:
        """Forget recorded API and CDN requests (jobs, ledger and faults stay)."""
        self._state.requests.clear()
        self._state.cdn_requests.clear()

    @property
    def ledger(self) -> Ledger:
        """Return the ledger of charges and refunds (always settled when read)."""
        return self._ledger

    # -- webhooks ---------------------------------------------------------------------

    @property
    def webhook_deliveries(self) -> list[WebhookDelivery]:
        """Return (a copy of) every webhook attempt, oldest first."""
        return list(self._state.webhook_deliveries)

    async def deliver_webhooks(self) -> list[WebhookDelivery]:
        """
        Send every webhook that is due now and return the attempts made.

        A job with a ``webhookUrl`` is due once it is completed or failed (not
        cancelled); a failed attempt (non-2xx or unreachable) is due again after 1,
        4, 16, 64 and 256 virtual seconds, then abandoned.
        """
        return await self._webhooks.deliver_due()

    def inject_webhook(self, kind: WebhookFault, *, times: int = 1) -> None:
        """
        Make the next *times* webhook deliveries go wrong in one way.

        Kinds:

        * ``"duplicate"``: the delivery is sent twice.
        * ``"drop"``: the delivery is lost on the way; the API believes it was
          delivered and never retries (a safety poll must notice the job).
        * ``"bad_signature"``: a forged copy (wrong secret) is sent first.
        * ``"stale_status"``: after the real delivery, a signed one with status
          ``processing`` follows (out of order).
        * ``"early"``: applies to the next *times* submits that carry a
          ``webhookUrl``: the job ends at once and its delivery is sent **before**
          the submit response.

        Receiver outages need no fault: stop the receiver, and the fake retries
        after 1, 4, 16, 64 and 256 virtual seconds.
        """
        if times < 1:
            raise ValueError("times must be >= 1")
        if kind == "early":
            self._state.early_webhooks += times
        else:
            self._webhooks.faults.extend([kind] * times)

    @property
    def webhook_order(self) -> WebhookOrder:
        """The order of due deliveries (``"job"``, the default, ``"reverse"`` or ``"shuffle"``)."""
        return self._webhooks.order

    @webhook_order.setter
    def webhook_order(self, value: WebhookOrder) -> None:
        if value not in {"job", "reverse", "shuffle"}:
            raise ValueError(f"unknown webhook order {value!r}")
        self._webhooks.order = value

    async def _deliver_forever(self) -> None:
        while True:
            try:
                await self._webhooks.deliver_due()
            except Exception:  # noqa: BLE001 -- the background sender must outlive any one failure
                _log.exception("webhook delivery failed")
            await asyncio.sleep(_AUTO_WEBHOOK_INTERVAL)
