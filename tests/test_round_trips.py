"""Fewer Redis round trips per job, same outcomes: the polls of one message are written
together (workers.polling.settle_together: their steps and the reads their ends need in one
round trip, the ends in a second), and a create's claim reads back what the create needs
(lua/claim.lua), the worst case it reserves stored at submission. Against a real Redis and the
real simulator, the task bodies run in this process."""

from __future__ import annotations

import json
from typing import Any

import pytest
import redis
import requests
from redis.connection import AbstractConnection

from tests import test_pump
from tests.conftest import jobs
from tests.test_followed import NoRetry
from tests.test_pump import created, finished, queued_args, sender
from workers import errors, images, keys, latency, pump
from workers.creating import create_together
from workers.images import ImageStore
from workers.names import BatchState, State, TaskName
from workers.tasks import create_step, poll_batch

rt = test_pump.rt  # the runtime fixture: real Redis and simulator, a recording sender


class RoundTrips:
    """Counts what this process sends Redis: one ``send_packed_command`` per round trip (a
    pipeline packs all its commands into one)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.count = 0
        self.calls: list[str] = []  # what each round trip began with, for a failure's message
        original = AbstractConnection.send_packed_command

        def counted(conn: AbstractConnection, command: Any, *args: Any, **kwargs: Any) -> None:
            self.count += 1
            first = command[0] if isinstance(command, list) else command
            self.calls.append(bytes(first).split(b"\r\n")[2].decode(errors="replace"))
            original(conn, command, *args, **kwargs)

        monkeypatch.setattr(AbstractConnection, "send_packed_command", counted)


def batch_of(rt, ids: list[str]) -> tuple:
    """The one poll message the pump hands off for ``ids``."""
    polls = pump.Pump(rt.store.redis, rt.settings, rt.send, sender(rt).prepare)
    polls.pump(now=9e9)
    (args,) = queued_args(rt)
    assert [args[i] for i in range(0, len(args), 3)] == ids
    return args


def test_the_polls_of_a_message_step_in_one_round_trip(rt, simulator, monkeypatch):
    ids = created(rt, simulator, n=6)
    args = batch_of(rt, ids)
    latency.estimate(rt.store.redis)  # the schedule's window, read once per process
    trips = RoundTrips(monkeypatch)
    assert poll_batch(rt, args) == "polling:6"
    assert trips.calls == ["EVALSHA"], "six steps, one round trip (one each before)"
    for job_id in ids:
        assert rt.store.job_record(job_id).polls == 1


def test_the_ends_of_a_message_take_two_round_trips(rt, simulator, monkeypatch):
    ids = created(rt, simulator, n=4, latency=0.01)
    finished(rt, simulator, ids)
    args = batch_of(rt, ids)
    prices = []  # the batch's price, learned apart (a script when it rises: workers.finalize)
    monkeypatch.setattr(rt.store, "learn_price", lambda *args: prices.append(args) or 0)
    rt.store.load_scripts()  # as a warm worker has them
    trips = RoundTrips(monkeypatch)
    assert poll_batch(rt, args) == "finished:4"
    assert trips.calls == ["HGETALL", "EVALSHA"], "the reads, then the ends: eight trips before"
    assert len(prices) == 4
    for job_id in ids:
        assert rt.store.job_record(job_id).state == State.SUCCEEDED
    assert len(rt.store.redis.xrange(keys.RESULTS)) == 4


def test_a_server_that_forgot_the_scripts_loses_no_step(rt, simulator, monkeypatch):
    """A Redis restarted or flushed answers NOSCRIPT: each such step runs again, loading its
    script, and stands."""
    ids = created(rt, simulator, n=3)
    args = batch_of(rt, ids)
    rt.store.redis.script_flush()
    trips = RoundTrips(monkeypatch)
    assert poll_batch(rt, args) == "polling:3"
    assert trips.calls == ["EVALSHA", "SCRIPT", "EVALSHA"], "refused, loaded, run again"
    for job_id in ids:
        assert rt.store.job_record(job_id).polls == 1


def test_a_step_that_fails_leaves_the_others_of_its_message_standing(rt, simulator):
    first, second, third = created(rt, simulator, n=3)
    args = batch_of(rt, [first, second, third])
    rt.store.redis.delete(keys.batch("b1"))
    rt.store.redis.set(keys.batch("b1"), "not a hash")  # every step of batch b1 now fails
    outcome = poll_batch(rt, args)
    assert outcome == "error:3"
    rt.store.redis.delete(keys.batch("b1"))  # a batch hash back: the sweeper's resend goes on
    assert rt.store.redis.zscore(keys.DUE, first) is not None, "left for the sweeper"


def test_the_claim_reserves_the_worst_case_stored_at_submission(rt):
    request = json.dumps({"parameters": {"n": 3}})
    rt.store.enqueue_many("b2", [("j", request, 1, "", 3)])
    assert rt.store.job("b2:j")["worst_images"] == "3"
    claim, view = rt.store.claim_and_view("b2:j", 0, 60.0, None)
    assert claim.applied and view.job is not None and view.job.state == State.CREATING
    assert view.payload == request, "the read a create needs came back with the claim"
    assert rt.store.job("b2:j")["worst_micros"] == str(3 * rt.store.unit_micros)


def test_a_record_without_its_worst_case_is_priced_from_its_request(rt, simulator):
    """A job stored by an older wanq (no worst case): the claim says so, and the create
    works it out from the request and claims with it."""
    request = jobs(2)[1]["body"]  # editing mode
    request["parameters"] = {**request.get("parameters", {}), "n": 2}
    rt.store.enqueue("b3", "j", request)
    assert "worst_images" not in rt.store.job("b3:j")
    refused, _ = rt.store.claim_and_view("b3:j", 0, 60.0, None)
    assert (refused.applied, refused.previous) == (False, "unpriced")
    assert create_step(rt, NoRetry(), "b3:j", 0) == "created"
    assert rt.store.job("b3:j")["worst_micros"] == str(2 * rt.store.unit_micros)


def test_a_pace_tightened_by_429s_is_taken_before_the_claim(rt, simulator):
    rt.store.enqueue_many("b4", [("j", json.dumps(jobs(2)[1]["body"]), 1, "", 1)])
    rt.store.redis.set(keys.PACE_RATE, "1000.0")
    refused, _ = rt.store.claim_and_view("b4:j", 0, 60.0, None, check_pace=True)
    assert (refused.applied, refused.previous) == (False, "pace")
    assert rt.store.job("b4:j")["state"] == State.QUEUED, "nothing claimed"
    assert create_step(rt, NoRetry(), "b4:j", 0) == "created"


def test_a_tick_hands_off_what_the_tick_before_read_with_its_own_read(rt, simulator, monkeypatch):
    """The pump reads the polls due within the coming tick, and hands them off at the next
    tick in the round trip of that tick's read (workers.pump)."""
    first, *later = created(rt, simulator, n=3)
    tick, now = rt.settings.poll_tick, 1000.0
    rt.store.redis.zadd(keys.POLLS, {first: now, **{job_id: now + tick for job_id in later}})
    polls = pump.Pump(rt.store.redis, rt.settings, rt.send, sender(rt).prepare)
    assert polls.pump(now) == 1, "the poll due now goes at once"
    assert [args[0] for args in queued_args(rt)] == [first]
    trips = RoundTrips(monkeypatch)
    assert polls.pump(now + tick) == 2, "the polls read the tick before"
    assert trips.calls == ["EVALSHA"], "handed off with the next read: one round trip"
    assert [args[::3] for args in queued_args(rt)] == [(first,), tuple(later)]
    assert rt.store.redis.zcard(keys.POLLS) == 0


