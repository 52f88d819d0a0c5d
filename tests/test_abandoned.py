"""Abandoned remote tasks followed for their cost (workers.abandoned, lua/settle.lua): a job
whose status checks ran out while its remote task ran on stays failed, and the money the
provider billed for that task is counted once the sweeper learns it."""

from __future__ import annotations

import json
import time

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from rich.console import Console

from producers.progress import summary_table
from tests.test_batches import edit_jobs
from workers import abandoned, config, errors, keys, metrics
from workers.batches import batch_status
from workers.provider import Rejected, Status, Transient
from workers.retention import Purger
from workers.store import JobStore, State

REQUEST = json.dumps({"parameters": {"n": 2}})  # worst case: 2 images at 0.03 = 60_000 micros


@pytest.fixture
def store(redis_url) -> JobStore:
    return JobStore.from_url(redis_url)


def running(store: JobStore, job_id: str = "b:j", task: str = "sim-1") -> int:
    """Enqueue, claim and start a job on remote task ``task``; its seq."""
    batch_id, custom_id = job_id.split(":")
    store.open_batch(batch_id, {"state": "active"})
    store.enqueue_many(batch_id, [(custom_id, REQUEST, 1)])
    claim = store.claim_and_view(job_id, store.job_seq(job_id), 60.0, 2)[0]
    assert claim.applied
    step = store.step(
        job_id, claim.seq, (State.CREATING,), State.RUNNING, fields={"remote_task_id": task}
    )
    assert step.applied
    return step.seq


def abandon(store: JobStore, job_id: str = "b:j", code: str = errors.STATUS_CHECK) -> None:
    seq = store.job_seq(job_id)
    record = {"job_id": job_id, "error": {"code": code, "message": errors.message_for(code)}}
    assert store.finish(job_id, seq, State.FAILED, record, error_code=code)


def money(store: JobStore, batch_id: str = "b") -> tuple[int, int, int]:
    """(counted, unseen, followed) of the batch."""
    batch = store.batch(batch_id)
    counted, unseen, followed = (
        int(batch.get(name) or 0) for name in ("cost_micros", "unseen_micros", "abandoned")
    )
    return counted, unseen, followed


def test_an_abandoned_task_is_recorded_then_settled_once(store):
    running(store)
    abandon(store)
    assert store.abandoned.members() == ["b:j"]
    assert money(store) == (0, 60_000, 1), "its worst case is unseen money until it is learned"
    assert store.settle("b:j", "sim-1", "ended", cost_micros=57_000) == "settled"
    assert store.settle("b:j", "sim-1", "ended", cost_micros=57_000) == "absent", "idempotent"
    assert money(store) == (57_000, 0, 0)
    job = store.job("b:j")
    assert job["state"] == State.FAILED and job["abandoned_cost_micros"] == "57000"
    assert len(store.redis.xrange(keys.RESULTS)) == 1, "one terminal record, untouched"
    assert store.stats()["abandoned_settled"] == "1"
    assert store.abandoned.members() == []


@pytest.mark.parametrize(
    ("cost", "next_at"),
    [
        (10**400, 1.0),
        (-1, 1.0),
        ("1e300", 1.0),
        ("nan", 1.0),
        ("inf", 1.0),
        ("0.5", 1.0),
        ("x", 1.0),
        (0, "nan"),
        (0, "inf"),
        (0, "-5"),
    ],
)
def test_settle_refuses_hostile_numbers_before_writing_anything(store, cost, next_at):
    running(store)
    abandon(store)
    before = (store.job("b:j"), store.batch("b"), store.redis.zscore(keys.ABANDONED, "b:j"))
    for outcome in ("ended", "running"):
        with pytest.raises(Exception, match="bounded numbers"):
            store.settle("b:j", "sim-1", outcome, cost_micros=cost, next_at=next_at)  # type: ignore[arg-type]
    after = (store.job("b:j"), store.batch("b"), store.redis.zscore(keys.ABANDONED, "b:j"))
    assert after == before


def test_only_stopped_following_codes_and_cancels_of_running_tasks_are_followed(store):
    for custom_id, code in (("gen", errors.GENERATION_ERROR), ("http", errors.HTTP_ERROR)):
        running(store, f"b:{custom_id}", f"t-{custom_id}")
        abandon(store, f"b:{custom_id}", code)
    running(store, "b:parse", "t-parse")
    abandon(store, "b:parse", errors.RESULT_PARSING)
    running(store, "b:cancel", "t-cancel")
    assert store.finish("b:cancel", None, State.CANCELLED, {}, error_code=errors.CANCELLED)
    store.enqueue_many("b", [("queued", REQUEST, 9)])  # cancelled before any remote task
    assert store.finish("b:queued", None, State.CANCELLED, {}, error_code=errors.CANCELLED)
    assert sorted(store.abandoned.members()) == ["b:cancel", "b:parse"]
    assert money(store) == (0, 120_000, 2)


