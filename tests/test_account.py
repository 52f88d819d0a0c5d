"""401/403 are account problems: creation pauses cluster-wide, jobs wait (never fail), and a
probe resumes creation by itself once the account works again."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from ops.localstack import wait_for
from tests.conftest import jobs


@pytest.mark.parametrize(
    ("switch", "http_status", "plain"),
    [("key_revoked", 401, "API key"), ("balance_exhausted", 403, "balance")],
)
def test_account_problem_pauses_then_resumes(make_cluster, switch, http_status, plain):
    cluster = make_cluster(workers=2, sim_env={f"WANQ_SIM_{switch.upper()}": "1"})
    report = cluster.submit(jobs(20))
    client = cluster.client()

    def all_parked() -> bool:
        status = client.status(report.batch_id)
        return status.account_block and status.counts["waiting"] == 20

    wait_for(all_parked, "every job parked", 60)
    status = client.status(report.batch_id)
    assert status.counts["failed"] == 0
    assert status.account_block["http_status"] == str(http_status)

    shown = subprocess.run(
        [sys.executable, "-m", "ops.cli", "status", report.batch_id, "--json"],
        env={**cluster.stack.env, "WANQ_REDIS_URL": cluster.redis_url},
        capture_output=True,
        text=True,
        check=True,
    )
    account = json.loads(shown.stdout)["account"]
    assert plain in account["reason"]

    cluster.sim("/_sim/config", {switch: False})
    final = cluster.wait(report.batch_id, timeout=90)
    assert final.counts["succeeded"] == 20
    assert not client.status(report.batch_id).account_block
    assert cluster.sim("/_sim/stats")["tasks_total"] == 20
