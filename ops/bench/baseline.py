"""The naive design's run (ops.bench.naive): same Redis, same simulator, same worker
concurrency (one process, WANQ_CONCURRENCY threads) and the same kind of jobs as wanq's
completion run; its end-to-end throughput is measured the same way."""

from __future__ import annotations

import time
from dataclasses import dataclass

from ops import sample
from ops.bench import naive
from ops.bench.cluster import Bench, wait_until


@dataclass
class NaiveResult:
    jobs: int
    ended: int
    makespan_s: float
    jobs_per_s: float
    polls_per_job: float
    threads: int
    worker_cpu_s: float


def run(bench: Bench) -> NaiveResult:
    params = bench.params
    bench.flush()
    env = {"WANQ_API_KEY": bench.worker_env(params.cap)["WANQ_API_KEY"]}
    env["WANQ_CONCURRENCY"] = str(params.concurrency)
    threads = ["-Q", naive.QUEUE, "-P", "threads", "-c", str(params.concurrency)]
    worker = bench.start_celery("naive", "ops.bench.naive", threads, env)
    try:
        r = bench.redis()
        stats0, cpu0 = bench.sim_stats(), bench.cpu([worker])
        lines = list(sample.lines(params.naive_jobs, inline_images=0, seed=11))
        started = time.time()
        with naive.app.connection_for_write(bench.redis_url) as connection:
            producer = naive.app.amqp.Producer(connection)
            for line in lines:
                naive.app.send_task(
                    "naive.generate", args=(line["custom_id"], line["body"]), producer=producer
                )
        # a job takes L plus up to a second of sleep; rounds of `concurrency` jobs, generously
        rounds = -(-params.naive_jobs // params.concurrency)
        timeout = rounds * (params.latency * 1.5 + 2) * 2 + 30
        wait_until(lambda: r.zcard(naive.DONE) >= params.naive_jobs, timeout)
        stats1, cpu1 = bench.sim_stats(), bench.cpu([worker])
        done = [score for _, score in r.zrange(naive.DONE, 0, -1, withscores=True)]
    finally:
        bench.stop_processes([worker])
    makespan = (max(done) if done else time.time()) - started
    return NaiveResult(
        jobs=params.naive_jobs,
        ended=len(done),
        makespan_s=makespan,
        jobs_per_s=len(done) / makespan,
        polls_per_job=(stats1["status_calls"] - stats0["status_calls"]) / max(1, len(done)),
        threads=params.concurrency,
        worker_cpu_s=cpu1 - cpu0,
    )
