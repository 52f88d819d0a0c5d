"""The async reference's run (ops.bench.asyncref): the same jobs, simulator, C and L as
wanq's main completion run, in its own process, measured the same way: end-to-end
throughput (makespan from its start to its last record), lag against the simulator's
``completes_at``, polls per job, and its CPU."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass

from ops.bench import completion, submission
from ops.bench.cluster import API_KEY, Bench


@dataclass
class ReferenceResult:
    jobs: int
    ended: int
    makespan_s: float
    jobs_per_s: float
    polls_per_job: float
    lag_p50_s: float
    lag_p95_s: float
    peak_in_flight: int
    cpu_s: float
    loadavg: float  # the machine's 1-min load average as the run ended
    lag_mean_s: float = float("nan")
    first_round_s: float = float("nan")  # start to the C-th remote task created

    @property
    def cpu_s_per_1000(self) -> float:
        return self.cpu_s / max(1, self.ended) * 1000


def run(bench: Bench) -> ReferenceResult:
    params = bench.params
    jobs = params.completion_jobs
    path = submission.write_batch(bench.data_dir / f"completion-{jobs}.jsonl", jobs, seed=11)
    out = bench.data_dir / "asyncref-results.jsonl"
    out.unlink(missing_ok=True)
    bench.flush()
    command = [sys.executable, "-m", "ops.bench.asyncref", str(path), str(out)]
    command += ["--url", bench.stack.provider_url, "--key", API_KEY]
    command += ["-c", str(params.cap), "--latency", repr(params.latency)]
    timeout = 3 * jobs / params.limit + 60
    done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=True)
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    records = [json.loads(raw) for raw in out.read_text(encoding="utf-8").splitlines() if raw]
    remote = completion.remote_tasks(bench, [r["task_id"] for r in records])
    lags = [r["completed_at"] - remote[r["task_id"]]["completes_at"] for r in records]
    makespan = max(r["completed_at"] for r in records) - summary["started"]
    return ReferenceResult(
        jobs=jobs,
        ended=len(records),
        makespan_s=makespan,
        jobs_per_s=len(records) / makespan,
        polls_per_job=summary["polls"] / max(1, len(records)),
        lag_p50_s=completion.quantile(lags, 0.50),
        lag_p95_s=completion.quantile(lags, 0.95),
        peak_in_flight=completion.peak(remote.values()),
        cpu_s=summary["cpu_s"],
        loadavg=os.getloadavg()[0],
        lag_mean_s=completion.mean(lags),
        first_round_s=completion.first_round(remote.values(), summary["started"], params.cap),
    )
