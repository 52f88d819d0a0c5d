"""Bulk publishing writes the messages ``app.send_task`` writes, and Celery's task-sent
events for them, grouped as Celery groups them; the workers' side is test_pipeline's."""

from __future__ import annotations

import base64
import contextlib
import itertools
import json
import random
import uuid
from datetime import datetime

import redis
from celery.utils.saferepr import saferepr

from producers.publish import task_publisher
from workers import config, keys
from workers.app import app
from workers.celeryconf import sending_app
from workers.messages import Messages, Template, uuid4s
from workers.sender import CelerySender

PER_MESSAGE = {"id", "root_id", "correlation_id", "delivery_tag"}  # fresh for each message


def _normalized(raw: str) -> dict:
    message = json.loads(raw)
    message["body"] = json.loads(base64.b64decode(message["body"]))
    for part in ("headers", "properties"):
        for name in PER_MESSAGE & set(message[part]):
            message[part][name] = "<unique>"
    return message


def test_bulk_messages_are_those_send_task_writes(redis_url):
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    with app.connection_for_write(redis_url) as connection:
        app.send_task("wanq.create", args=("b1:job-1", 0), producer=app.amqp.Producer(connection))
    with task_publisher(app, client, redis_url) as publisher:
        assert publisher.publish("wanq.create", [("b1:job-2", 0), ("b1:job-3", 4)]) == 2
        publisher.publish("wanq.deliver", [("b1:job-2",)])
    one, two, three = (client.lindex(keys.CREATE_QUEUE, i) for i in (2, 1, 0))
    expected = _normalized(one)
    expected["body"][0] = ["b1:job-2", 0]
    expected["headers"]["argsrepr"] = "('b1:job-2', 0)"
    assert _normalized(two) == expected
    assert _normalized(three)["body"][0] == ["b1:job-3", 4]
    assert _normalized(three)["headers"]["argsrepr"] == "('b1:job-3', 4)"
    headers = [json.loads(m)["headers"] for m in (two, three)]
    assert headers[0]["id"] != headers[1]["id"]
    deliver = _normalized(client.lindex(keys.DELIVER_QUEUE, 0))
    assert deliver["headers"]["task"] == "wanq.deliver"
    assert deliver["properties"]["delivery_info"]["routing_key"] == keys.DELIVER_QUEUE


def test_task_sent_events_reach_an_event_receiver(redis_url):
    """Producers send task-sent events for the creates they queue (the workers' app sends none
    for the polls it publishes: workers.worker)."""
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    received: list[dict] = []
    producer = sending_app(config.load({"WANQ_REDIS_URL": redis_url}))
    assert producer.conf.task_send_sent_event and not app.conf.task_send_sent_event
    with producer.connection_for_read(redis_url) as connection:
        receiver = producer.events.Receiver(connection, handlers={"task-sent": received.append})
        capture = receiver.itercapture(limit=None, timeout=0.5, wakeup=False)
        next(capture)  # subscribed
        with task_publisher(producer, client, redis_url) as publisher:
            publisher.publish("wanq.create", [(f"b1:job-{n}", 0) for n in range(3)])
        with contextlib.suppress(TimeoutError, StopIteration):  # drained until quiet
            next(capture)
    assert [event["args"] for event in received] == [f"('b1:job-{n}', 0)" for n in range(3)]
    ids = {json.loads(m)["headers"]["id"] for m in client.lrange(keys.CREATE_QUEUE, 0, -1)}
    assert {event["uuid"] for event in received} == ids
    assert {event["queue"] for event in received} == {keys.CREATE_QUEUE}


ODD_ARGS = [
    ("b1:plain", 0),
    ("b1:quotes \"'\\ and \t tabs\n", 7),
    ("b1:é ✓ 汉字 \u2028", 1),
    ("b1:" + "x" * 3000, 2),  # argsrepr is cut at Celery's argsrepr_maxsize
    ("batch:b1",),
]


WORKER_IDS = {"eta": "2026-12-03T05:07:33.829485+00:00", "root_id": "root", "parent_id": "poll"}


