"""Retry and polling schedules as pure functions, testable without Redis or Celery.

Polling learns the DISTRIBUTION of generation times, not one mean: each finished job gives
a bracket ``(lo, hi]`` (the last poll that saw it running, the poll that saw it done; a job
done at its first poll gives ``(0, hi]``), and the estimate is the mixture of those brackets,
each spread evenly over its width. Polls are aimed at a LADDER of its quantiles
(``Shape.ladder``), then spaced past it:

- the first poll is aimed at the ladder's first quantile, so about that share of jobs is seen
  at one poll. Brackets of jobs done at their first poll start at 0, so a first poll aimed
  too late pulls its own quantile down, and one aimed too early is corrected from the narrow
  brackets above it: the schedule settles where the share done at the first poll is that
  quantile;
- the next polls go to the ladder's next quantiles. Its steps shrink (0.52, 0.78, 0.93,
  0.985: 26, 15, then 5.5 points), because a job's lag is the gap between the poll before its
  end and the poll after, and a poll is paid by every job still running at the poll before
  it: wide gaps early, while most jobs pay, and narrow ones late, when few are left to pay,
  cost the fewest polls for a lag (optimal inspection times shrink their gaps by a constant
  amount where the density is flat). In time this puts polls close where completions are dense and
  far apart where they are rare, whatever the distribution's shape;
- past the ladder, polls come every ``spacing`` x the median generation time, growing by
  ``poll_factor - 1`` of the time spent past the ``tail_quantile``, so outliers cost few polls.

Polls per job are then about 1 + the sum of ``1 - q`` over the ladder (1.78 here), whatever
the distribution's width. For generation times spread +-25 % around their mean, a model of
the schedule alone gives 1.77 polls per job at a mean lag of 0.092, a median of 0.075 and a
p95 of 0.23 of the mean (1.78 polls where they spread +-50 %); the previous shape (one
quantile, 0.55, then even spacing) gave 1.79 polls at a mean lag of 0.097 (p95 0.25), and
2.35 polls at +-50 %. ``python -m ops.bench.pollmodel`` prints the curve the shapes sit on.
Real runs paid more polls than the model while the window of brackets (workers.latency)
was shorter than a generation time: the first rung answers the first polls it aimed with a
gain above one (aimed late, more jobs are done at it, and their ``(0, t]`` brackets pull it
down by more than it was late), so a short window let the first poll's aim swing (full
benchmark, L = 10 s, 256 brackets: aims 0.86-1.08 L, p10-p90, 1.92 polls per job in the
steady rounds, against the model's 1.77). A window of 1024 brackets averages that out: aims
0.95-1.04 L, 1.79-1.84 polls per job in the steady rounds (two runs), mean lag 0.089 L
instead of 0.096.
What still costs: the second and third C jobs pay 2.2 polls each, polled on an estimate
learned while the first rounds were still ending (their shortest generations first). The
mean lag is what throughput pays (a slot is held until its job is seen done), polls per job
what the CPU pays. Every delay is capped by ``max_countdown`` (see config).
"""

from __future__ import annotations

import bisect
import functools
import random
from collections.abc import Iterable
from dataclasses import dataclass

from workers.config import Settings


