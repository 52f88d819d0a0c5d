"""Job-level metrics for Prometheus: what Flower cannot know, read from wanq's Redis.

Two halves:

- ``record_job_end`` is called once per ended job (by the result callback). It adds the
  job's result lag and poll count to two cumulative histograms, each one Redis hash, in one
  atomic step (a MULTI/EXEC, or the finish script that ends the job: workers.store.EndWrites),
  so a scrape never sees a bucket updated without its count.
- ``WanqCollector`` reads Redis at scrape time with bounded work: no SCAN, only the
  ``BATCH_LIMIT`` most recent batches of ``wanq:batches``, one pipelined round trip for them
  and the cluster-wide values, plus one for the account state.

``serve`` exposes a registry holding only the collector over HTTP (``/metrics``).

Label values are batch IDs, job states, error codes and queue names only: never a payload,
a prompt, a URL or a secret.

The histogram hashes (``RESULT_LAG_KEY``, ``POLLS_KEY``) have one field per bucket upper
bound, spelt as Prometheus spells ``le`` (``"0.1"``, ``"1.0"``, ``"+Inf"``), holding the
cumulative count of observations at or below it, plus ``"_sum"`` and ``"_count"``.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Iterator, Mapping
from typing import Any

import redis
from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from workers import account, errors, keys
from workers.connection import connect, texts
from workers.store import ALL_STATES, State

log = logging.getLogger("wanq.metrics")

METRICS_PREFIX = keys.PREFIX + "metrics:"
# hash: cumulative histogram of result lag in seconds (see ``result_lag``), one field per ``le``
RESULT_LAG_KEY = METRICS_PREFIX + "result_lag_seconds"
# hash: cumulative histogram of status polls per ended job, one field per ``le``
POLLS_KEY = METRICS_PREFIX + "polls_per_job"

LAG_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 120.0, math.inf)
POLL_BUCKETS = (1.0, 2.0, 3.0, 4.0, 5.0, 8.0, 12.0, 20.0, math.inf)
SUM_FIELD = "_sum"
COUNT_FIELD = "_count"

BATCH_LIMIT = 200  # batches read per scrape: the most recent ones of wanq:batches
QUEUES = (keys.CREATE_QUEUE, keys.POLL_QUEUE, keys.DELIVER_QUEUE)
DUPLICATE_CREATES_FIELD = "create_window_losses"  # in wanq:stats
# in wanq:stats: abandoned remote tasks whose cost the sweeper learned, or gave up on
ABANDONED_FIELDS = ("abandoned_settled", "abandoned_given_up")
# in wanq:stats: the cap the workers enforce, written by the sweeper every sweep; read
# from there so a metrics process with another environment shows the cluster's real cap

DEFAULT_PORT = 9808


def bucket_label(bound: float) -> str:
    """The ``le`` value of a bucket, as Prometheus writes it (also the hash field name)."""
    return floatToGoString(bound)


# --- recording (workers) ---------------------------------------------------------------------


def record_job_end(
    client: redis.Redis, lag_seconds: float | None, polls: int, pipe: Any = None
) -> None:
    """Add one ended job to the histograms, in one round trip (MULTI/EXEC), or queue the
    commands on ``pipe`` (a transaction the caller executes with its own).

    ``lag_seconds`` is None when the job has no meaningful lag (see ``result_lag``); a
    negative lag (clocks of two workers a little apart) counts as 0. ``polls`` is the number
    of status polls the job took.
    """
    if polls < 0:
        raise ValueError(f"polls must be >= 0, not {polls}")
    if lag_seconds is not None and math.isnan(lag_seconds):
        raise ValueError("lag_seconds is NaN")
    own = pipe is None
    if own:
        pipe = client.pipeline(transaction=True)
    if lag_seconds is not None:
        lag = max(0.0, float(lag_seconds))
        _observe(pipe, RESULT_LAG_KEY, LAG_BUCKETS, lag)
        pipe.hincrbyfloat(RESULT_LAG_KEY, SUM_FIELD, lag)
    _observe(pipe, POLLS_KEY, POLL_BUCKETS, polls)
    pipe.hincrby(POLLS_KEY, SUM_FIELD, int(polls))
    if own:
        pipe.execute()


def _observe(pipe: Any, key: str, bounds: tuple[float, ...], value: float) -> None:
    for bound in bounds:
        if value <= bound:
            pipe.hincrby(key, bucket_label(bound), 1)
    pipe.hincrby(key, COUNT_FIELD, 1)


def result_lag(job: Mapping[str, str], stored_at: float) -> float | None:
    """How late a remote task's record was stored, at most: ``stored_at - last_miss_at``.

    The remote task finished after the last poll that found it unfinished (``last_miss_at``)
    and before the poll that found it done, so this is an honest upper bound on the lag, and
    exactly the slack the polling schedule controls. None when no poll ever found the task
    unfinished: then the lag is only known to be below the whole generation time, which is
    not a lag.
    """
    last_miss = job.get("last_miss_at")
    if not last_miss:
        return None
    return stored_at - float(last_miss)


def observe_job_end(
    client: redis.Redis,
    job: Mapping[str, str],
    *,
    remote_done: bool,
    stored_at: float | None = None,
    pipe: Any = None,
) -> None:
    """What the result callback calls once a job has ended; never raises.

    ``job`` is the job hash as the caller read it before ending the job. ``remote_done`` is
    True when a poll found the remote task finished (succeeded, or failed upstream): that poll
    is not in ``job["polls"]`` yet, and only then is there a result lag. Jobs that never had a
    remote task (cancelled while queued, creation failed) are not observed.
    """
    try:
        if not job.get("remote_task_id"):
            return
        polls = int(job.get("polls") or 0) + (1 if remote_done else 0)
        now = time.time() if stored_at is None else stored_at
        lag = result_lag(job, now) if remote_done else None
        record_job_end(client, lag, polls, pipe)
    except (redis.RedisError, ValueError):
        log.warning("job metrics not recorded", exc_info=True)


# --- reading (scrape time) -------------------------------------------------------------------


class WanqCollector(Collector):
    """wanq's job-level metrics, read from Redis at each scrape with bounded work.

    ``client`` must decode responses (``workers.connection.connect``). ``in_flight_cap`` is the
    fallback for ``wanq_in_flight_cap`` until a worker has published the cluster's own
    (``wanq:cluster``, written as it starts and at every sweep). Cancelled jobs (WQ200) are
    counted in ``wanq_jobs`` and ``wanq_cancelled``, never as failures.
    """

    def __init__(
        self, client: redis.Redis, in_flight_cap: int = 0, batch_limit: int = BATCH_LIMIT
    ) -> None:
        self.redis = client
        self.in_flight_cap = in_flight_cap
        self.batch_limit = batch_limit

    def _waiting_for_slot(self, batch_ids: list[str]) -> int:
        pipe = self.redis.pipeline(transaction=False)
        for batch_id in batch_ids:
            pipe.zcard(keys.batch_ready(batch_id))
        return sum(int(n) for n in pipe.execute())

    def collect(self) -> Iterator[Metric]:
        batch_ids = texts(self.redis.zrevrange(keys.BATCHES, 0, self.batch_limit - 1))
        pipe = self.redis.pipeline(transaction=False)
        for batch_id in batch_ids:
            pipe.hgetall(keys.batch(batch_id))
            pipe.hgetall(keys.batch_codes(batch_id))
        for queue in QUEUES:
            pipe.llen(queue)
        pipe.hlen(keys.UNACKED)
        pipe.hmget(RESULT_LAG_KEY, _fields(LAG_BUCKETS))
        pipe.hmget(POLLS_KEY, _fields(POLL_BUCKETS))
        pipe.hmget(keys.STATS, [DUPLICATE_CREATES_FIELD, *ABANDONED_FIELDS])
        pipe.zcard(keys.INFLIGHT)
        pipe.zrange(keys.READY, 0, -1)
        pipe.hget(keys.CLUSTER, "max_in_flight")
        answers = pipe.execute()
        answers[-2] = self._waiting_for_slot(texts(answers[-2]))
        blocked = account.blocked(self.redis)

        n = 2 * len(batch_ids)
        per_batch, tail = answers[:n], _split(answers[n:])
        depths, unacked, lag, polls, counted, in_flight, slot_waits, cap = tail
        duplicates, settled, given_up = counted
        in_flight_cap = self.in_flight_cap if cap is None else _int(cap)

        jobs = GaugeMetricFamily(
            "wanq_jobs", "Jobs of a batch in each state.", labels=["batch", "state"]
        )
        cost = CounterMetricFamily(
            "wanq_cost_usd", "USD spent by a batch (sum of usage.cost).", labels=["batch"]
        )
        unseen = GaugeMetricFamily(
            "wanq_unseen_usd",
            "USD a batch may owe that no usage.cost showed (yet): worst cases of possible "
            "duplicates and of abandoned remote tasks followed for their cost.",
            labels=["batch"],
        )
        reserved = GaugeMetricFamily(
            "wanq_reserved_usd",
            "USD a batch's budget holds for its jobs in flight (worst cases).",
            labels=["batch"],
        )
        abandoned = GaugeMetricFamily(
            "wanq_abandoned_followed",
            "Remote tasks of a batch's ended jobs followed for their cost by the sweeper.",
            labels=["batch"],
        )
        failures = CounterMetricFamily(
            "wanq_failures",
            "Jobs of a batch that failed, by error code (wanq retry lowers it: a reset). "
            "Cancelled jobs are not failures: see wanq_cancelled.",
            labels=["batch", "code"],
        )
        cancelled = CounterMetricFamily(
            "wanq_cancelled", "Jobs of a batch ended cancelled (wanq cancel).", labels=["batch"]
        )
        for index, batch_id in enumerate(batch_ids):
            fields, codes = per_batch[2 * index], per_batch[2 * index + 1]
            if not fields:
                continue
            for state in ALL_STATES:
                count = _int(fields.get(f"n:{state.value}"))
                jobs.add_metric([batch_id, state.value], count)
            cost.add_metric([batch_id], _int(fields.get("cost_micros")) / 1_000_000)
            unseen.add_metric([batch_id], _int(fields.get("unseen_micros")) / 1_000_000)
            reserved.add_metric([batch_id], _int(fields.get("reserved_micros")) / 1_000_000)
            abandoned.add_metric([batch_id], max(0, _int(fields.get("abandoned"))))
            for code, count in sorted(codes.items()):
                if _int(count) > 0 and code != errors.CANCELLED:
                    failures.add_metric([batch_id, code], _int(count))
            cancelled.add_metric([batch_id], _int(fields.get(f"n:{State.CANCELLED.value}")))
        yield jobs
        yield cost
        yield unseen
        yield reserved
        yield abandoned
        yield failures
        yield cancelled

        yield GaugeMetricFamily(
            "wanq_in_flight",
            "Remote tasks being created or run, cluster-wide (what the cap counts).",
            value=in_flight,
        )
        yield GaugeMetricFamily(
            "wanq_waiting_for_slot",
            "Jobs parked until an in-flight slot frees (backpressure of the cap).",
            value=slot_waits,
        )
        yield GaugeMetricFamily(
            "wanq_in_flight_cap",
            "The cluster's cap on remote tasks in flight (0: no cap).",
            value=in_flight_cap,
        )
        queue_depth = GaugeMetricFamily(
            "wanq_queue_depth", "Messages waiting in a Celery queue.", labels=["queue"]
        )
        for queue, depth in zip(QUEUES, depths, strict=True):
            queue_depth.add_metric([queue], depth)
        yield queue_depth
        yield GaugeMetricFamily(
            "wanq_unacked", "Messages delivered to workers, not yet acknowledged.", value=unacked
        )
        yield GaugeMetricFamily(
            "wanq_account_blocked",
            "1 while creation is paused cluster-wide by an account problem (401/403).",
            value=1 if blocked else 0,
        )
        yield _histogram(
            "wanq_result_lag_seconds",
            "Upper bound on seconds from a remote task finishing to its record being stored "
            "(stored at - last poll that found it unfinished).",
            LAG_BUCKETS,
            lag,
        )
        yield _histogram("wanq_polls_per_job", "Status polls per ended job.", POLL_BUCKETS, polls)
        yield CounterMetricFamily(
            "wanq_duplicate_creates",
            "Remote tasks created twice: a create died between its POST and storing the ID.",
            value=_int(duplicates),
        )
        outcomes = CounterMetricFamily(
            "wanq_abandoned_tasks",
            "Abandoned remote tasks the sweeper stopped following: settled (their cost "
            "counted) or given up (their worst case stays unseen).",
            labels=["outcome"],
        )
        outcomes.add_metric(["settled"], _int(settled))
        outcomes.add_metric(["given_up"], _int(given_up))
        yield outcomes


def _fields(bounds: tuple[float, ...]) -> list[str]:
    return [*(bucket_label(b) for b in bounds), SUM_FIELD, COUNT_FIELD]


def _split(
    tail: list[Any],
) -> tuple[list[int], int, list[Any], list[Any], Any, int, int, Any]:
    depths = [int(d) for d in tail[: len(QUEUES)]]
    unacked, lag, polls, duplicates, in_flight, slot_waits, cap = tail[len(QUEUES) :]
    return depths, int(unacked), lag, polls, duplicates, int(in_flight), int(slot_waits), cap


def _histogram(name: str, doc: str, bounds: tuple[float, ...], values: list[Any]) -> Metric:
    *counts, total, _count = values
    buckets = [(bucket_label(b), _int(c)) for b, c in zip(bounds, counts, strict=True)]
    return HistogramMetricFamily(name, doc, buckets=buckets, sum_value=float(total or 0))


def _int(raw: Any) -> int:
    return int(raw or 0)


# --- serving ---------------------------------------------------------------------------------


def serve(
    settings: Any,
    port: int = DEFAULT_PORT,
    addr: str = "127.0.0.1",
    *,
    stop: threading.Event | None = None,
) -> None:
    """Serve ``/metrics`` (a registry holding only ``WanqCollector``); blocks until ``stop``
    is set, or for ever without one."""
    client = connect(settings.broker_url)
    registry = CollectorRegistry()
    registry.register(WanqCollector(client, int(getattr(settings, "max_in_flight", 0) or 0)))
    server, thread = start_http_server(port, addr, registry=registry)
    log.info("metrics on http://%s:%d/metrics", addr, port)
    try:
        (stop or threading.Event()).wait()
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)
        client.close()


if __name__ == "__main__":  # python -m workers.metrics [PORT]
    import sys

    from workers import config

    logging.basicConfig(level=logging.INFO)
    serve(config.load(), int(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_PORT)