def test_the_template_renders_what_message_builds(redis_url):
    """With and without what a worker's sends add: an ETA and a parent task."""
    messages = Messages(app)
    for name in ("wanq.create", "wanq.poll", "wanq.deliver"):
        route = messages.route(name)
        template = Template(messages.builder, name, route)
        assert template.faithful()
        assert isinstance(messages.renderer(name).__self__, Template)
        for args, ids in itertools.product(ODD_ARGS, ({}, WORKER_IDS)):
            rendered, event = template.render(args, "tid", "tag", **ids)
            built, built_event = messages.builder.message(name, args, route, "tid", "tag", **ids)
            assert json.loads(rendered) == json.loads(built), (args, ids)
            assert event == built_event


def test_without_a_faithful_template_messages_are_built_one_by_one(redis_url, monkeypatch):
    monkeypatch.setattr(Template, "faithful", lambda self: False)
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    with task_publisher(app, client, redis_url) as publisher:
        publisher.publish("wanq.create", [("b1:job-1", 0)])
    message = _normalized(client.lindex(keys.CREATE_QUEUE, 0))
    assert message["body"][0] == ["b1:job-1", 0]
    assert message["headers"]["argsrepr"] == "('b1:job-1', 0)"


def test_a_worker_sends_from_its_template_what_send_task_writes(redis_url):
    """The worker's sender (workers.sender) inside a running task: the same message as
    ``send_task``'s, with the ETA of the countdown and the task as parent and root."""
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    worker_app = app  # the worker's app (workers.worker.make_app)
    send = CelerySender(worker_app, lambda: client)
    sent: dict[str, str] = {}

    @worker_app.task(name="wanq-test.sends", bind=True)
    def sends(self):
        producer = worker_app.amqp.Producer(connection)
        worker_app.send_task("wanq.poll", args=("b1:job-1", 2), countdown=30, producer=producer)
        sent["send_task"] = client.lpop(keys.POLL_QUEUE)
        send("wanq.poll", ("b1:job-1", 2), countdown=30)
        sent["template"] = client.lpop(keys.POLL_QUEUE)

    with worker_app.connection_for_write(redis_url) as connection:
        sends.apply(task_id="the-poll")
    by_send_task, by_template = (json.loads(sent[way]) for way in ("send_task", "template"))
    etas = [datetime.fromisoformat(m["headers"].pop("eta")) for m in (by_send_task, by_template)]
    assert abs((etas[1] - etas[0]).total_seconds()) < 1 and etas[0].utcoffset() is not None
    assert by_template["headers"]["parent_id"] == by_template["headers"]["root_id"] == "the-poll"
    assert _normalized(json.dumps(by_template)) == _normalized(json.dumps(by_send_task))


def test_uuid4s_are_random_version_4_uuids():
    made = uuid4s(1000)
    assert len(set(made)) == 1000
    for text in made:
        parsed = uuid.UUID(text)
        assert str(parsed) == text and parsed.version == 4 and parsed.variant == uuid.RFC_4122


def test_argsrepr_is_celerys_saferepr_for_any_arguments():
    """Short tuples of plain strings and ints take ``repr`` (a tenth of saferepr's cost);
    whatever the strings hold (quotes, backslashes, control and wide characters, lengths
    past the cut), the header is the one Celery writes."""
    template = Messages(app).renderer("wanq.poll").__self__
    maxsize, maxlevels = template.repr_args
    rng = random.Random(16)
    alphabet = ["a", ":", "-", '"', "'", "\\", "\u00e9", "\t", "\n", "\x00", "\u2028", "\xa0", " "]
    cases = [("b:j", 3), (), ("x" * 2000, 1), (True, 1.5), (["list"], {"d": 1})]
    for _ in range(3000):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 8)))
        cases.append((text, rng.randint(-5, 10**12)))
    for args in cases:
        assert template.argsrepr(args) == saferepr(args, maxsize, maxlevels=maxlevels), args
