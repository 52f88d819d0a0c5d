"""Hostile answers and slow hosts against a real cluster: a provider whose usage numbers are
absurd, output URLs aimed at a loopback canary, an output host dribbling a byte a second, and
an outage only status calls saw. Each job still ends exactly once with one stream entry."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from ops.localstack import LocalStack, wait_for
from producers.api import BatchOptions
from tests.canary import Canary, serve
from tests.conftest import Cluster, jobs, start_cluster
from workers import account, keys, webhooks


@pytest.fixture
def canary() -> Iterator[Canary]:
    yield from serve(Canary())


@pytest.fixture
def dribbler() -> Iterator[Canary]:
    yield from serve(Canary(dribble=True))


def stream_entries(cluster, batch_id: str) -> list[dict]:
    """The batch's end entries (an ``event=archived`` entry may follow each, by design)."""
    entries = cluster.redis.xrange(keys.RESULTS)
    return [f for _, f in entries if keys.batch_of(f["job_id"]) == batch_id and "event" not in f]


def assert_each_job_ended_once(cluster, batch_id: str, n: int) -> list[dict]:
    records = list(cluster.client().results(batch_id))
    assert len(records) == n and all(r["state"] == "succeeded" for r in records)
    for record in records:
        record["job_id"] = keys.job_id(batch_id, record["custom_id"])
    entries = stream_entries(cluster, batch_id)
    assert sorted(e["job_id"] for e in entries) == sorted(r["job_id"] for r in records)
    return records


# --- hostile numbers -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def usage_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """One cluster (its own Redis) for the hostile-usage cases: each case sets the usage the
    simulator answers with, then runs a batch of its own and checks only that batch, the
    slots (all given back by the end of each case) and the simulator's answers."""
    with LocalStack(tmp_path_factory.mktemp("usage")) as stack:
        url = stack.start_redis()
        yield start_cluster(stack, url, workers=1, worker_env={"WANQ_MAX_IN_FLIGHT": "2"})


@pytest.mark.parametrize(
    "usage",
    [
        {"cost": "1e300"},
        {"cost": "Infinity"},
        {"cost": "NaN"},
        {"cost": -5},
        {"cost": 1e308, "image_count": 10**30},
        {"cost": "0.03", "image_count": "9" * 400, "discount": "-Infinity"},
    ],
)
def test_hostile_usage_ends_each_job_once_with_its_slot_and_money_released(usage_cluster, usage):
    cluster = usage_cluster
    assert cluster.redis.zcard(keys.INFLIGHT) == 0, "the shared cluster starts idle"
    cluster.sim("/_sim/config", {"hostile_usage": json.dumps(usage)})
    assert cluster.sim("/_sim/config")["hostile_usage"] == json.dumps(usage)
    report = cluster.submit(jobs(4), batch=BatchOptions(max_cost=100.0))
    final = cluster.wait(report.batch_id, timeout=90)
    assert final.counts["succeeded"] == 4

    records = assert_each_job_ended_once(cluster, report.batch_id, 4)
    for record in records:
        rejected = {k for k in usage if k != "cost" or usage["cost"] != "0.03"}
        assert set(record["usage"]["invalid"]) == rejected
        assert not rejected & set(record["usage"])  # nothing out of bounds was kept
    batch = cluster.redis.hgetall(keys.batch(report.batch_id))
    assert int(batch.get("cost_micros") or 0) <= 4 * 1000 * 1_000_000
    assert int(batch.get("reserved_micros") or 0) == 0, "every reservation given back"
    assert cluster.redis.zcard(keys.INFLIGHT) == 0, "every in-flight slot given back"


# --- output URLs aimed at a canary on loopback -----------------------------------------------


def test_a_backslash_output_url_is_refused_and_the_canary_never_fetched(
    make_cluster, canary, tmp_path
):
    bypass = f"http://{canary.address}\\@outputs.example.test"
    cluster = make_cluster(
        workers=1,
        sim_env={"WANQ_SIM_OUTPUT_BASE": bypass},
        worker_env={
            "WANQ_ARCHIVE_DIR": str(tmp_path / "archive"),
            "WANQ_ARCHIVE_ALLOW_HOSTS": "outputs.example.test",
        },
    )
    report = cluster.submit(jobs(3, interleave_every=100))
    cluster.wait(report.batch_id, timeout=90)
    wait_for(lambda: cluster.redis.zcard(keys.DELIVER) == 0, "deliveries done", 60)

    records = assert_each_job_ended_once(cluster, report.batch_id, 3)
    for record in records:
        images = [o for o in record["outputs"] if o["type"] == "image"]
        assert images and all(o["url"] == "" and "backslash" in o["url_error"] for o in images)
        assert all("path" not in o for o in images)
    assert canary.paths == []


def test_output_urls_on_loopback_are_refused_by_the_archive(make_cluster, canary, tmp_path):
    cluster = make_cluster(
        workers=1,
        sim_env={"WANQ_SIM_OUTPUT_BASE": f"http://{canary.address}"},
        worker_env={"WANQ_ARCHIVE_DIR": str(tmp_path / "archive")},
    )
    report = cluster.submit(jobs(3, interleave_every=100))
    cluster.wait(report.batch_id, timeout=90)
    wait_for(lambda: cluster.redis.zcard(keys.DELIVER) == 0, "deliveries done", 60)

    for record in assert_each_job_ended_once(cluster, report.batch_id, 3):
        job = cluster.redis.hgetall(keys.job(record["job_id"]))
        problems = json.loads(job["archive_errors"])
        assert problems and all("127.0.0.1, a loopback address" in p for p in problems)
    assert canary.paths == []


