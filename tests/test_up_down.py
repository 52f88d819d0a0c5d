"""``wanq up`` / ``wanq down``: a local cluster that outlives its command, with pid files,
logs and Flower, stopped cleanly; its Redis keeps the jobs across a down and an up."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import requests

from ops.localstack import (
    LocalStack,
    alive,
    free_port,
    running_stack,
    stop_recorded,
    wait_for,
)
from tests.conftest import SIM_ENV, WORKER_ENV, jobs
from tests.test_cli import wanq, write_lines


def test_up_runs_a_batch_and_down_stops_everything(tmp_path):
    redis_port, flower_port, sim_port = free_port(), free_port(), free_port()
    env = {
        **os.environ,
        **WORKER_ENV,
        **SIM_ENV,
        "WANQ_DATA_DIR": str(tmp_path / "data"),
        "WANQ_PROVIDER_URL": f"http://127.0.0.1:{sim_port}",
        "WANQ_REDIS_URL": "",
    }
    up = ["up", "--workers", "1", "--sim", f"--redis-port={redis_port}"]
    started = wanq(*up, f"--flower-port={flower_port}", env=env)
    try:
        assert started.returncode == 0, started.stderr
        assert f"http://127.0.0.1:{flower_port}" in started.stdout
        stack = running_stack(tmp_path / "data")
        assert stack is not None
        names = [p["name"] for p in stack["processes"]]
        assert names == ["redis", "simulator", "flower", "wanq1"]
        run_dir = tmp_path / "data" / "run"
        for entry in stack["processes"]:
            assert int((run_dir / f"{entry['name']}.pid").read_text()) == entry["pid"]
            assert Path(entry["log"]).exists()
        assert requests.get(f"http://127.0.0.1:{flower_port}/healthcheck", timeout=5).ok
        assert wanq(*up, env=env).returncode != 0, "a second up refuses"

        # wanq run finds the running stack and starts nothing of its own
        batch = write_lines(tmp_path / "b.jsonl", jobs(6))
        ran = wanq("run", str(batch), "--batch-id", "upb", "--timeout", "120", env=env)
        assert ran.returncode == 0, ran.stderr
        assert "using the stack `wanq up` started" in ran.stderr
        assert "started redis-server" not in ran.stderr
        status = json.loads(wanq("status", "upb", "--json", env=_with_redis(env, stack)).stdout)
        assert status["counts"]["succeeded"] == 6
    finally:
        stopped = wanq("down", env=env)
    assert stopped.returncode == 0, stopped.stderr
    assert "wanq1" in stopped.stdout and "redis" in stopped.stdout
    assert not any(alive(p["pid"]) for p in stack["processes"])
    assert list((tmp_path / "data" / "run").iterdir()) == []
    assert "nothing was running" in wanq("down", env=env).stdout

    # The jobs survive a down and an up (AOF): Redis comes back with the batch in it.
    again = wanq(
        "up",
        "--workers",
        "0",
        f"--redis-port={redis_port}",
        f"--flower-port={flower_port}",
        env=env,
    )
    try:
        assert again.returncode == 0, again.stderr
        listed = wanq("batches", env=_with_redis(env, stack))
        assert "upb" in listed.stdout
    finally:
        wanq("down", env=env)


def test_down_kills_what_ignores_sigterm(tmp_path):
    """A process that will not stop on SIGTERM is killed after the grace period."""
    stack = LocalStack(tmp_path, detached=True)
    stubborn = (
        "import signal,time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
        "print('ignoring SIGTERM', flush=True); time.sleep(60)"
    )
    process = stack._spawn("stubborn", [sys.executable, "-c", stubborn])
    wait_for(lambda: "ignoring" in process.log.read_text(), "the stubborn process")
    stack.record()
    assert stop_recorded(tmp_path, timeout=1) == ["stubborn"]
    process.popen.wait(5)
    assert process.popen.returncode == -signal.SIGKILL


def _with_redis(env: dict[str, str], stack: dict) -> dict[str, str]:
    return {**env, "WANQ_REDIS_URL": stack["redis_url"]}


def test_wanq_run_stops_what_it_started_when_terminated(tmp_path):
    """SIGTERM (a closed terminal, a CI timeout) must not leave Redis, workers, Flower or the
    simulator behind."""
    data = tmp_path / "data"
    env = {
        **os.environ,
        **WORKER_ENV,
        "WANQ_DATA_DIR": str(data),
        "WANQ_REDIS_URL": "",
        "WANQ_PROVIDER_URL": "",
        "WANQ_SIM_LATENCY": "30",
    }
    batch = write_lines(tmp_path / "slow.jsonl", jobs(5))
    run = subprocess.Popen(
        [sys.executable, "-m", "ops.cli", "run", str(batch), "--sim", "--workers", "1"],
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    seen = []
    for line in run.stderr:  # until Flower's URL: everything has been started by then
        seen.append(line)
        if "Flower" in line:
            break
    started = spawned_under(data)
    assert len(started) >= 4, seen  # redis, simulator, flower, supervisor + worker
    run.send_signal(signal.SIGTERM)
    assert run.wait(60) == 128 + signal.SIGTERM
    wait_for(lambda: not [p for p in started if alive(p)], "wanq run's processes to end", 30)


def spawned_under(data_dir: Path) -> list[int]:
    """Processes whose environment names this data directory: what wanq run started."""
    marker = f"WANQ_DATA_DIR={data_dir}".encode()
    pids = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit() and int(proc.name) != os.getpid():
            try:
                if marker in (proc / "environ").read_bytes().split(b"\0"):
                    pids.append(int(proc.name))
            except OSError:
                continue
    return pids
