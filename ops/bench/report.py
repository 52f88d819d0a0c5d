"""The report: every figure beside its target and what bounds it, as JSON and Markdown.

Each figure is ``{"value", "unit", "target", "met", "bound", "detail"}``; ``target`` is the
comparison as text (``">= 5000"``), ``met`` whether the value satisfies it. Nothing here
measures: it only reads the phases' results.
"""

from __future__ import annotations

import dataclasses
import json
import math
import operator
from dataclasses import dataclass
from typing import Any

from ops.bench.baseline import NaiveResult
from ops.bench.completion import RunResult
from ops.bench.inflight import InFlightResult
from ops.bench.params import Params
from ops.bench.pollmodel import Point, ladder_text
from ops.bench.reference import ReferenceResult
from ops.bench.submission import SubmitResult
from workers import schedule
from workers.config import Settings

POLL_CAP = Settings().poll_max_interval  # the default, which the in-flight phase runs on

REQUIRED = (
    "submit_jobs_per_s",
    "submit_vs_redis_ceiling",
    "completion_vs_limit",
    "vs_naive",
    "vs_async_reference_throughput",
    "cpu_vs_async_reference",
    "polls_per_job",
    "lag_p50_vs_latency",
    "redis_bytes_per_queued_job",
    "cpu_s_per_1000_jobs",
    "worker_rss_mb_10k_in_flight",
)
COMPARE = {">=": operator.ge, "<=": operator.le, "<": operator.lt, ">": operator.gt}
CPU_BOUND = 0.75  # a worker process (4 threads, one GIL) this busy has no CPU to spare
FLAT = 1.10  # scaling counts as flat when the best run is within this factor of the worst
IN_FLIGHT_GOAL = 10_000


@dataclass
class Figure:
    key: str
    title: str
    value: float
    unit: str
    target: str
    met: bool
    bound: str
    detail: str = ""

    def as_dict(self) -> dict[str, Any]:
        value = round(self.value, 4) if math.isfinite(self.value) else None
        return {
            "value": value,
            "unit": self.unit,
            "target": self.target,
            "met": bool(self.met and value is not None),
            "title": self.title,
            "bound": self.bound,
            "detail": self.detail,
        }


def check(value: float, op: str, threshold: float, note: str = "") -> tuple[str, bool]:
    """The target as text and whether ``value`` meets it (never with a missing value)."""
    target = f"{op} {_num(threshold)}" + (f" ({note})" if note else "")
    return target, math.isfinite(value) and COMPARE[op](value, threshold)


@dataclass
class Results:
    """What the phases measured; with ``--only submission`` the later phases are None."""

    params: Params
    submit: SubmitResult
    runs: list[RunResult]  # one per worker count; the first is the main run
    naive: NaiveResult | None
    held: InFlightResult | None
    environment: dict[str, Any]
    notes: list[str]
    seconds: float
    reference: ReferenceResult | None = None  # the asyncio script beside the main run
    cpu_runs: list[RunResult] = dataclasses.field(default_factory=list)  # CPU-bound scaling
    model: list[Point] = dataclasses.field(default_factory=list)  # the polling trade-off

    @property
    def complete(self) -> bool:
        parts = (self.naive, self.held, self.reference)
        return bool(self.runs) and all(part is not None for part in parts)


def figure(
    key: str,
    title: str,
    value: float,
    unit: str,
    target: tuple[str, float] | tuple[str, float, str],
    bound: str,
    detail: str = "",
    also: bool = True,
) -> Figure:
    """A figure met when ``value`` satisfies ``target`` (op, threshold[, note]) and ``also``."""
    shown, met = check(value, *target)
    return Figure(key, title, value, unit, shown, met and also, bound, detail)


def figures(res: Results) -> list[Figure]:
    if not res.complete:  # --only submission
        return [*_submission(res.submit), _queued_memory(res.submit)]
    return [
        *_submission(res.submit),
        *_completion(res),
        *_reference(res),
        *_polling(res),
        _queued_memory(res.submit),
        *_cost(res),
        _scaling(res),
        *_cpu_scaling(res),
    ]


