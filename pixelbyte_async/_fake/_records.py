"""What the fake remembers: requests, CDN hits, webhook deliveries and the money ledger."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

import attrs


__all__ = ["CdnRequest", "Ledger", "LedgerEntry", "RecordedRequest", "WebhookDelivery"]


@attrs.frozen(kw_only=True)
class RecordedRequest:
    """
    One request the fake's API origin received, recorded before it was handled.

    Args:
        method: The HTTP method, upper case.
        path: The URL path, e.g. ``/v1/jobs/submit``.
        query: The query parameters (last value wins for repeated keys).
        headers: A copy of the request headers, *including* ``Authorization``, so tests
            can assert exactly what was sent.
        json: The parsed JSON body, or `None` when there was none or it was not JSON.
        time: Virtual wall-clock time (Unix seconds) of arrival.
        fault: The kind of the injected `Fault` applied to it, if any.
        request_id: The ``requestId`` the fake answered (or would have answered) with.

    """

    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    json: Any
    time: float
    fault: str | None = None
    request_id: str = ""


@attrs.frozen(kw_only=True)
class CdnRequest:
    """
    One request the fake's CDN origin (outputs and upload storage) received.

    Args:
        method: The HTTP method, upper case.
        path: The URL path, e.g. ``/outputs/job_abc123def456/output_0.mp4``.
        authorization: The ``Authorization`` header as sent, or `None`.  Downloads
            must not leak the API key to the CDN, so tests assert this is `None`.
        time: Virtual wall-clock time (Unix seconds) of arrival.
        headers: A copy of all request headers.
        fault: The kind of the injected `Fault` applied to it, if any.

    """

    method: str
    path: str
    authorization: str | None
    time: float
    headers: dict[str, str] = attrs.field(factory=dict)
    fault: str | None = None


@attrs.frozen(kw_only=True)
class LedgerEntry:
    """
    A charge or a refund.

    Args:
        job_id: The job the money moved for.
        kind: ``"charge"`` (at submit) or ``"refund"`` (cancel or failure).
        micro_cents: The amount, always positive (1,000,000 = US$1).
        input_fingerprint: SHA-256 of the canonical JSON of model and input (see
            `input_fingerprint`), identical for identical submits.
        time: Virtual wall-clock time (Unix seconds) the money moved.
        reason: ``"submit"``, ``"cancelled"`` or ``"failed"``.

    """

    job_id: str
    kind: Literal["charge", "refund"]
    micro_cents: int
    input_fingerprint: str
    time: float
    reason: str


class Ledger:
    """
    Every charge and refund the fake made, for proving nobody paid twice.

    Refunds of failed jobs are entered lazily (job state is derived from the clock),
    so every read of this object first settles failures that are due; whatever you
    read is consistent with the clock at that moment.
    """

    def __init__(self, entries: list[LedgerEntry], settle: Callable[[], None]) -> None:
        self._entries = entries
        self._settle = settle

    @property
    def entries(self) -> list[LedgerEntry]:
        """Return a copy of all entries, oldest first."""
        self._settle()
        return list(self._entries)

    @property
    def charged_micro_cents(self) -> int:
        """Return the net amount charged (charges minus refunds)."""
        return sum(
            e.micro_cents if e.kind == "charge" else -e.micro_cents
            for e in self.entries
        )

    def for_job(self, job_id: str) -> list[LedgerEntry]:
        """
        Return the entries of one job.

        Args:
            job_id: The job id.

        """
        return [e for e in self.entries if e.job_id == job_id]

    def charges_by_fingerprint(self) -> dict[str, int]:
        """Return how many *charges* each input fingerprint received."""
        counts: dict[str, int] = {}
        for e in self.entries:
            if e.kind == "charge":
                counts[e.input_fingerprint] = counts.get(e.input_fingerprint, 0) + 1
        return counts

    def double_charged(self) -> list[str]:
        """
        Return the fingerprints that were paid for more than once.

        A fingerprint counts when it was charged more than once *and* its net charge
        (after refunds) exceeds the cost of one job, i.e. the user is out of pocket
        for a duplicate.  Sorted, so the result is stable.
        """
        net: dict[str, int] = {}
        largest: dict[str, int] = {}
        for e in self.entries:
            sign = 1 if e.kind == "charge" else -1
            net[e.input_fingerprint] = net.get(e.input_fingerprint, 0) + sign * (
                e.micro_cents
            )
            if e.kind == "charge":
                largest[e.input_fingerprint] = max(
                    largest.get(e.input_fingerprint, 0), e.micro_cents
                )
        counts = self.charges_by_fingerprint()
        return sorted(fp for fp, n in counts.items() if n > 1 and net[fp] > largest[fp])

    def __len__(self) -> int:
        return len(self.entries)

    def __repr__(self) -> str:
        return (
            f"Ledger(entries={len(self)}, "
            f"charged_micro_cents={self.charged_micro_cents})"
        )


@attrs.frozen(kw_only=True)
class WebhookDelivery:
    """
    One attempt to deliver a webhook.

    Args:
        job_id: The job the webhook is about.
        url: Where it was POSTed.
        attempt: 1 for the first attempt, 2 for the first retry, ...
        time: Virtual wall-clock time (Unix seconds) of the attempt.
        headers: The headers sent (``X-PixelByte-Timestamp``,
            ``X-PixelByte-Signature``, ``Content-Type``).
        body: The exact bytes sent (sign and verify over these).
        status: The receiver's HTTP status (a redirect's too: none is followed),
            or `None` if it could not be reached or did not answer in 30 s.
        error: Why the receiver could not be reached, if it could not
            (``TimeoutError: ...`` when it did not answer in time).
        ended_at: Virtual time the attempt ended: the answer, or the moment the
            API stopped waiting.  The next attempt's delay runs from here.

            .. versionadded:: 0.3.0

    """

    job_id: str
    url: str
    attempt: int
    time: float
    headers: dict[str, str]
    body: bytes
    status: int | None
    error: str | None = None
    ended_at: float | None = None

    @property
    def ok(self) -> bool:
        """Return whether the receiver answered 2xx."""
        return self.status is not None and 200 <= self.status < 300  # noqa: PLR2004 -- the 2xx range
