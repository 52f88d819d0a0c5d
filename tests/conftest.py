"""Real parts for the tests: one redis-server per session (a fresh database per test), the
simulator as a real HTTP server and real Celery worker processes, all via ops.localstack."""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import signal
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import redis
import requests

from ops.localstack import LocalStack, Process, free_port, wait_for
from ops.sample import request as sample_request
from workers import config, connection

API_KEY = "sk-wanq-test-9f8e7d6c5b4a"

# Fast but realistic timings for workers under test (production defaults in workers.config).
WORKER_ENV = {
    "WANQ_API_KEY": API_KEY,
    "WANQ_CONCURRENCY": "8",
    "WANQ_WORKER_PROCESSES": "1",  # each start_worker is one process: tests count them
    "WANQ_POLL_FIRST": "0.5",
    "WANQ_BACKOFF_BASE": "0.2",
    "WANQ_BACKOFF_CAP": "1",
    "WANQ_SWEEP_INTERVAL": "1",
    "WANQ_ACCOUNT_PROBE_INTERVAL": "1",
    "WANQ_CREATE_PATH": "/api/v2/tasks",
    "WANQ_STATUS_PATH": "/api/v2/tasks/{task_id}/status",
}
# For tests that lose a worker or a write on purpose: what a dead worker held is taken for
# lost and sent again within seconds, not the production half-minute (30 s sweep grace,
# 15 s sweeper lease, a 30 s create window of connect + read timeout + 5 s).
QUICK_RECOVERY = {
    "WANQ_SWEEP_GRACE": "5",
    "WANQ_LEASE_TTL": "3",
    "WANQ_CONNECT_TIMEOUT": "2",
    "WANQ_READ_TIMEOUT": "5",  # the simulator answers a create in milliseconds
}
SIM_ENV = {
    "WANQ_SIM_API_KEY": API_KEY,
    "WANQ_SIM_CREATE_PATH": "/api/v2/tasks",
    "WANQ_SIM_STATUS_PATH": "/api/v2/tasks/{task_id}/status",
    "WANQ_SIM_WRAP_DATA": "1",
    "WANQ_SIM_ID_FIELD": "taskId",
    "WANQ_SIM_LATENCY": "0.6",
    "WANQ_SIM_SEED": "11",
}

_db_numbers = itertools.count(1)

# A suite started from a shell's background job (`nohup make test &` in a script) inherits
# SIGINT ignored, and so would every process it starts: the Ctrl-C tests need it delivered.
if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


@pytest.fixture
def opened(monkeypatch: pytest.MonkeyPatch) -> list:
    """Every file the batch reader opens itself, to check it closes them."""
    from producers import batchfile

    files: list = []

    def recording_open(*args: Any) -> Any:
        files.append(open(*args))  # noqa: SIM115 - the code under test closes it
        return files[-1]

    monkeypatch.setattr(batchfile, "open", recording_open, raising=False)
    return files


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    stack = LocalStack(tmp_path_factory.mktemp("redis"))
    stack.start_redis()
    yield stack
    stack.stop()


@pytest.fixture
def redis_url(redis_server: LocalStack) -> str:
    """A database of its own for each test: no flushing under running workers."""
    number = next(_db_numbers) % 16 or 1
    url = redis_server.redis_url.rsplit("/", 1)[0] + f"/{number}"
    redis.Redis.from_url(url).flushdb()
    return url


