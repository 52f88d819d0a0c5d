"""Every command answers like a finished product (issue 15): a plain line and the README's
exit code for a Redis that is not there, a setting that is not accepted, an unknown batch, a
refused file; never a traceback. Real ``wanq`` processes against a real redis-server."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import redis

from ops.localstack import free_port, wait_for
from producers import exits
from tests import test_cli as cli_test
from tests.conftest import WORKER_ENV, jobs
from tests.test_cli import write_lines
from workers import account, errors, keys

UNREACHABLE = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there


def wanq(*args: str, env: dict[str, str] | None = None, stdin: str | None = None):
    """``wanq ARGS`` with the test workers' settings on top of this environment."""
    return cli_test.wanq(*args, env={**os.environ, **WORKER_ENV, **(env or {})}, stdin=stdin)


def plain(result) -> list[str]:
    """The stderr lines of a command, checked to hold no traceback."""
    assert "Traceback" not in result.stderr, result.stderr
    assert "Traceback" not in result.stdout
    return [line for line in result.stderr.splitlines() if line.strip()]


@pytest.fixture
def batch_file(tmp_path: Path) -> Path:
    return write_lines(tmp_path / "b.jsonl", jobs(3))


BATCH_COMMANDS = [
    ("status", "b1"),
    ("status", "b1", "--json"),
    ("watch", "b1"),
    ("results", "b1"),
    ("cancel", "b1"),
    ("pause", "b1"),
    ("resume", "b1"),
    ("retry", "b1"),
    ("archive", "b1"),
    ("batches",),
]


@pytest.mark.parametrize("args", [*BATCH_COMMANDS, ("submit", "FILE"), ("run", "FILE")])
def test_every_command_against_an_unreachable_redis_is_one_line_and_exit_4(args, batch_file):
    args = tuple(str(batch_file) if a == "FILE" else a for a in args)
    extra = ("--no-sim",) if args[0] == "run" else ()
    result = wanq(*args, *extra, env={"WANQ_REDIS_URL": UNREACHABLE})
    lines = plain(result)
    assert result.returncode == exits.UNREACHABLE, result.stderr
    assert f"cannot reach Redis at {UNREACHABLE}" in lines[-1]
    assert errors.REDIS_UNREACHABLE in lines[-1]


def test_doctor_against_an_unreachable_redis_fails_in_lines():
    result = wanq("doctor", "--worker-timeout", "1", env={"WANQ_REDIS_URL": UNREACHABLE})
    plain(result)
    assert result.returncode == 1
    assert "FAIL" in result.stdout and "cannot reach Redis" in result.stdout


BAD_SETTINGS = [
    ("WANQ_UNIT_PRICE", "abc", "a number >= 0"),
    ("WANQ_UNIT_PRICE", "-1", "a number >= 0"),
    ("WANQ_MAX_IN_FLIGHT", "-3", "an integer >= 0"),
    ("WANQ_CONCURRENCY", "0", "an integer >= 1"),
    ("WANQ_REDIS_URL", "htp://x", "a redis://"),
    ("WANQ_MAX_COUNTDOWN", "100", "at most half of WANQ_VISIBILITY_TIMEOUT"),
]


@pytest.mark.parametrize(("name", "value", "accepts"), BAD_SETTINGS)
@pytest.mark.parametrize(
    "args", [("submit", "FILE", "--dry-run"), ("status", "b1"), ("batches",), ("up",), ("down",)]
)
def test_each_bad_setting_is_one_line_naming_it_and_exit_3(name, value, accepts, args, batch_file):
    env = {name: value}
    if name == "WANQ_MAX_COUNTDOWN":
        env["WANQ_VISIBILITY_TIMEOUT"] = "150"
    args = tuple(str(batch_file) if a == "FILE" else a for a in args)
    result = wanq(*args, env=env)
    lines = plain(result)
    assert result.returncode == exits.CONFIG, result.stderr
    assert len(lines) == 1 and accepts in lines[0]
    assert name in lines[0] and errors.CONFIG in lines[0]