def _submission(sub: SubmitResult) -> list[Figure]:
    rest = sub.seconds - sub.validate_s
    bench_rates = ", ".join(f"{k} {v:,.0f}" for k, v in sub.redis_benchmark.items()) or "n/a"
    return [
        figure(
            "submit_jobs_per_s",
            "Submission: jobs validated + enqueued per second",
            sub.jobs_per_s,
            "jobs/s",
            (">=", 5000),
            f"the producer, one Python thread busy {sub.cpu_s / sub.seconds:.0%} of the time: "
            f"about {sub.validate_s:.2f} of its {sub.seconds:.2f} s read and validate the file "
            f"(once: the valid jobs are spooled until the whole file is known valid); the "
            f"other {rest:.2f} s render Celery's task messages and task-sent events (from a "
            "template checked against as_task_v2 and kombu's envelope) and wait for Redis: one "
            "enqueue script per 100 jobs, one LPUSH of the messages and one PUBLISH of the "
            "events per 500",
            f"{sub.enqueued:,} of {sub.lines:,} lines in {sub.seconds:.2f} s "
            f"({sub.cpu_s:.2f} s CPU){_fastest(sub.runs)}; one validation pass alone "
            f"{sub.validate_s:.2f} s",
        ),
        figure(
            "submit_vs_redis_ceiling",
            "Submission / raw Redis write rate of the same data (same run)",
            sub.jobs_per_s / sub.ceiling_jobs_per_s,
            "ratio",
            (">=", 1 / 3, "1/3 of the ceiling"),
            "the ceiling writes the same keys per job (hash, payload, list entry, zset entry, "
            f"counters, a {sub.message_bytes} B message) from Python in submission's command "
            "shape (per job HSET, SET; per 500 jobs one RPUSH, ZADD, the counters and one "
            "LPUSH of the messages), without task-sent events; submission adds validation, "
            "building the messages and the Lua scripts",
            f"ceiling {sub.ceiling_jobs_per_s:,.0f} jobs/s ({sub.ceiling_seconds:.2f} s for "
            f"{sub.lines:,} jobs{_fastest(sub.runs)}); redis-benchmark -P 50, commands/s: "
            f"{bench_rates}",
        ),
    ]


def _fastest(runs: int) -> str:
    """A short file is timed more than once (ops/bench/submission.py): say so."""
    return f", the fastest of {runs} runs" if runs > 1 else ""


