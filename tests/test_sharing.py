"""Many batches at once: the in-flight cap is shared in Redis, by weighted fair share.

Store-level tests drive admission by hand (enqueue, end jobs one at a time) and count the
slots each batch is granted; the cluster tests run real workers against the simulator.
"""

from __future__ import annotations

import json
import time
from collections import Counter

import pytest

from tests.conftest import jobs
from workers import keys
from workers.names import State, TaskName
from workers.store import JobStore

REQUEST = json.dumps({"model": "wan26_i2i"})


def _enqueue(store: JobStore, batch_id: str, n: int, **meta: object) -> list[tuple[str, int]]:
    store.open_batch(batch_id, {"state": "active", **meta})
    lines = [(f"j{i:04d}", REQUEST, i + 1) for i in range(n)]
    return store.enqueue_many(batch_id, lines).admitted


def _end(store: JobStore, job_id: str) -> list[tuple[str, int]]:
    record = {"job_id": job_id, "state": State.SUCCEEDED}
    return list(store.finish(job_id, None, State.SUCCEEDED, record).admitted)


def _in_flight_by_batch(store: JobStore) -> Counter[str]:
    return Counter(keys.batch_of(job_id) for job_id in store.inflight.members())


def _run(store: JobStore, ends: int) -> Counter[str]:
    """End the oldest job in flight ``ends`` times; count which batch each freed slot went to."""
    granted: Counter[str] = Counter()
    for _ in range(ends):
        oldest = store.inflight.members(1)[0]
        for job_id, _seq in _end(store, oldest):
            granted[keys.batch_of(job_id)] += 1
    return granted


@pytest.fixture
def store(redis_url: str) -> JobStore:
    return JobStore.from_url(redis_url, max_in_flight=6)


def test_a_batch_alone_gets_the_whole_cap_whatever_its_priority(store):
    admitted = _enqueue(store, "low", 50, weight=1.0)
    assert len(admitted) == 6 and len(store.inflight) == 6
    assert store.waiting_for_slot("low") == 44
    assert _run(store, 10) == {"low": 10}


def test_two_batches_share_the_cap_by_weight(store):
    _enqueue(store, "big", 200, weight=2.0)  # normal: every slot, being alone
    assert _enqueue(store, "vip", 200, weight=4.0) == [], "no slot is free: none taken"
    granted = _run(store, 60)
    assert _in_flight_by_batch(store) == {"big": 2, "vip": 4}, "2:4 of a cap of 6"
    steady = _run(store, 60)  # each job in flight as long as any other: grants follow shares
    assert steady["vip"] == 2 * steady["big"]
    assert granted["vip"] > granted["big"], "freed slots went to the batch below its share"


def test_three_batches_share_in_proportion_and_low_priority_is_not_starved(redis_url):
    store = JobStore.from_url(redis_url, max_in_flight=7)
    for batch_id, weight in (("low", 1.0), ("normal", 2.0), ("high", 4.0)):
        _enqueue(store, batch_id, 300, weight=weight)
    _run(store, 70)
    assert _in_flight_by_batch(store) == {"low": 1, "normal": 2, "high": 4}
    assert _run(store, 70) == {"low": 10, "normal": 20, "high": 40}


def test_a_small_batch_behind_a_big_one_starts_at_the_next_freed_slot(store):
    _enqueue(store, "big", 500)
    _enqueue(store, "small", 5)
    first = _end(store, store.inflight.members(1)[0])
    assert [keys.batch_of(job_id) for job_id, _ in first] == ["small"]
    _run(store, 15)  # three slots each: the small batch's 5 jobs end within ~2.5 rounds
    assert store.batch("small").get("n:succeeded") == "5", "it finished at its fair share"
    assert store.waiting_for_slot("small") == 0 and store.waiting_for_slot("big") > 0


def test_file_order_within_a_batch(store):
    admitted = _enqueue(store, "b", 20)
    assert [job_id for job_id, _ in admitted] == [f"b:j{i:04d}" for i in range(6)]
    assert [job_id for job_id, _ in _end(store, "b:j0000")] == ["b:j0006"]


def test_per_batch_limit_under_the_cluster_cap(store):
    assert len(_enqueue(store, "trickle", 30, max_in_flight=2)) == 2
    assert len(_enqueue(store, "other", 30)) == 4, "the rest of the cap goes to the others"
    _run(store, 20)
    assert _in_flight_by_batch(store)["trickle"] == 2


def test_per_batch_limit_without_a_cluster_cap(redis_url):
    store = JobStore.from_url(redis_url)  # no cluster cap
    assert len(_enqueue(store, "trickle", 10, max_in_flight=3)) == 3
    assert len(_enqueue(store, "free", 10)) == 10, "ungated batches send every create"


