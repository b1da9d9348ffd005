"""
Adaptive polling: few GETs for a slow job, yet its end noticed within seconds.

The schedule uses when the job is expected to end: the server's
``estimatedCompletionTime`` (or the model's typical duration), corrected by where
this client's recent jobs of the model really ended against it (`EtaBias`), and the
span it may end in (`EndWindow`):

* before the job can plausibly have ended, sleep in even steps of at most
  ``max_interval``;
* once it may have ended, poll at least every ``unsure_interval``, and aim one GET
  just after the expected end;
* from the expected end for ``overdue_grace`` seconds, poll every
  ``near_interval``;
* until the latest plausible end, poll every ``unsure_interval``;
* a job still running after that is polled less and less often
  (``overdue_backoff`` seconds more per second overdue, up to ``max_interval``), so
  a stuck or unknown status costs few requests;
* with no ETA at all, back off from ``min_interval`` by ``backoff`` up to
  ``max_interval``.

For a 240 s Kling job whose model the client has seen end where its ETA says,
this is about 6 GETs (a fixed 5 s loop needs 48), the end noticed within a second.
"""

from __future__ import annotations

import math
import random
import statistics
from collections import OrderedDict, deque
from collections.abc import Callable

import attrs


__all__ = ["EndWindow", "EtaBias", "PollPolicy"]


#: Where the first GET near the expected end lands after it (seconds).
_AIM = 0.5


@attrs.frozen
class EndWindow:
    """
    When a job is expected to end, and the span it may plausibly end in.

    All three are Unix seconds, ``earliest <= expected <= latest``.

    .. versionadded:: 0.3.0
    """

    earliest: float
    expected: float
    latest: float


@attrs.frozen(kw_only=True)
class PollPolicy:
    """
    How `Job.wait` and `Job.watch` poll.

    Args:
        min_interval: Shortest pause between two GETs of one job.
        near_interval: Pause from the expected end for ``overdue_grace`` seconds.
        unsure_interval: Longest pause once the job may have ended (from its
            earliest plausible end to its latest): the worst-case notice delay
            for a job whose ETA is off.
        max_interval: Longest pause between two GETs of one job.
        backoff: Growth factor when no ETA is known.
        jitter: Fraction by which a long pause before the job can have ended is
            randomly shortened (or, without an ETA, each pause varied ±), to
            spread load.  Pauses once the job may have ended are never jittered.
        overdue_grace: Seconds after the expected end during which
            ``near_interval`` holds.
        overdue_backoff: Extra pause per second past the latest plausible end.
        webhook_grace: With webhooks, the one safety GET comes this long after the
            ETA (the delivery normally arrives first, making it unnecessary).
        webhook_interval: With webhooks, the pause between later safety GETs.
        default_timeout: Deadline of `Job.wait` when no *timeout* is given.

    .. versionadded:: 0.1.0
    .. versionchanged:: 0.3.0
       *unsure_interval*, and a window of plausible ends (`EndWindow`); the
       default *overdue_grace* is 12 s (was 60 s).

    """

    min_interval: float = attrs.field(default=1.0, validator=attrs.validators.gt(0))
    near_interval: float = attrs.field(default=4.0, validator=attrs.validators.gt(0))
    unsure_interval: float = attrs.field(default=12.0, validator=attrs.validators.gt(0))
    max_interval: float = attrs.field(default=60.0, validator=attrs.validators.gt(0))
    backoff: float = attrs.field(default=1.5, validator=attrs.validators.ge(1))
    jitter: float = attrs.field(
        default=0.1, validator=[attrs.validators.ge(0), attrs.validators.lt(1)]
    )
    overdue_grace: float = attrs.field(default=12.0, validator=attrs.validators.ge(0))
    overdue_backoff: float = attrs.field(default=0.25, validator=attrs.validators.ge(0))
    webhook_grace: float = attrs.field(default=60.0, validator=attrs.validators.ge(0))
    webhook_interval: float = attrs.field(
        default=120.0, validator=attrs.validators.gt(0)
    )
    default_timeout: float = attrs.field(
        default=1800.0, validator=attrs.validators.gt(0)
    )

    @classmethod
    def fixed(cls, interval: float, **kwargs: float) -> PollPolicy:
        """Return a policy that polls every *interval* seconds, ETA or not."""
        return cls(
            min_interval=interval,
            near_interval=interval,
            unsure_interval=interval,
            max_interval=interval,
            backoff=1.0,
            jitter=0.0,
            overdue_backoff=0.0,
            **kwargs,
        )

    def next_delay(
        self,
        *,
        now: float,
        eta: float | None,
        previous: float | None,
        rng: Callable[[float, float], float] | None = None,
        earliest: float | None = None,
        latest: float | None = None,
    ) -> float:
        """
        Return the pause before the next GET.

        Args:
            now: Current wall-clock time (Unix seconds).
            eta: Expected end (Unix seconds), or ``None`` if unknown.
            previous: The previous pause, for backoff without an ETA.
            rng: ``uniform(a, b)``; default `random.uniform`.
            earliest: The earliest plausible end (default: *eta*).
            latest: The latest plausible end (default: *eta*).

        """
        if eta is None:
            base = (
                self.min_interval
                if previous is None
                else max(self.min_interval, previous * self.backoff)
            )
            return self._bounded(self._jittered(base, rng))
        aimed = eta + _AIM
        first = aimed if earliest is None else min(earliest, aimed)
        last = eta if latest is None else max(latest, eta)
        if now < first - self.min_interval:
            # Nothing can have happened yet: long even steps, never past *first*.
            gap = first - now
            steps = math.ceil(gap / self.max_interval)
            base = gap / steps
            if self.jitter and steps > 1:
                # Shorter by up to `jitter`, but never by so much that one more
                # step is needed.
                shortest = max(
                    base * (1 - self.jitter), gap - (steps - 1) * self.max_interval
                )
                base = (rng or random.uniform)(shortest, base)
        elif now < aimed:
            # It may have ended: even steps of at most unsure_interval, one GET
            # landing just after the expected end.
            base = _even(aimed - now, self.unsure_interval)
        elif now < aimed + self.overdue_grace:
            base = self.near_interval
        elif now < last:
            base = self.unsure_interval
        else:
            overdue = now - max(last, aimed + self.overdue_grace)
            base = self.unsure_interval + self.overdue_backoff * overdue
        return self._bounded(base)

    def safety_delay(self, *, now: float, eta: float | None) -> float:
        """
        Return the pause before a safety GET when a webhook is expected.

        One GET at ``eta + webhook_grace`` (for a lost delivery), then one every
        ``webhook_interval``.
        """
        if eta is not None and now < eta + self.webhook_grace:
            return max(self.min_interval, eta + self.webhook_grace - now)
        return self.webhook_interval

    def _bounded(self, pause: float) -> float:
        return max(self.min_interval, min(self.max_interval, pause))

    def _jittered(
        self, base: float, rng: Callable[[float, float], float] | None
    ) -> float:
        if self.jitter == 0:
            return base
        uniform = rng or random.uniform
        return base * uniform(1 - self.jitter, 1 + self.jitter)


