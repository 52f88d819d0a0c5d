"""A model of the polling schedule alone: polls per job against lag, no processes.

``python -m ops.bench.pollmodel`` runs workers.schedule's own functions on simulated jobs
whose generation times are L x uniform(1 - jitter, 1 + jitter) (the simulator's), learning
as the workers do: brackets go into a window of workers.latency.WINDOW, and the estimate a
job is created with is the one of ``LAG_ROUNDS`` rounds before (a job's bracket arrives a
generation time after its creation). Each poll runs a little late (exponential, mean
``late`` x L: the queue and the worker). It prints the trade-off curve over the schedule's
shape (SHAPES: ladders of quantiles, see workers.schedule): polls per job against the mean,
p50 and p95 lag, as fractions of L.
"""

from __future__ import annotations

import argparse
import random
import statistics
from collections import deque
from dataclasses import dataclass

from workers import config, latency, schedule

ROUND = 80  # jobs created between two refreshes of the estimate (40 jobs/s, 2 s)
LAG_ROUNDS = 3  # rounds between a job's creation and its bracket reaching the window
ROUNDS = 60
L = 10.0


@dataclass(frozen=True)
class Point:
    shape: schedule.Shape
    polls_per_job: float
    lag_p50: float  # fractions of L
    lag_p95: float
    lag_mean: float  # what throughput pays: a slot is held until its job is seen done
    first_share: float  # jobs seen done at their first poll


def simulate(
    shape: schedule.Shape,
    jitter: float = 0.25,
    late: float = 0.005,
    rounds: int = ROUNDS,
    seed: int = 1,
) -> Point:
    """Steady state of the schedule with ``shape`` (the last half of the rounds), for L = 10 s
    (times scale with L, except the schedule's 0.5 s floor on a delay)."""
    rng = random.Random(seed)
    settings = config.load({"WANQ_POLL_FIRST": str(L)})
    window: deque[tuple[float, float]] = deque(maxlen=latency.WINDOW)
    estimates: deque[schedule.Estimate | None] = deque([None] * LAG_ROUNDS, maxlen=LAG_ROUNDS)
    polls, lags, firsts = [], [], 0
    for r in range(rounds):
        estimate = estimates[0]
        for _ in range(ROUND):
            gen = L * (1.0 + jitter * rng.uniform(-1, 1))
            t = schedule.first_poll_delay(estimate, settings) + rng.expovariate(1 / (late * L))
            n, last_miss = 1, None
            while t < gen:
                last_miss = t
                delay = schedule.next_poll_delay(n, t, estimate, settings, rng)
                t += delay + rng.expovariate(1 / (late * L))
                n += 1
            window.appendleft(schedule.bracket(0.0, t, last_miss))
            if r >= rounds // 2:
                polls.append(n)
                lags.append((t - gen) / L)
                firsts += n == 1
        estimates.append(schedule.Estimate.of(schedule.Distribution.of(window), shape))
    q = statistics.quantiles(lags, n=100, method="inclusive")
    return Point(
        shape, statistics.fmean(polls), q[49], q[94], statistics.fmean(lags), firsts / len(polls)
    )


SHAPES = (  # ladders of 1 to 5 quantiles, with the spacing past them
    schedule.Shape(ladder=(0.30,), spacing=0.10),
    schedule.Shape(ladder=(0.45,), spacing=0.10),
    schedule.Shape(ladder=(0.55,), spacing=0.10),  # the shape before the ladder
    schedule.Shape(ladder=(0.55,), spacing=0.14),
    schedule.Shape(ladder=(0.65,), spacing=0.10),
    schedule.Shape(ladder=(0.50, 0.78, 0.93), spacing=0.06),
    schedule.SHAPE,
    schedule.Shape(ladder=(0.45, 0.74, 0.91, 0.98), spacing=0.06),  # the default until 2026-12
    schedule.Shape(ladder=(0.42, 0.72, 0.90, 0.97), spacing=0.08),
    schedule.Shape(ladder=(0.38, 0.68, 0.88, 0.97), spacing=0.06),
    schedule.Shape(ladder=(0.30, 0.58, 0.80, 0.93, 0.99), spacing=0.05),
)


def ladder_text(rungs: tuple[float, ...] | list[float]) -> str:
    """A ladder's quantiles as written in workers/schedule.py (0.985 stays 0.985)."""
    return ", ".join(f"{q:.3g}" for q in rungs)


def sweep(shapes: tuple[schedule.Shape, ...] = SHAPES, jitter: float = 0.25) -> list[Point]:
    return [simulate(shape, jitter) for shape in shapes]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ops.bench.pollmodel", description=__doc__)
    parser.add_argument("--jitter", type=float, default=0.25, help="generation times L x (1 +- j)")
    args = parser.parse_args(argv)
    print("ladder (quantiles)        spacing | polls/job  lag mean/L  p50/L  p95/L  done at 1st")
    for p in sweep(jitter=args.jitter):
        mark = "  <- default" if p.shape == schedule.SHAPE else ""
        ladder = ladder_text(p.shape.ladder)
        print(
            f"{ladder:25s} {p.shape.spacing:7.2f} | {p.polls_per_job:9.2f} {p.lag_mean:11.3f} "
            f"{p.lag_p50:6.3f} {p.lag_p95:6.3f} {p.first_share:12.0%}{mark}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
