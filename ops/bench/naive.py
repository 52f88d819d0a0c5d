"""The design most people write first, as its own Celery app: ONE task per job that POSTs the
request, then sleeps a second and polls, in a loop, until the remote task is done.

    celery -A ops.bench.naive worker -Q bench.naive -P threads -c $WANQ_CONCURRENCY

It shares Redis with wanq (its own queue) and calls the provider through the same HTTP client
(workers.provider), so the only difference measured is the design: here a worker thread is
held for the whole generation time, so at most WANQ_CONCURRENCY jobs are in flight per
process, whatever the provider allows.
"""

from __future__ import annotations

import functools
import time

import redis
from celery import Celery

from workers import config
from workers.provider import ProviderClient

QUEUE = "bench.naive"
DONE = "bench:naive:done"  # zset job_id -> when its result was known
POLL_INTERVAL = 1.0

settings = config.load()

app = Celery("naive", broker=settings.broker_url)
app.conf.update(
    task_default_queue=QUEUE,
    task_ignore_result=True,
    task_serializer="json",
    accept_content=["json"],
    worker_pool="threads",
    worker_concurrency=settings.concurrency,
    worker_hijack_root_logger=False,
    broker_connection_retry_on_startup=True,
)


@functools.cache
def _provider() -> ProviderClient:
    return ProviderClient(settings)


@functools.cache
def _redis() -> redis.Redis:
    return redis.Redis.from_url(settings.broker_url)


@app.task(name="naive.generate")
def generate(job_id: str, request: dict) -> str:
    provider = _provider()
    task_id = provider.create(request)
    while True:
        time.sleep(POLL_INTERVAL)
        status = provider.status(task_id)
        if status.done:
            break
    _redis().zadd(DONE, {job_id: time.time()})
    return status.state
