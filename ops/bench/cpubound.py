"""Scaling where the CPU bounds: the same completion run with C/L above what one worker
process carries (L = ``cpu_latency``, C = ``cpu_cap``), over 1, 2 and 4 processes of one
worker start (workers.processes), beside the provider-bound runs where throughput follows
C/L whatever the processes. Here it follows the cores the processes get."""

from __future__ import annotations

import dataclasses

from ops.bench import completion
from ops.bench.cluster import Bench
from ops.bench.completion import RunResult


def run(bench: Bench, say=lambda message: None) -> list[RunResult]:
    p = bench.params
    setting = dataclasses.replace(
        p, latency=p.cpu_latency, cap=p.cpu_cap, completion_jobs=p.cpu_jobs
    )
    env = {"WANQ_POLL_FIRST": repr(p.cpu_latency)}
    bench.configure_sim(latency=p.cpu_latency)
    runs = []
    try:
        for n in p.cpu_processes:
            say(f"CPU-bound: {p.cpu_jobs:,} jobs, C/L = {setting.limit:.0f}/s, {n} process(es)")
            runs.append(completion.run(bench, n, setting, env))
            say(f"  {runs[-1].jobs_per_s:.1f} jobs/s")
    finally:
        bench.configure_sim(latency=p.latency)
    return runs
