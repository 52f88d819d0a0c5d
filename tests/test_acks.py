"""A poll's message is acknowledged by the script of the step it leads to (lua/lib/acks.lua):
kombu's unacked record goes with the step, atomically, and kombu's own ack after the task
then sends nothing (workers.transport). One round trip fewer per poll, and no window where
the step is done but its message could come back."""

from __future__ import annotations

import pytest
import redis

from tests.conftest import WORKER_ENV
from workers import config, keys, transport
from workers.celeryconf import sending_app
from workers.store import Delivery, JobStore, State

REQUEST = {"model": "wan26_i2i", "input": {}}


@pytest.fixture
def store(redis_url) -> JobStore:
    return JobStore.from_url(redis_url)


def _delivered(r: redis.Redis, *tags: str) -> None:
    """What kombu records for a message it hands to a worker (its QoS.append)."""
    for tag in tags:
        r.zadd(keys.UNACKED_INDEX, {tag: 1.0})
        r.hset(keys.UNACKED, tag, "[]")


def _unacked(r: redis.Redis) -> set[str]:
    index = set(r.zrange(keys.UNACKED_INDEX, 0, -1))
    assert index == set(r.hkeys(keys.UNACKED)), "the index and the hash disagree"
    return index


def test_a_step_acknowledges_its_callers_message_whether_it_applies_or_is_stale(store):
    r = store.redis
    store.enqueue("b", "j", REQUEST)
    _delivered(r, "stale", "applied", "other")
    stale, applied = Delivery("stale"), Delivery("applied")
    assert not store.step("b:j", 7, (State.QUEUED,), State.CREATING, ack=stale).applied
    assert store.step("b:j", 0, (State.QUEUED,), State.CREATING, ack=applied).applied
    assert stale.acked and applied.acked
    assert store.step("b:j", 1, (State.CREATING,), State.RUNNING).applied  # no message to ack
    assert _unacked(r) == {"other"}


def test_the_end_acknowledges_its_callers_message_once_or_stale(store):
    r = store.redis
    store.enqueue("b", "j", REQUEST)
    _delivered(r, "first", "again", "other")
    first, again = Delivery("first"), Delivery("again")
    assert store.finish("b:j", 0, State.SUCCEEDED, {}, ack=first).ended
    assert not store.finish("b:j", 1, State.SUCCEEDED, {}, ack=again).ended
    assert first.acked and again.acked
    assert _unacked(r) == {"other"}


def test_a_refused_script_acknowledges_nothing(store):
    """A message whose step did not happen must come back: its record stays, and kombu acks
    (or redelivers) it as before."""
    r = store.redis
    store.enqueue("b", "j", REQUEST)
    _delivered(r, "refused")
    refused = Delivery("refused")
    with pytest.raises(redis.ResponseError, match="bounded numbers"):
        store.finish("b:j", 0, State.SUCCEEDED, {}, cost_micros=-1, ack=refused)
    assert not refused.acked and _unacked(r) == {"refused"}
    assert store.job("b:j")["state"] == "queued"


def test_kombus_ack_of_a_message_its_script_acknowledged_sends_nothing(redis_url, store):
    settings = config.load({**WORKER_ENV, "WANQ_REDIS_URL": redis_url})
    r = store.redis
    store.enqueue("b", "j", REQUEST)
    with sending_app(settings).connection_for_write() as conn:
        queue = conn.SimpleQueue("wanq.test.acks")
        queue.put({"poll": 1})
        message = queue.get(timeout=5)
        tag = message.delivery_tag
        assert _unacked(r) == {tag}, "kombu recorded the delivery"
        delivery = Delivery(tag)
        assert store.step("b:j", 0, (State.QUEUED,), State.CREATING, ack=delivery).applied
        assert _unacked(r) == set()
        transport.acked_by_script(tag)
        before = r.info("commandstats")
        message.ack()
        after = r.info("commandstats")
        for command in ("cmdstat_multi", "cmdstat_zrem", "cmdstat_hdel"):
            assert after.get(command) == before.get(command), f"{command} sent by the ack"
        qos = conn.default_channel.qos
        qos._flush()  # kombu drops acked messages from memory at its next prefetch check
        assert tag not in qos._delivered, "kombu still counts it against the prefetch"
        queue.close()