@pytest.mark.parametrize(("name", "value", "accepts"), BAD_SETTINGS)
def test_doctor_reports_a_bad_setting_as_a_fail_line(name, value, accepts):
    env = {name: value, "WANQ_VISIBILITY_TIMEOUT": "150"} if "COUNTDOWN" in name else {name: value}
    result = wanq("doctor", "--json", env=env)
    plain(result)
    assert result.returncode == 1
    checks = [json.loads(line) for line in result.stdout.splitlines()]
    assert checks == [{"name": "configuration", "verdict": "fail", "detail": checks[0]["detail"]}]
    assert name in checks[0]["detail"] and accepts in checks[0]["detail"]


@pytest.mark.parametrize("args", BATCH_COMMANDS[:-1])
def test_an_unknown_batch_is_answered_the_same_everywhere(args, redis_url):
    result = wanq(*args[:1], "nosuchbatch", *args[2:], env={"WANQ_REDIS_URL": redis_url})
    lines = plain(result)
    assert result.returncode == exits.REFUSED, result.stderr
    assert lines == ["no batch 'nosuchbatch'"]
    assert result.stdout == ""


def test_results_state_choices_are_checked(redis_url, batch_file):
    env = {"WANQ_REDIS_URL": redis_url}
    assert wanq("submit", str(batch_file), "--batch-id", "s1", env=env).returncode == 0
    result = wanq("results", "s1", "--state", "bogus", env=env)
    plain(result)
    assert result.returncode == exits.UNREADABLE  # a usage error, as click gives them
    assert "'bogus' is not one of" in result.stderr and "succeeded" in result.stderr
    queued = wanq("results", "s1", "--state", "queued", env=env)
    assert len(queued.stdout.splitlines()) == 3


def test_an_empty_file_or_one_of_only_invalid_lines_is_refused(redis_url, tmp_path):
    env = {"WANQ_REDIS_URL": redis_url}
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n\n")
    bad = write_lines(tmp_path / "bad.jsonl", [{"custom_id": "x", "body": {"model": "nope"}}])
    for args in ((str(empty),), (str(empty), "--allow-invalid"), (str(bad), "--allow-invalid")):
        result = wanq("submit", *args, env=env)
        lines = plain(result)
        assert result.returncode == exits.REFUSED, (args, result.stderr)
        assert errors.BATCH_EMPTY in lines[-1] and "nothing submitted" in lines[-1]
    assert redis.Redis.from_url(redis_url).dbsize() == 0, "no batch that would never end"


def test_a_changed_line_under_an_existing_custom_id_is_reported_and_refused(redis_url, tmp_path):
    env = {"WANQ_REDIS_URL": redis_url}
    lines = jobs(4)
    first = write_lines(tmp_path / "first.jsonl", lines)
    assert wanq("submit", str(first), "--batch-id", "c1", env=env).returncode == 0

    same = wanq("submit", str(first), "--batch-id", "c1", env=env)
    assert same.returncode == 0 and "0 jobs enqueued, 4 already there" in same.stderr

    changed = [dict(line) for line in lines]
    changed[2] = {**changed[2], "body": {**changed[2]["body"], "parameters": {"seed": 99}}}
    second = write_lines(tmp_path / "second.jsonl", [*changed, *jobs(1, prefix="new")])
    refused = wanq("submit", str(second), "--batch-id", "c1", env=env)
    said = plain(refused)
    assert refused.returncode == exits.REFUSED
    assert any(
        line.startswith("line 3 job-00002") and errors.CUSTOM_ID_CHANGED in line for line in said
    )
    assert "1 lines changed" in said[-1] and "--ignore-changed" in said[-1]
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    assert client.hget(keys.batch("c1"), "total") == "4", "nothing enqueued, not even the new line"

    kept = wanq("submit", str(second), "--batch-id", "c1", "--ignore-changed", env=env)
    assert kept.returncode == 0, kept.stderr
    assert "1 jobs enqueued, 4 already there" in kept.stderr
    assert "stored requests were kept" in kept.stderr
    stored = json.loads(client.get(keys.payload(keys.job_id("c1", "job-00002"))))
    assert stored == lines[2]["body"] or "seed" not in json.dumps(stored.get("parameters", {}))


