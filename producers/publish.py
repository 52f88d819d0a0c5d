"""Celery task messages in bulk: rendered as Celery builds them, written with one command.

``app.send_task`` publishes one message per call through kombu: a round trip for the message,
another for its task-sent event, and much Python around them (routing, the retry wrapper, a
queue declaration check). Submission sends thousands of tasks of one name at a time, so here
each message is rendered by ``workers.messages`` (the same headers and body ``send_task``
builds, in the envelope kombu's Redis transport stores) and LPUSHed with the others of the
call in one command: the queue the workers consume holds the same messages as before.

The task-sent events (``task_send_sent_event``, for Flower) follow in Celery's own grouped
form: one PUBLISH of a list of events on ``task.multi``, as ``EventDispatcher`` sends a
``buffer_group``; every ``EventReceiver`` (Flower's too) unpacks it into single events.

Publish retries are not reproduced: a failed write raises, and a record written before its
message is sent again by the sweeper.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

import redis
from celery import Celery
from kombu import Connection

from workers.messages import Messages, Route, task_queue, uuid4s

CHUNK = 1000  # messages per LPUSH


class TaskPublisher:
    """Publishes task messages of ``app`` to the broker behind ``client`` and ``connection``.

    ``client`` writes the messages (one LPUSH per CHUNK); ``connection`` (kombu, same broker)
    declares each queue once and carries the task-sent events.
    """

    def __init__(self, app: Celery, client: redis.Redis, connection: Connection) -> None:
        self.app = app
        self.client = client
        self.connection = connection
        self.messages = Messages(app)
        conf = app.conf
        self.events = (
            app.events.Dispatcher(connection, buffer_group={"task"}, buffer_limit=1 << 30)
            if conf.task_send_sent_event
            else None
        )
        self._declared: set[str] = set()

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

    def _publish(self, name: str, chunk: list[tuple], route: Route) -> None:
        render = self.messages.renderer(name)
        ids = uuid4s(2 * len(chunk))  # a task ID and a delivery tag each
        built = [render(args, ids[2 * n], ids[2 * n + 1]) for n, args in enumerate(chunk)]
        # One LPUSH of many values stores them as that many LPUSHes would, in order.
        self.client.lpush(route[0], *(message for message, _ in built))
        if self.events is not None:
            for _, event in built:
                self.events.send("task-sent", **event)
            self.events.flush(errors=False)

    def _route(self, name: str) -> Route:
        """Where ``name``'s messages go, its queue declared on first use (as kombu does)."""
        route = self.messages.route(name)
        if name not in self._declared:
            task_queue(self.app, name)(self.connection.default_channel).declare()
            self._declared.add(name)
        return route

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