def _completion(res: Results) -> list[Figure]:
    p, main, naive = res.params, res.runs[0], res.naive
    assert naive is not None
    cap_held = main.peak_in_flight <= p.cap
    sl = main.slots
    busy = main.worker_cpu_s / main.makespan_s / main.workers  # of one core, per process
    naive_cycle = naive.threads / naive.jobs_per_s if naive.jobs_per_s else float("nan")
    wanq_cycle = p.cap / main.jobs_per_s if main.jobs_per_s else float("nan")
    if main.steady_vs_limit >= 0.9:
        bounded_by = "the provider limit C/L"
    elif busy >= CPU_BOUND:
        bounded_by = "the one worker process's CPU (one GIL), not the provider"
    else:
        bounded_by = "slot turnaround (the worker is not saturated)"
    return [
        figure(
            "completion_vs_limit",
            "Completion under latency: steady end-to-end throughput / (C / L)",
            main.steady_vs_limit,
            "ratio",
            (">=", 0.90),
            f"{bounded_by}: of the C x makespan slot-seconds {sl.get('generating', 0):.0%} "
            f"went to generating, {sl.get('lag', 0):.0%} to lag (done remotely, not yet seen: "
            "a slot is held until our poll sees the end) "
            f"and {sl.get('idle', 0):.0%} stood idle: a freed slot is claimed again p50 "
            f"{main.refill_p50_s:.2f} s / p95 {main.refill_p95_s:.2f} s later, on a worker "
            f"process busy {busy:.0%} of one core ({main.cpu_s_per_1000:.1f} ms CPU and "
            f"{main.tasks_per_job:.1f} Celery tasks per job). Over the whole makespan the "
            "ratio is lower by the first round (nothing can end before L) and the last "
            "round's tail (the slowest of C slots, each the sum of 10 generation times "
            "jittered +-25 %, ends ~1.4 L after the mean)",
            f"records/s between the 10th and 90th percentile of completions: "
            f"{main.steady_jobs_per_s:.1f}/s vs C/L = {p.cap}/{_num(p.latency)} s = "
            f"{p.limit:.1f}/s; over the whole makespan {main.ended:,} jobs in "
            f"{main.makespan_s:.1f} s = {main.jobs_per_s:.1f}/s = {main.vs_limit:.3f} of C/L; "
            f"peak remote tasks in flight {main.peak_in_flight} (cap {p.cap})"
            + ("" if cap_held else " - THE CAP DID NOT HOLD: not a valid figure")
            + (" - TIMED OUT" if main.timed_out else ""),
            also=cap_held and not main.timed_out,
        ),
        figure(
            "provider_peak_in_flight_vs_cap",
            "Peak remote tasks in flight / C, as the provider saw them",
            main.peak_in_flight / p.cap,
            "ratio",
            ("<=", 1.0),
            "WANQ_MAX_IN_FLIGHT: a job takes a slot at its claim and gives it back when it "
            "ends, so the provider never sees more than C",
            f"peak {main.peak_in_flight} remote tasks, from the simulator's created_at and "
            "completes_at of every task of the main run",
        ),
        figure(
            "vs_naive",
            "wanq / naive (one task per job that sleep-polls) throughput",
            main.jobs_per_s / naive.jobs_per_s if naive.jobs_per_s else float("nan"),
            "ratio",
            (">=", 50),
            f"jobs in flight: the naive task holds one of its {naive.threads} threads for the "
            f"whole generation plus up to 1 s of sleep (a slot cycle of {naive_cycle:.2f} s); "
            f"wanq holds no thread while waiting, so only C = {p.cap} bounds it (a slot cycle "
            f"of {wanq_cycle:.2f} s): the ratio is C/threads = {p.cap / naive.threads:.0f} "
            f"times the cycle ratio {naive_cycle / wanq_cycle:.2f}",
            f"naive {naive.ended} jobs in {naive.makespan_s:.1f} s = {naive.jobs_per_s:.2f} "
            f"jobs/s, {naive.polls_per_job:.1f} polls per job; wanq {main.jobs_per_s:.1f} "
            f"jobs/s; {naive.threads} threads in one worker process each",
        ),
    ]


def _polling(res: Results) -> list[Figure]:
    p, main = res.params, res.runs[0]
    shape = schedule.SHAPE
    model = next((m for m in res.model if m.shape == shape), None)
    said = (
        f"a model of the schedule alone (python -m ops.bench.pollmodel) gives "
        f"{model.polls_per_job:.2f} polls at a mean lag of {model.lag_mean:.3f} L, p50 "
        f"{model.lag_p50:.3f} L, p95 {model.lag_p95:.3f} L"
        if model
        else "see python -m ops.bench.pollmodel"
    )
    return [
        figure(
            "polls_per_job",
            "Polls per job (simulator status calls / jobs)",
            main.polls_per_job,
            "polls",
            ("<=", 2.0),
            f"the schedule (workers/schedule.py): polls aimed at a ladder of the learned "
            f"quantiles of generation times ({_ladder(shape)}: about 1 + the sum of 1 - q "
            f"polls, whatever the distribution's width), then every {shape.spacing:.2f} x "
            f"the learned median; "
            f"{said}. Fewer polls cost lag: the curve is under 'The polling trade-off'",
            f"{main.polls_per_job * main.ended:,.0f} status calls for {main.ended:,} jobs",
        ),
        figure(
            "lag_p50_vs_latency",
            "Lag remote completion -> our record, p50 / L",
            main.lag_p50_s / p.latency,
            "ratio",
            ("<", 0.10),
            "a job done before its first poll waits for it (the first "
            f"{shape.first_quantile:.0%} of generation times), one done later waits at most "
            "the gap between two rungs of the ladder, which shrink towards the tail; polls "
            "also wait in the queue while the worker is busy",
            f"p50 {main.lag_p50_s:.3f} s, p95 {main.lag_p95_s:.3f} s "
            f"({main.lag_p95_s / p.latency:.0%} of L), max {main.lag_max_s:.3f} s; "
            f"L = {_num(p.latency)} s",
        ),
    ]


