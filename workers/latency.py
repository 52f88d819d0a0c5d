"""The cluster's learned generation time: a window of recent measurements in Redis.

Each job that ends ``completed`` may add one bracket ``(lo, hi]`` of its generation time to
a capped list (``wanq:stats:latency``, newest first, WINDOW entries); the polling schedule
reads quantiles of the window (workers.schedule), never a mean that one bad episode drags.

Only brackets that measure the generation time are kept. A job whose polls met an account
block or a transient error (the poll task marks it ``unmeasured``), or whose last poll ran
late (pacing, a busy worker), is left out: its bracket holds time spent blocked or waiting,
not generating. So an outage leaves the window, and the estimate, where they were.

Reading the window is one LRANGE per process every REFRESH seconds, not one per task.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import redis

from workers import keys, schedule

# Brackets kept: 25 s of completions at 40 jobs/s, longer at lower rates. A window shorter than
# a generation time let the first poll's aim swing: that quantile answers the first polls it
# aimed, with a gain above one (aimed late, more jobs are done at it and their (0, t] brackets
# pull it down further), and a short window did not average the swing out (full bench, L =
# 10 s, 256 brackets: first polls aimed 0.86-1.08 L, p10-p90, 1.92 polls per job in the
# steady rounds; 1024 brackets: 0.95-1.04 L, 1.79-1.84 polls in two runs).
WINDOW = 1024
REFRESH = 2.0  # seconds a process reuses its estimate before reading the window again
LATE_MIN = 1.0  # a poll this late (seconds) ...
LATE_SHARE = 0.1  # ... or this share of its delay after creation, measures waiting too


def learn(client: redis.Redis, job: dict[str, str], seen_done_at: float, pipe: Any = None) -> bool:
    """Add this completed job's bracket to the window if it measures generation time (on
    ``pipe`` when given: the caller executes it)."""
    found = measured(job, seen_done_at)
    if found is None:
        return False
    lo, hi = found
    own = pipe is None
    if own:
        pipe = client.pipeline(transaction=False)
    pipe.lpush(keys.LATENCY, f"{lo:.3f} {hi:.3f}")
    pipe.ltrim(keys.LATENCY, 0, WINDOW - 1)
    if own:
        pipe.execute()
    return True


def measured(job: dict[str, str], seen_done_at: float) -> tuple[float, float] | None:
    """The job's generation-time bracket, or None when its polling measured something else:
    no creation time, a poll that met an error or a block, or a poll that ran late."""
    created = _float(job.get("created_at"))
    if created is None or job.get("unmeasured"):
        return None
    due = _float(job.get("poll_at"))
    if due is not None and seen_done_at - due > max(LATE_MIN, LATE_SHARE * (due - created)):
        return None
    return schedule.bracket(created, seen_done_at, _float(job.get("last_miss_at")))


def window(client: redis.Redis) -> list[tuple[float, float]]:
    """The brackets in the window, newest first (unreadable entries skipped)."""
    found = []
    for raw in client.lrange(keys.LATENCY, 0, -1):
        try:
            lo, hi = (float(x) for x in (raw.decode() if isinstance(raw, bytes) else raw).split())
        except ValueError:
            continue
        found.append((lo, hi))
    return found


_lock = threading.Lock()
_cache: dict[int, tuple[float, schedule.Estimate | None]] = {}


def estimate(client: redis.Redis, now: float | None = None) -> schedule.Estimate | None:
    """The schedule's view of the window, re-read at most every REFRESH seconds per client."""
    now = time.monotonic() if now is None else now
    cached = _cache.get(id(client))
    if cached and now - cached[0] < REFRESH:
        return cached[1]
    with _lock:
        cached = _cache.get(id(client))
        if cached and now - cached[0] < REFRESH:
            return cached[1]
        found = schedule.Estimate.of(schedule.Distribution.of(window(client)))
        _cache[id(client)] = (now, found)
        return found


def forget() -> None:
    """Drop every process-local estimate (tests; a flushed Redis)."""
    _cache.clear()


def _float(raw: str | None) -> float | None:
    try:
        return float(raw) if raw else None
    except ValueError:
        return None
