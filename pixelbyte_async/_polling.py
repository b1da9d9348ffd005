"""
Adaptive polling: few GETs for a slow job, yet its end noticed within seconds.

The schedule uses the server's ``estimatedCompletionTime`` (or the model's typical
duration, or plain backoff when neither is known):

* far from the ETA, sleep until ``near_interval`` before it, at most
  ``max_interval`` at a time;
* near the ETA and up to ``overdue_grace`` seconds after it, poll every
  ``near_interval`` (never jittered upwards), so completion is noticed at most
  ``near_interval`` late;
* a job still running long after its ETA is polled less and less often
  (``overdue_backoff`` seconds more per second overdue, up to ``max_interval``), so a
  stuck or unknown status costs few requests;
* with no ETA at all, back off from ``min_interval`` by ``backoff`` up to
  ``max_interval``.

For a 240 s Kling job this is 6–8 GETs instead of 48 for a fixed 5 s loop.
"""

from __future__ import annotations

import random
import statistics
from collections import OrderedDict, deque
from collections.abc import Callable

import attrs


__all__ = ["EtaBias", "PollPolicy"]


@attrs.frozen(kw_only=True)
class PollPolicy:
    """
    How `Job.wait` and `Job.watch` poll.

    Args:
        min_interval: Shortest pause between two GETs of one job.
        near_interval: Pause near and after the ETA: the worst-case notice delay.
        max_interval: Longest pause between two GETs of one job.
        backoff: Growth factor when no ETA is known.
        jitter: Fraction of each pause randomised (± ``jitter``), to spread load.
        overdue_grace: Seconds after the ETA during which ``near_interval`` holds.
        overdue_backoff: Extra pause per second overdue, after the grace period.
        webhook_grace: With webhooks, the one safety GET comes this long after the
            ETA (the delivery normally arrives first, making it unnecessary).
        webhook_interval: With webhooks, the pause between later safety GETs.
        default_timeout: Deadline of `Job.wait` when no *timeout* is given.

    .. versionadded:: 0.1.0

    """

    min_interval: float = attrs.field(default=1.0, validator=attrs.validators.gt(0))
    near_interval: float = attrs.field(default=4.0, validator=attrs.validators.gt(0))
    max_interval: float = attrs.field(default=60.0, validator=attrs.validators.gt(0))
    backoff: float = attrs.field(default=1.5, validator=attrs.validators.ge(1))
    jitter: float = attrs.field(
        default=0.1, validator=[attrs.validators.ge(0), attrs.validators.lt(1)]
    )
    overdue_grace: float = attrs.field(default=60.0, validator=attrs.validators.ge(0))
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
    ) -> float:
        """
        Return the pause before the next GET.

        Args:
            now: Current wall-clock time (Unix seconds).
            eta: Expected completion (Unix seconds), or ``None`` if unknown.
            previous: The previous pause, for backoff without an ETA.
            rng: ``uniform(a, b)``; default `random.uniform`.

        """
        if eta is not None:
            remaining = eta - now
            overdue = -remaining - self.overdue_grace
            if remaining > self.near_interval:
                base = min(self.max_interval, remaining - self.near_interval)
                base = max(base, self.near_interval)
            elif overdue > 0:
                base = min(
                    self.max_interval,
                    self.near_interval + self.overdue_backoff * overdue,
                )
            else:
                base = self.near_interval
            # Never jitter upwards near the ETA: it is the notice-delay bound.
            return self._jittered(base, rng, up=remaining > 2 * self.near_interval)
        if previous is None:
            base = self.min_interval
        else:
            base = min(
                self.max_interval, max(self.min_interval, previous * self.backoff)
            )
        return self._jittered(base, rng, up=True)

    def safety_delay(self, *, now: float, eta: float | None) -> float:
        """
        Return the pause before a safety GET when a webhook is expected.

        One GET at ``eta + webhook_grace`` (for a lost delivery), then one every
        ``webhook_interval``.
        """
        if eta is not None and now < eta + self.webhook_grace:
            return max(self.min_interval, eta + self.webhook_grace - now)
        return self.webhook_interval

    def _jittered(
        self,
        base: float,
        rng: Callable[[float, float], float] | None,
        *,
        up: bool,
    ) -> float:
        if self.jitter == 0:
            return base
        uniform = rng or random.uniform
        factor = uniform(1 - self.jitter, 1 + self.jitter if up else 1.0)
        return max(self.min_interval, min(self.max_interval, base * factor))


class EtaBias:
    """
    How the API's ETA compared with when this client's recent jobs really ended.

    A model's ETA is static while its jobs vary: where the jobs of a model keep
    ending at half (or twice) the time their ETA said, polling aims at where they
    will end, not at the ETA.  Per model, the ratio of each completed job's
    duration to its ETA's is kept for the last *keep* jobs (and *models* models);
    from *after* jobs on, their median scales the next jobs' ETAs.

    .. versionadded:: 0.3.0
    """

    def __init__(self, *, keep: int = 8, after: int = 3, models: int = 64) -> None:
        self._keep = keep
        self._after = after
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

    def factor(self, model: str) -> float:
        """What to scale *model*'s next ETA by (1.0 until enough jobs are known)."""
        ratios = self._ratios.get(model)
        if ratios is None or len(ratios) < self._after:
            return 1.0
        return statistics.median(ratios)
