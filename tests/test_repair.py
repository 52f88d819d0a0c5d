"""The sweeper's repair pass: every inconsistent state made by hand is found, fixed and counted;
consistent jobs are left alone."""

from __future__ import annotations

import json
import time

import pytest

from workers import keys, sweeper
from workers.names import Hold, State
from workers.store import JobStore

REQUEST = json.dumps({"model": "wan26_i2i"})


@pytest.fixture
def store(redis_url: str) -> JobStore:
    store = JobStore.from_url(redis_url)
    store.open_batch("b", {"state": "active"})
    store.enqueue_many("b", [(f"j{i}", REQUEST, i + 1) for i in range(6)])
    return store


def _set(store: JobStore, job_id: str, **fields: object) -> None:
    store.redis.hset(keys.job(job_id), mapping={k: str(v) for k, v in fields.items()})


def test_each_misplaced_job_is_put_back_and_counted(store):
    r, now = store.redis, time.time()
    r.zrem(keys.QUEUED, *[f"b:j{i}" for i in range(6)])  # every job now sits in no set
    _set(store, "b:j0", state=State.RUNNING)  # running, no slot, not due
    _set(store, "b:j1", state=State.WAITING, hold=Hold.ACCOUNT)  # parked in no set
    _set(store, "b:j2", state=State.WAITING, hold=Hold.SLOT)  # waiting for a slot, not queued
    _set(store, "b:j3", state=State.WAITING, hold="")  # backing off, not due
    # b:j4 stays queued in no set; b:j5 is consistent:
    r.zadd(keys.DUE, {"b:j5": now})
    r.zadd(keys.INFLIGHT, {"b:gone": now - 120})  # a slot held by a job that no longer exists

    fixed = sweeper.repair(store, now)
    fixed += sweeper.repair(store, now)  # the running job needs two fixes (slot, then due)

    assert r.zscore(keys.INFLIGHT, "b:j0") is not None and r.zscore(keys.DUE, "b:j0")
    assert r.zscore(keys.HELD, "b:j1") is not None
    assert r.zscore(keys.batch_ready("b"), "b:j2") == 3.0, "back in file order"
    assert r.zscore(keys.READY, "b") is not None
    assert r.zscore(keys.DUE, "b:j3") is not None and r.zscore(keys.DUE, "b:j4") is not None
    assert r.zscore(keys.INFLIGHT, "b:gone") is None
    assert fixed == 7
    stats = store.stats()
    assert stats["repaired_untracked_in_flight"] == "1"
    assert stats["repaired_not_due"] == "3"
    assert stats["repaired_not_parked"] == "2"
    assert stats["repaired_inflight_leak"] == "1"
    assert store.batch("b")["inflight"] == "1", "the batch's slot count follows the set"
    assert sweeper.repair(store, now) == 0, "nothing left to fix"


def test_consistent_jobs_are_left_alone_gated_ones_included(redis_url):
    store = JobStore.from_url(redis_url, max_in_flight=2)
    store.open_batch("g", {"state": "active"})
    admitted = store.enqueue_many("g", [(f"j{i}", REQUEST, i + 1) for i in range(10)]).admitted
    assert len(admitted) == 2 and store.waiting_for_slot("g") == 8
    for _ in range(3):
        assert sweeper.repair(store, time.time()) == 0
    assert not any(name.startswith("repaired") for name in store.stats())


def test_a_job_that_moved_on_meanwhile_is_not_touched(store):
    job = store.job_record("b:j0")
    assert job is not None and job.state == State.QUEUED
    store.redis.zrem(keys.QUEUED, "b:j0")
    store.finish("b:j0", None, State.SUCCEEDED, {"job_id": "b:j0"})  # ended after it was read
    assert store.repair(job, time.time()) == ""
    assert store.redis.zscore(keys.DUE, "b:j0") is None
