"""The job store's Lua scripts against a real Redis: idempotent enqueue, compare-and-set
steps, one terminal transition and one stream entry per job, the pace and the lease."""

from __future__ import annotations

import json

import pytest
import redis

from workers import keys
from workers.store import EndWrites, JobStore, State

REQUEST = {"model": "wan26_i2i", "input": {}}


@pytest.fixture
def store(redis_url) -> JobStore:
    return JobStore.from_url(redis_url)


def test_enqueue_is_idempotent_by_batch_and_custom_id(store):
    assert store.enqueue("b1", "a", REQUEST) == 1
    assert store.enqueue("b1", "a", {"other": True}) == 0
    assert store.enqueue("b2", "a", REQUEST) == 1
    assert store.request(keys.job_id("b1", "a")) == REQUEST
    assert store.batch("b1")["total"] == "1"
    assert store.redis.lrange(keys.batch_jobs("b1"), 0, -1) == ["b1:a"]


def test_step_applies_only_where_the_caller_saw_the_job(store):
    store.enqueue("b", "j", REQUEST)
    claim = store.step("b:j", 0, (State.QUEUED,), State.CREATING, due=100.0, incr=("attempts",))
    assert claim.applied and claim.seq == 1 and claim.previous == "queued"
    again = store.step("b:j", 0, (State.QUEUED,), State.CREATING)
    assert not again.applied and again.seq == 1 and again.previous == "creating"
    job = store.job("b:j")
    assert job["attempts"] == "1"
    assert store.batch("b")["n:queued"] == "0" and store.batch("b")["n:creating"] == "1"
    assert store.redis.zscore(keys.DUE, "b:j") == 100.0
    assert store.redis.zscore(keys.QUEUED, "b:j") is None


def test_a_step_pushes_the_next_message_only_when_it_applies(store):
    """The poll a step schedules goes in the step's own script (workers.polling.step_and_poll):
    a stale step pushes nothing, an applied one its message, with its fields set after it."""
    store.enqueue("b", "j", REQUEST)
    then = (keys.POLL_QUEUE, '{"message": 1}')
    stale = store.step("b:j", 5, (State.QUEUED,), State.CREATING, then=then)
    assert not stale.applied and store.redis.llen(keys.POLL_QUEUE) == 0
    moved = store.step("b:j", 0, (State.QUEUED,), State.CREATING, then=then, fields={"a": "b"})
    assert moved.applied and store.redis.lrange(keys.POLL_QUEUE, 0, -1) == ['{"message": 1}']
    assert store.job("b:j")["a"] == "b"
    plain = store.step("b:j", 1, (State.CREATING,), State.RUNNING, due=100.0)
    assert plain.applied and store.redis.llen(keys.POLL_QUEUE) == 1
    assert store.redis.zscore(keys.DUE, "b:j") == 100.0


def test_finish_once_with_one_stream_entry(store):
    store.enqueue("b", "j", REQUEST)
    record = {
        "job_id": "b:j",
        "usage": {"cost": "0.06"},
        "outputs": [{"type": "text", "text": "t"}],
    }
    assert store.finish("b:j", 0, State.SUCCEEDED, record, cost_micros=60_000)
    assert not store.finish("b:j", None, State.FAILED, record, error_code="001021095")
    assert store.finish("b:j", None, State.FAILED, record).ended is False
    assert store.job("b:j")["state"] == "succeeded"
    entries = store.redis.xrange(keys.RESULTS)
    assert len(entries) == 1 and json.loads(entries[0][1]["record"])["state"] == "succeeded"
    batch = store.batch("b")
    assert batch["cost_micros"] == "60000" and batch["n:succeeded"] == "1"
    assert "finished_at" in batch
    assert store.batch_codes("b") == {}


def test_finish_with_a_stale_seq_does_nothing(store):
    store.enqueue("b", "j", REQUEST)
    assert not store.finish("b:j", 5, State.FAILED, {}, error_code="X")
    assert store.job("b:j")["state"] == "queued"


def test_hold_and_release(store):
    store.enqueue("b", "j", REQUEST)
    assert store.park("b:j", 0, "account", "HTTP 401")
    job = store.job("b:j")
    assert job["state"] == "waiting" and job["hold"] == "account"
    assert store.redis.zscore(keys.DUE, "b:j") is None  # parked, not overdue
    assert store.release(keys.HELD, 10) == [("b:j", 1)]
    assert store.redis.zscore(keys.DUE, "b:j") is not None  # swept if its message is lost
    assert store.release(keys.HELD, 10) == []