@dataclass
class Cluster:
    """A running wanq cluster for one test."""

    stack: LocalStack
    redis_url: str
    workers: list[Process] = field(default_factory=list)
    worker_env: dict[str, str] = field(default_factory=dict)  # the producer sees it too

    @property
    def redis(self) -> redis.Redis:
        return connection.connect(self.redis_url)  # a sentinel:// URL too

    @property
    def settings(self) -> config.Settings:
        return config.load(
            {
                **WORKER_ENV,
                **self.worker_env,
                "WANQ_REDIS_URL": self.redis_url,
                "WANQ_PROVIDER_URL": self.stack.provider_url,
            }
        )

    def client(self):
        from producers.api import Wanq

        return Wanq(self.settings)

    def start_workers(self, n: int = 1, env: dict[str, str] | None = None) -> list[Process]:
        started = []
        for _ in range(n):
            name = f"w{len(self.workers) + 1}-{os.getpid()}"
            worker = self.stack.start_worker(name, {**WORKER_ENV, **self.worker_env, **(env or {})})
            self.workers.append(worker)
            started.append(worker)
        for worker in started:
            wait_for(lambda w=worker: "ready." in w.log.read_text(), f"worker {worker.name}", 60)
        return started

    def sim(self, path: str, payload: dict | None = None) -> Any:
        url = self.stack.provider_url + path
        response = (
            requests.post(url, json=payload, timeout=5)
            if payload is not None
            else requests.get(url, timeout=5)
        )
        response.raise_for_status()
        return response.json()

    def submit(self, lines: list[dict], **kwargs: Any):
        path = self.stack.data_dir / f"batch-{time.monotonic_ns()}.jsonl"
        path.write_text("".join(json.dumps(line) + "\n" for line in lines))
        return self.client().submit(path, **kwargs)

    def wait(self, batch_id: str, timeout: float = 120.0):
        return self.client().wait(batch_id, interval=0.2, timeout=timeout)

    def logs(self) -> str:
        return "\n".join(p.log.read_text(errors="replace") for p in self.stack.processes)


@pytest.fixture(scope="module")
def simulator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A simulator of the module's own, for tests that drive task bodies step by step: 60 s
    generations unless a test sets another latency (POST /_sim/config)."""
    stack = LocalStack(tmp_path_factory.mktemp("simulator"))
    try:
        yield stack.start_simulator({**SIM_ENV, "WANQ_SIM_LATENCY": "60"})
    finally:
        stack.stop()


@pytest.fixture
def make_cluster(redis_url: str, tmp_path: Path) -> Iterator[Callable[..., Cluster]]:
    stacks: list[LocalStack] = []

    def make(
        workers: int = 2,
        sim_env: dict[str, str] | None = None,
        worker_env: dict[str, str] | None = None,
    ) -> Cluster:
        stack = LocalStack(tmp_path / f"stack{len(stacks)}")
        stacks.append(stack)
        return start_cluster(stack, redis_url, workers, sim_env, worker_env)

    yield make
    for stack in stacks:
        stop_workers_at_once(stack)
        stack.stop()


def stop_workers_at_once(stack: LocalStack) -> None:
    """SIGTERM the workers (and whatever else but Redis and the simulator) of ``stack``
    together: their warm shutdowns (over a second each, idle) overlap instead of following one
    another; ``stack.stop()`` then waits for them and stops the rest in reverse order."""
    for process in stack.processes:
        if process.name not in ("redis", "simulator") and process.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.popen.pid, signal.SIGTERM)


def start_cluster(
    stack: LocalStack,
    redis_url: str,
    workers: int = 2,
    sim_env: dict[str, str] | None = None,
    worker_env: dict[str, str] | None = None,
) -> Cluster:
    """The simulator and ``workers`` workers on ``stack``, against ``redis_url``."""
    stack.redis_url = redis_url
    stack.env["WANQ_REDIS_URL"] = redis_url
    # The workers start while the simulator does (they need only its address).
    stack.start_simulator({**SIM_ENV, **(sim_env or {})}, port=free_port(), wait=False)
    cluster = Cluster(stack, redis_url, worker_env=dict(worker_env or {}))
    cluster.start_workers(workers)
    stack.wait_simulator()
    return cluster


def jobs(n: int, interleave_every: int = 3, prefix: str = "job") -> list[dict]:
    """n valid batch lines, every ``interleave_every``-th one in interleaved mode."""
    import random

    rng = random.Random(n)
    return [
        {
            "custom_id": f"{prefix}-{i:05d}",
            "body": sample_request(i, rng, interleave=(i % interleave_every == 0)),
        }
        for i in range(n)
    ]


__all__ = ["API_KEY", "QUICK_RECOVERY", "Cluster", "free_port", "jobs", "start_cluster"]