def test_an_image_gone_after_the_claim_fails_the_job_unpaid(rt, simulator):
    """The claim now comes before the request's images are read: an image found missing then
    (a reference-counting bug) fails the job with its code, before any POST, its slot and
    reservation given back."""
    sha = "ab" * 32
    ImageStore(rt.store.redis).pin("b5", sha, b"not really a PNG")
    body = jobs(2)[1]["body"]
    body["input"]["messages"][0]["content"].append(
        {"image": images.ref(sha, "data:image/png;base64")}
    )
    rt.store.enqueue_many("b5", [("j", json.dumps(body), 1, keys.image(sha), 1)])
    rt.store.redis.delete(keys.image(sha))
    tasks_before = requests.get(f"{simulator}/_sim/stats", timeout=5).json()["tasks_total"]
    assert create_step(rt, NoRetry(), "b5:j", 0) == "failed"
    record = rt.store.job("b5:j")
    assert record["state"] == State.FAILED
    assert json.loads(record["error"])["code"] == errors.TASK_CREATION
    assert requests.get(f"{simulator}/_sim/stats", timeout=5).json()["tasks_total"] == tasks_before
    assert rt.store.redis.zscore(keys.INFLIGHT, "b5:j") is None, "its slot given back"


def test_the_creates_of_the_slots_a_message_freed_take_two_round_trips(rt, simulator, monkeypatch):
    """workers.creating.create_together: the claims in one round trip, the POSTs, the steps
    that store the remote IDs in a second."""
    lines = [(f"j{i}", json.dumps(line["body"]), i, "", 1) for i, line in enumerate(jobs(3))]
    rt.store.enqueue_many("b6", lines)
    rt.store.load_scripts()
    latency.estimate(rt.store.redis)  # the schedule's window, read once per process
    admitted = [(f"b6:j{i}", 0) for i in range(3)]
    trips = RoundTrips(monkeypatch)
    assert create_together(rt, admitted) == ["created"] * 3
    assert trips.calls == ["EVALSHA", "EVALSHA"], "the claims, then the steps: six trips before"
    for job_id, _ in admitted:
        job = rt.store.job_record(job_id)
        assert job is not None and job.state == State.RUNNING and job.remote_task_id
        assert rt.store.redis.zscore(keys.POLLS, job_id) is not None, "its first poll: the pump's"
    assert create_together(rt, admitted) == ["stale"] * 3, "a second time: nothing"