def test_pace_spaces_creations_across_callers(store):
    waits = [store.pace(rate=10.0, horizon=5.0) for _ in range(5)]
    assert waits[0] == 0.0
    assert waits == sorted(waits) and waits[-1] == pytest.approx(0.4, abs=0.05)
    assert store.pace(rate=0, horizon=5.0) == 0.0


def test_lease_has_one_holder_until_it_expires(store):
    assert store.take_lease("wanq:test:lease", "a", ttl=0.2)
    assert store.take_lease("wanq:test:lease", "a", ttl=0.2)  # renewed by its holder
    assert not store.take_lease("wanq:test:lease", "b", ttl=0.2)
    store.redis.delete("wanq:test:lease")  # as if the holder's lease ran out
    assert store.take_lease("wanq:test:lease", "b", ttl=0.2)


def test_enqueue_many_returns_the_new_jobs_and_counts_them_once(store):
    request = json.dumps(REQUEST)
    first = [(f"c{n}", request, n + 1) for n in range(250)]  # three scripts of ENQUEUE_SLICE
    assert store.enqueue_many("b", first).new == [keys.job_id("b", f"c{n}") for n in range(250)]
    again = [("c3", "{}", 9), ("new", request, 251), ("c0", "{}", 9)]
    assert store.enqueue_many("b", again).new == ["b:new"]
    assert store.batch("b")["total"] == store.batch("b")["n:queued"] == "251"
    listed = store.redis.lrange(keys.batch_jobs("b"), 0, -1)
    assert listed == [keys.job_id("b", c) for c, _, _ in first] + ["b:new"]
    assert store.redis.zcard(keys.QUEUED) == 251
    assert store.job("b:c3")["line"] == "4" and store.request("b:c3") == REQUEST
    job = store.job("b:new")
    assert (job["state"], job["seq"], job["custom_id"], job["batch"]) == ("queued", "0", "new", "b")


def test_enqueue_slices_by_bytes_too(store, monkeypatch):
    """Requests with inline images are large: a script takes fewer of them (each slice ends
    past ENQUEUE_SLICE_BYTES), and the answer is the same."""
    from workers import store as store_module

    monkeypatch.setattr(store_module, "ENQUEUE_SLICE_BYTES", 1500)
    big = json.dumps({**REQUEST, "pad": "x" * 600})
    jobs = [(f"c{n}", big, n + 1) for n in range(7)]
    assert store.enqueue_many("b", jobs).new == [f"b:c{n}" for n in range(7)]
    assert store.enqueue_many("b", [*jobs, ("c7", big, 8)]).new == ["b:c7"]
    assert store.batch("b")["total"] == "8"
    assert store.redis.lrange(keys.batch_jobs("b"), 0, -1) == [f"b:c{n}" for n in range(8)]


def test_the_ends_counters_are_written_by_the_call_that_ends_the_job_only(store):
    """An ended job's histograms and generation time go in the finish script's round trip
    (EndWrites), counted once however many calls try to end it; a counter key of the wrong
    type does not stop the end, and a command the script does not run is refused before any
    write."""
    r = store.redis
    for custom_id in ("j", "k"):
        store.enqueue("b", custom_id, REQUEST)

    def writes() -> EndWrites:
        return EndWrites().hincrby("h", "n").hincrbyfloat("h", "sum", 0.5).lpush("l", "x")

    assert store.finish("b:j", 0, State.SUCCEEDED, {}, on_end=writes().ltrim("l", 0, 0)).ended
    assert not store.finish("b:j", None, State.FAILED, {}, on_end=writes())
    assert r.hgetall("h") == {"n": "1", "sum": "0.5"} and r.lrange("l", 0, -1) == ["x"]

    r.set("h", "not a hash")
    assert store.finish("b:k", 0, State.SUCCEEDED, {}, on_end=writes()).ended
    assert r.lrange("l", 0, -1) == ["x", "x"]

    store.enqueue("b", "m", REQUEST)
    refused = EndWrites()._add("DEL", "h")
    with pytest.raises(redis.ResponseError, match="not a write for an ended job"):
        store.finish("b:m", 0, State.SUCCEEDED, {}, on_end=refused)
    assert store.job("b:m")["state"] == "queued" and r.get("h") == "not a hash"
