"""A worker whose clock runs ahead (libfaketime) makes no duplicate remote task: decisions
that compare times across hosts use Redis's clock (claim.lua's TIME).

The skew (20 s) is ten times the sweeper's grace and above the sweeper lease's TTL (15 s):
any of them compared against the skewed clock would show. It is also a floor on the test's
time: the other worker holds the skewed worker's countdown messages (their ETA is in its
future) until the skew has passed."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.test_batches import edit_jobs

SKEW = 20  # seconds: above every grace, TTL and countdown of the test's settings
FAKETIME = Path("/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1")


@pytest.mark.skipif(not FAKETIME.exists(), reason="libfaketime (Debian faketime) not installed")
def test_a_worker_whose_clock_runs_ahead_creates_nothing_twice(make_cluster):
    cluster = make_cluster(workers=0, sim_env={"WANQ_SIM_LATENCY": "1"})
    skewed = {"LD_PRELOAD": str(FAKETIME), "FAKETIME": f"+{SKEW}s", "WANQ_SWEEP_GRACE": "2"}
    cluster.start_workers(1, skewed)  # first: it takes the sweeper's lease
    cluster.start_workers(1, {"WANQ_SWEEP_GRACE": "2"})
    skew = cluster.workers[0].log.read_text(errors="replace")
    assert "ready." in skew
    report = cluster.submit(edit_jobs(20))
    final = cluster.wait(report.batch_id, timeout=240)
    stats = cluster.sim("/_sim/stats")
    assert final.counts["succeeded"] == 20
    assert stats["tasks_total"] == 20, "no remote task was created twice"
    assert final.duplicates_possible == 0