def test_paused_batch_holds_no_slot_and_is_sent_no_create(store):
    _enqueue(store, "a", 100)
    _enqueue(store, "paused", 100)
    store.set_control("paused", "paused")
    granted = _run(store, 30)
    assert granted == {"a": 30}
    assert store.waiting_for_slot("paused") == 100, "its jobs wait in Redis, no message"


def test_the_cluster_cap_published_by_the_workers_gates_a_producer_without_one(redis_url):
    JobStore.from_url(redis_url, max_in_flight=3).publish_cluster_settings()
    producer = JobStore.from_url(redis_url)  # its environment names no cap
    assert len(_enqueue(producer, "b", 10)) == 3


def test_priority_is_shown_and_changed_and_creates_follow_slots(make_cluster):
    cluster = make_cluster(workers=0, worker_env={"WANQ_MAX_IN_FLIGHT": "4"})
    client = cluster.client()
    JobStore.from_settings(cluster.settings).publish_cluster_settings()
    report = cluster.submit(jobs(10))
    assert client.status(report.batch_id).in_flight == 4
    client.set_priority(report.batch_id, "high")
    assert client.status(report.batch_id).priority == "high"
    assert client.status(report.batch_id).waiting_for_slot == 6
    assert cluster.redis.llen(TaskName.CREATE) == 4, "one create message per granted slot"


def test_cancel_frees_its_slots_to_the_other_batches_at_once(make_cluster):
    cluster = make_cluster(workers=0, worker_env={"WANQ_MAX_IN_FLIGHT": "4"})
    client = cluster.client()
    first = cluster.submit(jobs(10, prefix="a"))
    second = cluster.submit(jobs(10, prefix="b"))
    assert client.status(first.batch_id).in_flight == 4
    client.cancel(first.batch_id)
    assert client.status(second.batch_id).in_flight == 4
    assert client.status(first.batch_id).in_flight == 0
    assert cluster.redis.zcard(keys.READY) == 1


def test_small_batch_runs_beside_a_big_one_on_real_workers(make_cluster):
    cluster = make_cluster(
        workers=2,
        sim_env={"WANQ_SIM_LATENCY": "1"},
        worker_env={"WANQ_MAX_IN_FLIGHT": "4"},
    )
    client = cluster.client()
    big = cluster.submit(jobs(60, prefix="big"))
    deadline = time.monotonic() + 60
    while client.status(big.batch_id).in_flight < 4:  # the big batch holds every slot
        assert time.monotonic() < deadline
        time.sleep(0.05)
    small = cluster.submit(jobs(5, prefix="small"))
    cluster.wait(small.batch_id, timeout=120)
    assert client.status(big.batch_id).ended < 60, "the small batch did not queue behind it"
    final = cluster.wait(big.batch_id, timeout=180)
    assert final.counts["succeeded"] == 60
    assert cluster.redis.zcard(keys.INFLIGHT) == 0


def test_a_sigkilled_worker_leaks_no_slot_and_loses_no_job(make_cluster):
    cluster = make_cluster(
        workers=3,
        sim_env={"WANQ_SIM_LATENCY": "0.5"},
        worker_env={
            "WANQ_MAX_IN_FLIGHT": "5",
            "WANQ_VISIBILITY_TIMEOUT": "10",
            "WANQ_MAX_COUNTDOWN": "5",
            "WANQ_SWEEP_GRACE": "3",
        },
    )
    client = cluster.client()
    batches = [cluster.submit(jobs(40, prefix=p), batch=None) for p in ("x", "y")]
    deadline = time.monotonic() + 60
    while sum(client.status(b.batch_id).ended for b in batches) < 15:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    cluster.workers[0].kill()
    for report in batches:
        assert cluster.wait(report.batch_id, timeout=240).counts["succeeded"] == 40
    assert cluster.redis.zcard(keys.INFLIGHT) == 0, "every slot came back"
    for report in batches:
        assert client.status(report.batch_id).in_flight == 0
        assert client.status(report.batch_id).waiting_for_slot == 0


def test_the_poll_that_frees_a_slot_creates_the_next_job_itself(make_cluster):
    """workers.handover: only the jobs admitted at submission get a create message; every
    later job is created by the poll that ended the job before it, in the same thread."""
    cluster = make_cluster(
        workers=1, sim_env={"WANQ_SIM_LATENCY": "0.3"}, worker_env={"WANQ_MAX_IN_FLIGHT": "2"}
    )
    final = cluster.wait(cluster.submit(jobs(8)).batch_id, timeout=120)
    assert final.counts["succeeded"] == 8
    assert cluster.sim("/_sim/stats")["tasks_total"] == 8
    log = cluster.workers[0].log.read_text(errors="replace")
    assert log.count(f"Task {TaskName.CREATE}[") == 2 * 2, "received + succeeded, 2 creates"
    assert log.count("remote task created") == 8
    assert cluster.redis.zcard(keys.INFLIGHT) == 0
