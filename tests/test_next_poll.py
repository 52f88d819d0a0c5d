"""A step that schedules a poll (workers.polling.step_and_poll) leaves the job with exactly
one poll for the seq the step gave it: left to the poll pump (the default), or, with
``WANQ_POLL_BATCH=0``, pushed by the step's script when the sender can render it, sent after
the step when it cannot; and none at all for a stale step."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest

from workers import config, keys
from workers.app import app
from workers.jobs import Followed
from workers.names import State, TaskName
from workers.polling import step_and_poll
from workers.runtime import Runtime
from workers.sender import CelerySender

REQUEST = {"model": "wan26_i2i", "input": {}}
FOLLOWED = Followed("task-1", 1700000000.25, 2, 1, True)


class Recorder:
    """A ``Sender`` that keeps what it was asked to send."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, tuple, float | None]] = []

    def __call__(self, name: str, args: tuple = (), *, countdown: float | None = None, **_: Any):
        self.sent.append((name, args, countdown))


@pytest.fixture
def settings(redis_url):
    return config.load({"WANQ_REDIS_URL": redis_url, "WANQ_POLL_BATCH": "0"})


@pytest.fixture
def pumped(redis_url):
    return config.load({"WANQ_REDIS_URL": redis_url})


def test_the_step_leaves_the_poll_to_the_pump_at_its_due_time(pumped):
    recorder = Recorder()
    rt = Runtime(pumped, recorder)
    job_id = _queued_job(rt)

    moved = step_and_poll(rt, job_id, 0, State.QUEUED, 7.5, FOLLOWED, due=1234.5)

    assert moved.applied and moved.seq == 1 and recorder.sent == []
    assert rt.store.redis.llen(keys.POLL_QUEUE) == 0
    assert rt.store.redis.zscore(keys.POLLS, job_id) == 1234.5
    stale = step_and_poll(rt, job_id, 0, State.QUEUED, 7.5, FOLLOWED, due=99.0)
    assert not stale.applied and rt.store.redis.zscore(keys.POLLS, job_id) == 1234.5


def _queued_job(rt: Runtime) -> str:
    rt.store.enqueue("b1", "j1", REQUEST)
    return keys.job_id("b1", "j1")


def test_the_step_pushes_a_poll_for_the_seq_it_gives(settings):
    recorder = Recorder()
    rt = Runtime(settings, recorder)
    sender = CelerySender(app, lambda: rt.store.redis)
    rt.prepare = sender.prepare
    job_id = _queued_job(rt)

    moved = step_and_poll(rt, job_id, 0, State.QUEUED, 7.5, FOLLOWED, due=1.0)

    assert moved.applied and moved.seq == 1 and recorder.sent == []
    (raw,) = rt.store.redis.lrange(keys.POLL_QUEUE, 0, -1)
    message = json.loads(raw)
    assert message["headers"]["task"] == TaskName.POLL and message["headers"]["eta"]
    assert json.loads(base64.b64decode(message["body"]))[0] == [job_id, 1, FOLLOWED.text()]
    assert rt.store.job(job_id)["state"] == State.RUNNING


def test_without_a_renderer_the_poll_is_sent_after_the_step(settings):
    recorder = Recorder()
    rt = Runtime(settings, recorder)  # no prepare: e.g. a worker app sending task-sent events
    job_id = _queued_job(rt)

    moved = step_and_poll(rt, job_id, 0, State.QUEUED, 7.5, FOLLOWED, due=1.0)

    assert moved.applied
    assert recorder.sent == [(TaskName.POLL, (job_id, 1, FOLLOWED.text()), 7.5)]
    assert rt.store.redis.llen(keys.POLL_QUEUE) == 0


@pytest.mark.parametrize("renders", [True, False])
def test_a_stale_step_sends_no_poll(settings, renders):
    recorder = Recorder()
    rt = Runtime(settings, recorder)
    if renders:
        rt.prepare = CelerySender(app, lambda: rt.store.redis).prepare
    job_id = _queued_job(rt)

    stale = step_and_poll(rt, job_id, 3, State.QUEUED, 7.5, FOLLOWED, due=1.0)

    assert not stale.applied and recorder.sent == []
    assert rt.store.redis.llen(keys.POLL_QUEUE) == 0
    assert rt.store.job(job_id)["state"] == State.QUEUED
