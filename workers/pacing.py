"""How fast the cluster creates: the configured rate, tightened by 429s, relaxed after.

A burst of 429s (several within a short window, across all workers) halves the creation rate
for the whole cluster, once per cooldown, down to a floor; every successful creation gives 2%
back, and the tightening expires after a quiet spell, so the pace recovers by itself. A lone
429 is only retried: reacting to each one would sink the pace under random refusals, since
halving outweighs the growth at any rate once more than ~3% of calls are refused. The rate
itself is applied in ``lua/pace.lua``.
"""

from __future__ import annotations

import redis

from workers import keys

FLOOR = 0.2  # creations per second never go below this
START = 20.0  # the rate a first 429 halves when no rate is configured
GROWTH = 1.02  # the rate grows by this factor per successful creation
COOLDOWN_MS = 1000  # 429s within this long of a tightening are the same burst
BURST = 3  # this many 429s ...
BURST_WINDOW_MS = 2000  # ... within this long make a burst
CEILING = 500.0  # an unconfigured rate counts as recovered past this
QUIET = 600  # seconds without a 429 after which the tightening is forgotten


def tighten(client: redis.Redis, configured: float) -> float | None:
    """Count a 429; on a burst not yet answered, halve the pace and return the new rate."""
    pipe = client.pipeline()
    pipe.incr(keys.PACE_RATE + ":burst")
    pipe.pexpire(keys.PACE_RATE + ":burst", BURST_WINDOW_MS, nx=True)
    seen, _ = pipe.execute()
    if seen < BURST:
        return None
    if not client.set(keys.PACE_RATE + ":cooldown", "1", nx=True, px=COOLDOWN_MS):
        return None
    raw = client.get(keys.PACE_RATE)
    current = float(raw) if raw else (configured or START)
    rate = max(FLOOR, current / 2)
    client.set(keys.PACE_RATE, repr(rate), ex=QUIET)
    return rate


def relax(client: redis.Redis, configured: float) -> None:
    raw = client.get(keys.PACE_RATE)
    if not raw:
        return
    rate = float(raw) * GROWTH
    if rate >= (configured or CEILING):
        client.delete(keys.PACE_RATE)
    else:
        client.set(keys.PACE_RATE, repr(rate), keepttl=True)
