"""The delivery threads: a hand-over never blocks (a full pool refuses, the sweeper sends the
target again), and a delivery running under its lock is never run twice at once."""

from __future__ import annotations

import threading

from workers import config, delivery_threads, keys
from workers.store import JobStore


def test_a_full_pool_refuses_instead_of_blocking():
    release = threading.Event()
    started = threading.Event()

    def slow() -> None:
        started.set()
        release.wait(30)

    pool = delivery_threads.DeliveryThreads(threads=1, backlog=1)
    try:
        assert pool.offer(slow)
        assert started.wait(10), "the one thread took the first delivery"
        assert pool.offer(slow), "one more waits in the backlog"
        assert not pool.offer(slow), "the next is refused at once"
    finally:
        release.set()


def test_a_delivery_under_another_holders_lock_does_nothing(redis_url):
    store = JobStore.from_url(redis_url)
    settings = config.Settings()
    store.redis.zadd(keys.DELIVER, {"b:j": 100.0})
    store.redis.set(keys.delivering("b:j"), "another-worker", px=60_000)
    sent: list = []

    assert delivery_threads.run(store, settings, "b:j", lambda *a, **k: sent.append(a)) == "busy"
    assert store.redis.zscore(keys.DELIVER, "b:j") == 100.0 and sent == []


def test_a_finished_delivery_leaves_no_lock_and_nothing_owed(redis_url):
    store = JobStore.from_url(redis_url)
    store.redis.zadd(keys.DELIVER, {"b:gone": 100.0})  # a job that no longer exists

    assert delivery_threads.run(store, config.Settings(), "b:gone", print) == "delivered"
    assert store.redis.zscore(keys.DELIVER, "b:gone") is None
    assert not store.redis.exists(keys.delivering("b:gone"))
