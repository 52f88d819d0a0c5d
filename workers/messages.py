"""Celery task messages as kombu's Redis transport stores them, built from a template.

``app.send_task`` builds each message with ``as_task_v2`` and a JSON encoding, then publishes
it through kombu's retry wrapper: about 0.45 ms of CPU per message, against 0.1 ms for an
LPUSH of the finished text (measured, docs/bench-profile.md). Producers send thousands of
creates at a time and workers send a poll for almost every step, so both render messages
here: each task name's message is built once by ``as_task_v2`` with marks where one message
differs from the next (task ID, delivery tag, argsrepr, body, ETA, root and parent IDs), and
filling those holes is a few string joins. A template is used only if it renders exactly
what ``as_task_v2`` builds for the same values (``Template.faithful``); another Celery may
build its messages differently, and then the caller builds them one by one.

Not reproduced: the ``before_task_publish`` / ``after_task_publish`` signals (wanq connects
none), kombu's publish retries, and routers that look at arguments (wanq routes by name).
"""

from __future__ import annotations

import base64
import functools
import itertools
import json
import logging
import os
import re
from collections.abc import Callable, Iterator
from typing import Any

from celery import Celery
from celery.utils.nodenames import anon_nodename
from celery.utils.saferepr import saferepr
from celery.utils.time import add_seconds_to_datetime, maybe_make_aware
from kombu import Queue
from kombu.entity import maybe_delivery_mode
from kombu.serialization import dumps as serialize
from kombu.utils.json import dumps
from kombu.utils.uuid import uuid

log = logging.getLogger("wanq.messages")

# (queue name, delivery mode): where a task name's messages go, as send_task routes them
Route = tuple[str, int]
# (args, task_id, delivery_tag, eta=, root_id=, parent_id=) -> the stored message and the
# fields of its task-sent event
Render = Callable[..., tuple[str, dict[str, Any]]]


def task_queue(app: Celery, name: str) -> Queue:
    """The kombu queue ``send_task`` routes ``name`` to (wanq routes by task name only)."""
    found: Queue = app.amqp.router.route({}, name)["queue"]
    return found


def route(app: Celery, name: str) -> Route:
    """The queue ``name`` goes to and the delivery mode ``send_task`` gives its messages."""
    queue = task_queue(app, name)
    mode = queue.exchange.delivery_mode or app.conf.task_default_delivery_mode
    return queue.name, maybe_delivery_mode(mode)


def eta(app: Celery, countdown: float) -> str:
    """The ETA header ``send_task`` writes for ``countdown`` seconds from now."""
    due = add_seconds_to_datetime(app.now(), countdown)
    return str(maybe_make_aware(due, tz=app.timezone).isoformat())