def test_running_reschedules_and_give_up_leaves_the_estimate_unseen(store):
    running(store)
    abandon(store)
    assert store.settle("b:j", "sim-1", "running", next_at=5000.0) == "running"
    assert store.abandoned.when("b:j") == 5000.0 and store.job("b:j")["abandoned_looks"] == "1"
    assert store.settle("b:j", "sim-other", "ended", cost_micros=1) == "stale"
    assert money(store) == (0, 60_000, 0), "a stale answer counts nothing; the estimate stays"


def test_give_up_keeps_the_estimate_unseen(store):
    running(store)
    abandon(store)
    assert store.settle("b:j", "sim-1", "give_up") == "given_up"
    assert money(store) == (0, 60_000, 0)
    assert store.stats()["abandoned_given_up"] == "1"


def test_a_reopened_job_leaves_the_set_and_its_estimate_is_not_counted_twice(store):
    running(store)
    abandon(store)
    seq, then = store.reopen("b:j")
    assert then == "poll" and store.abandoned.members() == []
    assert money(store) == (0, 0, 0), "the poll of the same task counts its real cost"
    assert store.finish("b:j", seq, State.SUCCEEDED, {}, cost_micros=60_000)
    assert money(store) == (60_000, 0, 0)


def test_a_task_settled_before_its_job_is_reopened_is_not_paid_twice(store):
    running(store)
    abandon(store)
    assert store.settle("b:j", "sim-1", "ended", cost_micros=60_000) == "settled"
    seq, then = store.reopen("b:j")
    assert then == "poll"
    assert store.finish("b:j", seq, State.SUCCEEDED, {}, cost_micros=60_000)
    assert money(store) == (60_000, 0, 0)


def test_a_job_that_starts_over_gives_its_old_task_up_once(store):
    running(store)
    abandon(store, code=errors.RESULT_PARSING)
    _, then = store.reopen("b:j")
    assert then == "create" and store.abandoned.members() == []
    assert money(store) == (0, 60_000, 0), "the old task's worst case stays unseen, once"
    assert store.job("b:j")["abandoned_unseen_micros"] == "0"


def test_a_purge_removes_the_batch_from_the_set(store):
    running(store)
    abandon(store)
    running(store, "other:j", "sim-2")
    abandon(store, "other:j")
    Purger(store.redis).purge("b")
    assert store.abandoned.members() == ["other:j"]


class FakeProvider:
    """Answers as the provider client does, without HTTP: what ``follow`` does with each."""

    def __init__(self, answers: dict[str, object]) -> None:
        self.answers = answers
        self.asked: list[str] = []

    def status(self, task_id: str) -> Status:
        self.asked.append(task_id)
        answer = self.answers[task_id]
        if isinstance(answer, Exception):
            raise answer
        assert isinstance(answer, Status)
        return answer


def test_follow_settles_ended_tasks_and_spaces_the_others(store):
    settings = config.load({"WANQ_POLL_FIRST": "2", "WANQ_SWEEP_INTERVAL": "1"})
    for n, task in enumerate(("done", "busy", "broken", "unknown", "hostile")):
        running(store, f"b:{task}", task)
        abandon(store, f"b:{task}")
        store.abandoned.add({f"b:{task}": float(n)})  # asked in this order
    provider = FakeProvider(
        {
            "done": Status("completed", usage={"cost": "0.06"}),
            "busy": Status("processing"),
            "broken": Transient("unparseable body", 200, "{", unparseable=True),
            "unknown": Rejected("HTTP 404", 404),
            "hostile": Status("completed", usage={"cost": "1e300"}),
        }
    )
    now = time.time()
    done = abandoned.follow(store, settings, provider, now)  # type: ignore[arg-type]
    assert provider.asked == ["done", "busy", "broken", "unknown"], "PER_SWEEP calls at most"
    assert done == {"settled": 1, "running": 2, "given_up": 1, "stale": 0}
    assert store.abandoned.when("b:busy") == pytest.approx(now + 2.0)
    done = abandoned.follow(store, settings, provider, now)  # type: ignore[arg-type]
    assert provider.asked[-1] == "hostile" and done["settled"] == 1
    assert store.job("b:hostile")["abandoned_cost_micros"] == "0", "an unbounded cost counts 0"
    counted, unseen, followed = money(store)
    assert counted == 60_000 and followed == 2
    assert unseen == 3 * 60_000, "busy, broken (still followed) and unknown (given up)"
    assert abandoned.next_look(3, settings) == 16.0
    assert abandoned.next_look(100, settings) == abandoned.MAX_INTERVAL


