"""Redis Sentinel: one ``sentinel://`` WANQ_REDIS_URL serves the Celery broker and the job
store, with a real master, a replica and three sentinels; a batch survives the master's
death, each job ending once."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import redis
from redis.sentinel import Sentinel

from ops.localstack import LocalStack, wait_for
from tests.conftest import SIM_ENV, Cluster, jobs
from tests.test_doctor import cluster_env, doctor
from tests.test_recovery import assert_exactly_once
from workers import connection, keys

PASSWORD = "master-pw-3c9d1e"
SENTINEL_PASSWORD = "sentinel-pw-7a2b4f"
# Short enough that messages lost with the old master come back within the test.
FAILOVER_ENV = {
    "WANQ_VISIBILITY_TIMEOUT": "20",
    "WANQ_MAX_COUNTDOWN": "5",
    "WANQ_SWEEP_GRACE": "5",
    # the sweeper's lease, taken on the old master by a worker process that died with it
    # (a worker restarts when its Redis dies), is taken over this soon on the new one
    "WANQ_LEASE_TTL": "3",
}


@pytest.fixture
def sentinel_cluster(tmp_path: Path) -> Iterator[Callable[..., Cluster]]:
    stacks: list[LocalStack] = []

    def make(workers: int = 2, sim_env: dict[str, str] | None = None) -> Cluster:
        stack = LocalStack(tmp_path / f"stack{len(stacks)}")
        stacks.append(stack)
        url = stack.start_sentinels(password=PASSWORD, sentinel_password=SENTINEL_PASSWORD)
        stack.start_simulator({**SIM_ENV, **(sim_env or {})})
        cluster = Cluster(stack, url, worker_env=dict(FAILOVER_ENV))
        cluster.start_workers(workers)
        return cluster

    yield make
    for stack in stacks:
        stack.stop()


def _new_master(url: str, old_port: int) -> int:
    return wait_for(lambda: (port := _port_named(url)) != old_port and port, "a failover", 60)


def _blocked(client: redis.Redis) -> bool:
    return any(c["cmd"] == "blpop" for c in client.client_list(_type="normal"))


def _port_named(url: str) -> int:
    """The master's port as the sentinels name it to a new client now (SENTINEL MASTERS;
    get-master-addr-by-name names the promoted replica before the failover has ended)."""
    sentinel = connection.parse_sentinel(url)
    assert sentinel is not None
    manager = Sentinel(list(sentinel.sentinels), sentinel_kwargs=sentinel.sentinel_kwargs())
    try:
        return int(manager.discover_master(sentinel.master_name)[1])
    finally:
        manager.close()


def _sentinel(url: str) -> redis.Redis:
    sentinel = connection.parse_sentinel(url)
    assert sentinel is not None
    host, port = sentinel.sentinels[0]
    return redis.Redis(host, port, password=SENTINEL_PASSWORD)


def test_the_sentinel_url_parses_into_kombus_form_with_options_aside():
    url = (
        "sentinel://:p%40ss@s1:26379/2;sentinel://s2:26380;sentinel://s3"
        "?master_name=jobs&sentinel_password=sp"
    )
    broker_url, options = connection.broker(url)
    assert broker_url == (
        "sentinel://:p%40ss@s1:26379/2;sentinel://:p%40ss@s2:26380/2;sentinel://:p%40ss@s3:26379/2"
    )
    assert options["master_name"] == "jobs"
    assert options["sentinel_kwargs"]["password"] == "sp"
    assert connection.broker("redis://:pw@h:6379/0") == ("redis://:pw@h:6379/0", {})
    assert connection.parse_sentinel("sentinel://s1:26379").master_name == "mymaster"
    with pytest.raises(ValueError, match="unknown option"):
        connection.parse_sentinel("sentinel://s1:26379/0?master=jobs")
    with pytest.raises(ValueError, match="every URL"):
        connection.parse_sentinel("sentinel://s1:26379/0;redis://h:6379/0")


def test_the_redis_sentinel_form_means_the_same():
    one = "redis+sentinel://:p%40ss@s1:26379,s2:26380,s3/jobs/2?sentinel_password=sp"
    kombu_form = (
        "sentinel://:p%40ss@s1:26379/2;sentinel://s2:26380;sentinel://s3"
        "?master_name=jobs&sentinel_password=sp"
    )
    assert connection.parse_sentinel(one) == connection.parse_sentinel(kombu_form)
    assert connection.broker(one) == connection.broker(kombu_form)
    assert connection.parse_sentinel("redis+sentinel://h/mymaster").db == 0
    with pytest.raises(ValueError, match="MASTER_NAME"):
        connection.parse_sentinel("redis+sentinel://h:26379")
    with pytest.raises(ValueError, match="sentinel address"):
        connection.parse_sentinel("redis+sentinel://h:port/m")


def test_one_sentinel_url_serves_broker_and_store(sentinel_cluster):
    cluster = sentinel_cluster(workers=2)
    report = cluster.submit(jobs(8))
    final = cluster.wait(report.batch_id, timeout=90)
    assert final.counts["succeeded"] == 8
    assert_exactly_once(cluster, report.batch_id, 8)
    # Written on the master the sentinels name, through them: the broker's queues too.
    port = _port_named(cluster.redis_url)
    with redis.Redis(port=port, password=PASSWORD, decode_responses=True) as master:
        assert master.xlen(keys.RESULTS) == 8
        assert master.exists("_kombu.binding.wanq.create")
    logs = cluster.logs()
    assert "sentinel://:**@127.0.0.1" in logs
    assert PASSWORD not in logs and SENTINEL_PASSWORD not in logs

    # wanq doctor reads the same URL: Redis found through the sentinels, workers on queues
    code, checks = doctor(cluster_env(cluster))
    assert code == 0, checks
    assert checks["redis"]["detail"].startswith("sentinel://:***@127.0.0.1")
    assert PASSWORD not in json.dumps(checks) and SENTINEL_PASSWORD not in json.dumps(checks)


def test_the_store_client_follows_the_sentinels_to_the_new_master(tmp_path):
    """A command in flight when the master dies is retried on the promoted replica, not
    again and again on the dead address (redis/redis-py#3874)."""
    with LocalStack(tmp_path) as stack, ThreadPoolExecutor(1) as pool:
        url = stack.start_sentinels(password=PASSWORD, sentinel_password=SENTINEL_PASSWORD)
        client = connection.connect(url)
        client.set("before", "kept")
        assert client.wait(1, 5000) == 1  # the replica has it
        old_port = _port_named(url)
        blocked = pool.submit(client.blpop, ["wake"], 8)
        wait_for(lambda: _blocked(client), "the BLPOP on the master")
        next(p for p in stack.processes if p.name == "redis").kill()

        new_port = _new_master(url, old_port)
        with redis.Redis(port=new_port, password=PASSWORD, decode_responses=True) as promoted:
            promoted.rpush("wake", "up")
        assert blocked.result(timeout=30) == ("wake", "up")
        assert client.get("before") == "kept"


@pytest.mark.parametrize("how", ["sigkill", "sentinel-failover"])
def test_a_batch_survives_a_failover(sentinel_cluster, how):
    """Mid-batch, the master dies (SIGKILL: writes not yet replicated are lost) or an
    operator moves it (SENTINEL FAILOVER: the old master is demoted to a replica). Workers
    and producer follow the sentinels to the new master, and every job still ends once."""
    cluster = sentinel_cluster(workers=2, sim_env={"WANQ_SIM_LATENCY": "2"})
    report = cluster.submit(jobs(60))
    client = cluster.client()
    wait_for(lambda: client.status(report.batch_id).ended >= 10, "a sixth of the batch", 90)
    old_port = _port_named(cluster.redis_url)
    if how == "sigkill":
        next(p for p in cluster.stack.processes if p.name == "redis").kill()
    else:
        with _sentinel(cluster.redis_url) as sentinel:
            assert sentinel.execute_command("SENTINEL FAILOVER", "mymaster")
    new_port = _new_master(cluster.redis_url, old_port)
    if how == "sentinel-failover":  # writes to the old master count only once it is demoted
        with redis.Redis(port=old_port, password=PASSWORD) as old:
            wait_for(lambda: old.info("replication")["role"] == "slave", "the demotion", 60)

    final = cluster.wait(report.batch_id, timeout=180)
    assert final.counts["succeeded"] == 60
    assert_exactly_once(cluster, report.batch_id, 60)
    with redis.Redis(port=new_port, password=PASSWORD) as promoted:
        assert promoted.info("replication")["role"] == "master"
