"""Jobs held in flight on ONE worker process: its resident memory, and Redis memory per job
in flight (payloads excluded). The simulator's latency is raised for the phase so nothing
completes; the cap (WANQ_MAX_IN_FLIGHT) is set to the number of jobs so all may start.

Ten thousand tasks in flight at once mean long generations (at L = 10 s they would end
1,000 a second), so the worker runs with the settings README recommends for generation
times of minutes: the operator's prior WANQ_POLL_FIRST = the held latency, and the default
countdowns up to 5 minutes (WANQ_MAX_COUNTDOWN = 300, visibility timeout derived 900). With
the old 30 s cap, each job would wake its worker every 30 s whatever its generation time:
10,000 jobs = 333 polls/s, about one process's whole CPU. Polls go on while the jobs are
held, so the phase also shows whether one process keeps up."""

from __future__ import annotations

import time
from dataclasses import dataclass

from ops.bench import procs, submission
from ops.bench.cluster import Bench
from workers import keys

HELD_LATENCY = 1500.0  # seconds; below WANQ_POLL_DEADLINE (1800 s), so no job fails
LONG_GENERATIONS = {  # README "Long generations": the defaults (300 s countdowns) and a prior
    "WANQ_POLL_FIRST": repr(HELD_LATENCY),
}
OVERDUE = 5.0  # a step due longer ago than this counts as behind
MB = 1024 * 1024
STALL = 30.0  # seconds without one more job in flight: the worker cannot start more


@dataclass
class InFlightResult:
    jobs: int
    reached: int  # most jobs running at once
    seconds_to_reach: float
    timed_out: bool
    rss_idle_mb: float
    rss_mb: float  # when all were in flight
    rss_peak_mb: float  # highest while held
    redis_bytes_per_job: float
    polls_per_s: float  # status calls answered while held
    overdue_steps: int  # jobs whose next step was more than OVERDUE s late at the end
    worker_cpu_s: float

    @property
    def rss_per_job_kb(self) -> float:
        return (self.rss_peak_mb - self.rss_idle_mb) * 1024 / max(1, self.reached)

    def rss_at(self, jobs: int) -> float:
        """The resident memory extrapolated linearly to ``jobs`` in flight."""
        return self.rss_idle_mb + self.rss_per_job_kb * jobs / 1024


def run(bench: Bench) -> InFlightResult:
    params = bench.params
    jobs = params.in_flight_jobs
    path = submission.write_batch(bench.data_dir / f"inflight-{jobs}.jsonl", jobs, seed=13)
    bench.flush()
    bench.configure_sim(latency=HELD_LATENCY)
    [worker] = bench.start_workers(1, cap=jobs, extra_env=LONG_GENERATIONS)
    pid = worker.popen.pid
    try:
        client = bench.client()
        time.sleep(1.0)  # let the fresh worker settle before its idle RSS is read
        rss_idle, memory0, cpu0 = procs.rss_bytes(pid), bench.used_memory(), bench.cpu([worker])
        batch_id = "bench-inflight"
        started = time.monotonic()
        client.submit(path, batch_id=batch_id)
        deadline = started + max(120.0, jobs / 20)  # generous: creations run at tens per second
        peak_rss = reached = 0
        grew_at = started
        while time.monotonic() < deadline and time.monotonic() - grew_at < STALL:
            peak_rss = max(peak_rss, procs.rss_bytes(pid))
            running = client.status(batch_id).counts["running"]
            if running > reached:
                reached, grew_at = running, time.monotonic()
            if reached >= jobs:
                break
            time.sleep(0.5)
        seconds = time.monotonic() - started
        rss_all = procs.rss_bytes(pid)
        memory1 = bench.used_memory()
        payload_keys, payload_bytes = bench.payload_bytes()
        calls0, held_from = bench.sim_stats()["status_calls"], time.monotonic()
        while time.monotonic() < held_from + params.in_flight_hold:
            peak_rss = max(peak_rss, procs.rss_bytes(pid))
            time.sleep(0.5)
        polls = (bench.sim_stats()["status_calls"] - calls0) / (time.monotonic() - held_from)
        overdue = bench.redis().zcount(keys.DUE, "-inf", time.time() - OVERDUE)
        cpu = bench.cpu([worker]) - cpu0
    finally:
        bench.stop_processes([worker], kill=True)  # its held messages are flushed next anyway
        bench.configure_sim(latency=params.latency)
        bench.flush()
    return InFlightResult(
        jobs=jobs,
        reached=reached,
        seconds_to_reach=seconds,
        timed_out=reached < jobs,
        rss_idle_mb=rss_idle / MB,
        rss_mb=rss_all / MB,
        rss_peak_mb=max(peak_rss, rss_all) / MB,
        redis_bytes_per_job=(memory1 - memory0 - payload_bytes) / max(1, payload_keys),
        polls_per_s=polls,
        overdue_steps=overdue,
        worker_cpu_s=cpu,
    )