def _reference(res: Results) -> list[Figure]:
    p, main, ref = res.params, res.runs[0], res.reference
    assert ref is not None
    ratio = main.cpu_s_per_1000 / ref.cpu_s_per_1000 if ref.cpu_s else float("nan")
    return [
        figure(
            "vs_async_reference_throughput",
            "wanq / a skilled user's asyncio script: makespan throughput, same jobs, C and L",
            main.jobs_per_s / ref.jobs_per_s if ref.jobs_per_s else float("nan"),
            "ratio",
            (">=", 0.97),
            "both hold C remote tasks at once and both end in the last round's tail; a slot's "
            "cycle is a generation plus the mean lag (the schedule's: the reference spends "
            "more polls for less of it) plus the time to create the next job, and every "
            "slot's chain starts when the first round has filled the cap (wanq's submission "
            "and the first creates' Celery messages; the freed slot's create runs in the poll "
            "that freed it: workers/handover.py)",
            f"reference (ops/bench/asyncref.py: aiohttp, a semaphore of {p.cap}, first poll "
            f"at 0.9 L then 0.08 L growing 1.25x, results appended to JSONL) {ref.ended:,} jobs "
            f"in {ref.makespan_s:.1f} s = {ref.jobs_per_s:.1f}/s = "
            f"{ref.jobs_per_s / p.limit:.3f} of C/L, {ref.polls_per_job:.2f} polls per job, "
            f"lag mean {ref.lag_mean_s:.3f} s, p50 {ref.lag_p50_s:.3f} s / p95 "
            f"{ref.lag_p95_s:.3f} s, cap full after {ref.first_round_s:.2f} s, peak "
            f"{ref.peak_in_flight} in flight; wanq {main.jobs_per_s:.1f}/s, "
            f"{main.polls_per_job:.2f} polls per job, lag mean {main.lag_mean_s:.3f} s, "
            f"p50 {main.lag_p50_s:.3f} s, cap full after {main.first_round_s:.2f} s. "
            "The machine's "
            f"1-min load average as each run ended: wanq {main.loadavg:.1f}, the reference "
            f"{ref.loadavg:.1f} ({res.environment.get('cpus')} cores; other work shares them)",
        ),
        figure(
            "cpu_vs_async_reference",
            "wanq's CPU per 1,000 jobs (producer + workers) / the asyncio script's",
            ratio,
            "ratio",
            ("<=", 3.0),
            "what durability, cluster-wide limits and exactly-once results cost: per job "
            "wanq runs Celery tasks (a message each, with task events for Flower and a log "
            "line), Lua scripts and Redis round trips that the script does not have; the HTTP "
            "calls (one create, the polls) are the same work in both",
            f"wanq {main.cpu_s_per_1000:.1f} CPU s per 1,000 jobs, the reference "
            f"{ref.cpu_s_per_1000:.2f} ({ref.cpu_s:.2f} s for {ref.ended:,} jobs, one "
            "process, event loop and aiohttp)",
        ),
    ]


def _queued_memory(sub: SubmitResult) -> Figure:
    return figure(
        "redis_bytes_per_queued_job",
        "Redis memory per queued job, payload excluded",
        sub.redis_bytes_per_job,
        "bytes",
        ("<", 2048),
        f"the Celery create message ({sub.message_bytes} B of JSON with headers) is most of "
        "it; the job hash, the batch list entry and the queued-zset entry the rest",
        f"INFO used_memory +{sub.used_memory_delta:,} B for {sub.enqueued:,} jobs, minus "
        f"the payloads' MEMORY USAGE ({sub.payload_bytes_per_job:.0f} B per job)",
    )


