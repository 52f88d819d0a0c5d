"""Celery task messages in bulk: built as Celery builds them, written with one command.

``app.send_task`` publishes one message per call through kombu: a round trip for the message,
another for its task-sent event, and much Python around them (routing, the retry wrapper, a
queue declaration check, a new Redis client per command). Submission sends thousands of tasks
of one name at a time, so here each message is built by the call ``send_task`` itself makes
(``app.amqp.as_task_v2``, same headers, same body), put in the envelope kombu's Redis
transport stores (JSON, base64 body, delivery info and tag) and LPUSHed with the others of
the call in one command: the queue the workers consume holds the same messages as before.

The task-sent events (``task_send_sent_event``, for Flower) follow in Celery's own grouped
form: one PUBLISH of a list of events on ``task.multi``, as ``EventDispatcher`` sends a
``buffer_group``; every ``EventReceiver`` (Flower's too) unpacks it into single events.

Not reproduced: the ``before_task_publish`` / ``after_task_publish`` signals (wanq connects
none), publish retries (a failed write raises; a record written before its message is sent
again by the sweeper), and routers that look at arguments (wanq routes by task name).
"""

from __future__ import annotations

import base64
import functools
import itertools
import json
import logging
import os
import re
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any

import redis
from celery import Celery
from celery.utils.nodenames import anon_nodename
from celery.utils.saferepr import saferepr
from kombu import Connection
from kombu.entity import maybe_delivery_mode
from kombu.serialization import dumps as serialize
from kombu.utils.json import dumps
from kombu.utils.uuid import uuid

CHUNK = 1000  # messages per LPUSH

log = logging.getLogger("wanq.publish")
# (args, task_id, delivery_tag) -> the stored message and its task-sent event's fields
Render = Callable[[tuple, str, str], tuple[str, dict[str, Any]]]


