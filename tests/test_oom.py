"""A full Redis (issue 13): a plain worker, not restarted by ops.supervise, rides out Redis
refusing writes (``maxmemory`` with ``noeviction``) and finishes its batch once memory is back.

Before workers.transport, the worker exited within 2 s ("Unrecoverable error:
OutOfMemoryError" from kombu's ack) and the batch stayed ``running``."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import kombu.exceptions
import pytest
import redis

from ops.localstack import LocalStack, Process, wait_for
from producers.api import Wanq
from tests.conftest import QUICK_RECOVERY, SIM_ENV, WORKER_ENV, jobs
from workers import config, keys, transport
from workers.celeryconf import sending_app

JOBS = 40
MAXMEMORY = 30_000_000
HOLD = 8.0  # seconds Redis is kept full: long enough for every in-flight job to meet it
# Lost steps and creates (one that died between POST and storing the ID on a refused write)
# are re-sent soon after memory is back.
OOM_ENV = {**WORKER_ENV, **QUICK_RECOVERY, "WANQ_SWEEP_GRACE": "3"}
FILLER = "oomtest:filler:"
SENTINEL = transport.SentinelTransport


def plain_worker(stack: LocalStack, name: str) -> Process:
    """``celery -A workers.app worker`` as a user runs it: nothing restarts it if it exits."""
    log = stack.data_dir / "logs" / f"{name}.log"
    cmd = [sys.executable, "-m", "celery", "-A", "workers.app", "worker", "-n", f"{name}@%h"]
    cmd += ["--loglevel", "INFO", "--without-mingle", "--without-gossip"]
    with open(log, "ab") as out:
        popen = subprocess.Popen(
            cmd,
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**stack.env, **OOM_ENV},
            start_new_session=True,
            cwd=Path(__file__).resolve().parent.parent,
        )
    worker = Process(name, popen, log)
    stack.processes.append(worker)  # stopped with the stack
    return worker


def fill(r: redis.Redis, start: int, chunk: int) -> int:
    """SET filler values until Redis refuses one; returns the next free filler number."""
    n = start
    while True:
        try:
            r.set(f"{FILLER}{n}", b"x" * chunk)
        except redis.exceptions.OutOfMemoryError:
            return n
        n += 1


@pytest.mark.timeout(180)
def test_plain_worker_rides_out_a_full_redis_and_the_batch_completes(tmp_path):
    with LocalStack(tmp_path) as stack:
        stack.start_redis()
        r = redis.Redis.from_url(stack.redis_url)
        r.config_set("maxmemory", MAXMEMORY)
        r.config_set("maxmemory-policy", "noeviction")
        # Slow answers: the jobs are in flight (creates and polls) while Redis is full.
        stack.start_simulator({**SIM_ENV, "WANQ_SIM_LATENCY": "3"})
        worker = plain_worker(stack, "plain")
        wait_for(lambda: "ready." in worker.log.read_text(), "the plain worker", 60)

        client = Wanq(
            config.load(
                {
                    **OOM_ENV,
                    "WANQ_REDIS_URL": stack.redis_url,
                    "WANQ_PROVIDER_URL": stack.provider_url,
                }
            )
        )
        source = tmp_path / "oom.jsonl"
        source.write_text("".join(json.dumps(line) + "\n" for line in jobs(JOBS)))
        batch_id = client.submit(source).batch_id

        filled = fill(r, 0, 1_000_000)
        held_until = time.monotonic() + HOLD
        while time.monotonic() < held_until:  # the deliberate hold, topped up as memory moves
            assert worker.popen.poll() is None, "the worker exited while Redis was full"
            filled = fill(r, filled, 65_536)
            time.sleep(0.1)
        log = worker.log.read_text(errors="replace")
        assert "OutOfMemoryError" in log or "Redis is full" in log, "the worker met no OOM"
        assert client.status(batch_id).ended < JOBS, "the batch ended before Redis was full"

        r.delete(*(f"{FILLER}{n}" for n in range(filled)))
        wait_for(lambda: client.status(batch_id).ended == JOBS, "every job ended", 75, 0.2)

        assert worker.popen.poll() is None, "the worker exited"
        log = worker.log.read_text(errors="replace")
        assert "Unrecoverable error" not in log
        records = list(client.results(batch_id))
        assert Counter(rec["state"] for rec in records) == {"succeeded": JOBS}
        entries = Counter(f["job_id"] for _, f in client.store.redis.xrange(keys.RESULTS))
        assert len(entries) == JOBS and set(entries.values()) == {1}, "each job ended once"


@pytest.mark.parametrize(
    ("url", "scheme", "transport_class"),
    [
        ("redis://127.0.0.1:6379/0", "redis", transport.Transport),
        ("rediss://127.0.0.1:6380/0", "rediss", transport.Transport),
        ("sentinel://127.0.0.1:26379/0;sentinel://127.0.0.1:26380/0", "sentinel", SENTINEL),
        ("redis+sentinel://127.0.0.1:26379,127.0.0.1:26380/mymaster/0", "sentinel", SENTINEL),
    ],
)
def test_every_redis_url_gets_a_transport_that_counts_oom_as_a_lost_connection(
    url, scheme, transport_class
):
    settings = config.load({**WORKER_ENV, "WANQ_REDIS_URL": url})
    conn = sending_app(settings).connection_for_write()
    assert type(conn.transport) is transport_class
    assert redis.exceptions.OutOfMemoryError in conn.connection_errors
    assert redis.exceptions.ResponseError not in conn.connection_errors  # others stay fatal
    assert conn.transport.Channel.QoS is transport.QoS
    # The URL keeps its scheme: Flower finds its broker client by it, the banner shows it,
    # and kombu's rediss:// default (TLS) still applies.
    assert conn.as_uri().startswith(f"{scheme}://")
    assert bool(conn.ssl) is (scheme == "rediss")


def test_oom_is_found_behind_kombus_wrapping():
    try:
        try:
            raise redis.exceptions.OutOfMemoryError("OOM command not allowed")
        except redis.exceptions.RedisError as exc:
            raise kombu.exceptions.OperationalError(str(exc)) from exc
    except kombu.exceptions.OperationalError as wrapped:
        assert transport.is_oom(wrapped)
    assert not transport.is_oom(redis.exceptions.ResponseError("WRONGTYPE"))


def test_a_channel_reuses_one_redis_client_until_its_pool_is_dropped(redis_url):
    """kombu built a redis-py client per publish, unacked record and ack (~0.3 ms each): the
    channel keeps one per pool, and a reconnect's new pool gets a new one that works."""
    settings = config.load({**WORKER_ENV, "WANQ_REDIS_URL": redis_url})
    with sending_app(settings).connection_for_write() as conn:
        channel = conn.default_channel
        with channel.conn_or_acquire() as first, channel.conn_or_acquire() as second:
            assert first is second and first.ping()
        channel._disconnect_pools()  # what kombu does when the connection is lost
        with channel.conn_or_acquire() as after:
            assert after is not first and after.connection_pool is channel.pool
            assert after.ping()
        assert channel.client is not after, "the event loop keeps its own client"
