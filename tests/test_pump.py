"""The poll pump (workers.pump): a step leaves its job's next poll in a Redis zset, one worker
process reads the polls due and hands them to the workers several to a message. Driven here
step by step against the real simulator and a real Redis, the task bodies run in this
process; the suites with real workers run every poll this way (the default)."""

from __future__ import annotations

import base64
import json
import threading
import time

import pytest
import requests

from tests.conftest import WORKER_ENV, jobs
from tests.test_followed import NoRetry, Recorder
from workers import config, keys, pump, tasks
from workers.jobs import Followed
from workers.names import State, TaskName
from workers.runtime import Runtime
from workers.sender import CelerySender
from workers.tasks import create_step, poll_batch
from workers.worker import make_app


@pytest.fixture
def rt(redis_url: str, simulator: str) -> Runtime:
    settings = config.load(
        {**WORKER_ENV, "WANQ_REDIS_URL": redis_url, "WANQ_PROVIDER_URL": simulator}
    )
    return Runtime(settings, Recorder())


def sender(rt: Runtime) -> CelerySender:
    return CelerySender(make_app(rt.settings), lambda: rt.store.redis)


def created(rt: Runtime, simulator: str, n: int = 1, latency: float = 60) -> list[str]:
    requests.post(f"{simulator}/_sim/config", json={"latency": latency}, timeout=5)
    ids = []
    for line in jobs(n):
        rt.store.enqueue("b1", line["custom_id"], line["body"])
        job_id = keys.job_id("b1", line["custom_id"])
        assert create_step(rt, NoRetry(), job_id, 0) == "created"
        ids.append(job_id)
    return ids


def finished(rt: Runtime, simulator: str, ids: list[str]) -> None:
    """Wait until the simulator says each job's remote task has ended."""
    for job_id in ids:
        task = rt.store.job(job_id)["remote_task_id"]
        assert wait_until(
            lambda t=task: (
                requests.get(f"{simulator}/_sim/tasks/{t}", timeout=5).json()["completes_at"]
                < time.time()
            ),
            5,
        )


def queued_args(rt: Runtime) -> list[tuple]:
    """The poll messages on the poll queue, oldest first: their arguments."""
    found = []
    for raw in reversed(rt.store.redis.lrange(keys.POLL_QUEUE, 0, -1)):
        message = json.loads(raw)
        assert message["headers"]["task"] == TaskName.POLL
        args, _, _ = json.loads(base64.b64decode(message["body"]))
        found.append(tuple(args))
    return found


def test_a_step_leaves_the_poll_to_the_pump_not_to_a_message(rt, simulator):
    (job_id,) = created(rt, simulator)
    assert rt.send.sent == []  # no countdown message
    job = rt.store.job_record(job_id)
    assert job is not None and job.state == State.RUNNING
    due = rt.store.redis.zscore(keys.POLLS, job_id)
    assert due == pytest.approx(float(job.raw["poll_at"]))
    assert rt.store.redis.zscore(keys.DUE, job_id) == due  # the sweeper's net as before


def test_the_pump_sends_the_polls_due_with_what_they_carry_in_one_message(rt, simulator):
    ids = created(rt, simulator, n=3)
    polls = pump.Pump(rt.store.redis, rt.settings, rt.send, sender(rt).prepare)
    assert polls.pump(now=0.0) == 0  # nothing due yet
    assert polls.pump(now=9e9) == 3
    assert rt.store.redis.zcard(keys.POLLS) == 0
    (args,) = queued_args(rt)
    assert list(args[0::3]) == ids
    for job_id, seq, known in zip(args[0::3], args[1::3], args[2::3], strict=True):
        job = rt.store.job_record(job_id)
        assert job is not None and seq == job.seq
        assert Followed.parse(known) == Followed.of(job)