def test_the_python_api_raises_its_own_errors(redis_url, tmp_path):
    from producers.api import BatchNotFound, SubmissionRefused, Wanq
    from workers import config

    client = Wanq(config.load({**WORKER_ENV, "WANQ_REDIS_URL": redis_url}))
    bad = write_lines(tmp_path / "bad.jsonl", [*jobs(1), {"custom_id": "x", "body": {}}])
    with pytest.raises(SubmissionRefused) as refused:
        client.submit(bad)
    assert refused.value.code == errors.BATCH_INVALID
    assert [line.line for line in refused.value.report.invalid] == [2]
    with pytest.raises(BatchNotFound) as missing:
        client.wait("nosuchbatch")
    assert isinstance(missing.value, KeyError) and missing.value.code == errors.BATCH_NOT_FOUND
    with pytest.raises(BatchNotFound):
        next(iter(client.results("nosuchbatch")))


def test_resume_and_status_say_a_budget_stop_still_holds(redis_url, batch_file):
    env = {"WANQ_REDIS_URL": redis_url}
    submitted = wanq("submit", str(batch_file), "--batch-id", "m1", "--max-cost", "0.01", env=env)
    assert submitted.returncode == 0, submitted.stderr
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    client.hset(keys.batch("m1"), mapping={"state": "budget", "cost_micros": 9000})

    status = wanq("status", "m1", env=env)
    assert "Creation stopped by the budget" in status.stdout
    assert "wanq resume m1 --max-cost HIGHER" in status.stdout
    notes = json.loads(wanq("status", "m1", "--json", env=env).stdout)["notes"]
    assert any("--max-cost HIGHER" in note for note in notes)

    resumed = wanq("resume", "m1", env=env)
    plain(resumed)
    assert resumed.returncode == 0
    assert "the budget cap $0.0100 still holds" in resumed.stderr
    assert "wanq resume m1 --max-cost HIGHER" in resumed.stderr

    higher = wanq("resume", "m1", "--max-cost", "5", env=env)
    assert higher.returncode == 0 and "still holds" not in higher.stderr


def test_batches_shows_an_account_block(redis_url, batch_file):
    env = {"WANQ_REDIS_URL": redis_url}
    assert wanq("submit", str(batch_file), "--batch-id", "a1", env=env).returncode == 0
    account.block(redis.Redis.from_url(redis_url, decode_responses=True), 401, "API key rejected")
    listed = wanq("batches", env=env)
    assert listed.returncode == 0
    assert "blocked: API key rejected" in " ".join(listed.stdout.split())


def test_validate_writes_its_report_to_stdout(tmp_path):
    source = write_lines(tmp_path / "v.jsonl", [*jobs(1), {"custom_id": "x", "body": {}}])
    result = wanq("validate", str(source))
    assert result.returncode == exits.REFUSED
    assert result.stdout.splitlines()[-1] == "1 valid, 1 invalid"
    assert f"line 2 x: [{errors.MODEL}]" in result.stdout
    assert "line 2" not in result.stderr


def test_submit_probes_image_urls_when_asked(redis_url, tmp_path):
    line = jobs(2)[1]  # an edit: text, then images
    gone = f"http://127.0.0.1:{free_port()}/gone.png"
    line["body"]["input"]["messages"][0]["content"][1:] = [{"image": gone}]
    source = write_lines(tmp_path / "p.jsonl", [line])
    env = {"WANQ_REDIS_URL": redis_url}
    probed = wanq("submit", str(source), "--probe", "--dry-run", env=env)
    assert probed.returncode == exits.REFUSED and errors.IMAGE_PROBE in probed.stdout
    refused = wanq("submit", str(source), "--probe", env=env)
    assert refused.returncode == exits.REFUSED and errors.IMAGE_PROBE in refused.stderr
    assert wanq("submit", str(source), env=env).returncode == 0  # not probed: accepted


