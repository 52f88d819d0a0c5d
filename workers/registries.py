"""One small class per Redis sorted set of job IDs, as rq's registries are: each owns its key
and the few ways wanq reads and writes it outside the Lua scripts.

    due        job -> when its next step (poll, retry, create) is overdue
    queued     job -> enqueued at, for jobs whose create never ran
    held       job -> parked at, while the account is blocked
    inflight   job -> claimed at: remote tasks being created or run (the cap counts these)
    ready(b)   job -> line: a batch's jobs waiting for an in-flight slot (see lua/lib/slots.lua)
    deliveries target (job or batch:<id>) -> when its callbacks are due
    parked(b)  job -> parked at: a batch's jobs held by its pause or budget
    abandoned  job -> when to ask next: ended jobs whose remote task is followed for its cost
"""

from __future__ import annotations

from collections.abc import Sequence

import redis

from workers import keys
from workers.connection import texts


class JobSet:
    def __init__(self, client: redis.Redis, key: str) -> None:
        self.redis = client
        self.key = key

    def __len__(self) -> int:
        return int(self.redis.zcard(self.key))

    def when(self, member: str) -> float | None:
        score = self.redis.zscore(self.key, member)
        return None if score is None else float(score)

    def members(self, count: int = -1) -> list[str]:
        return texts(self.redis.zrange(self.key, 0, count - 1 if count > 0 else -1))

    def add(self, members: dict[str, float], *, only_existing: bool = False) -> None:
        if members:
            self.redis.zadd(self.key, members, xx=only_existing)

    def remove(self, *members: str) -> None:
        if members:
            self.redis.zrem(self.key, *members)

    def before(self, cutoff: float, count: int) -> list[str]:
        """Up to ``count`` members scored at or before ``cutoff``, oldest first."""
        return texts(self.redis.zrangebyscore(self.key, "-inf", cutoff, start=0, num=count))

    def reschedule(self, members: Sequence[str], when: float) -> None:
        """Move members that are still there to ``when`` (swept once per period)."""
        if members:
            self.redis.zadd(self.key, dict.fromkeys(members, when), xx=True)


class Registries:
    """Every job set of the cluster, on one client."""

    def __init__(self, client: redis.Redis) -> None:
        self.due = JobSet(client, keys.DUE)
        self.queued = JobSet(client, keys.QUEUED)
        self.held = JobSet(client, keys.HELD)
        self.inflight = JobSet(client, keys.INFLIGHT)
        self.deliveries = JobSet(client, keys.DELIVER)
        self.abandoned = JobSet(client, keys.ABANDONED)
        self._client = client

    def parked(self, batch_id: str) -> JobSet:
        return JobSet(self._client, keys.batch_parked(batch_id))
