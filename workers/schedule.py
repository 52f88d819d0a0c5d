"""Retry and polling schedules as pure functions, testable without Redis or Celery.

Polling learns the DISTRIBUTION of generation times, not one mean: each finished job gives
a bracket ``(lo, hi]`` (the last poll that saw it running, the poll that saw it done; a job
done at its first poll gives ``(0, hi]``), and the estimate is the mixture of those brackets,
each spread evenly over its width. From it:

- the first poll is aimed at the ``Shape.first_quantile`` of generation times, so about that
  share of jobs is seen at one poll. Brackets of jobs done at their first poll start at 0, so a
  first poll aimed too late pulls its own quantile down, and one aimed too early is corrected
  from the narrow brackets above it: the schedule settles where the share done at the first
  poll is ``first_quantile``;
- later polls come every ``spacing`` x the median generation time (the lag of a job is at
  most one spacing), until the ``tail_quantile``; past it the interval grows by
  ``poll_factor - 1`` of the time already spent past the tail, so outliers cost few polls.

Aiming the first poll past the median is what keeps polls per job under 2: more than half
of the jobs need one poll, and their lag (up to the spread below the aim) is the price;
the median lag stays under one spacing. For generation times spread +-25 % around their
mean, a model of the schedule alone gives 1.8 polls per job at a median lag of 0.077 and a
p95 lag of 0.25 of the mean (``python -m ops.bench.pollmodel`` prints the curve the shape
sits on: 0.45 / 0.14 gives 1.9 polls, 0.088 and 0.19). Every delay is capped by
``max_countdown`` (see config).
"""

from __future__ import annotations

import random
from collections.abc import Iterable
from dataclasses import dataclass

from workers.config import Settings


@dataclass(frozen=True)
class Shape:
    """Where polls go, in terms of the learned distribution (see the module docstring)."""

    first_quantile: float = 0.55  # share of jobs the first poll is aimed to find done
    spacing: float = 0.10  # later polls: this fraction of the median generation time apart
    tail_quantile: float = 0.95  # past this, intervals grow with the time already waited


SHAPE = Shape()
MIN_SAMPLES = 20  # fewer brackets than this: no estimate, the operator's prior rules
NEXT_POLL_FRACTION = 0.08  # before any estimate: poll again after this x poll_first, growing
JITTER = 0.05  # +-5 % on later polls, so jobs created together do not poll together
MIN_INTERVAL = 0.5


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with full jitter, capped, honouring the server's Retry-After."""

    max_attempts: int
    base: float
    cap: float

    @classmethod
    def from_settings(cls, settings: Settings) -> RetryPolicy:
        return cls(settings.max_attempts, settings.backoff_base, settings.backoff_cap)

    def delay(
        self, attempt: int, retry_after: float | None = None, rng: random.Random | None = None
    ) -> float:
        """Seconds before retry number ``attempt`` (1-based)."""
        ceiling = min(self.cap, self.base * 2 ** max(0, attempt - 1))
        delay = (rng or random).uniform(ceiling / 2, ceiling)
        if retry_after is not None:
            delay = max(delay, retry_after)
        return delay

    def exhausted(self, attempts: int) -> bool:
        return attempts >= self.max_attempts


@dataclass(frozen=True)
class Distribution:
    """Generation times as a mixture of brackets ``(lo, hi]``, each uniform over its width.

    A quantile is where the mixture's CDF reaches it: exact for narrow brackets, and for the
    wide ``(0, t1]`` brackets of jobs done at their first poll it errs low, which is what
    makes the first poll settle (see the module docstring)."""

    brackets: tuple[tuple[float, float], ...]

    @classmethod
    def of(cls, brackets: Iterable[tuple[float, float]]) -> Distribution | None:
        """The distribution of these brackets, or None with fewer than MIN_SAMPLES."""
        kept = tuple((max(0.0, lo), hi) for lo, hi in brackets if hi > 0 and hi >= lo)
        return cls(kept) if len(kept) >= MIN_SAMPLES else None

    def cdf(self, t: float) -> float:
        total = 0.0
        for lo, hi in self.brackets:
            if t >= hi:
                total += 1.0
            elif t > lo:
                total += (t - lo) / (hi - lo)
        return total / len(self.brackets)

    def quantile(self, p: float) -> float:
        """The time by which a share ``p`` of generations has ended (bisection on the CDF:
        it is piecewise linear and monotone; 40 halvings are far below a millisecond)."""
        lo, hi = 0.0, max(h for _, h in self.brackets)
        for _ in range(40):
            mid = (lo + hi) / 2
            if self.cdf(mid) < p:
                lo = mid
            else:
                hi = mid
        return hi

    def summary(self, shape: Shape = SHAPE) -> dict[str, float]:
        """The figures the schedule uses, computed once per estimate (see workers.latency)."""
        return {
            "first": self.quantile(shape.first_quantile),
            "median": self.quantile(0.5),
            "tail": self.quantile(shape.tail_quantile),
            "spacing": shape.spacing,
        }


@dataclass(frozen=True)
class Estimate:
    """What the schedule needs of the learned distribution: three quantiles."""

    first: float  # the shape's first quantile of generation times: the first poll's aim
    median: float
    tail: float  # the shape's tail quantile: past it, intervals grow
    spacing: float = SHAPE.spacing  # later polls: this x the median apart

    @classmethod
    def of(cls, distribution: Distribution | None, shape: Shape = SHAPE) -> Estimate | None:
        return None if distribution is None else cls(**distribution.summary(shape))


def first_poll_delay(estimate: Estimate | None, settings: Settings) -> float:
    """Delay of the first poll after creation: the shape's first quantile of generation times, or
    the operator's prior ``poll_first`` until enough of them were seen."""
    return clamp(settings.poll_first if estimate is None else estimate.first, settings)


def next_poll_delay(
    polls_done: int,
    elapsed: float,
    estimate: Estimate | None,
    settings: Settings,
    rng: random.Random | None = None,
) -> float:
    """Delay after an unfinished poll, ``elapsed`` seconds after creation.

    With an estimate: every ``spacing`` x median until the tail quantile, then growing by
    ``poll_factor - 1`` of the time spent past the tail. Without: NEXT_POLL_FRACTION x
    ``poll_first``, growing by ``poll_factor`` per poll."""
    if estimate is None:
        delay = settings.poll_first * NEXT_POLL_FRACTION
        delay *= settings.poll_factor ** max(0, polls_done - 1)
    else:
        delay = max(
            estimate.spacing * estimate.median,
            (elapsed - estimate.tail) * (settings.poll_factor - 1),
        )
    delay = min(delay, settings.poll_max_interval)
    return clamp(delay * (rng or random).uniform(1 - JITTER, 1 + JITTER), settings)


def clamp(delay: float, settings: Settings) -> float:
    return max(MIN_INTERVAL, min(delay, settings.max_countdown))


def bracket(
    created_at: float, seen_done_at: float, last_miss_at: float | None
) -> tuple[float, float]:
    """What polling saw of one task's generation time: it ended after the last poll that
    found it running (or after its creation) and by the poll that found it done."""
    lo = last_miss_at - created_at if last_miss_at and last_miss_at > created_at else 0.0
    return lo, seen_done_at - created_at
