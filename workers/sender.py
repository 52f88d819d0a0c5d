"""How services send Celery tasks without importing the Celery app.

Ending a job, sweeping and delivering all set off further tasks; they take a ``Sender`` so
that the modules doing that work never import the app (which imports the tasks, which import
them). The workers pass ``celery_sender(app)``; producers pass their bulk publisher.
"""

from __future__ import annotations

from typing import Any, Protocol

from celery import Celery


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


def celery_sender(app: Celery) -> Sender:
    """A sender over ``app.send_task``: routes and options as the app's configuration says."""

    def send(
        name: str,
        args: tuple[Any, ...] = (),
        *,
        kwargs: dict[str, Any] | None = None,
        countdown: float | None = None,
        queue: str | None = None,
    ) -> None:
        options: dict[str, Any] = {}
        if countdown is not None:
            options["countdown"] = countdown
        if queue is not None:
            options["queue"] = queue
        app.send_task(name, args=args, kwargs=kwargs, **options)

    return send
