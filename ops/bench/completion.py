"""Completion under latency: a batch runs end to end against the simulator (latency L) with
the provider limit C passed as WANQ_MAX_IN_FLIGHT, and its throughput is set against C / L.

The same run yields polls per job (the simulator's status_calls over the run / jobs), the
lag between each remote task's completion (the simulator's ``completes_at``) and our record
(``completed_at``), the peak of remote tasks in flight as the provider saw them (to check
that the cap held), and the CPU the producer and the workers spent.
"""

from __future__ import annotations

import os
import re
import statistics
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from ops.bench import submission
from ops.bench.cluster import Bench, default_processes
from ops.bench.params import Params

FETCHERS = 4  # parallel GETs of /_sim/tasks/{id} after a run
TASK_LINE = re.compile(
    r"Task (wanq\.\w+)\[[^\]]*\] (?:succeeded in [0-9.e-]+s: '?([\w-]+)|(retry))"
)
HANDOVER_LINE = re.compile(r"handed-over create: ([\w-]+)")  # workers/handover.py, no task


@dataclass
class RunResult:
    workers: int
    jobs: int
    ended: int
    succeeded: int
    timed_out: bool
    makespan_s: float  # first submission to the last record
    jobs_per_s: float  # end to end: jobs / makespan
    steady_jobs_per_s: float  # between the 10th and 90th percentile of completions
    limit_per_s: float
    polls_per_job: float
    lag_p50_s: float
    lag_p95_s: float
    lag_max_s: float
    peak_in_flight: int  # remote tasks running at once, as the provider saw them
    producer_cpu_s: float
    worker_cpu_s: float
    service_cpu_s: dict[str, float] = field(default_factory=dict)
    tasks: dict[str, int] = field(default_factory=dict)  # Celery tasks run, by name:outcome
    # the C x makespan slot-seconds of the run: shares spent creating (claim to remote
    # task), generating (remote task), in lag (remote end to our record), and idle
    slots: dict[str, float] = field(default_factory=dict)
    # a freed slot to the claim of the job admitted to it (the k-th record frees the slot
    # the (C + k)-th claim takes: admission is first come, first served)
    refill_p50_s: float = float("nan")
    refill_p95_s: float = float("nan")
    timeline: list[int] = field(default_factory=list)  # records per interval of L seconds
    loadavg: float = float("nan")  # the machine's 1-min load average as the run ended
    lag_mean_s: float = float("nan")  # what each slot cycle pays besides generating
    first_round_s: float = float("nan")  # start of submission to the C-th remote task created
    # Redis round trips of the run, every client's (workers, producer, the bench's progress
    # reads every 0.25 s): INFO stats total_reads_processed, which CPU noise does not move
    redis_round_trips: int = 0

    @property
    def tasks_per_job(self) -> float:
        """Celery tasks only: a handed-over create runs inside the poll task that freed its slot."""
        celery = sum(n for name, n in self.tasks.items() if name.startswith("wanq."))
        return celery / max(1, self.ended)

    @property
    def vs_limit(self) -> float:
        return self.jobs_per_s / self.limit_per_s

    @property
    def steady_vs_limit(self) -> float:
        return self.steady_jobs_per_s / self.limit_per_s

    @property
    def round_trips_per_job(self) -> float:
        return self.redis_round_trips / max(1, self.ended)

    @property
    def cpu_s_per_1000(self) -> float:
        return (self.producer_cpu_s + self.worker_cpu_s) / max(1, self.ended) * 1000


