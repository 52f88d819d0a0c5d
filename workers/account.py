"""The account's health, shared by the whole cluster.

A 401 or 403 means the key or the balance is wrong, not the job: creation pauses everywhere,
jobs wait instead of failing, and the sweeper probes with one held job until it goes through.
A batch of 50,000 jobs must not turn into 50,000 failures because a key expired at 3 am.
"""

from __future__ import annotations

import time

import redis

from workers import keys
from workers.connection import text_map


def block(client: redis.Redis, http_status: int, reason: str) -> None:
    client.hset(
        keys.ACCOUNT,
        mapping={"state": "blocked", "http_status": http_status, "reason": reason},
    )
    client.hsetnx(keys.ACCOUNT, "since", time.time())


def unblock(client: redis.Redis) -> bool:
    """True when this call lifted a block (so the caller releases the held jobs)."""
    return bool(client.delete(keys.ACCOUNT))


def blocked(client: redis.Redis) -> dict[str, str]:
    """The block, if any: ``{"reason": ..., "http_status": ..., "since": ...}``; empty if fine."""
    return text_map(client.hgetall(keys.ACCOUNT))


def probe_due(client: redis.Redis, interval: float) -> bool:
    """True once per interval across the cluster: time for one held job to try again."""
    return bool(client.set(keys.ACCOUNT + ":probe", "1", nx=True, px=int(interval * 1000)))