def _cost(res: Results) -> list[Figure]:
    main, held = res.runs[0], res.held
    assert held is not None
    tasks = ", ".join(  # handed-over creates run inside the poll task that freed the slot
        f"{name.removeprefix('wanq.').replace('handover:', 'inside a poll, create:')} "
        f"{n / max(1, main.ended):.2f}"
        for name, n in main.tasks.items()
    )
    needed = held.reached / POLL_CAP  # a held job polls at least every POLL_CAP s (inflight.py)
    return [
        figure(
            "redis_bytes_per_job_in_flight",
            "Redis memory per job in flight, payload excluded",
            held.redis_bytes_per_job,
            "bytes",
            ("<", 4096, "wanq's own: a queued job's 2 KB plus its pending poll"),
            "the job hash (now with a remote ID and timestamps), its due and in-flight zset "
            "entries and its pending poll: an entry in the poll pump's zset (workers/pump.py; "
            "with WANQ_POLL_BATCH=0 a countdown message in kombu's unacked hash and index)",
            f"with {held.reached:,} of {held.jobs:,} jobs running",
        ),
        figure(
            "cpu_s_per_1000_jobs",
            "CPU seconds per 1,000 jobs (producer + workers)",
            main.cpu_s_per_1000,
            "CPU s",
            (
                "<=",
                1000 / res.params.limit,
                f"wanq's own: one core carries the run's C/L = {res.params.limit:.0f} jobs/s",
            ),
            f"Celery's cost per task: {main.tasks_per_job:.2f} tasks per job ({tasks}; the polls "
            "due together share a message: workers/pump.py), each "
            "a broker fetch and ack with task events on (received, started, succeeded: "
            "worker_send_task_events; workers send no task-sent events) and INFO log lines, "
            "besides the Lua scripts and HTTP (docs/bench-profile.md)",
            f"producer {main.producer_cpu_s:.2f} s + workers {main.worker_cpu_s:.2f} s for "
            f"{main.ended:,} jobs, {main.round_trips_per_job:.1f} Redis round trips per job "
            "(every client's, the bench's progress reads too: INFO total_reads_processed); "
            "not counted: redis-server "
            f"{main.service_cpu_s.get('redis', 0):.2f} s, simulator "
            f"{main.service_cpu_s.get('simulator', 0):.2f} s",
        ),
        Figure(
            "worker_rss_mb_10k_in_flight",
            f"Worker RSS with {held.jobs:,} jobs in flight on one process",
            held.rss_peak_mb,
            "MB",
            f"all {held.jobs:,} in flight on 1 process, polls on time",
            held.reached >= held.jobs and held.overdue_steps == 0,
            "the memory: the worker's heap (a pending poll waits in Redis, not in the worker: "
            "workers/pump.py); "
            f"the count: with the defaults (countdowns up to 300 s, polls at most {POLL_CAP:g} s "
            f"apart: about {needed:.0f} polls/s once due) one process starts and follows "
            "them; with the old 30 s countdown cap each held job would wake the worker every "
            "30 s (10,000 jobs: 333 polls/s, about one process's whole CPU)",
            f"{held.reached:,} of {held.jobs:,} in flight after {held.seconds_to_reach:.1f} s; "
            f"RSS idle {held.rss_idle_mb:.0f} MB, all in flight {held.rss_mb:.0f} MB, peak "
            f"{held.rss_peak_mb:.0f} MB ({held.rss_per_job_kb:.1f} KB per job, linearly "
            f"{held.rss_at(IN_FLIGHT_GOAL):.0f} MB at {IN_FLIGHT_GOAL:,}); "
            f"{held.polls_per_s:.0f} polls/s answered while held, {held.overdue_steps:,} "
            "steps more than 5 s overdue at the end",
        ),
    ]


def _scaling(res: Results) -> Figure:
    ordered = sorted(res.runs, key=lambda r: r.workers)
    rates = [r.jobs_per_s for r in ordered]
    first, last = ordered[0], ordered[-1]
    flatness = max(rates) / min(rates) if min(rates) > 0 else float("nan")
    counts = ", ".join(str(r.workers) for r in ordered)
    return figure(
        "scaling_flatness",
        f"Provider-bound scaling: best / worst throughput over {counts} worker processes",
        flatness,
        "ratio",
        ("<=", FLAT, "throughput follows C/L, not the worker count"),
        f"flat when the provider limit bounds throughput: from {first.workers} to "
        f"{last.workers} worker process(es) throughput moved "
        f"{last.jobs_per_s / first.jobs_per_s - 1:+.0%}; the main run (one worker start, "
        f"{res.runs[0].workers} process(es): one per core) had its processes busy "
        f"{res.runs[0].worker_cpu_s / res.runs[0].makespan_s:.2f} cores, and "
        f"{res.environment.get('cpus')} cores are shared with Redis, the simulator and the "
        "producer",
        _per_run(ordered),
    )


