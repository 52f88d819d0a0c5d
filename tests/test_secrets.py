"""The API key lives in the workers' environment only: never in task messages, Redis
(records, stream, queues, unacked messages, the AOF on disk), logs or request bodies."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import redis

from tests.conftest import API_KEY, jobs


def encodings(secret: str) -> list[bytes]:
    """The key as bytes, and as it would appear inside base64 at any alignment."""
    raw = secret.encode()
    forms = [raw]
    for shift in range(3):
        encoded = base64.b64encode(b"\0" * shift + raw)
        forms.append(encoded[4:-4])  # the stable middle, whatever surrounds it
    return forms


def contains_secret(blob: bytes) -> bool:
    return any(form in blob for form in encodings(API_KEY))


def dump_redis(client) -> bytes:
    chunks = []
    for key in client.scan_iter(count=1000):
        kind = client.type(key)
        value = {
            b"string": lambda k: client.get(k),
            b"hash": lambda k: client.hgetall(k),
            b"list": lambda k: client.lrange(k, 0, -1),
            b"set": lambda k: client.smembers(k),
            b"zset": lambda k: client.zrange(k, 0, -1, withscores=True),
            b"stream": lambda k: client.xrange(k),
        }[kind](key)
        chunks.append(repr((key, value)).encode())
    return b"\n".join(chunks)


def test_key_is_nowhere_but_the_worker_environment(make_cluster, redis_server):
    cluster = make_cluster(workers=0, sim_env={"WANQ_SIM_P_500": "0.2", "WANQ_SIM_P_FAIL": "0.2"})
    report = cluster.submit(jobs(30))
    binary = redis.Redis.from_url(cluster.redis_url)
    queued = binary.lrange("wanq.create", 0, -1)
    assert len(queued) == 30
    for message in queued:
        envelope = json.loads(message)
        body = base64.b64decode(envelope["body"])
        args = json.loads(body)[0]
        assert len(args) == 2 and args[1] == 0  # (job_id, seq): IDs, not payloads
        assert not contains_secret(message) and b"wan26_i2i" not in body

    cluster.start_workers(2)
    cluster.wait(report.batch_id)
    assert cluster.sim("/_sim/stats")["key_in_body"] == 0

    assert not contains_secret(dump_redis(binary)), "the key is in Redis"
    aof = Path(redis_server.data_dir) / "redis"
    everything_redis_ever_wrote = b"".join(p.read_bytes() for p in aof.rglob("*") if p.is_file())
    assert len(everything_redis_ever_wrote) > 10_000
    assert not contains_secret(everything_redis_ever_wrote), "the key reached the AOF"
    logs = cluster.logs().encode()
    assert b"wanq.poll" in logs or b"wanq.create" in logs
    assert not contains_secret(logs), "the key is in a log"
    for line in cluster.client().results(report.batch_id):
        assert not contains_secret(json.dumps(line).encode())
