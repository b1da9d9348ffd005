"""
What a ledger records: each submit attempt (`Attempt`) and each claimed job (`Claim`).
"""

from __future__ import annotations

from typing import Literal, TypeAlias, get_args

import attrs


__all__ = ["OPEN_STATES", "STATES", "Attempt", "AttemptState", "Claim", "ClaimHow"]

#: Where a submit attempt stands:
#:
#: * ``sending``: on the wire until its deadline (``ends_by``); past it with no
#:   word, its process died or hung, and its fate is unknown;
#: * ``created``: the API answered with its job;
#: * ``unknown``: its answer was lost (timeout, dropped connection, 5xx): it may
#:   have made a job, even minutes later;
#: * ``found``: its job was found later (a delivery, the job list, a person);
#: * ``parked``: its job could not be told apart from others; a person decides;
#: * ``none``: it made no job (the API refused it, or its settle horizon passed
#:   with none, or a person said so).
AttemptState: TypeAlias = Literal[
    "sending", "created", "unknown", "found", "parked", "none"
]
STATES: tuple[AttemptState, ...] = get_args(AttemptState)
#: The states in which an attempt may still own a job nobody has tied to it.
OPEN_STATES: frozenset[AttemptState] = frozenset({"sending", "unknown", "parked"})

#: How a job came to be claimed: its submit's answer, a verified delivery that
#: carried the attempt's nonce, the job list when nobody else could have made it,
#: or a person (``batch resolve --adopt``, an adopted audit orphan).
ClaimHow: TypeAlias = Literal["submitted", "delivery", "list", "person"]


@attrs.frozen(kw_only=True)
class Attempt:
    """
    One submit request, recorded before it was sent.

    Times are the submitting process's wall clock (Unix seconds).

    Attributes:
        id: The attempt's nonce (the ``pb_attempt`` of its ``webhookUrl`` when
            *tagged*).
        model: The model slug it submitted.
        started_at: When the request began.
        ends_by: The request's deadline: by then it has been answered or given up.
        state: See `AttemptState`.
        owner: The process that sent it (``host:pid:client``).
        tagged: Whether its ``webhookUrl`` carries its id, so a verified delivery
            can prove which job it made.
        job_id: Its job, once known.
        list_price: What its input costs at list price (micro-cents), if known.
        offset: The bounds ``(low, high)`` of the API's clock offset the sender
            had measured, if any (another machine's clock is not ours).

    """

    id: str
    model: str
    started_at: float
    ends_by: float
    state: AttemptState
    owner: str
    tagged: bool = False
    job_id: str | None = None
    list_price: int | None = None
    offset: tuple[float, float] | None = None

    @property
    def open(self) -> bool:
        """Whether it may still own a job nobody has tied to it."""
        return self.state in OPEN_STATES

    def in_flight(self, now: float) -> bool:
        """Whether its request is still on the wire (an answer is to come)."""
        return self.state == "sending" and now <= self.ends_by


@attrs.frozen(kw_only=True)
class Claim:
    """
    A job the ledger knows whose it is.

    Attributes:
        job_id: The job.
        attempt: The attempt that made it, if one of the ledger's did.
        how: How it was claimed (see `ClaimHow`).
        at: When.

    """

    job_id: str
    attempt: str | None
    how: ClaimHow
    at: float