def test_polls_go_poll_batch_to_a_message(rt, simulator):
    env = {"WANQ_REDIS_URL": rt.settings.redis_url, "WANQ_PROVIDER_URL": rt.settings.provider_url}
    rt.settings = config.load({**WORKER_ENV, **env, "WANQ_POLL_BATCH": "2"})
    created(rt, simulator, n=5)
    polls = pump.Pump(rt.store.redis, rt.settings, rt.send, sender(rt).prepare)
    assert polls.pump(now=9e9) == 5
    assert [len(args) // 3 for args in queued_args(rt)] == [2, 2, 1]


def test_a_poll_scheduled_after_the_read_stays_for_the_next_hand_off(rt, simulator):
    job_id, other = created(rt, simulator, n=2)
    polls = pump.Pump(rt.store.redis, rt.settings, rt.send, sender(rt).prepare)
    found = polls.due(9e9)
    rt.store.redis.zadd(keys.POLLS, {job_id: 12345.0})  # a step moved its poll meanwhile
    assert polls.hand_off(found) == 1
    assert rt.store.redis.zscore(keys.POLLS, job_id) == 12345.0
    assert rt.store.redis.zscore(keys.POLLS, other) is None
    assert polls.hand_off(found) == 0  # handed off already (by another pump): no message
    assert len(queued_args(rt)) == 1


def test_the_read_drops_jobs_that_stopped_running(rt, simulator):
    job_id, other = created(rt, simulator, n=2)
    rt.store.redis.hset(keys.job(job_id), "state", State.SUCCEEDED)
    rt.store.redis.zadd(keys.POLLS, {"b1:purged": 1.0})
    polls = pump.Pump(rt.store.redis, rt.settings, rt.send, sender(rt).prepare)
    found = polls.due(9e9)
    assert [p.job_id for p in found] == [other]
    assert rt.store.redis.zrange(keys.POLLS, 0, -1) == [other]


def test_a_batch_runs_each_poll_and_leaves_each_next_poll_to_the_pump(rt, simulator):
    ids = created(rt, simulator, n=3)
    polls = pump.Pump(rt.store.redis, rt.settings, rt.send, sender(rt).prepare)
    polls.pump(now=9e9)
    (args,) = queued_args(rt)
    stale = args[:3]  # the first job's poll, run twice: the second is stale at its step
    assert poll_batch(rt, args + stale) == "polling:3 stale:1"
    for job_id in ids:
        job = rt.store.job_record(job_id)
        assert job is not None and job.polls == 1 and job.first_poll_at
        assert rt.store.redis.zscore(keys.POLLS, job_id) == pytest.approx(float(job.raw["poll_at"]))
    assert rt.send.sent == []


def test_a_slow_batch_sends_the_rest_on_one_poll_message_each(rt, simulator, monkeypatch):
    created(rt, simulator, n=3)
    polls = pump.Pump(rt.store.redis, rt.settings, rt.send, sender(rt).prepare)
    polls.pump(now=9e9)
    (args,) = queued_args(rt)
    monkeypatch.setattr(tasks, "PASS_ON_AFTER", 0.0)  # as if the first call took long
    assert poll_batch(rt, args) == "polling:1 passed on:2"
    assert rt.send.sent == [(TaskName.POLL, args[3:6]), (TaskName.POLL, args[6:9])]


def test_a_finished_generation_ends_its_job_from_a_batch(rt, simulator):
    ids = created(rt, simulator, n=2, latency=0.01)
    finished(rt, simulator, ids)
    polls = pump.Pump(rt.store.redis, rt.settings, rt.send, sender(rt).prepare)
    polls.pump(now=9e9)
    (args,) = queued_args(rt)
    assert poll_batch(rt, args) == "finished:2"
    for job_id in ids:
        job = rt.store.job_record(job_id)
        assert job is not None and job.state == State.SUCCEEDED
    assert rt.store.redis.zcard(keys.POLLS) == 0


def test_the_pump_loop_hands_off_while_it_holds_the_lease_and_only_then(rt, simulator):
    created(rt, simulator, n=2, latency=0.01)
    rt.store.redis.zadd(keys.POLLS, dict.fromkeys(rt.store.redis.zrange(keys.POLLS, 0, -1), 1.0))
    rt.store.take_lease(keys.POLL_PUMP_LEASE, "another", 60)
    stop = threading.Event()
    polls = pump.Pump(rt.store.redis, rt.settings, rt.send, sender(rt).prepare)
    loop = threading.Thread(target=pump.run, args=(polls, rt.store.take_lease, "me", stop))
    loop.start()
    try:
        assert not wait_until(lambda: rt.store.redis.llen(keys.POLL_QUEUE) > 0, 1.5)
        rt.store.redis.delete(keys.POLL_PUMP_LEASE)  # the other pump died
        assert wait_until(lambda: rt.store.redis.llen(keys.POLL_QUEUE) > 0, 10)
    finally:
        stop.set()
        loop.join(5)
    assert not loop.is_alive()
    assert wait_until(lambda: rt.store.redis.get(keys.POLL_PUMP_LEASE) is None, 1)  # let go
    assert [len(args) for args in queued_args(rt)] == [6]


def wait_until(done, seconds: float) -> bool:
    """Poll ``done`` until it holds or ``seconds`` pass."""
    tick = threading.Event()
    for _ in range(int(seconds * 20)):
        if done():
            return True
        tick.wait(0.05)
    return bool(done())


def test_a_job_whose_fields_do_not_read_is_polled_without_a_hint(rt, simulator):
    (job_id,) = created(rt, simulator)
    rt.store.redis.hset(keys.job(job_id), "created_at", "not a time")
    polls = pump.Pump(rt.store.redis, rt.settings, rt.send, sender(rt).prepare)
    (due,) = polls.due(9e9)
    assert due.args[2] == ""  # the poll reads the job first (tasks.poll_step)


class Turns:
    """A stop event for ``pump.run`` that records how long each turn waits and stops the
    loop after ``n`` turns."""

    def __init__(self, n: int) -> None:
        self.waits: list[float] = []
        self.n = n

    def is_set(self) -> bool:
        return len(self.waits) >= self.n

    def wait(self, timeout: float) -> bool:
        self.waits.append(timeout)
        return self.is_set()


class Reads:
    """A pump whose reads find the earliest poll ``ahead`` seconds away, counted."""

    def __init__(self, settings: config.Settings, ahead: float) -> None:
        self.settings, self.ahead, self.calls, self.next_read = settings, ahead, 0, 0.0

    def pump(self, now: float) -> int:
        self.calls += 1
        self.next_read = now + self.ahead - 1.5 * self.settings.poll_tick
        return 0

    def forget(self) -> None:
        pass


@pytest.mark.parametrize(("ahead", "turn"), [(60.0, pump.IDLE_WAIT), (0.1, None)])
def test_the_pump_reads_each_tick_only_while_polls_are_due_soon(rt, ahead, turn):
    """Idle, a pump reads Redis every IDLE_WAIT (4 times a second, not 20); with a poll
    due within it, every tick."""
    reads, turns = Reads(rt.settings, ahead), Turns(5)
    pump.run(reads, lambda *_: True, "me", turns)  # type: ignore[arg-type]
    assert reads.calls == 5
    expected = turn or rt.settings.poll_tick
    assert all(expected - 0.02 < wait <= expected for wait in turns.waits)