def _cpu_scaling(res: Results) -> list[Figure]:
    if len(res.cpu_runs) < 2:
        return []
    p, ordered = res.params, sorted(res.cpu_runs, key=lambda r: r.workers)
    first, best = ordered[0], max(ordered, key=lambda r: r.jobs_per_s)
    return [
        figure(
            "cpu_bound_scaling",
            f"CPU-bound scaling: best / 1-process throughput at C/L = "
            f"{p.cpu_cap}/{_num(p.cpu_latency)} s = {p.cpu_cap / p.cpu_latency:.0f} jobs/s",
            best.jobs_per_s / first.jobs_per_s if first.jobs_per_s else float("nan"),
            "ratio",
            (">=", 1.3, "more processes carry more once the CPU bounds"),
            f"one process ({p.concurrency} threads under one GIL) carries about "
            f"{first.jobs_per_s:.0f} jobs/s at {first.cpu_s_per_1000:.1f} CPU s per 1,000 jobs "
            f"(C/L is above what the cores carry, so the cap stays unfilled: peak "
            f"{first.peak_in_flight} of {p.cpu_cap}); more processes add threads and what "
            f"the cores left: {res.environment.get('cpus')} cores here, shared with Redis and "
            "the simulator "
            f"(busy cores, 1 process: {_busy(first)}; {best.workers} processes: {_busy(best)})",
            _per_run(ordered),
        )
    ]


def _busy(run: RunResult) -> str:
    """Where a run's cores went: the workers', Redis's and the simulator's CPU over its span."""
    shares = {"workers": run.worker_cpu_s, **run.service_cpu_s}
    parts = [f"{name} {cpu / run.makespan_s:.2f}" for name, cpu in shares.items()]
    total = sum(shares.values()) / run.makespan_s
    return ", ".join(parts) + f", {total:.2f} in all"


def _per_run(runs: list[RunResult]) -> str:
    return "; ".join(
        f"{r.workers} process(es) {r.jobs_per_s:.1f} jobs/s = {r.vs_limit:.0%} of C/L, "
        f"workers busy {r.worker_cpu_s / r.makespan_s:.2f} cores, "
        f"{r.cpu_s_per_1000:.1f} CPU s per 1,000 jobs, a freed slot claimed again after "
        f"p50 {r.refill_p50_s:.2f} s, peak {r.peak_in_flight} in flight"
        for r in runs
    )


def build(res: Results) -> dict[str, Any]:
    figs = figures(res)
    measurements: dict[str, Any] = {"submission": dataclasses.asdict(res.submit)}
    if res.complete:
        measurements |= _later_phases(res)
    return {
        "figures": {f.key: f.as_dict() for f in figs},
        "parameters": res.params.as_dict(),
        "measurements": measurements,
        "environment": res.environment,
        "notes": res.notes,
        "seconds": round(res.seconds, 1),
    }


def add(report: dict[str, Any], name: str, figs: list[Figure], measured: Any) -> dict[str, Any]:
    """A phase measured beside the others (its own module): its figures and measurements."""
    report["figures"] |= {f.key: f.as_dict() for f in figs}
    report["measurements"][name] = dataclasses.asdict(measured)
    return report


def _later_phases(res: Results) -> dict[str, Any]:
    assert res.naive is not None and res.held is not None and res.reference is not None
    return {
        "completion": [
            {
                **dataclasses.asdict(r),
                "vs_limit": r.vs_limit,
                "cpu_s_per_1000": r.cpu_s_per_1000,
            }
            for r in res.runs
        ],
        "cpu_bound": [
            {**dataclasses.asdict(r), "vs_limit": r.vs_limit, "cpu_s_per_1000": r.cpu_s_per_1000}
            for r in res.cpu_runs
        ],
        "naive": dataclasses.asdict(res.naive),
        "async_reference": {
            **dataclasses.asdict(res.reference),
            "cpu_s_per_1000": res.reference.cpu_s_per_1000,
        },
        "poll_model": [
            {
                **dataclasses.asdict(m.shape),
                "polls_per_job": m.polls_per_job,
                "lag_mean": m.lag_mean,
                "lag_p50": m.lag_p50,
                "lag_p95": m.lag_p95,
                "first_share": m.first_share,
            }
            for m in res.model
        ],
        "in_flight": {
            **dataclasses.asdict(res.held),
            "rss_per_job_kb": res.held.rss_per_job_kb,
        },
    }