# --- a slow output host ----------------------------------------------------------------------


def test_a_dribbling_output_host_never_starves_creates_and_polls(make_cluster, dribbler, tmp_path):
    cluster = make_cluster(
        workers=1,
        sim_env={"WANQ_SIM_OUTPUT_BASE": f"http://{dribbler.address}"},
        worker_env={
            "WANQ_CONCURRENCY": "2",
            "WANQ_DELIVERY_THREADS": "2",
            "WANQ_ARCHIVE_DIR": str(tmp_path / "archive"),
            "WANQ_ARCHIVE_ALLOW_HOSTS": "127.0.0.1",
            "WANQ_ARCHIVE_DEADLINE": "300",  # the dribbler holds on until the test lets go
            # deliveries deferred while both threads are held are sent again after this
            "WANQ_SWEEP_GRACE": "3",
        },
    )
    slow = cluster.submit(jobs(3, interleave_every=100, prefix="slow")[1:])
    cluster.wait(slow.batch_id, timeout=60)
    wait_for(lambda: len(dribbler.paths) >= 2, "both delivery threads held by the dribbler", 30)
    cluster.sim("/_sim/config", {"output_base": ""})  # the next batch's outputs are served fine

    after = cluster.submit(jobs(12, prefix="after"))
    final = cluster.wait(after.batch_id, timeout=60)

    assert final.counts["succeeded"] == 12, "creates and polls went on"
    owed = cluster.redis.zrange(keys.DELIVER, 0, -1)
    assert [t for t in owed if t.startswith(slow.batch_id)], "with the slow downloads running"
    assert len(dribbler.paths) == 2, "and no more than the delivery threads were held"

    dribbler.stop.set()  # the host goes away: its downloads fail and are recorded
    wait_for(lambda: cluster.redis.zcard(keys.DELIVER) == 0, "every delivery done", 120)
    for record in cluster.client().results(slow.batch_id):
        job = cluster.redis.hgetall(keys.job(keys.job_id(slow.batch_id, record["custom_id"])))
        assert json.loads(job["archive_errors"]), "each slow output has its archive error"
    for record in cluster.client().results(after.batch_id):
        assert all("path" in o for o in record["outputs"]), "the next batch was archived"


# --- an outage only status calls saw ---------------------------------------------------------


def test_a_successful_status_call_lifts_a_block_only_status_calls_saw(make_cluster):
    cluster = make_cluster(
        workers=1,
        sim_env={"WANQ_SIM_LATENCY": "6", "WANQ_SIM_LATENCY_JITTER": "0"},
        worker_env={"WANQ_MAX_COUNTDOWN": "2", "WANQ_POLL_FIRST": "3"},
    )
    report = cluster.submit(jobs(4))
    client = cluster.client()
    wait_for(lambda: client.status(report.batch_id).counts["running"] == 4, "all created", 30)

    cluster.sim("/_sim/config", {"key_revoked": True})
    wait_for(lambda: account.blocked(cluster.redis), "a poll saw the 401", 30)
    assert account.blocked(cluster.redis)["source"] == "status"
    cluster.sim("/_sim/config", {"key_revoked": False})

    final = cluster.wait(report.batch_id, timeout=60)
    assert final.counts["succeeded"] == 4
    wait_for(lambda: not account.blocked(cluster.redis), "the block lifted by a poll", 30)
    assert cluster.sim("/_sim/stats")["tasks_total"] == 4, "no create ran after the outage"


def test_a_balance_block_from_creation_is_not_lifted_by_a_status_call(redis_url):
    import redis as redis_py

    client = redis_py.Redis.from_url(redis_url, decode_responses=True)
    account.block(client, 403, "insufficient balance")
    assert account.status_worked(client, account.blocked(client)) is False
    assert account.blocked(client)["http_status"] == "403"
    account.block(client, 401, "key refused")  # a key a status call just used is fine
    assert account.status_worked(client, account.blocked(client)) is True
    assert not account.blocked(client)
    assert account.status_worked(client, {}) is False, "no block read: nothing to lift"


def test_a_webhook_to_loopback_is_refused_and_recorded_without_the_allow_list(make_cluster, canary):
    secret = webhooks.generate_secret()
    cluster = make_cluster(workers=1, worker_env={"WANQ_WEBHOOK_SECRET": secret})
    hook = f"http://{canary.address}/hook"
    report = cluster.submit(jobs(3), batch=BatchOptions(webhook_url=hook))
    cluster.wait(report.batch_id, timeout=90)
    wait_for(lambda: cluster.redis.zcard(keys.DELIVER) == 0, "deliveries done", 60)

    for record in assert_each_job_ended_once(cluster, report.batch_id, 3):
        state = json.loads(cluster.redis.hget(keys.job(record["job_id"]), "webhook"))
        assert state["state"] == "failed" and state["attempts"] == 1, "refused: not retried"
        assert "127.0.0.1, a loopback address" in state["detail"]
    assert canary.requests == []
