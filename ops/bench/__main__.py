"""``python -m ops.bench [--quick] [--tiny] [--only submission] [--json PATH] [--md PATH]
[--data-dir DIR]``

Starts redis-server, the simulator and Celery workers (ops.localstack), runs every phase
one after the other on 127.0.0.1, and writes one report: every figure beside its target.

    full   100,000 lines submitted, L = 10 s, C = 400 with one worker start (a process per
           core) then 1/2/4 processes; CPU-bound L = 2 s, C = 1,600 over 1/2/4 processes;
           10,000 held in flight
    quick  5,000 lines, L = 6 s, C = 240, one per core then 1; CPU-bound over 1/2/4
           processes (2,000 jobs); 500 held in flight
    tiny   300 lines, L = 0.5 s, C = 50, 1 worker, 100 held in flight (the smoke test's)

Beside wanq's main completion run: the naive Celery design (ops.bench.naive) and the asyncio
script a skilled user writes instead (ops.bench.asyncref), same simulator, C and L.

``--only submission`` runs the first phase alone (no worker starts) and reports its figures:
submission rate, its ratio to the Redis ceiling and Redis memory per queued job.

The Markdown goes to stdout as well; progress goes to stderr.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from ops.bench import (
    baseline,
    completion,
    cpubound,
    data,
    inflight,
    pollmodel,
    reference,
    report,
    sharing,
    submission,
)
from ops.bench.cluster import Bench, default_processes
from ops.bench.params import SIZES, Params
from workers import config


def say(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


PHASES = ("submission",)  # the phases --only can pick


def run(params: Params, data_dir: Path, only: str | None = None) -> dict[str, Any]:
    started = time.monotonic()
    with Bench(params, data_dir) as bench:
        bench.start()
        say(f"{params.size}: redis {bench.redis_url}, simulator {bench.stack.provider_url}")
        say(f"submission of {params.submit_lines:,} lines, then the Redis ceiling")
        sub = submission.run(bench)
        say(f"  {sub.jobs_per_s:,.0f} jobs/s, ceiling {sub.ceiling_jobs_per_s:,.0f} jobs/s")
        if only == "submission":
            results = report.Results(
                params, sub, [], None, None, _environment(bench), [], time.monotonic() - started
            )
            return report.build(results)
        main = default_processes()
        say(f"completion: {params.completion_jobs:,} jobs, one worker start as the README's")
        runs = [completion.run(bench, None)]
        say(f"  {main} process(es): {runs[0].jobs_per_s:.1f} jobs/s (C/L = {params.limit:.1f})")
        say(f"naive design: {params.naive_jobs} jobs, {params.concurrency} threads")
        naive = baseline.run(bench)
        say(f"  {naive.jobs_per_s:.2f} jobs/s")
        say(f"async reference: {params.completion_jobs:,} jobs, C = {params.cap}")
        ref = reference.run(bench)
        say(f"  {ref.jobs_per_s:.1f} jobs/s, {ref.cpu_s_per_1000:.2f} CPU s per 1,000")
        for workers in (n for n in params.scaling_workers if n != main):
            say(f"completion: {params.completion_jobs:,} jobs, {workers} worker process(es)")
            runs.append(completion.run(bench, workers))
            say(f"  {runs[-1].jobs_per_s:.1f} jobs/s (C/L = {params.limit:.1f})")
        cpu_runs = cpubound.run(bench, say)
        say(f"{params.in_flight_jobs:,} jobs held in flight on one worker process")
        held = inflight.run(bench)
        say(f"  {held.reached:,} in flight, RSS peak {held.rss_peak_mb:.0f} MB")
        say("fair share: a 50-job batch behind a big one")
        shares = sharing.run(bench, None)
        first, makespan = shares.first_create_s, shares.small_makespan_s
        say(f"  first create {first:.1f} s, makespan {makespan:.1f} s")
        say("data at scale: shared images, submitter memory, purge")  # issue 12
        shared = data.run(bench)
        environment = _environment(bench)
    say("the polling model's trade-off curve")
    results = report.Results(
        params=params,
        submit=sub,
        runs=runs,
        naive=naive,
        held=held,
        environment=environment,
        notes=_notes(params),
        seconds=time.monotonic() - started,
        reference=ref,
        cpu_runs=cpu_runs,
        model=pollmodel.sweep(),
    )
    built = report.add(report.build(results), "data", data.figures(shared), shared)
    sharing_figures = sharing.figures(shares, runs[0], params.latency, params.cap)
    return report.add(built, "sharing", sharing_figures, shares)


def _environment(bench: Bench) -> dict[str, Any]:
    info = bench.redis().info("server")
    return {
        "cpus": os.cpu_count(),
        # other work on the machine: the figures of a shared machine move with it
        "loadavg_1_5_15": [round(x, 2) for x in os.getloadavg()],
        "python": platform.python_version(),
        "redis": info.get("redis_version"),
        "platform": platform.platform(),
        "git": _git("rev-parse", "--short", "HEAD"),
        "workers_modified": bool(_git("status", "--porcelain", "--", "workers")),
    }


def _git(*args: str) -> str:
    try:
        root = Path(__file__).resolve().parents[2]
        done = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return ""
    return done.stdout.strip()


def _notes(params: Params) -> list[str]:
    names = {f.name for f in dataclasses.fields(config.Settings)}
    cap = (
        "WANQ_MAX_IN_FLIGHT is read by these workers (Settings.max_in_flight)."
        if "max_in_flight" in names
        else "WANQ_MAX_IN_FLIGHT is NOT read by these workers: no cap is enforced, and "
        "completion_vs_limit is computed anyway (see provider_peak_in_flight_vs_cap)."
    )
    return [
        cap,
        f"Workers run with WANQ_CONCURRENCY={params.concurrency}, WANQ_POLL_FIRST="
        f"{params.latency:g} (the generation time an operator would expect, instead of the "
        "8 s default) and production defaults otherwise, started by ops.localstack (Celery "
        "at --loglevel INFO, task events on as workers/app.py sets them).",
        "Throughput is end to end: jobs / (last record - start of submission), submission "
        "included. Lag = the job record's completed_at - the simulator's completes_at "
        "(created_at + the task's latency), both wall clock on this machine.",
        "CPU is utime + stime from /proc of the producer (this process, during submit) and "
        "the worker process trees, before and after each run.",
        "Phases run one after another against one redis-server (AOF on, flushed between "
        "phases) and one simulator; the submission phase runs with no worker, so its jobs "
        "stay queued for the Redis memory figure.",
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m ops.bench",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--quick", action="store_true", help="minutes: L = 6 s, C = 240")
    parser.add_argument(
        "--tiny", action="store_true", help="well under a minute (with or without --quick)"
    )
    parser.add_argument(
        "--only", choices=PHASES, help="run this phase alone and report only its figures"
    )
    parser.add_argument("--json", metavar="PATH", help="write the report as JSON here")
    parser.add_argument("--md", metavar="PATH", help="write the report as Markdown here")
    parser.add_argument(
        "--data-dir", metavar="DIR", help="logs and Redis data here (kept); default: a temp dir"
    )
    args = parser.parse_args(argv)
    params = SIZES["tiny" if args.tiny else "quick" if args.quick else "full"]
    data_dir = (
        Path(args.data_dir) if args.data_dir else Path(tempfile.mkdtemp(prefix="wanq-bench-"))
    )
    try:
        result = run(params, data_dir, args.only)
    except Exception:
        say(f"failed; logs kept in {data_dir / 'logs'}")
        raise
    text = report.markdown(result)
    if args.json:
        Path(args.json).write_text(report.dumps(result) + "\n", encoding="utf-8")
    if args.md:
        Path(args.md).write_text(text, encoding="utf-8")
    sys.stdout.write(text)
    if not args.data_dir:
        shutil.rmtree(data_dir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
