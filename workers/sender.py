"""How services send Celery tasks without importing the Celery app.

Ending a job, sweeping and delivering all set off further tasks; they take a ``Sender`` so
that the modules doing that work never import the app (which imports the tasks, which import
them). The workers pass a ``CelerySender``; producers pass their bulk publisher.
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


# A message rendered for a queue, (queue, stored text): a step script pushes it atomically with
# the step that schedules it (workers.store.JobStore.step)
Prepared = tuple[str, str]


class Preparer(Protocol):
    def __call__(
        self, name: str, args: tuple[Any, ...], *, countdown: float | None = None
    ) -> Prepared | None: ...


class CelerySender:
    """A ``Sender`` over ``app.send_task``: routes and options as the app's configuration says.

    With ``client`` (the broker's Redis) and no task-sent events to send, a task of
    positional arguments (a poll, a create, a delivery: almost every message a worker sends)
    is rendered from its template (``workers.messages``) and LPUSHed: 0.1 ms of CPU where
    ``send_task`` spends 0.45. The message is the one ``send_task`` writes, with the ETA of
    its countdown and the sending task as its parent. ``prepare`` renders one without sending
    it, for a step script to push with its step."""

    def __init__(self, app: Celery, client: Callable[[], redis.Redis] | None = None) -> None:
        self.app, self.client = app, client
        templated = client is not None and not app.conf.task_send_sent_event
        self.messages = messages.Messages(app) if templated else None

    def __call__(
        self,
        name: str,
        args: tuple[Any, ...] = (),
        *,
        kwargs: dict[str, Any] | None = None,
        countdown: float | None = None,
        queue: str | None = None,
    ) -> None:
        prepared = None if kwargs or queue else self.prepare(name, args, countdown=countdown)
        if prepared is not None and self.client is not None:
            self.client().lpush(*prepared)
            return
        options: dict[str, Any] = {}
        if countdown is not None:
            options["countdown"] = countdown
        if queue is not None:
            options["queue"] = queue
        self.app.send_task(name, args=args, kwargs=kwargs, **options)

    def prepare(
        self, name: str, args: tuple[Any, ...], *, countdown: float | None = None
    ) -> Prepared | None:
        """``name``'s message for ``args`` and its queue, or None: it goes by ``send_task``."""
        if self.messages is None:
            return None
        text, _ = self.messages.renderer(name)(args, **_ids(self.app, countdown))
        return self.messages.route(name)[0], text


def _ids(app: Celery, countdown: float | None) -> dict[str, Any]:
    """The ETA and the root and parent task IDs ``send_task`` would give the message."""
    ids: dict[str, Any] = {"eta": messages.eta(app, countdown)} if countdown else {}
    parent = app.current_worker_task
    if parent is not None:
        ids["root_id"] = parent.request.root_id or parent.request.id
        ids["parent_id"] = parent.request.id
    return ids
