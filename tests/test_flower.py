"""A real Flower against the test Redis: it lists the workers, the queues with their lengths
and a batch's tasks (arguments are job IDs, never payloads or keys), and refuses requests
without credentials."""

from __future__ import annotations

import sys

import requests

from ops.localstack import free_port, wait_for
from tests.conftest import API_KEY, WORKER_ENV, jobs
from workers import keys

USER, PASSWORD = "ops", "flower-pw-2b7d"


def start_flower(cluster) -> str:
    port = free_port()
    cmd = [
        sys.executable,
        "-m",
        "celery",
        "-A",
        "workers.app",
        "flower",
        f"--port={port}",
        "--address=127.0.0.1",
        f"--basic-auth={USER}:{PASSWORD}",
    ]
    cluster.stack._spawn("flower", cmd, {**cluster.stack.env, **WORKER_ENV})
    url = f"http://127.0.0.1:{port}"
    wait_for(lambda: requests.get(url + "/healthcheck", timeout=2).ok, "flower", 30)
    return url


def test_flower_shows_workers_queues_and_a_batchs_tasks(make_cluster):
    cluster = make_cluster(workers=2, sim_env={"WANQ_SIM_LATENCY": "1"})
    flower = start_flower(cluster)
    auth = (USER, PASSWORD)

    assert requests.get(flower + "/api/workers", timeout=5).status_code == 401
    assert requests.get(flower + "/api/workers", auth=(USER, "wrong"), timeout=5).status_code == 401

    # Task events are pub/sub: Flower sees only what happens once its receiver listens, which
    # can be after its healthcheck answers. A warm-up job proves the receiver is there.
    warm_ups: list[str] = []

    def receiving() -> bool:
        tasks = requests.get(flower + "/api/tasks", auth=auth, timeout=10).json()
        if any(b in (t.get("args") or "") for b in warm_ups for t in tasks.values()):
            return True
        if not warm_ups or cluster.client().status(warm_ups[-1]).done:  # ended unseen: again
            warm_ups.append(cluster.submit(jobs(1, prefix=f"warm{len(warm_ups)}")).batch_id)
        return False

    wait_for(receiving, "flower receiving task events", 60, interval=0.2)
    report = cluster.submit(jobs(12))
    cluster.wait(report.batch_id)

    def workers_listed() -> dict:
        found = requests.get(flower + "/api/workers?refresh=1", auth=auth, timeout=10).json()
        return found if len(found) >= 2 else {}

    workers = wait_for(workers_listed, "workers in flower", 30)
    names = {worker.name for worker in cluster.workers}
    assert {name.split("@")[0] for name in workers} >= names

    queues = requests.get(flower + "/api/queues/length", auth=auth, timeout=10).json()
    lengths = {q["name"]: q["messages"] for q in queues["active_queues"]}
    assert {keys.CREATE_QUEUE, keys.POLL_QUEUE, keys.DELIVER_QUEUE} <= set(lengths)
    assert all(isinstance(n, int) for n in lengths.values())

    def batch_tasks() -> list:
        tasks = requests.get(flower + "/api/tasks", auth=auth, timeout=10).json()
        mine = [t for t in tasks.values() if report.batch_id in (t.get("args") or "")]
        creates = {t["args"] for t in mine if t["name"] == "wanq.create"}
        return mine if len(creates) >= 12 else []

    tasks = wait_for(batch_tasks, "the batch's tasks in flower", 30)
    assert {t["name"] for t in tasks} >= {"wanq.create", "wanq.poll"}
    everything = requests.get(flower + "/api/tasks", auth=auth, timeout=10).text
    everything += requests.get(flower + "/api/workers", auth=auth, timeout=10).text
    for task in tasks:  # (job_id, seq), (job_id,) or ("batch:<id>",): IDs only
        assert task["args"].startswith((f"('{report.batch_id}:", f"('batch:{report.batch_id}'"))
    assert API_KEY not in everything
    assert "wan26_i2i" not in everything, "no request payload in Flower"