def markdown(report: dict[str, Any]) -> str:
    p, figs = report["parameters"], report["figures"]
    only = "" if "completion" in report["measurements"] else ", submission phase only"
    lines = [
        f"# wanq benchmark ({p['size']}{only})",
        "",
        f"L = {_num(p['latency'])} s (+-25 % jitter), C = {p['cap']} "
        f"(WANQ_MAX_IN_FLIGHT), C/L = {p['limit_jobs_per_s']:.1f} jobs/s, "
        f"{p['concurrency']} threads per worker process; the main run is one worker start as "
        "the README's (one process per core), the naive design one process; "
        f"{p['completion_jobs']:,} jobs per completion run, "
        f"{p['submit_lines']:,} lines submitted, {p['naive_jobs']} naive jobs, "
        f"{p['in_flight_jobs']:,} held in flight. One run, {report['seconds']:.0f} s, on "
        f"{report['environment'].get('cpus')} cores (load average at the end, 1/5/15 min: "
        f"{report['environment'].get('loadavg_1_5_15')}).",
        "",
        "| figure | value | target | met |",
        "|---|---:|---|:---:|",
    ]
    for key, fig in figs.items():
        value = "n/a" if fig["value"] is None else f"{_num(fig['value'])} {fig['unit']}"
        lines.append(f"| `{key}` | {value} | {fig['target']} | {'yes' if fig['met'] else 'NO'} |")
    lines += ["", "## What bounds each figure", ""]
    for key, fig in figs.items():
        lines.append(f"- `{key}`: {fig['bound']}.")
        if fig["detail"]:
            lines.append(f"  Measured: {fig['detail']}.")
    model = report["measurements"].get("poll_model") or []
    if model:
        lines += ["", "## The polling trade-off (model)", ""]
        lines += [
            "python -m ops.bench.pollmodel: workers/schedule.py's own functions on simulated "
            "jobs (generation times L x uniform(0.75, 1.25), learning through the window as "
            "the workers do). The mean lag is what throughput pays (a slot is held until its "
            "job is seen done), polls per job what the CPU pays. The default shape is marked.",
            "",
            "| polls aimed at quantiles | then spacing x median | polls/job | lag mean / L "
            "| lag p50 / L | lag p95 / L |",
            "|---|---:|---:|---:|---:|---:|",
        ]
        default = dataclasses.asdict(schedule.SHAPE)
        for m in model:
            mark = " (default)" if all(_same(m[k], v) for k, v in default.items()) else ""
            lines.append(
                f"| {_ladder(m['ladder'])}{mark} | {m['spacing']:.2f} | "
                f"{m['polls_per_job']:.2f} | {m['lag_mean']:.3f} | {m['lag_p50']:.3f} | "
                f"{m['lag_p95']:.3f} |"
            )
    missed = [key for key, fig in figs.items() if not fig["met"]]
    lines += ["", "## Targets missed", ""]
    lines += [f"- `{key}`" for key in missed] or ["- none"]
    if report["notes"]:
        lines += ["", "## Notes", ""] + [f"- {note}" for note in report["notes"]]
    return "\n".join(lines) + "\n"


def _ladder(shape: schedule.Shape | list[float] | tuple[float, ...]) -> str:
    return ladder_text(shape.ladder if isinstance(shape, schedule.Shape) else shape)


def _same(a: Any, b: Any) -> bool:
    """Equal, a JSON list against a tuple too."""
    return list(a) == list(b) if isinstance(a, list | tuple) else bool(a == b)


def dumps(report: dict[str, Any]) -> str:
    return json.dumps(_finite(report), indent=2, allow_nan=False)


def _finite(value: Any) -> Any:
    """NaN and infinities (a figure that could not be measured) become null."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def _num(value: float) -> str:
    if isinstance(value, float) and not math.isfinite(value):
        return "n/a"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.3g}" if abs(value) < 1 else f"{value:.2f}"
