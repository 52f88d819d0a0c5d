"""Fair share: a small batch submitted while a big one holds every in-flight slot.

A big batch (full: 4,000 jobs; quick: 2,400) fills the cap C and runs one round of it (its
steady state, slots freeing as its jobs end); then a 50-job batch is submitted. Measured:
seconds from its submission to its first remote task (target: at most 1.5 L, it needs only
the next freed slots), its makespan against what its fair share predicts, and the most
remote tasks the provider saw at once (never above C).

What its share predicts: with two active batches of equal weight the small one is owed C/2
slots, and it takes every slot the big batch frees until it holds min(50, C/2); then each of
its rounds lasts L. Slots free when the big batch's jobs end, so the prediction is read off
the run: the time after its submission at which the big batch had ended
``min(50, C/2)`` jobs (when the small batch could hold its share), plus
``ceil(50 / (C/2)) * L`` (its rounds). With generations jittered +-25 % and the big batch
started cold, its ends come in waves, so this is not ``50 / (C/L)``.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

from ops.bench import completion, report, submission
from ops.bench.cluster import Bench, wait_until
from ops.bench.completion import RunResult
from workers import keys

SMALL_JOBS = 50
BIG_JOBS = {"full": 4_000, "quick": 2_400}


@dataclass
class SharingResult:
    big_jobs: int
    small_jobs: int
    first_create_s: float  # small batch's submission to its first remote task
    small_makespan_s: float  # its submission to its last record
    predicted_s: float  # what its fair share (C/2 slots) predicts
    peak_provider_in_flight: int  # the two batches' remote tasks at once, as the provider ran them
    big_ended_when_small_done: int

    @property
    def makespan_vs_share(self) -> float:
        return self.small_makespan_s / self.predicted_s


def predicted_makespan(
    jobs: int, cap: int, latency: float, big_ends: list[float], submitted: float
) -> float:
    """When the small batch could hold its share (the big batch's ``min(jobs, C/2)``-th end
    after its submission; C/L if the run did not see that many), plus its rounds of L."""
    share = max(1, cap // 2)
    held = min(jobs, share)
    slots_at = big_ends[held - 1] - submitted if len(big_ends) >= held else held / (cap / latency)
    return slots_at + math.ceil(jobs / share) * latency


def run(bench: Bench, workers: int | None) -> SharingResult:
    params = bench.params
    big_jobs = BIG_JOBS[params.mode] if params.size != "tiny" else 4 * params.cap
    big_path = submission.write_batch(bench.data_dir / f"sharing-big-{big_jobs}.jsonl", big_jobs)
    small_path = submission.write_batch(bench.data_dir / "sharing-small.jsonl", SMALL_JOBS, seed=5)
    bench.flush()
    processes = bench.start_workers(workers, params.cap)
    try:
        client = bench.client()
        client.submit(big_path, batch_id="share-big")
        redis = bench.redis()
        # the big batch in its steady state: every slot held, and one round of the cap ended
        # (slots free as its jobs end, not all at once L after a cold start)
        wait_until(
            lambda: (
                client.status("share-big").ended >= params.cap
                and redis.zcard(keys.INFLIGHT) >= params.cap
            ),
            6 * params.latency + 60,
        )
        submitted = time.time()
        client.submit(small_path, batch_id="share-small")
        deadline = time.monotonic() + 10 * params.latency + 120
        while not client.status("share-small").done and time.monotonic() < deadline:
            time.sleep(0.2)  # a polling interval with a deadline
        records = list(client.store.iter_batch_jobs("share-small"))
        big_records = list(client.store.iter_batch_jobs("share-big"))
        ids = [r["remote_task_id"] for r in [*records, *big_records] if r.get("remote_task_id")]
        # the provider's own times for these two batches only (earlier phases' tasks may still
        # run in the simulator): the most of them running at once
        peak = completion.peak(completion.remote_tasks(bench, ids).values())
        big_ends = sorted(
            float(r["completed_at"])
            for r in big_records
            if r.get("completed_at") and float(r["completed_at"]) > submitted
        )
        big_ended = client.status("share-big").ended
        client.cancel("share-big")
    finally:
        bench.stop_processes(processes)
    created = [float(r["created_at"]) for r in records if r.get("created_at")]
    ended = [float(r["completed_at"]) for r in records if r.get("completed_at")]
    return SharingResult(
        big_jobs=big_jobs,
        small_jobs=SMALL_JOBS,
        first_create_s=(min(created) - submitted) if created else float("nan"),
        small_makespan_s=(max(ended) - submitted) if len(ended) == SMALL_JOBS else float("nan"),
        predicted_s=predicted_makespan(SMALL_JOBS, params.cap, params.latency, big_ends, submitted),
        peak_provider_in_flight=peak,
        big_ended_when_small_done=big_ended,
    )


def figures(res: SharingResult, main: RunResult, latency: float, cap: int) -> list[report.Figure]:
    """The sharing phase's figures, and the main completion run's counts of tasks per job."""
    creates = sum(
        n for name, n in main.tasks.items() if name.startswith(("wanq.create", "handover:"))
    )
    no_slot = ("full", "pricing")
    wasted = sum(n for name, n in main.tasks.items() if name.rpartition(":")[2] in no_slot)
    return [
        report.figure(
            "fair_share_first_create_s",
            "Fair share: a 50-job batch behind a big one, to its first remote task",
            res.first_create_s,
            "s",
            ("<=", 1.5 * latency, "1.5 L"),
            "the next freed slot: ending a job gives its slot to the batch furthest below its "
            "share in the same script (lua/lib/slots.lua)",
            f"big batch {res.big_jobs:,} jobs holding all {cap} slots; L = {latency:g} s",
        ),
        report.figure(
            "fair_share_small_batch_makespan_vs_share",
            "Fair share: the small batch's makespan over what C/2 slots predict",
            res.makespan_vs_share,
            "x",
            ("<=", 1.5),
            "slots freeing at C/L while the big batch holds them, then its rounds of L",
            f"{res.small_makespan_s:.1f} s against {res.predicted_s:.1f} s predicted; the big "
            f"batch had ended {res.big_ended_when_small_done:,} jobs meanwhile; peak "
            f"{res.peak_provider_in_flight} remote tasks in flight (cap {cap})",
            also=res.peak_provider_in_flight <= cap,
        ),
        report.figure(
            "wasted_creates_per_job",
            "Create tasks that found no slot, per job (main completion run)",
            wasted / max(1, main.ended),
            "per job",
            ("<=", 0.05),
            "admission in Redis: only a job given a slot is created (a create message for "
            "those admitted at submission, else the poll that freed the slot creates it: "
            "workers/handover.py); a create finds no slot only after a redelivery or a "
            "sweeper resend",
            f"{wasted} of {creates} creates (tasks and handed-over); {main.ended:,} jobs",
        ),
        report.figure(
            "tasks_per_job",
            "Celery tasks per job (main completion run)",
            main.tasks_per_job,
            "tasks",
            ("<=", 3.3),
            "the polls (polls_per_job), a create task only for the jobs admitted at "
            "submission (the others are created by the poll that freed their slot), stale "
            "duplicates; no create that parks",
            ", ".join(f"{name} {n:,}" for name, n in sorted(main.tasks.items())),
        ),
    ]
