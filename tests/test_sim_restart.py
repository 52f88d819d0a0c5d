"""The local simulator keeps its tasks across a restart of the stack, so an interrupted
``wanq run`` run again follows the jobs that were in flight (issue 15), instead of failing
them with 001021098 (HTTP 404)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading

import redis
import requests

from ops.localstack import LocalStack, wait_for
from ops.simulator import STATE_FILE_VARIABLE
from tests.conftest import SIM_ENV, WORKER_ENV, jobs
from tests.test_cli import wanq, write_lines
from workers import errors, keys


def test_a_restarted_simulator_still_answers_for_its_tasks(tmp_path):
    state = {STATE_FILE_VARIABLE: str(tmp_path / "sim" / "tasks.json"), "WANQ_SIM_LATENCY": "2"}
    first = LocalStack(tmp_path / "a")
    url = first.start_simulator(state)
    created = requests.post(
        url + "/model/v1/generation",
        json=jobs(2)[1]["body"],
        headers={"Authorization": "Bearer k"},
        timeout=5,
    )
    created.raise_for_status()
    task_id = created.json()["task_id"]
    first.stop()  # SIGTERM: the simulator writes its tasks

    second = LocalStack(tmp_path / "b")
    try:
        url = second.start_simulator(state)
        status_url = f"{url}/model/v1/generation/{task_id}"

        def done():
            answer = requests.get(status_url, headers={"Authorization": "Bearer k"}, timeout=5)
            assert answer.status_code == 200, answer.text  # known, not 404
            return answer.json()["status"] == "completed" and answer.json()

        finished = wait_for(done, "the task to complete after the restart", 30)
        assert finished["output"][0]["jobId"] == task_id
    finally:
        second.stop()


def test_an_interrupted_run_run_again_finishes_every_job(tmp_path):
    data = tmp_path / "data"
    env = {
        **os.environ,
        **WORKER_ENV,
        **SIM_ENV,
        "WANQ_DATA_DIR": str(data),
        "WANQ_REDIS_URL": "",
        "WANQ_PROVIDER_URL": "",
        "WANQ_SIM_LATENCY": "4",
    }
    batch = write_lines(tmp_path / "b.jsonl", jobs(6))
    run = subprocess.Popen(
        [sys.executable, "-m", "ops.cli", "run", str(batch), "--sim", "--workers", "1"],
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    redis_url = None
    for line in run.stderr:
        found = re.search(r"started redis-server \(AOF on\) at (\S+)", line)
        if found:
            redis_url = found.group(1)
            break
    assert redis_url
    rest: list[str] = []  # keep reading, so the run never blocks on a full pipe
    reader = threading.Thread(target=lambda: rest.extend(run.stderr), daemon=True)
    reader.start()
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    batch_id = wait_for(lambda: client.zrange(keys.BATCHES, 0, 0), "the batch", 60)[0]

    def in_flight() -> bool:
        states = [client.hget(keys.job(f"{batch_id}:{j['custom_id']}"), "state") for j in jobs(6)]
        return "running" in states

    wait_for(in_flight, "a job in flight", 60)
    run.send_signal(signal.SIGINT)
    code = run.wait(60)
    reader.join(10)
    said = "".join(rest)
    assert code == 130, said
    assert f"wanq run {batch} --batch-id {batch_id}" in said
    assert "followed again" in said

    again = wanq("run", str(batch), "--batch-id", batch_id, "--sim", "--workers", "1", env=env)
    assert again.returncode == 0, again.stderr
    records = [
        json.loads(line)
        for line in (data / "results" / f"{batch_id}.jsonl").read_text().splitlines()
    ]
    assert [r["state"] for r in records] == ["succeeded"] * 6, [r["error"] for r in records]
    assert all((r["error"] or {}).get("code") != errors.STATUS_CHECK for r in records)
