"""The Prometheus metrics: histograms recorded in Redis, and the collector scraped over HTTP
from ``serve`` against a real cluster (real Redis, real workers, the simulator)."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import subprocess
import sys
import threading
from collections.abc import Iterator

import pytest
import redis
import requests
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from ops.localstack import LocalStack, free_port, wait_for
from tests.conftest import API_KEY, WORKER_ENV, jobs
from workers import account, errors, keys, metrics
from workers.connection import connect
from workers.store import ALL_STATES

Samples = dict[tuple[str, frozenset], float]


def parse(text: str) -> Samples:
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, frozenset(labels.items()))]


def label_values(samples: Samples, name: str, label: str) -> set[str]:
    return {dict(key)[label] for sample, key in samples if sample == name and label in dict(key)}


def histogram(samples: Samples, name: str) -> tuple[dict[str, float], float, float]:
    buckets = {
        dict(labels)["le"]: v
        for (sample, labels), v in samples.items()
        if sample == name + "_bucket"
    }
    return buckets, value(samples, name + "_count"), value(samples, name + "_sum")


def assert_consistent(samples: Samples, name: str, bounds: tuple[float, ...]) -> None:
    """Prometheus' histogram rules: every bucket there, cumulative, +Inf equal to the count."""
    buckets, count, total = histogram(samples, name)
    assert list(buckets) == [metrics.bucket_label(b) for b in bounds]
    counts = list(buckets.values())
    assert counts == sorted(counts), f"{name} buckets are not cumulative: {buckets}"
    assert buckets["+Inf"] == count
    assert total >= 0 and (count > 0 or total == 0)


def scrape(url: str) -> Samples:
    response = requests.get(url, timeout=5)
    response.raise_for_status()
    return parse(response.text)


