"""`wanq worker` (workers/processes.py): one Celery worker process per core by default."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from ops.localstack import wait_for
from tests.conftest import WORKER_ENV
from workers import config, processes


def test_the_default_is_one_process_per_core_and_the_setting_overrides_it():
    assert processes.count(config.load({})) == len(os.sched_getaffinity(0))
    assert processes.count(config.load({"WANQ_WORKER_PROCESSES": "3"})) == 3


def test_each_process_gets_a_hostname_of_its_own_and_the_options():
    options = ["-Q", "wanq.poll", "-n", "poll@%h", "--loglevel", "INFO"]
    found = processes.commands(2, options)
    assert [c[c.index("-n") + 1] for c in found] == ["poll-1@%h", "poll-2@%h"]
    assert all(c[-4:] == ["-Q", "wanq.poll", "--loglevel", "INFO"] for c in found)
    assert all(c[1:6] == ["-m", "celery", "-A", "workers.app", "worker"] for c in found)
    [single] = processes.commands(1, ["--hostname", "x@h"])
    assert single[-2:] == ["-n", "x@h"]


def test_wanq_worker_starts_the_processes_and_a_sigterm_stops_them_all(redis_url, tmp_path: Path):
    env = {**os.environ, **WORKER_ENV, "WANQ_REDIS_URL": redis_url, "WANQ_WORKER_PROCESSES": "2"}
    log = tmp_path / "worker.log"
    with open(log, "wb") as out:
        launcher = subprocess.Popen(
            [sys.executable, "-m", "ops.cli", "worker", "-n", "t@%h", "--loglevel", "INFO"],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # a failed test kills the group: no orphans
        )
    try:
        wait_for(lambda: log.read_text().count(" ready.") == 2, "two ready workers", 90)
        text = log.read_text()
        assert "t-1@" in text and "t-2@" in text
        launcher.send_signal(signal.SIGTERM)
        assert launcher.wait(timeout=60) == 0
    finally:
        if launcher.poll() is None:
            os.killpg(launcher.pid, signal.SIGKILL)
    group = subprocess.run(["pgrep", "-g", str(launcher.pid)], capture_output=True, text=True)
    assert group.stdout.strip() == ""  # both Celery processes ended with it