def test_creates_whose_steps_were_lost_are_sent_again(rt, simulator, monkeypatch):
    """Redis went away after the POSTs: each job stays claimed (its create window then counts
    the remote task as a possible duplicate, as for a worker killed there) and its create
    message goes out; nothing raises into the poll that ran them."""
    lines = [(f"j{i}", json.dumps(line["body"]), i, "", 1) for i, line in enumerate(jobs(2))]
    rt.store.enqueue_many("b7", lines)

    def gone(*_: object) -> None:
        raise redis.ConnectionError("Redis went away")

    monkeypatch.setattr(rt.store, "steps_and_views", gone)
    assert create_together(rt, [("b7:j0", 0), ("b7:j1", 0)]) == ["sent", "sent"]
    assert rt.send.sent == [(TaskName.CREATE, ("b7:j0", 0)), (TaskName.CREATE, ("b7:j1", 0))]
    assert rt.store.job("b7:j0")["state"] == State.CREATING


def test_a_message_of_a_cancelled_batch_cancels_even_the_poll_past_its_deadline(rt, simulator):
    """The pump's polls carry what they know of their jobs, so none reads its job before its
    call; one that ends its job without a status (the deadline) still sees the batch
    cancelled and ends it so, as its neighbours' refused steps do."""
    overdue, *others = created(rt, simulator, n=3)
    long_ago = float(rt.store.job(overdue)["created_at"]) - rt.settings.poll_deadline - 1
    rt.store.redis.hset(keys.job(overdue), "created_at", repr(long_ago))
    args = batch_of(rt, [overdue, *others])
    rt.store.set_control("b1", BatchState.CANCELLED)
    assert poll_batch(rt, args) == "cancelled:3"
    for job_id in (overdue, *others):
        assert rt.store.job_record(job_id).state == State.CANCELLED