class MessageBuilder:
    """Builds one message the way ``send_task`` does, for ``Template`` to copy and check."""

    def __init__(self, app: Celery) -> None:
        self.app = app
        self.origin = anon_nodename()
        self.serializer = app.conf.task_serializer

    def message(
        self, name: str, args: tuple, route: Route, task_id: str, delivery_tag: str, **ids: Any
    ) -> tuple[str, dict[str, Any]]:
        """The stored message and its task-sent event's fields (``ids``: ``eta``,
        ``root_id``, ``parent_id``, as ``as_task_v2`` takes them)."""
        envelope, event = self.envelope(name, args, route, task_id, delivery_tag, **ids)
        return dumps(envelope), event

    def envelope(
        self,
        name: str,
        args: tuple,
        route: Route,
        task_id: str,
        delivery_tag: str,
        argsrepr: str | None = None,
        **ids: Any,
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
            **ids,
        )
        content_type, content_encoding, data = serialize(body, serializer=self.serializer)
        raw = data.encode(content_encoding) if isinstance(data, str) else data
        queue, delivery_mode = route
        properties.update(
            delivery_mode=delivery_mode,
            delivery_info={"exchange": "", "routing_key": queue},
            priority=0,
            body_encoding="base64",
            delivery_tag=delivery_tag,
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


def _plain(text: str) -> bool:
    """Whether ``repr`` and ``saferepr`` quote ``text`` alike: printable, no quote to swap
    and no backslash to escape (saferepr writes control characters raw, and quotes apart)."""
    return text.isprintable() and "'" not in text and "\\" not in text


class Template:
    """The stored JSON of one task name's messages with holes where one message differs
    from the next; every hole is a whole JSON value (a string or null), filled with the
    standard library's JSON of it: the same text kombu's ``dumps`` writes for those, without
    its encoder set-up per call (16 against 24 us per message, measured)."""

    HOLE = re.compile(r'"@@wanq-(\w+)@@"')
    PROBE = ("wanq-probe:job \"'\u00e9", 3)

    def __init__(self, builder: MessageBuilder, name: str, route: Route) -> None:
        self.builder, self.name, self.route = builder, name, route
        app = builder.app
        self.repr_args = (app.amqp.argsrepr_maxsize, app.conf.task_repr_maxlevels)
        envelope, self.event = builder.envelope(
            name,
            (),
            route,
            _mark("id"),
            _mark("tag"),
            argsrepr=_mark("repr"),
            eta=_mark("eta"),
            root_id=_mark("root"),
            parent_id=_mark("parent"),
        )
        envelope["body"] = _mark("body")
        self.pieces = self.HOLE.split(dumps(envelope))
        body = app.amqp.as_task_v2("-", name, ())[2]
        self.body = dumps((_mark("args"), *body[1:])).split(dumps(_mark("args")))

    def render(
        self,
        args: tuple,
        task_id: str | None = None,
        delivery_tag: str | None = None,
        *,
        eta: str | None = None,
        root_id: str | None = None,
        parent_id: str | None = None,
    ) -> tuple[str, dict[str, Any]]:
        """The stored message and its task-sent event's fields."""
        task_id = task_id or uuid()
        root_id = root_id or task_id  # as as_task_v2 does
        argsrepr = self.argsrepr(args)
        body = dumps(list(args)).join(self.body).encode("utf-8")
        holes = {
            "id": task_id,
            "tag": delivery_tag or uuid(),
            "repr": argsrepr,
            "body": base64.b64encode(body).decode("ascii"),
            "eta": eta,
            "root": root_id,
            "parent": parent_id,
        }
        text = "".join(
            json.dumps(holes[piece]) if odd else piece for odd, piece in _alternate(self.pieces)
        )
        ids = {"uuid": task_id, "root_id": root_id, "parent_id": parent_id, "eta": eta}
        return text, {**self.event, **ids, "args": argsrepr}

    def argsrepr(self, args: tuple) -> str:
        """Celery's ``argsrepr``: ``saferepr``, which for short tuples of strings and ints
        (wanq's task arguments) is their ``repr``, at a tenth of the cost (9 us a message, a
        tenth of a submission's CPU under cProfile); anything else goes through it."""
        maxsize, maxlevels = self.repr_args
        if all(type(arg) is int or (type(arg) is str and _plain(arg)) for arg in args):
            plain = repr(args)
            if len(plain) <= maxsize // 2:
                return plain
        return saferepr(args, maxsize, maxlevels=maxlevels)

    def faithful(self) -> bool:
        """Whether rendering gives what ``as_task_v2`` builds, with and without an ETA and
        a parent task."""
        if self.builder.serializer != "json" or len(self.body) != 2:
            return False
        for ids in ({}, {"eta": eta(self.builder.app, 2.5), "root_id": "r", "parent_id": "p"}):
            task_id, tag = uuid(), uuid()
            text, event = self.render(self.PROBE, task_id, tag, **ids)
            expected, expected_event = self.builder.message(
                self.name, self.PROBE, self.route, task_id, tag, **ids
            )
            if json.loads(text) != json.loads(expected) or event != expected_event:
                return False
        return True


class Messages:
    """The messages of ``app``'s tasks, each name's rendered from its template when that
    template is faithful and built one by one otherwise (logged once)."""

    def __init__(self, app: Celery) -> None:
        self.builder = MessageBuilder(app)
        self._routes: dict[str, Route] = {}
        self._renderers: dict[str, Render] = {}

    def route(self, name: str) -> Route:
        if name not in self._routes:
            self._routes[name] = route(self.builder.app, name)
        return self._routes[name]

    def renderer(self, name: str) -> Render:
        if name not in self._renderers:
            template = Template(self.builder, name, self.route(name))
            if template.faithful():
                self._renderers[name] = template.render
            else:
                log.warning("task %s: messages built one by one (no template)", name)
                self._renderers[name] = functools.partial(self._build, name)
        return self._renderers[name]

    def _build(
        self,
        name: str,
        args: tuple,
        task_id: str | None = None,
        delivery_tag: str | None = None,
        **ids: Any,
    ) -> tuple[str, dict[str, Any]]:
        return self.builder.message(
            name, args, self.route(name), task_id or uuid(), delivery_tag or uuid(), **ids
        )


def _mark(hole: str) -> str:
    return f"@@wanq-{hole}@@"


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
