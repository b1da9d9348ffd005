"""
`FakeControls`: what a test does to a `FakePixelByte` and reads back (a mixin of it).

Scripting jobs (and ending them at once), injecting faults, the records of every
request, the ledger, and webhooks (deliveries, faults, order).  The docstrings are
the public documentation of those `FakePixelByte` members.
"""

from __future__ import annotations

import types
from collections.abc import Mapping
from fnmatch import fnmatchcase
from typing import Any

from ._catalog import InputError, resolve_model
from ._faults import Fault, FaultHandle, Origin
from ._jobs import FakeJob, FakeUpload, JobScript
from ._records import CdnRequest, Ledger, RecordedRequest, WebhookDelivery
from ._state import FakeState
from ._util import new_job_id, new_request_id
from ._webhooks import WebhookFault, WebhookOrder, WebhookSender


__all__ = ["FakeControls"]


class FakeControls:
    """Scripts, faults, records, ledger and webhooks of `FakePixelByte`."""

    _state: FakeState
    _webhooks: WebhookSender
    _ledger: Ledger

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

    def submit_elsewhere(
        self,
        model: str,
        input: Mapping[str, Any],  # noqa: A002 -- the API's field name
        *,
        after: float = 0.0,
        webhook_url: str | None = None,
    ) -> FakeJob:
        """
        Create (and charge) a job as another submitter on the same account would.

        Another app, machine or person using the key (the dashboard, a batch
        beside a bot): the job appears in the job list like any other, and no
        client here made it.  Tests of shared accounts use it to check that a
        client never takes such a job for its own.

        Args:
            model: The model slug.
            input: The job's input (checked as the API checks a submit's).
            after: Create it this many virtual seconds from now (a submit still on
                its way), instead of now.
            webhook_url: Where its delivery goes, if anywhere.

        Raises:
            ValueError: Unknown model or invalid input.

        .. versionadded:: 0.3.0
        """
        state = self._state
        spec = resolve_model(model)
        if spec is None:
            raise ValueError(f"unknown model {model!r}")
        value = dict(input)
        try:
            spec.validate(value, complete=True)
        except InputError as exc:
            raise ValueError(f"invalid input: {exc.field} {exc.reason}") from None
        state.creation_delay = max(0.0, float(after))
        try:
            job = state.create_job(
                model=spec,
                version=spec.current_version,
                input=value,
                webhook_url=webhook_url,
                request_id=new_request_id(),
                job_id=new_job_id(),
            )
        finally:
            state.creation_delay = 0.0
        return job

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
        cancelled).  The attempts go out side by side (at most 32 on the wire);
        this returns once they, and any the auto sender has under way, have
        ended.  An attempt fails unless the receiver answers 2xx within 30
        seconds (a redirect is a failure, and is not followed); a failed attempt
        is due again 1, 4, 16, 64 and 256 virtual seconds after it ended, then
        abandoned.  The 30 s are virtual when the clock runs (``time_scale > 0``,
        yet at least half a real second) or only moves by `advance` (a
        ``VirtualClock(autojump=False)``), real on an autojump clock.
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
