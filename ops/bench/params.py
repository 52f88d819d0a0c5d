"""Run sizes per mode. Every figure of one report comes from one run with these parameters."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass


@dataclass(frozen=True)
class Params:
    size: str  # full | quick | tiny (tiny is a smaller quick: --quick --tiny)
    submit_lines: int  # lines of the submission file (images as URLs)
    latency: float  # simulator's mean generation time L, seconds (jitter +-25 %)
    cap: int  # provider limit C: WANQ_MAX_IN_FLIGHT, remote tasks in flight cluster-wide
    concurrency: int  # WANQ_CONCURRENCY: threads per worker process, wanq and naive alike
    completion_jobs: int  # jobs of each completion run
    naive_jobs: int  # jobs given to the naive design
    in_flight_jobs: int  # jobs held in flight on one worker for the RSS figure
    in_flight_hold: float  # seconds they are held (one poll round at least) while sampled
    scaling_workers: tuple[int, ...]  # worker processes of the provider-bound runs after the
    # main one (which runs the default: one process per core)
    cpu_latency: float  # the CPU-bound setting: L and C with C/L above what a process carries
    cpu_cap: int
    cpu_jobs: int
    cpu_processes: tuple[int, ...]  # worker processes per CPU-bound run

    @property
    def mode(self) -> str:
        return "full" if self.size == "full" else "quick"

    @property
    def limit(self) -> float:
        """The provider's ceiling on completions per second: C / L."""
        return self.cap / self.latency

    def as_dict(self) -> dict[str, object]:
        shown: dict[str, object] = {"mode": self.mode, **dataclasses.asdict(self)}
        shown["scaling_workers"] = list(self.scaling_workers)
        shown["cpu_processes"] = list(self.cpu_processes)
        shown["workers"] = "one per core"
        shown["jobs"] = self.completion_jobs
        shown["limit_jobs_per_s"] = round(self.limit, 3)
        return shown


# C / L = 40 completions/s in both modes: what a provider allowing 400 tasks at once with
# 10 s generations yields, and a load two shared cores carry beside the simulator and Redis
# (the quick mode compresses time by 1.67, cap and latency alike). The naive design's
# throughput is threads / L, wanq's C / L: the ratio is C / threads = 100 (full), 60 (quick)
# times the ratio of their slot cycles.
FULL = Params(
    size="full",
    submit_lines=100_000,
    latency=10.0,
    cap=400,
    concurrency=4,
    completion_jobs=4_000,  # 10 rounds of the cap
    naive_jobs=32,  # 8 rounds of its threads: a job takes L rounded up to whole seconds
    in_flight_jobs=10_000,
    in_flight_hold=30.0,
    scaling_workers=(1, 2, 4),
    # C/L = 800 jobs/s, more than the machine's cores carry at wanq's CPU per job, so the cap
    # never fills and throughput follows the CPU (at C = 600 one process already held 576 of
    # the 600 slots: the cap and the rounds' tails bounded it, not the cores)
    cpu_latency=2.0,
    cpu_cap=1_600,
    cpu_jobs=4_000,
    cpu_processes=(1, 2, 4),
)
QUICK = dataclasses.replace(
    FULL,
    size="quick",
    submit_lines=5_000,
    latency=6.0,
    cap=240,
    completion_jobs=2_400,
    in_flight_jobs=500,
    in_flight_hold=10.0,
    scaling_workers=(1,),
    cpu_jobs=2_000,
)
TINY = dataclasses.replace(
    QUICK,
    size="tiny",
    submit_lines=300,
    latency=0.5,
    cap=50,
    completion_jobs=200,
    naive_jobs=8,
    in_flight_jobs=100,
    in_flight_hold=2.0,
    scaling_workers=(),
    cpu_latency=0.5,
    cpu_cap=100,
    cpu_jobs=200,
    cpu_processes=(1,),
)
SIZES = {p.size: p for p in (FULL, QUICK, TINY)}
