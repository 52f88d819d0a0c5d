"""Steering overnight batches: a budget cap, re-drive, cancel, pause and resume, against real
Redis, real workers and the simulator."""

from __future__ import annotations

from ops.localstack import wait_for
from ops.sample import image_url
from producers.api import BatchOptions
from tests.conftest import jobs
from workers import errors, keys


def edit_jobs(n: int) -> list[dict]:
    """Image edits with n=1: each costs exactly the simulator's unit price (0.03)."""
    return [
        {
            "custom_id": f"edit-{i:03d}",
            "body": {
                "model": "wan26_i2i",
                "input": {
                    "messages": [
                        {
                            "role": "user",
                            "content": [{"text": f"edit {i}"}, {"image": image_url(i)}],
                        }
                    ]
                },
                "parameters": {"n": 1, "size": "1024*1024"},
            },
        }
        for i in range(n)
    ]


def drained(cluster) -> bool:
    r = cluster.redis
    waiting = r.llen(keys.CREATE_QUEUE) + r.llen(keys.POLL_QUEUE) + r.zcard(keys.POLLS)
    return waiting + r.hlen("unacked") == 0  # polls wait in the pump's set, not as messages


def test_budget_cap_stops_creation_at_the_cap_and_resumes_higher(make_cluster):
    cluster = make_cluster(workers=2, sim_env={"WANQ_SIM_LATENCY": "1"})
    client = cluster.client()
    report = cluster.submit(edit_jobs(30), batch=BatchOptions(max_cost=0.30))

    def stopped() -> bool:
        status = client.status(report.batch_id)
        return (
            status.control == "budget"
            and status.counts["waiting"] + status.ended == 30
            and status.counts["running"] + status.counts["creating"] == 0
        )

    wait_for(stopped, "the budget stop", 60)
    status = client.status(report.batch_id)
    created = cluster.sim("/_sim/stats")["tasks_total"]
    assert created == 10, "0.30 USD at 0.03 per image: ten tasks, not one more"
    assert status.counts["succeeded"] == 10 and status.cost == 0.30
    assert status.counts["waiting"] == 20 and status.counts["failed"] == 0
    assert status.reserved == 0

    assert client.resume(report.batch_id, max_cost=0.90) == 20
    final = cluster.wait(report.batch_id)
    assert final.counts["succeeded"] == 30
    assert abs(final.cost - 0.90) < 1e-9
    assert cluster.sim("/_sim/stats")["tasks_total"] == 30


def test_retry_redrives_only_the_failures(make_cluster):
    cluster = make_cluster(workers=2, sim_env={"WANQ_SIM_P_FAIL": "0.5", "WANQ_SIM_SEED": "3"})
    client = cluster.client()
    report = cluster.submit(jobs(30))
    first = cluster.wait(report.batch_id)
    failed = first.counts["failed"]
    assert 0 < failed < 30
    before = {r["custom_id"]: r for r in client.results(report.batch_id)}

    assert client.retry(report.batch_id, codes=[errors.HTTP_ERROR]) == 0  # no such failures
    cluster.sim("/_sim/config", {"p_fail": 0.0})
    assert client.retry(report.batch_id, codes=[errors.GENERATION_ERROR]) == failed
    final = cluster.wait(report.batch_id)
    assert final.counts["succeeded"] == 30 and final.failures == {}

    for record in client.results(report.batch_id):
        earlier = before[record["custom_id"]]
        if earlier["state"] == "succeeded":
            assert record == earlier, "successes are untouched"
        else:
            assert record["remote_task_id"] != earlier["remote_task_id"]
            assert record["history"] == [
                {
                    "error": earlier["error"],
                    "attempts": earlier["attempts"],
                    "remote_task_id": earlier["remote_task_id"],
                    "completed_at": record["history"][0]["completed_at"],
                }
            ]
    assert cluster.sim("/_sim/stats")["tasks_total"] == 30 + failed


def test_cancel_mid_batch_creates_nothing_more(make_cluster):
    cluster = make_cluster(
        workers=2, sim_env={"WANQ_SIM_LATENCY": "3"}, worker_env={"WANQ_CREATE_RATE": "8"}
    )
    client = cluster.client()
    report = cluster.submit(jobs(40))  # 5 s of paced creates, cancelled after about one
    wait_for(lambda: client.status(report.batch_id).counts["running"] >= 4, "jobs running", 30)

    client.cancel(report.batch_id)
    status = client.status(report.batch_id)
    assert status.done and status.counts["cancelled"] > 0
    wait_for(lambda: drained(cluster), "queues drained", 60)
    created = cluster.sim("/_sim/stats")["tasks_total"]
    assert created < 40
    records = list(client.results(report.batch_id))
    cancelled = [r for r in records if r["state"] == "cancelled"]
    assert all(r["error"]["code"] == errors.CANCELLED for r in cancelled)
    assert sum(bool(r["remote_task_id"]) for r in records) == created
    assert cluster.redis.xlen(keys.RESULTS) == 40, "one stream entry per job, cancelled too"


def test_pause_parks_new_creations_and_resume_releases_them(make_cluster):
    cluster = make_cluster(
        workers=2, sim_env={"WANQ_SIM_LATENCY": "0.5"}, worker_env={"WANQ_CREATE_RATE": "5"}
    )
    client = cluster.client()
    report = cluster.submit(jobs(30))
    wait_for(lambda: client.status(report.batch_id).ended >= 3, "a few jobs done", 30)
    client.pause(report.batch_id)

    def parked() -> bool:
        status = client.status(report.batch_id)
        return status.counts["waiting"] > 0 and status.counts["waiting"] + status.ended == 30

    wait_for(parked, "the rest parked", 60)
    created = cluster.sim("/_sim/stats")["tasks_total"]
    assert created < 30
    assert cluster.redis.zcard(keys.batch_parked(report.batch_id)) == 30 - created

    assert client.resume(report.batch_id) == 30 - created
    final = cluster.wait(report.batch_id)
    assert final.counts["succeeded"] == 30
    assert cluster.sim("/_sim/stats")["tasks_total"] == 30
