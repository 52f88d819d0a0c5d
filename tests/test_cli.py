"""The ``wanq`` command as a user runs it: a real process, real Redis, real workers."""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
from pathlib import Path

from ops.sample import lines as sample_lines
from tests.conftest import WORKER_ENV, jobs
from workers import errors, keys

DEMO = Path(__file__).resolve().parent.parent / "ops" / "samples" / "demo.jsonl"


def wanq(*args: str, env: dict[str, str] | None = None, stdin: str | None = None):
    return subprocess.run(
        [sys.executable, "-m", "ops.cli", *args],
        env=env,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=300,
    )


def write_lines(path: Path, lines: list[dict]) -> Path:
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return path


def test_validate_reports_every_line_with_its_code():
    result = wanq("validate", "--json", str(DEMO))
    assert result.returncode == 1
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert [row["line"] for row in rows] == list(range(1, 227))
    bad = {row["custom_id"]: row["code"] for row in rows if not row["valid"]}
    assert len(bad) == 6
    for custom_id, code in bad.items():
        assert custom_id.startswith(f"bad-{code}-")  # the sample names the code it breaks
    assert all(row["code"] is None and row["message"] is None for row in rows if row["valid"])


def test_validate_exit_codes(tmp_path):
    good = write_lines(tmp_path / "good.jsonl", jobs(3))
    assert wanq("validate", str(good)).returncode == 0
    assert wanq("validate", str(tmp_path / "missing.jsonl")).returncode == 2


def test_submit_refuses_a_file_with_invalid_lines_unless_told(tmp_path, redis_url):
    env = {**WORKER_ENV, "WANQ_REDIS_URL": redis_url}
    refused = wanq("submit", str(DEMO), "--batch-id", "demo1", env=env)
    assert refused.returncode == 1
    assert "nothing submitted" in refused.stderr and "001021011" in refused.stderr
    import redis

    client = redis.Redis.from_url(redis_url)
    assert client.dbsize() == 0, "nothing enqueued"

    accepted = wanq("submit", str(DEMO), "--batch-id", "demo1", "--allow-invalid", env=env)
    assert accepted.returncode == 0, accepted.stderr
    assert accepted.stdout.strip() == "demo1"
    assert client.llen(keys.CREATE_QUEUE) == 220

    again = wanq("submit", str(DEMO), "--batch-id", "demo1", "--allow-invalid", env=env)
    assert "0 jobs enqueued, 220 already there" in again.stderr
    assert client.llen(keys.CREATE_QUEUE) == 220, "resubmission adds nothing"


def test_submit_from_stdin_wait_status_results(make_cluster):
    cluster = make_cluster(workers=1)
    env = {**cluster.stack.env, **WORKER_ENV}
    batch = "".join(json.dumps(line) + "\n" for line in jobs(6))
    submitted = wanq("submit", "-", "--wait", "--batch-id", "stdin1", env=env, stdin=batch)
    assert submitted.returncode == 0, submitted.stderr
    assert "succeeded" in submitted.stderr

    status = json.loads(wanq("status", "stdin1", "--json", env=env).stdout)
    assert status["counts"]["succeeded"] == 6 and status["done"]
    assert status["cost_usd"] > 0

    table = wanq("results", "stdin1", "--format", "csv", env=env).stdout
    rows = list(csv.DictReader(io.StringIO(table)))
    assert [row["custom_id"] for row in rows] == [f"job-{i:05d}" for i in range(6)]
    assert all(json.loads(row["outputs"]) and row["state"] == "succeeded" for row in rows)
    assert wanq("status", "no-such-batch", env=env).returncode == 1


def test_run_against_a_configured_cluster_only_submits_and_waits(make_cluster, tmp_path):
    cluster = make_cluster(workers=1)
    env = {**cluster.stack.env, **WORKER_ENV}
    source = write_lines(tmp_path / "b.jsonl", jobs(5))
    out = tmp_path / "results.jsonl"
    result = wanq("run", str(source), "--out", str(out), env=env)
    assert result.returncode == 0, result.stderr
    assert "started" not in result.stderr  # nothing of its own: the cluster was there
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["state"] for r in records] == ["succeeded"] * 5


def test_run_on_one_machine_starts_and_stops_everything(tmp_path):
    source = write_lines(tmp_path / "b.jsonl", list(sample_lines(24, invalid=2)))
    env = {
        "PATH": "/usr/bin:/bin:/usr/sbin:/sbin",
        "HOME": str(tmp_path),
        "WANQ_DATA_DIR": str(tmp_path / "data"),
        "WANQ_POLL_FIRST": "0.5",
        "WANQ_SIM_LATENCY": "0.5",
        "WANQ_SIM_P_500": "0.1",
    }
    result = wanq("run", str(source), "--allow-invalid", env=env)
    assert result.returncode == 0, result.stderr
    cores = len(os.sched_getaffinity(0))  # one worker process per core by default
    for started in ("started redis-server", "started the provider simulator", f"started {cores} "):
        assert started in result.stderr
    assert "22 results written" in result.stderr
    assert errors.EDIT_IMAGES in result.stderr  # the invalid line, reported with its code
    results = list((tmp_path / "data" / "results").glob("*.jsonl"))
    assert len(results) == 1 and len(results[0].read_text().splitlines()) == 22
    assert (tmp_path / "data" / "redis" / "appendonlydir").is_dir(), "AOF on"
    assert not _running_under(tmp_path), "wanq run stops what it started"


def _running_under(directory: Path) -> list[str]:
    found = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:  # the command line names the data dir; every process we start inherits it
                seen = (proc / "cmdline").read_bytes() + (proc / "environ").read_bytes()
            except OSError:
                continue
            if str(directory).encode() in seen and proc.name != str(os.getpid()):
                found.append(seen.split(b"\0")[0].decode(errors="replace"))
    return found


def test_dry_run_estimates_cost_and_groups_invalid_lines():
    result = wanq(
        "submit", "--dry-run", str(DEMO), env={"WANQ_UNIT_PRICE": "0.05", "PATH": "/usr/bin:/bin"}
    )
    assert result.returncode == 1  # some lines are invalid
    assert "226 lines: 220 valid, 6 invalid" in result.stdout
    assert "001021011 x1" in result.stdout and "lines 66" in result.stdout
    from ops.sample import lines as sample_lines
    from workers.pricing import worst_case_images

    images = sum(
        worst_case_images(line["body"])
        for line in sample_lines(226, invalid=6)
        if not line["custom_id"].startswith("bad-")
    )
    assert f"at most {images} images, at most ${images * 0.05:.2f}" in result.stdout
