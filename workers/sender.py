"""How services send Celery tasks without importing the Celery app.

Ending a job, sweeping and delivering all set off further tasks; they take a ``Sender`` so
that the modules doing that work never import the app (which imports the tasks, which import
them). The workers pass ``celery_sender(app, client)``; producers pass their bulk publisher.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

import redis
from celery import Celery

from workers import messages


class Sender(Protocol):
    def __call__(
        self,
        name: str,
        args: tuple[Any, ...] = (),
        *,
        kwargs: dict[str, Any] | None = None,
        countdown: float | None = None,
        queue: str | None = None,
    ) -> None: ...


def celery_sender(app: Celery, client: Callable[[], redis.Redis] | None = None) -> Sender:
    """A sender over ``app.send_task``: routes and options as the app's configuration says.

    With ``client`` (the broker's Redis) and no task-sent events to send, a task of
    positional arguments (a poll, a create, a delivery: almost every message a worker sends)
    is rendered from its template (``workers.messages``) and LPUSHed: 0.1 ms of CPU where
    ``send_task`` spends 0.45. The message is the one ``send_task`` writes, with the ETA of
    its countdown and the sending task as its parent."""
    fast = (
        messages.Messages(app) if client is not None and not app.conf.task_send_sent_event else None
    )

    def send(
        name: str,
        args: tuple[Any, ...] = (),
        *,
        kwargs: dict[str, Any] | None = None,
        countdown: float | None = None,
        queue: str | None = None,
    ) -> None:
        if fast is not None and client is not None and not kwargs and queue is None:
            text, _ = fast.renderer(name)(args, **_ids(app, countdown))
            client().lpush(fast.route(name)[0], text)
            return
        options: dict[str, Any] = {}
        if countdown is not None:
            options["countdown"] = countdown
        if queue is not None:
            options["queue"] = queue
        app.send_task(name, args=args, kwargs=kwargs, **options)

    return send


def _ids(app: Celery, countdown: float | None) -> dict[str, Any]:
    """The ETA and the root and parent task IDs ``send_task`` would give the message."""
    ids: dict[str, Any] = {"eta": messages.eta(app, countdown)} if countdown else {}
    parent = app.current_worker_task
    if parent is not None:
        ids["root_id"] = parent.request.root_id or parent.request.id
        ids["parent_id"] = parent.request.id
    return ids
