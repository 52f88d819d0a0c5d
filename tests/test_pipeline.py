"""End to end: real Redis, real Celery workers, the simulator over HTTP with non-default
create/status paths, a data-wrapped create answer and a non-standard task-ID field."""

from __future__ import annotations

import json

import requests

from tests.conftest import API_KEY, jobs
from workers import errors, keys


def stream_entries(cluster) -> list[dict]:
    return [json.loads(fields["record"]) for _, fields in cluster.redis.xrange(keys.RESULTS)]


def remote_status(cluster, task_id: str) -> dict:
    url = cluster.stack.provider_url + f"/api/v2/tasks/{task_id}/status"
    answer = requests.get(url, headers={"Authorization": f"Bearer {API_KEY}"}, timeout=5).json()
    return answer.get("data", answer)


def test_both_modes_end_to_end(make_cluster):
    cluster = make_cluster(workers=2)
    lines = jobs(40, interleave_every=2)
    report = cluster.submit(lines)
    assert report.enqueued == 40 and not report.invalid

    final = cluster.wait(report.batch_id)
    assert final.counts["succeeded"] == 40
    store = cluster.client().store
    polls = sum(int(job["polls"]) for job in store.iter_batch_jobs(report.batch_id))
    assert polls == cluster.sim("/_sim/stats")["status_calls"], (
        "every poll is counted"
    )  # before the test's own status calls below
    assert all(job["first_poll_at"] for job in store.iter_batch_jobs(report.batch_id))

    records = list(cluster.client().results(report.batch_id))
    assert [r["custom_id"] for r in records] == [line["custom_id"] for line in lines]
    interleaved = 0
    for line, record in zip(lines, records, strict=True):
        remote = remote_status(cluster, record["remote_task_id"])
        expected = [
            {"type": "image", "url": item["url"]}
            if item["type"] == "image"
            else {"type": "text", "text": item["text"]}
            for item in remote["output"][0]["content"]
        ]
        assert record["outputs"] == expected  # the provider's order, texts and images
        assert record["usage"] == remote["usage"]
        params = line["body"]["parameters"]
        if params.get("enable_interleave"):
            interleaved += 1
            assert any(item["type"] == "text" for item in record["outputs"])
        else:
            assert record["usage"]["image_count"] == params.get("n", 1)
    assert interleaved == 20

    total_cost = sum(float(r["usage"]["cost"]) for r in records)
    assert abs(final.cost - total_cost) < 1e-6
    assert len(stream_entries(cluster)) == 40


def test_transient_faults_are_retried(make_cluster):
    faults = {
        "WANQ_SIM_P_500": "0.15",
        "WANQ_SIM_P_429": "0.15",
        "WANQ_SIM_RETRY_AFTER": "1",
        "WANQ_SIM_P_BROKEN": "0.1",
        "WANQ_SIM_P_SLOW": "0.05",
        "WANQ_SIM_SLOW_SECONDS": "1",
    }
    cluster = make_cluster(
        workers=2,
        sim_env=faults,
        worker_env={"WANQ_MAX_ATTEMPTS": "12", "WANQ_POLL_MAX_ERRORS": "20"},
    )
    report = cluster.submit(jobs(60))
    final = cluster.wait(report.batch_id, timeout=180)

    stats = cluster.sim("/_sim/stats")
    assert stats["faults"]["5xx"] > 0 and stats["faults"]["429"] > 0
    assert stats["faults"]["broken"] > 0
    assert final.counts["succeeded"] == 60
    records = list(cluster.client().results(report.batch_id))
    assert max(r["attempts"] for r in records) > 1  # some creates were retried


def test_retries_run_out_into_contract_codes(make_cluster):
    cluster = make_cluster(
        workers=1, sim_env={"WANQ_SIM_P_500": "1"}, worker_env={"WANQ_MAX_ATTEMPTS": "3"}
    )
    report = cluster.submit(jobs(5))
    final = cluster.wait(report.batch_id)
    assert final.counts["failed"] == 5
    assert final.failures == {errors.HTTP_ERROR: 5}
    record = next(cluster.client().results(report.batch_id))
    assert record["attempts"] == 3
    assert record["error"]["code"] == errors.HTTP_ERROR
    assert record["error"]["remote"]["http_status"] in (500, 502, 503)


def test_unreadable_status_answers_end_in_001021096(make_cluster):
    cluster = make_cluster(
        workers=1, sim_env={"WANQ_SIM_P_BROKEN": "1"}, worker_env={"WANQ_POLL_MAX_ERRORS": "3"}
    )
    report = cluster.submit(jobs(3))
    final = cluster.wait(report.batch_id)
    assert final.failures == {errors.RESULT_PARSING: 3}


def test_generation_failures_keep_the_remote_error(make_cluster):
    cluster = make_cluster(workers=1, sim_env={"WANQ_SIM_P_FAIL": "1"})
    report = cluster.submit(jobs(4))
    cluster.wait(report.batch_id)
    for record in cluster.client().results(report.batch_id):
        assert record["state"] == "failed"
        assert record["error"]["code"] == errors.GENERATION_ERROR
        assert record["error"]["remote"] == {
            "code": "001021095",
            "message": "Internal generation error",
        }
        assert record["remote_task_id"]