class TaskPublisher:
    """Publishes task messages of ``app`` to the broker behind ``client`` and ``connection``.

    ``client`` writes the messages (one LPUSH per CHUNK); ``connection`` (kombu, same broker)
    declares each queue once and carries the task-sent events.
    """

    def __init__(self, app: Celery, client: redis.Redis, connection: Connection) -> None:
        self.app = app
        self.client = client
        self.connection = connection
        self.origin = anon_nodename()
        conf = app.conf
        self.serializer = conf.task_serializer
        self.events = (
            app.events.Dispatcher(connection, buffer_group={"task"}, buffer_limit=1 << 30)
            if conf.task_send_sent_event
            else None
        )
        self._routes: dict[str, tuple[str, int]] = {}
        self._renderers: dict[str, Render] = {}

    def publish(self, name: str, args_list: Iterable[tuple]) -> int:
        """Send one ``name`` task per args tuple; returns how many were sent."""
        route = self._route(name)
        sent = 0
        args_list = iter(args_list)
        while chunk := list(itertools.islice(args_list, CHUNK)):
            self._publish(name, chunk, route)
            sent += len(chunk)
        return sent

    def send_task(
        self,
        name: str,
        args: tuple[Any, ...] = (),
        *,
        kwargs: dict[str, Any] | None = None,
        countdown: float | None = None,
        queue: str | None = None,
    ) -> None:
        """One task, as a ``workers.sender.Sender``: what ending a job sets off (a delivery,
        the next job's create). Producers send no countdowns, options or other queues."""
        if kwargs or countdown is not None or queue is not None:
            raise ValueError("the bulk publisher sends plain (name, args) messages only")
        self.publish(name, [args])

    def _publish(self, name: str, chunk: list[tuple], route: tuple[str, int]) -> None:
        render = self._renderer(name, route)
        ids = uuid4s(2 * len(chunk))  # a task ID and a delivery tag each
        built = [render(args, ids[2 * n], ids[2 * n + 1]) for n, args in enumerate(chunk)]
        # One LPUSH of many values stores them as that many LPUSHes would, in order.
        self.client.lpush(route[0], *(message for message, _ in built))
        if self.events is not None:
            for _, event in built:
                self.events.send("task-sent", **event)
            self.events.flush(errors=False)

    def message(
        self,
        name: str,
        args: tuple,
        task_id: str | None = None,
        delivery_tag: str | None = None,
        *,
        route: tuple[str, int],
    ) -> tuple[str, dict[str, Any]]:
        """The message as kombu's Redis transport stores it, and its task-sent event's fields,
        built the way ``send_task`` builds them."""
        envelope, event = self._envelope(name, args, route, task_id or uuid(), delivery_tag)
        return dumps(envelope), event

    def _envelope(
        self,
        name: str,
        args: tuple,
        route: tuple[str, int],
        task_id: str,
        delivery_tag: str | None = None,
        argsrepr: str | None = None,
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        headers, properties, body, sent_event = self.app.amqp.as_task_v2(
            task_id,
            name,
            args,
            reply_to=self.app.thread_oid,
            create_sent_event=True,
            origin=self.origin,
            ignore_result=None,
            argsrepr=argsrepr,
        )
        content_type, content_encoding, data = serialize(body, serializer=self.serializer)
        raw = data.encode(content_encoding) if isinstance(data, str) else data
        queue, delivery_mode = route
        properties.update(
            delivery_mode=delivery_mode,
            delivery_info={"exchange": "", "routing_key": queue},
            priority=0,
            body_encoding="base64",
            delivery_tag=delivery_tag or uuid(),
        )
        envelope = {
            "body": base64.b64encode(raw).decode("ascii"),
            "content-encoding": content_encoding,
            "content-type": content_type,
            "headers": headers,
            "properties": properties,
        }
        sent_event.update(queue=queue, exchange="", routing_key=queue)
        return envelope, sent_event

    def _renderer(self, name: str, route: tuple[str, int]) -> Render:
        """The template's render for ``name`` when it gives back ``message``'s very output,
        ``message`` itself otherwise (another Celery may build its messages differently)."""
        if name not in self._renderers:
            template = _Template(self, name, route)
            if template.faithful():
                self._renderers[name] = template.render
            else:
                log.warning("task %s: messages built one by one (no template)", name)
                self._renderers[name] = functools.partial(self.message, name, route=route)
        return self._renderers[name]

    def _route(self, name: str) -> tuple[str, int]:
        """The queue ``name`` goes to (declared on first use, as kombu does) and the delivery
        mode ``send_task`` gives its messages."""
        if name not in self._routes:
            queue = self.app.amqp.router.route({}, name)["queue"]
            queue(self.connection.default_channel).declare()
            mode = queue.exchange.delivery_mode or self.app.conf.task_default_delivery_mode
            self._routes[name] = (queue.name, maybe_delivery_mode(mode))
        return self._routes[name]

    def close(self) -> None:
        if self.events is not None:
            self.events.close()


@contextmanager
def task_publisher(
    app: Celery,
    client: redis.Redis,
    broker_url: str,
    transport_options: dict[str, Any] | None = None,
) -> Iterator[TaskPublisher]:
    """A publisher for the broker at ``broker_url`` (``client`` must be connected to it;
    ``transport_options``: a Sentinel URL's, from ``workers.connection.broker``)."""
    with app.connection_for_write(broker_url, transport_options=transport_options) as connection:
        publisher = TaskPublisher(app, client, connection)
        try:
            yield publisher
        finally:
            publisher.close()


class _Template:
    """The stored JSON of one task name's messages with holes where one message differs from
    the next: the task ID (header ``id`` and ``root_id``, ``correlation_id``), ``argsrepr``,
    the body (base64 of the serialized arguments) and the delivery tag. Filling the holes
    costs a few string joins where building a message costs as_task_v2 and a JSON encoding.

    Its own check, ``faithful``, renders a probe and compares it with what ``message`` builds
    for the same IDs and arguments; the publisher uses a template only if they are equal."""

    MARK = "@@wanq-{}@@"
    HOLE = re.compile(r"@@wanq-(\w+)@@")
    PROBE = ("wanq-probe:job \"'\u00e9", 3)

    def __init__(self, publisher: TaskPublisher, name: str, route: tuple[str, int]) -> None:
        self.publisher, self.name, self.route = publisher, name, route
        conf = publisher.app.conf
        self.repr_args = (publisher.app.amqp.argsrepr_maxsize, conf.task_repr_maxlevels)
        envelope, self.event = publisher._envelope(
            name,
            (),
            route,
            self.MARK.format("id"),
            self.MARK.format("tag"),
            argsrepr=self.MARK.format("repr"),
        )
        envelope["body"] = self.MARK.format("body")
        self.pieces = self.HOLE.split(dumps(envelope))
        body = publisher.app.amqp.as_task_v2("-", name, ())[2]
        self.body = dumps((self.MARK.format("args"), *body[1:])).split(
            dumps(self.MARK.format("args"))
        )

    def render(
        self, args: tuple, task_id: str | None = None, delivery_tag: str | None = None
    ) -> tuple[str, dict[str, Any]]:
        task_id = task_id or uuid()
        argsrepr = saferepr(args, self.repr_args[0], maxlevels=self.repr_args[1])
        body = dumps(list(args)).join(self.body).encode("utf-8")
        holes = {
            "id": task_id,
            "tag": delivery_tag or uuid(),
            "repr": dumps(argsrepr)[1:-1],
            "body": base64.b64encode(body).decode("ascii"),
        }
        text = "".join(holes[piece] if odd else piece for odd, piece in _alternate(self.pieces))
        return text, {**self.event, "uuid": task_id, "root_id": task_id, "args": argsrepr}

    def faithful(self) -> bool:
        if self.publisher.serializer != "json" or len(self.body) != 2:
            return False
        task_id, tag = uuid(), uuid()
        text, event = self.render(self.PROBE, task_id, tag)
        expected, expected_event = self.publisher.message(
            self.name, self.PROBE, task_id, tag, route=self.route
        )
        return json.loads(text) == json.loads(expected) and event == expected_event


def _alternate(pieces: list[str]) -> Iterator[tuple[bool, str]]:
    """re.split's output with a capturing group: text, hole, text, hole, ..., text."""
    return zip(itertools.cycle((False, True)), pieces)


def uuid4s(n: int) -> list[str]:
    """``n`` random UUIDs as ``str(uuid.uuid4())`` writes them (version 4, RFC 4122 variant),
    from one os.urandom call instead of one each: two per message add up."""
    raw = bytearray(os.urandom(16 * n))
    raw[6::16] = bytes(byte & 0x0F | 0x40 for byte in raw[6::16])
    raw[8::16] = bytes(byte & 0x3F | 0x80 for byte in raw[8::16])
    text = raw.hex()
    hexes = (text[i : i + 32] for i in range(0, 32 * n, 32))
    return [f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}" for h in hexes]