def run(
    bench: Bench,
    workers: int | None,
    params: Params | None = None,
    extra_env: dict[str, str] | None = None,
) -> RunResult:
    """One batch of ``params.completion_jobs`` through a worker start of ``workers``
    processes (None: the default, one per core); ``params`` default to the bench's."""
    params = params or bench.params
    jobs = params.completion_jobs
    path = submission.write_batch(bench.data_dir / f"completion-{jobs}.jsonl", jobs, seed=11)
    bench.flush()
    processes = bench.start_workers(workers, params.cap, extra_env)
    workers = workers or default_processes()
    try:
        client = bench.client()
        stats0, cpu0, services0 = bench.sim_stats(), bench.cpu(processes), bench.service_cpu()
        reads0 = redis_reads(bench)
        batch_id = f"bench-w{workers}"
        started = time.time()
        pcpu0 = time.process_time()
        report = client.submit(path, batch_id=batch_id)
        producer_cpu = time.process_time() - pcpu0
        ideal = jobs / params.limit
        timed_out = False
        try:
            client.wait(batch_id, interval=0.25, timeout=3 * ideal + 60)
        except TimeoutError:
            timed_out = True
        worker_cpu = bench.cpu(processes) - cpu0
        round_trips = redis_reads(bench) - reads0
        stats1, services1 = bench.sim_stats(), bench.service_cpu()
        records = list(client.store.iter_batch_jobs(batch_id))
    finally:
        bench.stop_processes(processes)
    tasks = _tasks_run([p.log.read_text(errors="replace") for p in processes])
    ended = [r for r in records if r.get("completed_at")]
    remote = remote_tasks(bench, [r["remote_task_id"] for r in records if r.get("remote_task_id")])
    lags = [
        float(r["completed_at"]) - remote[r["remote_task_id"]]["completes_at"]
        for r in ended
        if r.get("remote_task_id") in remote
    ]
    done_times = sorted(float(r["completed_at"]) for r in ended)
    makespan = (done_times[-1] if done_times else time.time()) - started
    claims = sorted(float(r["claimed_at"]) for r in ended if r.get("claimed_at"))
    refills = [c - d for c, d in zip(claims[params.cap :], done_times, strict=False)]
    timeline = [0] * (int(makespan / params.latency) + 1)
    for t in done_times:
        timeline[int((t - started) / params.latency)] += 1
    return RunResult(
        workers=workers,
        jobs=report.enqueued,
        ended=len(ended),
        succeeded=sum(r.get("state") == "succeeded" for r in ended),
        timed_out=timed_out,
        makespan_s=makespan,
        jobs_per_s=len(ended) / makespan,
        steady_jobs_per_s=_steady_rate(done_times),
        limit_per_s=params.limit,
        polls_per_job=(stats1["status_calls"] - stats0["status_calls"]) / max(1, len(ended)),
        lag_p50_s=quantile(lags, 0.50),
        lag_p95_s=quantile(lags, 0.95),
        lag_max_s=max(lags, default=float("nan")),
        peak_in_flight=peak(remote.values()),
        producer_cpu_s=producer_cpu,
        worker_cpu_s=worker_cpu,
        service_cpu_s={k: services1[k] - services0[k] for k in services1},
        tasks=tasks,
        slots=_slot_shares(ended, remote, params.cap * makespan),
        refill_p50_s=quantile(refills, 0.50),
        refill_p95_s=quantile(refills, 0.95),
        timeline=timeline,
        loadavg=os.getloadavg()[0],
        lag_mean_s=mean(lags),
        first_round_s=first_round(remote.values(), started, params.cap),
        redis_round_trips=round_trips,
    )


def redis_reads(bench: Bench) -> int:
    """Requests Redis has read from its clients so far: about one per round trip (a
    pipeline or a script is one)."""
    return int(bench.redis().info("stats")["total_reads_processed"])


def _slot_shares(
    ended: list[dict[str, str]], remote: dict[str, dict[str, Any]], capacity: float
) -> dict[str, float]:
    """Where the cap's slot-seconds went: a job holds its slot from its claim to its record."""
    spent = {"creating": 0.0, "generating": 0.0, "lag": 0.0}
    for job in ended:
        task = remote.get(job.get("remote_task_id") or "")
        if not task or not job.get("claimed_at"):
            continue
        spent["creating"] += task["created_at"] - float(job["claimed_at"])
        spent["generating"] += task["completes_at"] - task["created_at"]
        spent["lag"] += float(job["completed_at"]) - task["completes_at"]
    shares = {k: v / capacity for k, v in spent.items()} if capacity > 0 else {}
    shares["idle"] = 1.0 - sum(shares.values()) if shares else float("nan")
    return shares


def _tasks_run(logs: list[str]) -> dict[str, int]:
    """Celery tasks the workers ran, from their INFO logs: 'wanq.poll:polling' -> count."""
    counts: Counter[str] = Counter()
    for log in logs:
        for name, outcome, retry in TASK_LINE.findall(log):
            counts[f"{name}:{outcome or retry}"] += 1
        for outcome in HANDOVER_LINE.findall(log):
            counts[f"handover:{outcome}"] += 1
    return dict(sorted(counts.items()))


def remote_tasks(bench: Bench, task_ids: list[str]) -> dict[str, dict[str, Any]]:
    """What the simulator knows of each task: created_at and completes_at (wall clock)."""

    def fetch(task_id: str) -> tuple[str, dict[str, Any]]:
        return task_id, bench.sim(f"/_sim/tasks/{task_id}")

    with ThreadPoolExecutor(FETCHERS) as pool:
        found = dict(pool.map(fetch, task_ids))
    missing = [t for t, task in found.items() if "completes_at" not in task]
    if missing:
        raise RuntimeError("the simulator's /_sim/tasks/{id} gives no completes_at")
    return found


def first_round(tasks: Any, started: float, cap: int) -> float:
    """Seconds from the start until the cap was first full: the C-th remote task's creation
    (every slot's chain of jobs starts that much later than an instant start would)."""
    created = sorted(float(task["created_at"]) for task in tasks)
    return created[min(cap, len(created)) - 1] - started if created else float("nan")


def peak(tasks: Any) -> int:
    """Most remote tasks running at once: a sweep over [created_at, completes_at)."""
    events = []
    for task in tasks:
        events += [(task["created_at"], 1), (task["completes_at"], -1)]
    running = peak = 0
    for _, step in sorted(events, key=lambda e: (e[0], e[1])):
        running += step
        peak = max(peak, running)
    return peak


def _steady_rate(done_times: list[float]) -> float:
    if len(done_times) < 10:
        return float("nan")
    lo, hi = round(0.1 * (len(done_times) - 1)), round(0.9 * (len(done_times) - 1))
    span = done_times[hi] - done_times[lo]
    return (hi - lo) / span if span > 0 else float("nan")


def mean(values: list[float]) -> float:
    return statistics.fmean(values) if values else float("nan")


def quantile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[round(q * 100) - 1]