def test_follow_gives_up_after_the_deadline(store):
    settings = config.load({})
    running(store)
    abandon(store)
    later = time.time() + abandoned.DEADLINE + 1
    done = abandoned.follow(store, settings, FakeProvider({}), later)  # type: ignore[arg-type]
    assert done["given_up"] == 1 and money(store) == (0, 60_000, 0)


def abandoned_batch(make_cluster, jobs: int, settle_within: float = 60.0):
    """Generations (2.5 s) outlast the poll deadline (1 s): every job fails 001021098 while
    its remote task runs on. Returns (cluster, client, batch ID) once the sweeper has followed
    every task to its end."""
    cluster = make_cluster(
        workers=1,
        sim_env={"WANQ_SIM_LATENCY": "2.5", "WANQ_SIM_LATENCY_JITTER": "0"},
        worker_env={"WANQ_POLL_DEADLINE": "1", "WANQ_POLL_FIRST": "0.3"},
    )
    client = cluster.client()
    report = cluster.submit(edit_jobs(jobs))
    first = cluster.wait(report.batch_id, timeout=60)
    assert first.failures == {errors.STATUS_CHECK: jobs}
    deadline = time.monotonic() + settle_within
    while client.status(report.batch_id).abandoned:
        assert time.monotonic() < deadline, "the sweeper never learned the abandoned costs"
        time.sleep(0.1)
    return cluster, client, report.batch_id


def test_the_sweeper_counts_what_the_provider_billed_for_abandoned_tasks(make_cluster):
    """The sweeper follows the abandoned tasks to their end and counts what the simulator
    billed."""
    cluster, client, batch_id = abandoned_batch(make_cluster, 3)
    final = client.status(batch_id)
    stats = cluster.sim("/_sim/stats")
    billed = stats["images_completed"] * 0.03
    assert stats["tasks_total"] == 3 and billed > 0
    assert abs(final.cost - billed) < 1e-9, "counted money is billed money"
    assert final.unseen == 0 and final.reserved == 0
    assert final.counts[State.FAILED] == 3, "the jobs stay failed"
    entries = cluster.redis.xrange(keys.RESULTS)
    assert len(entries) == 3, "one terminal record each"
    assert cluster.redis.hget(keys.STATS, "abandoned_settled") == "3"


def test_status_and_metrics_show_counted_unseen_and_reserved_money_apart(store):
    running(store)
    abandon(store)
    running(store, "b:k", "sim-2")  # in flight, with a budget reservation below
    store.redis.hset(keys.batch("b"), mapping={"reserved_micros": 90_000, "cost_micros": 30_000})
    store.redis.hset(keys.STATS, mapping={"abandoned_settled": 4, "abandoned_given_up": 1})
    status = batch_status(store, "b")
    assert (status.cost, status.unseen, status.reserved) == (0.03, 0.06, 0.09)
    assert status.abandoned == 1 and status.as_dict()["abandoned_followed"] == 1
    console = Console(record=True, width=200)
    console.print(summary_table(status))
    shown = console.export_text()
    assert "$0.0300 counted" in shown and "up to $0.0600 not seen in usage" in shown
    assert "reserved in flight" in shown and "$0.0900" in shown
    assert "remote tasks followed for their cost" in shown

    registry = CollectorRegistry()
    registry.register(metrics.WanqCollector(store.redis))
    samples = {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(generate_latest(registry).decode())
        for sample in family.samples
    }
    batch = (("batch", "b"),)
    assert samples[("wanq_cost_usd_total", batch)] == 0.03
    assert samples[("wanq_unseen_usd", batch)] == 0.06
    assert samples[("wanq_reserved_usd", batch)] == 0.09
    assert samples[("wanq_abandoned_followed", batch)] == 1
    assert samples[("wanq_abandoned_tasks_total", (("outcome", "settled"),))] == 4
    assert samples[("wanq_abandoned_tasks_total", (("outcome", "given_up"),))] == 1