def _even(gap: float, step: float) -> float:
    """The first of the fewest equal steps of at most *step* that cover *gap*."""
    if gap <= step:
        return gap
    return gap / math.ceil(gap / step)


class EtaBias:
    """
    Where this client's recent jobs of each model ended against their ETA.

    A model's ETA is static while its jobs vary: where the jobs of a model keep
    ending at two thirds (or twice) the time their ETA said, polling aims at where
    they will end, not at the ETA.  Per model, the ratio of each completed job's
    duration to its ETA's is kept for the last *keep* jobs (and *models* models).

    `window` turns them into an `EndWindow` for a job: expected at the median
    ratio, plausible from the lowest ratio to the highest, widened by a margin
    that shrinks as jobs are learnt.  With nothing learnt, a job may end from
    ``0.6`` to ``2`` times its ETA's duration (an ETA off by half either way);
    until three jobs are known, the ETA itself stays inside the window, so one odd
    job cannot make the next one be noticed late.

    .. versionadded:: 0.3.0
    """

    #: The plausible ratios of duration to ETA when nothing is known yet.
    PRIOR = (0.6, 2.0)
    #: How many jobs must agree before the ETA itself may leave the window.
    AGREE = 3

    def __init__(self, *, keep: int = 8, models: int = 64) -> None:
        self._keep = keep
        self._models = models
        self._ratios: OrderedDict[str, deque[float]] = OrderedDict()

    def learn(self, model: str, *, created: float, eta: float, ended: float) -> None:
        """A job of *model* created at *created*, due at *eta*, ended at *ended*."""
        said = eta - created
        took = ended - created
        if said <= 0 or took <= 0:
            return
        ratios = self._ratios.get(model)
        if ratios is None:
            ratios = self._ratios[model] = deque(maxlen=self._keep)
            while len(self._ratios) > self._models:
                self._ratios.popitem(last=False)
        self._ratios.move_to_end(model)
        ratios.append(min(max(took / said, 0.1), 10.0))

    def ratios(self, model: str) -> tuple[float, float, float]:
        """The (lowest, expected, highest) plausible ratio of duration to ETA."""
        learnt = self._ratios.get(model)
        if not learnt:
            low, high = self.PRIOR
            return low, 1.0, high
        n = len(learnt)
        margin = max(1.05, 1.5 ** (1 / (n + 1)))
        span = [*learnt, 1.0] if n < self.AGREE else list(learnt)
        return min(span) / margin, statistics.median(learnt), max(span) * margin

    def window(self, model: str, *, start: float, eta: float) -> EndWindow:
        """The `EndWindow` of a job of *model* started at *start*, due at *eta*."""
        said = eta - start
        if said <= 0:
            return EndWindow(eta, eta, eta)
        low, mid, high = self.ratios(model)
        return EndWindow(start + said * low, start + said * mid, start + said * high)
