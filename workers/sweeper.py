"""The sweeper: finds jobs whose next step is overdue and sends that step again.

It runs inside every worker (see ``workers.app.Sweeper``); a Redis lease lets one sweep at a
time and another take over within ``lease_ttl`` when that worker dies, so a cluster with no
beat process still recovers. A re-sent message carries the job's current seq: if the original
turns up after all, whichever runs first moves the seq on and the other is stale.

What it rescues:
- jobs in the due set past their time plus a grace period: a poll, retry or create whose
  message died with its worker;
- queued jobs whose create message is gone (the queue is empty but they are still queued);
- jobs parked by an account problem: one probe per interval, all released once it works;
- callbacks owed by ended jobs and batches (archive, webhook, Celery callback).

It also purges batches past their retention, a slice per pass (``workers.retention``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from workers import account, keys, retention
from workers.config import Settings
from workers.store import TERMINAL, JobStore, State

log = logging.getLogger("wanq.sweeper")

CHUNK = 500  # jobs looked at per sweep and kind


def sweep(store: JobStore, settings: Settings) -> dict[str, int]:
    """One pass; returns how many jobs of each kind it re-sent."""
    from workers.tasks import create, deliver, poll

    now = time.time()
    grace = settings.sweep_grace
    done = {
        "overdue": 0,
        "unstarted": 0,
        "released": 0,
        "probes": 0,
        "deliveries": 0,
        "admitted": 0,
    }
    for job_id, state, seq in _overdue(store, now, grace):
        if state == State.RUNNING:
            poll.apply_async((job_id, seq))
        else:
            create.apply_async((job_id, seq))
        done["overdue"] += 1
    for job_id, seq in _admit(store, settings.max_in_flight):
        create.apply_async((job_id, seq))
        done["admitted"] += 1
    for job_id, seq in _unstarted(store, settings, now):
        create.apply_async((job_id, seq))
        done["unstarted"] += 1
    for target in _owed(store, now, grace):
        deliver.apply_async((target,))
        done["deliveries"] += 1
    if account.blocked(store.redis):
        probe = store.redis.zrange(keys.HELD, 0, 0)
        if probe and account.probe_due(store.redis, settings.account_probe_interval):
            seq = int(store.redis.hget(keys.job(probe[0]), "seq") or 0)
            create.apply_async((probe[0], seq), {"probe": True})
            done["probes"] += 1
    else:
        for job_id, seq in store.release(keys.HELD, CHUNK):
            create.apply_async((job_id, seq))
            done["released"] += 1
    retention.sweep(store, settings.retention)  # issue 12: expired batches, a slice a pass
    if any(done.values()):
        log.info("sweep re-sent %s", done)
        for kind, n in done.items():
            store.count(f"sweeper_{kind}", n)
    return done


def _admit(store: JobStore, cap: int) -> list[tuple[str, int]]:
    """Jobs waiting for an in-flight slot while slots are free (ending jobs admit one each;
    this covers slots freed otherwise, and admissions whose message was lost)."""
    if cap <= 0:
        return []
    free = cap - store.redis.zcard(keys.INFLIGHT)
    return store.release(keys.SLOTS, min(free, CHUNK)) if free > 0 else []


def _overdue(store: JobStore, now: float, grace: float) -> list[tuple[str, str, int]]:
    """Jobs past their step (not ended, not parked); each is re-sent once per grace period."""

    def lost(state: str | None, hold: str | None) -> bool:
        return state is not None and state not in TERMINAL and not hold

    return _take(store, keys.DUE, now - grace, now, lost)


def _owed(store: JobStore, now: float, grace: float) -> list[str]:
    """Deliveries owed for longer than the grace period: their message was lost."""
    targets = store.redis.zrangebyscore(keys.DELIVER, "-inf", now - grace, start=0, num=CHUNK)
    if targets:
        store.redis.zadd(keys.DELIVER, dict.fromkeys(targets, now), xx=True)
    return targets


def _unstarted(store: JobStore, settings: Settings, now: float) -> list[tuple[str, int]]:
    """Queued jobs whose create message is gone: the queue is empty yet they wait.

    A message held by a dead worker comes back after the visibility timeout, so only jobs
    queued longer than that, with nothing in the queue, are missing their message.
    """
    if store.redis.llen(keys.CREATE_QUEUE) > 0:
        return []
    cutoff = now - settings.visibility_timeout - settings.sweep_grace
    found = _take(store, keys.QUEUED, cutoff, now, lambda state, _hold: state == State.QUEUED)
    return [(job_id, seq) for job_id, _, seq in found]


def _take(
    store: JobStore,
    zset: str,
    cutoff: float,
    now: float,
    keep: Callable[[str | None, str | None], bool],
) -> list[tuple[str, str, int]]:
    """Members of ``zset`` scored before ``cutoff`` that ``keep(state, hold)`` accepts, as
    (job_id, state, seq); their score moves to ``now`` (re-sent once per period), the rest
    leave the set (ended, parked or gone)."""
    r = store.redis
    ids = r.zrangebyscore(zset, "-inf", cutoff, start=0, num=CHUNK)
    if not ids:
        return []
    pipe = r.pipeline(transaction=False)
    for job_id in ids:
        pipe.hmget(keys.job(job_id), "state", "seq", "hold")
    found, gone = [], []
    for job_id, (state, seq, hold) in zip(ids, pipe.execute(), strict=True):
        if keep(state, hold):
            found.append((job_id, state, int(seq)))
        else:
            gone.append(job_id)
    pipe = r.pipeline(transaction=False)
    if gone:
        pipe.zrem(zset, *gone)
    if found:
        pipe.zadd(zset, {job_id: now for job_id, _, _ in found}, xx=True)
    pipe.execute()
    return found
