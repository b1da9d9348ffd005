"""
`FakeSettings`: the clock and the knobs of a `FakePixelByte` (a mixin of it).

Each knob reads and writes the fake's `FakeState`; the docstrings are the public
documentation of `FakePixelByte`'s properties.
"""

from __future__ import annotations

import math

from pixelbyte_async._clock import VirtualClock

from ._state import Envelope, FakeState


__all__ = ["ENVELOPES", "FakeSettings", "check_eta_error", "check_fail_rate"]

#: The envelope styles of success bodies.
ENVELOPES = ("mixed", "flat", "wrapped")


def check_fail_rate(value: float) -> float:
    """*value* as a `FakeSettings.fail_rate`, or `ValueError`."""
    rate = float(value)
    if not 0.0 <= rate <= 1.0:  # NaN fails too
        raise ValueError(f"fail_rate must be a share from 0 to 1, not {value!r}")
    return rate


def check_eta_error(value: float) -> float:
    """*value* as a `FakeSettings.eta_error`, or `ValueError`."""
    error = float(value)
    if not (math.isfinite(error) and error >= -1.0):
        raise ValueError(f"eta_error must be a finite number >= -1, not {value!r}")
    return error


class FakeSettings:
    """The clock and knobs of `FakePixelByte`, over the state it owns."""

    _state: FakeState

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

    @property
    def clock_offset(self) -> float:
        """
        Return (or set) how far the server's clock runs ahead of `clock` (seconds).

        Negative: behind.  Job timestamps and the ``Date`` of every answer follow
        the server's clock, as a real server's do.

        .. versionadded:: 0.3.0
        """
        return self._state.clock_offset

    @clock_offset.setter
    def clock_offset(self, value: float) -> None:
        self._state.clock_offset = float(value)

    # -- knobs --------------------------------------------------------------------------

    @property
    def report_costs(self) -> bool:
        """
        Return (or set) whether answers say what a job cost.

        .. versionadded:: 0.3.0
        """
        return self._state.report_costs

    @report_costs.setter
    def report_costs(self, value: bool) -> None:
        self._state.report_costs = bool(value)

    @property
    def envelope(self) -> Envelope:
        """Return (or set) the envelope style of success bodies."""
        return self._state.envelope

    @envelope.setter
    def envelope(self, value: Envelope) -> None:
        if value not in ENVELOPES:
            raise ValueError(f"envelope must be one of {ENVELOPES}, not {value!r}")
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
    def peak_active_jobs(self) -> int:
        """
        The most jobs pending or processing at once, counted at each accepted submit.

        Counted only while `concurrent_job_limit` is set (a limit as high as you
        like will do): it is what a test of a client-side job limit asserts on.

        .. versionadded:: 0.3.0
        """
        return self._state.peak_active

    @property
    def concurrency_retry_after(self) -> int:
        """
        Return (or set) ``details.retryAfter`` of ``CONCURRENT_JOBS_EXCEEDED``.

        The real API's value: a fake whose jobs run *speedup* times faster says
        that much less (rounded up, at least 1 s), as its slots free that much
        sooner; the sandbox process at ``--time-scale 20`` answers 2 for 30.
        """
        return self._state.concurrency_retry_after

    @concurrency_retry_after.setter
    def concurrency_retry_after(self, value: int) -> None:
        self._state.concurrency_retry_after = value

    @property
    def fail_rate(self) -> float:
        """
        Return (or set) the share of jobs that fail, from 0 (default) to 1.

        Each job not scripted by `script_next` fails with this probability (as
        the default script says a failure looks: ``GENERATION_FAILED``, at the
        end of its run, refunded).  The draws come from the *seed* the fake was
        made with: the same seed and the same submits fail the same jobs.

        .. versionadded:: 0.3.0
        """
        return self._state.fail_rate

    @fail_rate.setter
    def fail_rate(self, value: float) -> None:
        self._state.fail_rate = check_fail_rate(value)

    @property
    def eta_error(self) -> float:
        """
        Return (or set) how far off the announced ETA is, as a share of the run.

        ``estimatedCompletionTime`` is ``createdAt`` plus the job's duration times
        ``1 + eta_error``: ``-0.5`` announces half the time the job takes, ``1.0``
        twice as much, ``0`` (default) the truth.  Applies to jobs created after
        it is set whose script names no ``eta_seconds``; at least -1.

        .. versionadded:: 0.3.0
        """
        return self._state.eta_error

    @eta_error.setter
    def eta_error(self, value: float) -> None:
        self._state.eta_error = check_eta_error(value)

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
