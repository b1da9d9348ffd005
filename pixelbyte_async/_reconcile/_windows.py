"""
Where a lost submit's job can appear, and which listed jobs nobody known could have made.

Pure functions over server times: a `Window` bounds the ``createdAt`` of a job an
attempt may have made (its start to its horizon, moved by the measured clock
offset), and `classify` sorts the account's unclaimed jobs into one attempt's
candidates, the rivals that could own them, and the jobs no recorded attempt can
explain: the sign of submitters the ledger does not know.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import attrs

from pixelbyte_async._ledger import Attempt


__all__ = [
    "ATTEMPTS_BACK",
    "CREATED_AT_SLACK",
    "LOOKBACK",
    "Sighting",
    "Verdict",
    "Window",
    "classify",
]

#: ``createdAt`` may be given to the whole second (floored): a job's may read up
#: to this much earlier than it was made.
CREATED_AT_SLACK = 1.0
#: How far before a lost submit's window the account is checked for jobs the
#: ledger cannot explain (other submitters), in seconds.
LOOKBACK = 600.0
#: How far back the ledger is read for attempts whose window may reach a job:
#: an attempt's window ends at its horizon, or at its deadline while it is on
#: the wire (the submit timeout, 900 s by default).
ATTEMPTS_BACK = 3600.0


@attrs.frozen
class Window:
    """Server-time bounds of the ``createdAt`` of a job one attempt may have made."""

    low: float
    high: float

    @classmethod
    def of(cls, started_at: float, until: float, offset: tuple[float, float]) -> Window:
        """
        The window of a request begun at *started_at* that may make a job until *until*.

        Both are the sender's clock; *offset* bounds the API's clock against it.
        """
        low, high = offset
        return cls(started_at + low - CREATED_AT_SLACK, until + high)

    def holds(self, created: float | None) -> bool:
        """Whether a job created at *created* (unknown: ``None``) may be in it."""
        return created is None or self.low <= created <= self.high


@attrs.frozen
class Sighting:
    """A job of the account that nothing claims, as the job list showed it."""

    job_id: str
    created: float | None


@attrs.frozen
class Verdict:
    """
    What the unclaimed jobs say about one attempt.

    Attributes:
        candidates: Jobs in its window (one of them may be its own).
        rivals: Other attempts of unknown fate whose window holds a candidate.
        waiting: A rival is still on the wire: its answer may explain a candidate.
        foreign: Jobs no recorded attempt could have made: other submitters.

    """

    candidates: tuple[str, ...]
    rivals: tuple[Attempt, ...]
    waiting: bool
    foreign: tuple[str, ...]

    @property
    def sole(self) -> str | None:
        """The one candidate, when nothing else could have made it."""
        if len(self.candidates) == 1 and not self.rivals and not self.foreign:
            return self.candidates[0]
        return None


def classify(
    sightings: Iterable[Sighting],
    *,
    mine: Window,
    me: str,
    attempts: Iterable[Attempt],
    window_of: Callable[[Attempt], Window],
    now: float,
) -> Verdict:
    """
    Sort unclaimed jobs into *me*'s candidates, their rivals, and the unexplained.

    *attempts* are every attempt of the model the ledger (and this process) know;
    only open ones (`Attempt.open`) can own an unclaimed job.
    """
    others = [a for a in attempts if a.id != me and a.open]
    windows = {a.id: window_of(a) for a in others}
    candidates: list[str] = []
    rivals: dict[str, Attempt] = {}
    foreign: list[str] = []
    for seen in sightings:
        owners = [a for a in others if windows[a.id].holds(seen.created)]
        if mine.holds(seen.created):
            candidates.append(seen.job_id)
            rivals.update((a.id, a) for a in owners)
        elif not owners:
            foreign.append(seen.job_id)
    return Verdict(
        candidates=tuple(candidates),
        rivals=tuple(rivals.values()),
        waiting=any(a.in_flight(now) for a in rivals.values()),
        foreign=tuple(foreign),
    )
