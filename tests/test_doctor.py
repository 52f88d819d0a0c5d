"""``wanq doctor`` against real parts: all clear on a healthy cluster, and each fault it is
meant to find, found and said in plain words."""

from __future__ import annotations

import json
import os

import redis

from ops.localstack import LocalStack, wait_for
from tests.conftest import WORKER_ENV
from tests.test_cli import wanq
from workers import keys


def doctor(env: dict[str, str]) -> tuple[int, dict[str, dict]]:
    result = wanq("doctor", "--json", "--worker-timeout", "2", env={**os.environ, **env})
    checks = {}
    for line in result.stdout.splitlines():
        check = json.loads(line)
        checks[check["name"]] = check
    return result.returncode, checks


def cluster_env(cluster, **extra: str) -> dict[str, str]:
    return {
        **WORKER_ENV,
        "WANQ_REDIS_URL": cluster.redis_url,
        "WANQ_PROVIDER_URL": cluster.stack.provider_url,
        **extra,
    }


def test_a_healthy_cluster_is_all_clear(make_cluster):
    cluster = make_cluster(workers=1)
    code, checks = doctor(cluster_env(cluster))
    assert code == 0, checks
    assert {c["verdict"] for c in checks.values()} == {"ok"}
    assert "append-only file on" in checks["persistence"]["detail"]
    assert "key accepted" in checks["provider"]["detail"]
    for queue in (keys.CREATE_QUEUE, keys.POLL_QUEUE, keys.DELIVER_QUEUE):
        assert "1 worker(s)" in checks[f"queue {queue}"]["detail"]


def test_it_finds_a_missing_poll_worker_a_wrong_key_and_a_blocked_account(make_cluster):
    cluster = make_cluster(workers=0)
    worker = cluster.stack.start_worker("creator", WORKER_ENV, queues=[keys.CREATE_QUEUE])
    wait_for(lambda: "ready." in worker.log.read_text(), "the create-only worker", 60)
    cluster.redis.hset(keys.ACCOUNT, mapping={"http_status": 401, "reason": "HTTP 401"})

    code, checks = doctor(cluster_env(cluster, WANQ_API_KEY="sk-wrong"))
    assert code == 1
    assert checks[f"queue {keys.CREATE_QUEUE}"]["verdict"] == "ok"
    assert checks[f"queue {keys.POLL_QUEUE}"]["verdict"] == "fail"
    assert "never checked" in checks[f"queue {keys.POLL_QUEUE}"]["detail"]
    assert checks["provider"]["verdict"] == "fail"
    assert "refused the API key" in checks["provider"]["detail"]
    assert "sk-wrong" not in json.dumps(checks)
    assert checks["account"]["verdict"] == "fail" and "401" in checks["account"]["detail"]


def test_it_finds_a_redis_that_forgets_and_evicts(tmp_path):
    with LocalStack(tmp_path) as stack:
        stack.start_redis(password="doctor-pw")
        client = redis.Redis.from_url(stack.redis_url)
        client.config_set("appendonly", "no")
        client.config_set("maxmemory-policy", "allkeys-lru")
        code, checks = doctor({"WANQ_REDIS_URL": stack.redis_url})
    assert code == 1
    assert checks["persistence"]["verdict"] == "fail"
    assert "keeps nothing on disk" in checks["persistence"]["detail"]
    assert checks["eviction"]["verdict"] == "fail"
    assert checks["workers"]["verdict"] == "fail"
    assert "doctor-pw" not in json.dumps(checks)


def test_it_says_when_redis_is_not_there():
    code, checks = doctor({"WANQ_REDIS_URL": "redis://:secret-pw@127.0.0.1:1/0"})
    assert code == 1
    assert checks["redis"]["verdict"] == "fail"
    assert "cannot reach Redis at redis://:***@127.0.0.1:1/0" in checks["redis"]["detail"]
