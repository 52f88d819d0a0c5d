"""The account's health, shared by the whole cluster.

A 401 or 403 means the key or the balance is wrong, not the job: creation pauses everywhere,
jobs wait instead of failing, and the sweeper probes with one held job until it goes through.
A batch of 50,000 jobs must not turn into 50,000 failures because a key expired at 3 am.

A block ends when a create goes through, or when a status call does and the block is one a
status call can disprove: a 401 (the key works after all) or any block a status call set. A
403 from creation (balance) is not lifted by a status call: status checks still work while
the balance is empty, and lifting it would send every held job into another 403.
"""

from __future__ import annotations

import time

import redis

from workers import keys
from workers.connection import text_map


def block(client: redis.Redis, http_status: int, reason: str, source: str = "create") -> None:
    """Pause creation cluster-wide; ``source`` is the call that saw it: create or status."""
    client.hset(
        keys.ACCOUNT,
        mapping={
            "state": "blocked",
            "http_status": http_status,
            "reason": reason,
            "source": source,
        },
    )
    client.hsetnx(keys.ACCOUNT, "since", time.time())


def unblock(client: redis.Redis) -> bool:
    """True when this call lifted a block (so the caller releases the held jobs)."""
    return bool(client.delete(keys.ACCOUNT))


def status_worked(client: redis.Redis, block: dict[str, str]) -> bool:
    """A status call went through: lift a block it disproves (see the module docstring).
    ``block`` is the account's block as read before the call (no block: no Redis call).
    True when this call lifted one."""
    if not block:
        return False
    if block.get("http_status") == "401" or block.get("source") == "status":
        return unblock(client)
    return False


def blocked(client: redis.Redis) -> dict[str, str]:
    """The block, if any: ``{"reason": ..., "http_status": ..., "since": ...}``; empty if fine."""
    return text_map(client.hgetall(keys.ACCOUNT))


def probe_due(client: redis.Redis, interval: float) -> bool:
    """True once per interval across the cluster: time for one held job to try again."""
    return bool(client.set(keys.ACCOUNT + ":probe", "1", nx=True, px=int(interval * 1000)))