@dataclass(frozen=True)
class Shape:
    """Where polls go, in terms of the learned distribution (see the module docstring)."""

    ladder: tuple[float, ...] = (0.52, 0.78, 0.93, 0.985)  # quantiles the polls aim at, in turn
    spacing: float = 0.06  # past the ladder: this fraction of the median generation time apart
    tail_quantile: float = 0.95  # past this, intervals grow with the time already waited

    @property
    def first_quantile(self) -> float:
        """The share of jobs the first poll is aimed to find done."""
        return self.ladder[0]


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

    @functools.cached_property
    def _knots(self) -> tuple[list[float], list[float], list[float]]:
        """Where the CDF (in brackets, not shares) changes slope or jumps: the times, the mass
        ended just before each and at it. Between two knots it is linear, so one sorted pass
        gives every quantile (a window of a thousand brackets: about a millisecond)."""
        slopes: dict[float, float] = {}
        jumps: dict[float, float] = {}
        for lo, hi in self.brackets:
            if hi > lo:
                slopes[lo] = slopes.get(lo, 0.0) + 1.0 / (hi - lo)
                slopes[hi] = slopes.get(hi, 0.0) - 1.0 / (hi - lo)
            else:
                jumps[hi] = jumps.get(hi, 0.0) + 1.0
        times, before, at = [0.0], [0.0], [0.0]
        slope = 0.0
        for t in sorted(slopes.keys() | jumps.keys()):
            ended = at[-1] + slope * (t - times[-1])
            times.append(t)
            before.append(ended)
            at.append(ended + jumps.get(t, 0.0))
            slope += slopes.get(t, 0.0)
        return times, before, at

    def quantile(self, p: float) -> float:
        """The time by which a share ``p`` of generations has ended: the first time the
        CDF reaches it, interpolated between the two knots around it."""
        times, before, at = self._knots
        target = p * len(self.brackets)
        i = min(bisect.bisect_left(at, target), len(at) - 1)
        if i == 0 or target >= before[i] or before[i] <= at[i - 1]:
            return times[i]
        share = (target - at[i - 1]) / (before[i] - at[i - 1])
        return times[i - 1] + share * (times[i] - times[i - 1])


@dataclass(frozen=True)
class Estimate:
    """What the schedule needs of the learned distribution: the times of the ladder's
    quantiles, the median and the tail quantile."""

    first: float  # the ladder's first quantile of generation times: the first poll's aim
    median: float
    tail: float  # the shape's tail quantile: past it, intervals grow
    spacing: float = SHAPE.spacing  # past the ladder: polls this x the median apart
    later: tuple[float, ...] = ()  # the ladder's other quantiles: the next polls' aims

    @classmethod
    def of(cls, distribution: Distribution | None, shape: Shape = SHAPE) -> Estimate | None:
        """The figures the schedule uses, computed once per estimate (see workers.latency)."""
        if distribution is None:
            return None
        first, *later = (distribution.quantile(q) for q in shape.ladder)
        return cls(
            first=first,
            median=distribution.quantile(0.5),
            tail=distribution.quantile(shape.tail_quantile),
            spacing=shape.spacing,
            later=tuple(later),
        )


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

    With an estimate: at the next rung of the ladder at least MIN_INTERVAL away, then every
    ``spacing`` x median, growing by ``poll_factor - 1`` of the time spent past the tail
    quantile. Without: NEXT_POLL_FRACTION x ``poll_first``, growing by ``poll_factor`` per
    poll."""
    if estimate is None:
        delay = settings.poll_first * NEXT_POLL_FRACTION
        delay *= settings.poll_factor ** max(0, polls_done - 1)
    elif (rung := _next_rung(estimate, elapsed)) is not None:
        delay = rung
    else:
        delay = max(
            estimate.spacing * estimate.median,
            (elapsed - estimate.tail) * (settings.poll_factor - 1),
        )
    delay = min(delay, settings.poll_max_interval)
    return clamp(delay * (rng or random).uniform(1 - JITTER, 1 + JITTER), settings)


def _next_rung(estimate: Estimate, elapsed: float) -> float | None:
    """Seconds to the next rung of the ladder at least MIN_INTERVAL away; the first rung
    counts too (a first poll cut short by max_countdown, or aimed by the prior)."""
    rungs = (estimate.first, *estimate.later)
    return next((t - elapsed for t in rungs if t - elapsed >= MIN_INTERVAL), None)


def clamp(delay: float, settings: Settings) -> float:
    return max(MIN_INTERVAL, min(delay, settings.max_countdown))


def bracket(
    created_at: float, seen_done_at: float, last_miss_at: float | None
) -> tuple[float, float]:
    """What polling saw of one task's generation time: it ended after the last poll that
    found it running (or after its creation) and by the poll that found it done."""
    lo = last_miss_at - created_at if last_miss_at and last_miss_at > created_at else 0.0
    return lo, seen_done_at - created_at
