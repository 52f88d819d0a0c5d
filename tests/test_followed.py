"""A poll's message carries what the step that sent it knows of the job (workers.jobs.Followed):
an unfinished poll calls the provider without reading the job first, and its step, one
round trip, checks what that read would have (the seq, a cancelled batch, a blocked account).
Driven here step by step against the real simulator and a real Redis, the task bodies run in
this process."""

from __future__ import annotations

from typing import Any

import pytest
import requests

from tests.conftest import WORKER_ENV, jobs
from workers import account, config, keys
from workers.jobs import Followed
from workers.names import BatchState, State, TaskName
from workers.runtime import Runtime
from workers.store import Delivery
from workers.tasks import create_step, poll_step


class Recorder:
    """A ``Sender`` that keeps what it was asked to send."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, tuple]] = []

    def __call__(self, name: str, args: tuple = (), **_: Any) -> None:
        self.sent.append((name, args))

    def polls(self) -> list[tuple]:
        return [args for name, args in self.sent if name == TaskName.POLL]


class NoRetry:
    def retry(self, *_: Any, **__: Any) -> BaseException:
        raise AssertionError("the simulator refused a create")


def runtime(redis_url: str, simulator: str, **env: str) -> Runtime:
    variables = {**WORKER_ENV, "WANQ_REDIS_URL": redis_url, "WANQ_PROVIDER_URL": simulator}
    variables["WANQ_POLL_BATCH"] = "0"  # a message per poll: what carries the hint here
    return Runtime(config.load({**variables, **env}), Recorder())


@pytest.fixture
def rt(redis_url: str, simulator: str) -> Runtime:
    return runtime(redis_url, simulator)


def created(
    rt: Runtime, simulator: str, latency: float = 60, ack: Delivery | None = None
) -> tuple[str, int, str]:
    """A job created on the simulator (its task taking ``latency`` s): (job_id, seq, known)."""
    requests.post(f"{simulator}/_sim/config", json={"latency": latency}, timeout=5)
    line = jobs(1)[0]
    rt.store.enqueue("b1", line["custom_id"], line["body"])
    job_id = keys.job_id("b1", line["custom_id"])
    assert create_step(rt, NoRetry(), job_id, 0, ack=ack) == "created"
    (poll,) = rt.send.polls()
    return poll


def commands(rt: Runtime) -> dict[str, int]:
    stats = rt.store.redis.info("commandstats")
    return {name.removeprefix("cmdstat_"): int(v["calls"]) for name, v in stats.items()}


def delivered(rt: Runtime, tag: str) -> Delivery:
    """A message as kombu records it when a worker takes it (its QoS.append)."""
    rt.store.redis.zadd(keys.UNACKED_INDEX, {tag: 1.0})
    rt.store.redis.hset(keys.UNACKED, tag, "[]")
    return Delivery(tag)


def unacked(rt: Runtime) -> set[str]:
    return set(rt.store.redis.hkeys(keys.UNACKED))


def test_a_create_task_is_acknowledged_by_the_step_that_stores_its_remote_id(rt, simulator):
    message = delivered(rt, "create-1")
    created(rt, simulator, ack=message)
    assert message.acked and unacked(rt) == set()


def test_the_first_poll_carries_what_the_create_stored():
    assert Followed.parse(Followed("t-1", 1700000000.125, 3, 1, False).text()) == Followed(
        "t-1", 1700000000.125, 3, 1, False
    )


@pytest.mark.parametrize(
    "text", ["", "x", "1|2|3|1|", "nan|0|0|0|t", "1.0|a|0|0|t", "1.0|0|0|0", None]
)
def test_a_malformed_hint_is_no_hint(text):
    assert Followed.parse(text) is None


def test_an_unfinished_poll_reads_nothing_before_its_step(rt, simulator):
    job_id, seq, known = created(rt, simulator)
    followed = Followed.parse(known)
    assert followed is not None and followed.polls == 0 and not followed.polled
    job = rt.store.job_record(job_id)
    assert job is not None and followed.remote_task_id == job.remote_task_id
    rt.store.redis.config_resetstat()

    message = delivered(rt, "tag-1")
    assert poll_step(rt, job_id, seq, known=known, ack=message) == "polling"

    ran = commands(rt)
    assert ran.get("evalsha") == 1 and "hgetall" not in ran  # the step, and no read
    assert message.acked and unacked(rt) == set()
    job = rt.store.job_record(job_id)
    assert job is not None and job.seq == seq + 1 and job.polls == 1 and job.first_poll_at
    (_, (_, next_seq, next_known)) = rt.send.sent[-1]
    assert next_seq == seq + 1
    expected = Followed(followed.remote_task_id, job.created_at, 1, 0, True)
    assert Followed.parse(next_known) == expected


def test_without_a_hint_the_poll_reads_the_job_first(rt, simulator):
    job_id, seq, _ = created(rt, simulator)
    rt.store.redis.config_resetstat()
    assert poll_step(rt, job_id, seq) == "polling"
    assert commands(rt).get("hgetall", 0) >= 1
    assert rt.store.job_record(job_id).polls == 1


def test_a_stale_poll_with_a_hint_changes_nothing_and_is_acknowledged(rt, simulator):
    job_id, seq, known = created(rt, simulator)
    assert poll_step(rt, job_id, seq, known=known) == "polling"
    before = rt.store.job(job_id)

    message = Delivery("tag-2")
    assert poll_step(rt, job_id, seq, known=known, ack=message) == "stale"  # a redelivery
    assert rt.store.job(job_id) == before and message.acked


def test_a_batch_cancelled_during_the_call_ends_the_job_not_acknowledged(rt, simulator):
    job_id, seq, known = created(rt, simulator)
    rt.store.set_control("b1", BatchState.CANCELLED)  # as `wanq cancel` does before its sweep

    message = delivered(rt, "tag-3")
    assert poll_step(rt, job_id, seq, known=known, ack=message) == "cancelled"
    job = rt.store.job_record(job_id)
    assert job is not None and job.state == State.CANCELLED
    assert not message.acked and unacked(rt) == {"tag-3"}  # the task acks it after the end
    assert len(rt.send.polls()) == 1  # the create's, no next poll


@pytest.mark.parametrize("cancelled", [False, True])
def test_a_poll_past_its_deadline_fails_the_job_unless_its_batch_was_cancelled(
    rt, simulator, cancelled
):
    """A poll that ends its job without a status (its deadline passed) ends it as a poll that
    read the job first would: failed, or cancelled once the batch is."""
    from dataclasses import replace

    from workers import errors

    job_id, seq, known = created(rt, simulator)
    followed = Followed.parse(known)
    assert followed is not None
    overdue = replace(followed, created_at=followed.created_at - rt.settings.poll_deadline - 1)
    if cancelled:
        rt.store.set_control("b1", BatchState.CANCELLED)

    outcome = poll_step(rt, job_id, seq, known=overdue.text())
    job = rt.store.job_record(job_id)
    assert job is not None
    if cancelled:
        assert (outcome, job.state) == ("cancelled", State.CANCELLED)
    else:
        assert (outcome, job.state) == ("failed", State.FAILED)
        assert errors.STATUS_CHECK in rt.store.job(job_id)["error"]


def test_a_status_that_goes_through_lifts_a_block_that_polls_saw(rt, simulator):
    job_id, seq, known = created(rt, simulator)
    account.block(rt.store.redis, 503, "status calls failed", source="status")

    assert poll_step(rt, job_id, seq, known=known) == "polling"
    assert account.blocked(rt.store.redis) == {}


def test_a_status_refused_keeps_the_block(rt, redis_url, simulator):
    job_id, seq, known = created(rt, simulator)
    account.block(rt.store.redis, 401, "key refused", source="status")
    refused = runtime(redis_url, simulator, WANQ_API_KEY="sk-not-the-key")

    assert poll_step(refused, job_id, seq, known=known) == "polling"
    assert account.blocked(rt.store.redis)["http_status"] == "401"
    assert rt.store.job_record(job_id).polls == 1


def test_the_poll_that_sees_the_end_reads_the_job_for_its_record(rt, simulator):
    job_id, seq, known = created(rt, simulator, latency=0)
    followed = Followed.parse(known)
    assert followed is not None

    assert poll_step(rt, job_id, seq, known=known) == "finished"
    job = rt.store.job_record(job_id)
    assert job is not None and job.state == State.SUCCEEDED and job.polls == 1
    record = rt.store.job(job_id)
    assert record["custom_id"] == jobs(1)[0]["custom_id"] and record["outputs"]