def test_an_interrupted_run_prints_the_batch_and_how_to_resume(redis_url, tmp_path, batch_file):
    """No workers listen, so the run waits; Ctrl-C (SIGINT) then says how to go on."""
    env = {**os.environ, **WORKER_ENV, "WANQ_REDIS_URL": redis_url, "WANQ_DATA_DIR": str(tmp_path)}
    client = redis.Redis.from_url(redis_url, decode_responses=True)

    def submitted(_pid: int) -> bool:
        batch = client.zrange(keys.BATCHES, 0, 0)
        return bool(batch) and client.hget(keys.batch(batch[0]), "total") == "3"

    code, stderr = interrupt(("run", str(batch_file), "--no-sim"), env, submitted)
    batch_id = client.zrange(keys.BATCHES, 0, 0)[0]
    assert code == exits.INTERRUPTED, stderr
    assert "Traceback" not in stderr
    assert f"batch {batch_id} is kept in Redis" in stderr
    assert f"wanq run {batch_file} --batch-id {batch_id}" in stderr


def test_down_does_not_wait_on_workers_once_redis_has_died(tmp_path):
    """Issue 15: `wanq down` took 32 s when Redis had died (workers spent the whole grace
    period reconnecting). Now it sees Redis is gone and gives them a few seconds."""
    from ops.localstack import alive, running_stack

    env = {"WANQ_DATA_DIR": str(tmp_path / "data"), "WANQ_REDIS_URL": ""}
    up = ("up", "--workers", "1", f"--redis-port={free_port()}", f"--flower-port={free_port()}")
    started = wanq(*up, env=env)
    stack = running_stack(tmp_path / "data")
    try:
        assert started.returncode == 0, started.stderr
        redis_pid = next(p["pid"] for p in stack["processes"] if p["name"] == "redis")
        os.killpg(redis_pid, signal.SIGKILL)
        wait_for(lambda: not alive(redis_pid), "redis gone")
    finally:
        stopped = wanq("down", env=env)
    plain(stopped)
    assert stopped.returncode == 0
    assert "Redis is not answering" in stopped.stderr
    assert not any(alive(p["pid"]) for p in stack["processes"])


def test_ctrl_c_in_any_command_is_exit_130_without_a_traceback(redis_url, batch_file):
    env = {**os.environ, **WORKER_ENV, "WANQ_REDIS_URL": redis_url}
    assert wanq("submit", str(batch_file), "--batch-id", "w1", env=env).returncode == 0
    code, stderr = interrupt(("watch", "w1"), env, _watching)
    assert code == exits.INTERRUPTED, stderr
    assert "Traceback" not in stderr and "interrupted" in stderr


def _watching(pid: int) -> bool:
    """The command has imported its way to the watch loop: it holds a Redis connection."""
    return any(
        "socket" in os.readlink(f"/proc/{pid}/fd/{fd}") for fd in os.listdir(f"/proc/{pid}/fd")
    )


def test_a_run_past_its_timeout_says_so_and_how_to_go_on(redis_url, batch_file):
    """No workers listen: the run gives up after --timeout, in words, not a traceback."""
    env = {"WANQ_REDIS_URL": redis_url}
    result = wanq("run", str(batch_file), "--no-sim", "--batch-id", "t1", "--timeout", "1", env=env)
    plain(result)
    assert result.returncode == exits.REFUSED
    assert "batch t1 not finished after --timeout 1 s" in result.stderr
    assert f"wanq run {batch_file} --batch-id t1" in result.stderr


def test_a_bad_simulator_setting_is_one_line_naming_it():
    result = wanq("sim", "--port", "0", env={"WANQ_SIM_LATENCY": "abc"})
    lines = plain(result)
    assert result.returncode == exits.CONFIG
    assert len(lines) == 1 and lines[0].startswith("WANQ_SIM_LATENCY: ")


def interrupt(args: tuple[str, ...], env: dict[str, str], ready) -> tuple[int, str]:
    """Run ``wanq ARGS``, SIGINT it once ``ready(pid)`` holds (polled); (code, stderr)."""
    process = subprocess.Popen(
        [sys.executable, "-m", "ops.cli", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_for(lambda: ready(process.pid), f"wanq {args[0]} under way", 60)
        process.send_signal(signal.SIGINT)
        _, stderr = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
    return process.returncode, stderr
