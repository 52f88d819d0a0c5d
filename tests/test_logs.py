"""Worker logs in JSON: every line parses, every line about a job names its batch, job and
remote task, and no line carries the key or a request payload."""

from __future__ import annotations

import json
import re

from tests.conftest import API_KEY, jobs

POLL_TASK = re.compile(r"Task wanq\.poll\[([^\]]+)\]")
OF_SEVERAL = re.compile(r"Task wanq\.poll\[([^\]]+)\] succeeded in \S+: '[\w ]+:\d")


def polls_of_several(records: list[dict]) -> list[dict]:
    """Celery's lines about poll tasks that carried several jobs' polls (workers.pump: such a
    task returns counts, 'polling:3 finished:1')."""
    ids = {m.group(1) for r in records if (m := OF_SEVERAL.search(r["message"]))}
    return [r for r in records if (m := POLL_TASK.search(r["message"])) and m.group(1) in ids]


def test_json_logs_name_the_job_on_every_job_line(make_cluster):
    cluster = make_cluster(
        workers=1,
        worker_env={"WANQ_LOG_FORMAT": "json"},
        sim_env={"WANQ_SIM_P_FAIL": "0.3", "WANQ_SIM_P_500": "0.2"},
    )
    report = cluster.submit(jobs(20))
    final = cluster.wait(report.batch_id)
    assert final.ended == 20

    text = "".join(w.log.read_text() for w in cluster.workers)
    records = [json.loads(line) for line in text.splitlines() if line.startswith("{")]
    assert len(records) > 20
    several = polls_of_several(records)  # the pump's: polls due together, in one message
    assert several and not any(r.get("job_id") for r in several), "no one job named for several"
    records = [r for r in records if r not in several]
    about_jobs = [r for r in records if r["name"] in ("celery.worker.strategy", "wanq.finalize")]
    assert about_jobs and all(r.get("job_id") for r in about_jobs), "job lines name the job"
    traced = [r for r in records if r["name"] == "celery.app.trace"]
    assert traced and all(r.get("job_id") for r in traced), "Celery's task lines too"
    ended = [r for r in records if r["message"].startswith("job ")]
    assert len(ended) == 20, "one line per ended job"
    for record in ended:
        assert record["batch_id"] == report.batch_id
        assert record["job_id"].startswith(report.batch_id + ":")
        assert record["remote_task_id"]
    created = [r for r in records if r["message"].startswith("remote task created")]
    assert {r["job_id"] for r in created} == {r["job_id"] for r in ended}
    assert all(r["remote_task_id"] for r in created)
    failures = [r for r in ended if "failed" in r["message"]]
    assert failures and all("001021095" in r["message"] for r in failures)
    assert API_KEY not in text
    assert "wan26_i2i" not in text, "no request payload in the logs"


def test_text_logs_carry_the_ids_too(make_cluster):
    cluster = make_cluster(workers=1)
    report = cluster.submit(jobs(3))
    cluster.wait(report.batch_id)
    text = "".join(w.log.read_text() for w in cluster.workers)
    ended = [line for line in text.splitlines() if "job succeeded" in line]
    assert len(ended) == 3
    for line in ended:
        assert f"batch_id={report.batch_id}" in line and "remote_task_id=sim-" in line