def wanq_status(cluster, batch_id: str) -> dict:
    env = {**WORKER_ENV, "WANQ_REDIS_URL": cluster.redis_url}
    result = subprocess.run(
        [sys.executable, "-m", "ops.cli", "status", batch_id, "--json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return json.loads(result.stdout)


@pytest.fixture
def served(make_cluster) -> Iterator[tuple]:
    """A cluster and ``serve`` running against it in a thread; stopped after the test."""
    cluster = make_cluster(workers=2)
    settings = dataclasses.replace(cluster.settings, max_in_flight=7)
    port, stop = free_port(), threading.Event()
    thread = threading.Thread(
        target=metrics.serve, args=(settings, port), kwargs={"stop": stop}, daemon=True
    )
    thread.start()
    url = f"http://127.0.0.1:{port}/metrics"
    wait_for(lambda: requests.get(url, timeout=2).ok, "metrics endpoint")
    yield cluster, url
    stop.set()
    thread.join(10)
    assert not thread.is_alive(), "serve did not return once stopped"


def test_scrape_matches_the_batches_and_the_cluster(served):
    cluster, url = served
    ok = cluster.submit(jobs(3, prefix="ok"))
    assert cluster.wait(ok.batch_id).counts["succeeded"] == 3
    cluster.sim("/_sim/config", {"p_fail": 1.0})  # every remote task from now on fails
    bad = cluster.submit(jobs(2, prefix="bad"))
    assert cluster.wait(bad.batch_id).counts["failed"] == 2

    samples = scrape(url)
    assert label_values(samples, "wanq_jobs", "batch") == {ok.batch_id, bad.batch_id}
    for batch_id in (ok.batch_id, bad.batch_id):
        status = wanq_status(cluster, batch_id)
        for state in ALL_STATES:
            assert (
                value(samples, "wanq_jobs", batch=batch_id, state=state.value)
                == (status["counts"][state.value])
            ), (batch_id, state)
        assert math.isclose(
            value(samples, "wanq_cost_usd_total", batch=batch_id),
            status["cost_usd"],
            abs_tol=1e-9,
        )
        shown = {
            dict(labels)["code"]: v
            for (name, labels), v in samples.items()
            if name == "wanq_failures_total" and dict(labels)["batch"] == batch_id
        }
        assert shown == status["failures_by_code"]
    assert value(samples, "wanq_cost_usd_total", batch=ok.batch_id) > 0
    assert value(samples, "wanq_failures_total", batch=bad.batch_id, code="001021095") == 2

    assert value(samples, "wanq_in_flight") == 0  # everything ended
    # the cap the workers enforce (none here), published by their sweeper: not the 7 of
    # the metrics process's own settings (issue 15)
    assert value(samples, "wanq_in_flight_cap") == cluster.settings.max_in_flight == 0
    for queue in (keys.CREATE_QUEUE, keys.POLL_QUEUE, keys.DELIVER_QUEUE):
        assert value(samples, "wanq_queue_depth", queue=queue) >= 0
    assert value(samples, "wanq_unacked") >= 0
    assert value(samples, "wanq_account_blocked") == 0
    assert value(samples, "wanq_duplicate_creates_total") == int(
        cluster.redis.hget(keys.STATS, "create_window_losses") or 0
    )

    # the cluster-wide values follow Redis
    cluster.redis.hincrby(keys.STATS, "create_window_losses", 2)
    account.block(cluster.redis, 401, "the API key was refused")
    try:
        samples = scrape(url)
        assert value(samples, "wanq_account_blocked") == 1
        assert value(samples, "wanq_duplicate_creates_total") == int(
            cluster.redis.hget(keys.STATS, "create_window_losses")
        )
    finally:
        account.unblock(cluster.redis)
    assert value(scrape(url), "wanq_account_blocked") == 0

    text = requests.get(url, timeout=5).text
    assert API_KEY not in text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            assert all(API_KEY not in v for v in sample.labels.values())


def test_recorded_job_ends_show_as_histograms(served):
    cluster, url = served
    report = cluster.submit(jobs(2))
    cluster.wait(report.batch_id)  # nothing ends while we count below
    before = scrape(url)
    for name, bounds in (
        ("wanq_result_lag_seconds", metrics.LAG_BUCKETS),
        ("wanq_polls_per_job", metrics.POLL_BUCKETS),
    ):
        assert_consistent(before, name, bounds)

    ends = [(0.05, 1), (0.3, 2), (7.0, 4), (500.0, 9), (-0.2, 25), (None, 3)]
    for lag, polls in ends:
        metrics.record_job_end(cluster.redis, lag, polls)
    after = scrape(url)
    assert_consistent(after, "wanq_result_lag_seconds", metrics.LAG_BUCKETS)
    assert_consistent(after, "wanq_polls_per_job", metrics.POLL_BUCKETS)

    def delta(name: str) -> tuple[dict[str, float], float, float]:
        (b0, c0, s0), (b1, c1, s1) = histogram(before, name), histogram(after, name)
        return {le: b1[le] - b0[le] for le in b1}, c1 - c0, s1 - s0

    lag_buckets, lag_count, lag_sum = delta("wanq_result_lag_seconds")
    assert lag_count == 5  # the end without a lag is not in it
    assert math.isclose(lag_sum, 0.05 + 0.3 + 7.0 + 500.0 + 0.0)  # a negative lag counts as 0
    assert lag_buckets == {
        "0.1": 2,  # 0.05 and the clamped -0.2
        "0.25": 2,
        "0.5": 3,
        "1.0": 3,
        "2.0": 3,
        "5.0": 3,
        "10.0": 4,
        "30.0": 4,
        "60.0": 4,
        "120.0": 4,
        "+Inf": 5,
    }
    poll_buckets, poll_count, poll_sum = delta("wanq_polls_per_job")
    assert poll_count == 6 and poll_sum == 1 + 2 + 4 + 9 + 25 + 3
    assert poll_buckets == {
        "1.0": 1,
        "2.0": 2,
        "3.0": 3,
        "4.0": 4,
        "5.0": 4,
        "8.0": 4,
        "12.0": 5,
        "20.0": 5,
        "+Inf": 6,
    }


def collect(client, **kwargs) -> Samples:
    registry = CollectorRegistry()
    registry.register(metrics.WanqCollector(client, **kwargs))
    return parse(generate_latest(registry).decode())


def test_scrape_reads_only_the_most_recent_batches(redis_url):
    client = connect(redis_url)
    pipe = client.pipeline()
    for i in range(205):
        batch_id = f"b{i:03d}"
        pipe.hset(
            keys.batch(batch_id),
            mapping={"total": 6, "n:queued": 1, "n:creating": 2, "n:running": 3, "cost_micros": i},
        )
        pipe.zadd(keys.BATCHES, {batch_id: 1_000 + i})
    pipe.zadd(keys.BATCHES, {"gone": 5_000})  # listed, but its hash is gone: skipped
    pipe.hset(keys.batch_codes("b204"), mapping={errors.HTTP_ERROR: 2, errors.STATUS_CHECK: 0})
    pipe.rpush(keys.CREATE_QUEUE, "m1", "m2", "m3")
    pipe.rpush(keys.POLL_QUEUE, "m4")
    pipe.hset(keys.UNACKED, mapping={"tag1": "x", "tag2": "y"})
    pipe.zadd(keys.INFLIGHT, {f"b204:j{i}": i for i in range(9)})
    pipe.zadd(keys.batch_ready("b204"), {f"b204:k{i}": i for i in range(3)})
    pipe.zadd(keys.batch_ready("b203"), {"b203:k0": 0})
    pipe.zadd(keys.READY, {"b204": 0, "b203": 0})
    pipe.execute()

    samples = collect(client, batch_limit=200)
    batches = label_values(samples, "wanq_jobs", "batch")
    assert batches == {f"b{i:03d}" for i in range(6, 205)}  # "gone" took a slot of the 200
    assert value(samples, "wanq_in_flight") == 9  # the cluster's in-flight set, exact
    assert value(samples, "wanq_waiting_for_slot") == 4
    assert value(samples, "wanq_in_flight_cap") == 0
    assert value(samples, "wanq_cost_usd_total", batch="b204") == 204 / 1_000_000
    assert value(samples, "wanq_failures_total", batch="b204", code=errors.HTTP_ERROR) == 2
    assert label_values(samples, "wanq_failures_total", "code") == {errors.HTTP_ERROR}
    assert value(samples, "wanq_queue_depth", queue=keys.CREATE_QUEUE) == 3
    assert value(samples, "wanq_queue_depth", queue=keys.POLL_QUEUE) == 1
    assert value(samples, "wanq_queue_depth", queue=keys.DELIVER_QUEUE) == 0
    assert value(samples, "wanq_unacked") == 2
    assert value(samples, "wanq_duplicate_creates_total") == 0
    for name, bounds in (
        ("wanq_result_lag_seconds", metrics.LAG_BUCKETS),
        ("wanq_polls_per_job", metrics.POLL_BUCKETS),
    ):
        assert_consistent(samples, name, bounds)  # empty, but well-formed
        assert histogram(samples, name)[1] == 0


def test_record_job_end_writes_cumulative_buckets(redis_url):
    client = connect(redis_url)
    metrics.record_job_end(client, 0.5, 4)
    metrics.record_job_end(client, None, 0)
    lag = client.hgetall(metrics.RESULT_LAG_KEY)
    assert lag == {
        **{le: "1" for le in ("0.5", "1.0", "2.0", "5.0", "10.0", "30.0", "60.0", "120.0")},
        "+Inf": "1",
        "_sum": "0.5",
        "_count": "1",
    }
    polls = client.hgetall(metrics.POLLS_KEY)
    assert polls == {
        "1.0": "1",  # the job with 0 polls
        "2.0": "1",
        "3.0": "1",
        "4.0": "2",
        "5.0": "2",
        "8.0": "2",
        "12.0": "2",
        "20.0": "2",
        "+Inf": "2",
        "_sum": "4",
        "_count": "2",
    }
    with pytest.raises(ValueError):
        metrics.record_job_end(client, 1.0, -1)
    with pytest.raises(ValueError):
        metrics.record_job_end(client, math.nan, 1)
    assert client.hget(metrics.POLLS_KEY, "_count") == "2"  # nothing half-written


def test_observe_job_end_from_the_job_hash(redis_url):
    client = connect(redis_url)
    created = {"remote_task_id": "sim-1", "polls": "2", "created_at": "100.0"}
    # a poll found it done after two that found it unfinished, the last one at 103.5
    metrics.observe_job_end(
        client, {**created, "last_miss_at": "103.5"}, remote_done=True, stored_at=104.0
    )
    # the first poll found it done: no lag known
    metrics.observe_job_end(client, {**created, "polls": "0"}, remote_done=True, stored_at=104.0)
    # cancelled after two polls: polls only
    metrics.observe_job_end(
        client, {**created, "last_miss_at": "103.5"}, remote_done=False, stored_at=104.0
    )
    # never created: not observed
    metrics.observe_job_end(client, {"polls": "0"}, remote_done=False)

    assert client.hmget(metrics.RESULT_LAG_KEY, ["_count", "_sum", "0.5", "0.25"]) == [
        "1",
        "0.5",
        "1",
        None,
    ]
    assert client.hmget(metrics.POLLS_KEY, ["_count", "_sum", "1.0", "2.0", "3.0"]) == [
        "3",
        str(3 + 1 + 2),
        "1",
        "2",
        "3",
    ]
    assert metrics.result_lag({"last_miss_at": ""}, 10.0) is None


def test_wanq_metrics_command_serves_the_endpoint(redis_server, redis_url, tmp_path):
    """The command compose runs (`wanq metrics`): a real process answering a scrape."""
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    client.zadd(keys.INFLIGHT, {"b:1": 1, "b:2": 2})
    port = free_port()
    stack = LocalStack(tmp_path)
    env = {**os.environ, "WANQ_REDIS_URL": redis_url, "WANQ_MAX_IN_FLIGHT": "50"}
    stack._spawn("metrics", [sys.executable, "-m", "ops.cli", "metrics", "--port", str(port)], env)
    try:
        url = f"http://127.0.0.1:{port}/metrics"
        samples = wait_for(lambda: scrape(url), "wanq metrics")
        assert value(samples, "wanq_in_flight") == 2
        assert value(samples, "wanq_in_flight_cap") == 50
    finally:
        stack.stop()


def test_the_cap_is_the_clusters_and_cancellations_are_not_failures(redis_url):
    """Issue 15: the cap comes from Redis (the sweeper publishes what the workers enforce),
    whatever the metrics process's own environment says; WQ200 is not a failure code."""
    client = connect(redis_url)
    client.hset(keys.batch("bc"), mapping={"total": 5, "n:cancelled": 3, "n:failed": 2})
    client.zadd(keys.BATCHES, {"bc": 1})
    client.hset(keys.batch_codes("bc"), mapping={errors.CANCELLED: 3, errors.HTTP_ERROR: 2})
    samples = collect(client, in_flight_cap=0)
    assert value(samples, "wanq_in_flight_cap") == 0  # nothing published yet: the fallback

    client.hset(keys.CLUSTER, "max_in_flight", 5)  # as every worker publishes it
    samples = collect(client, in_flight_cap=0)
    assert value(samples, "wanq_in_flight_cap") == 5
    assert label_values(samples, "wanq_failures_total", "code") == {errors.HTTP_ERROR}
    assert value(samples, "wanq_cancelled_total", batch="bc") == 3
