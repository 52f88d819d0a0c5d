"""The slot a job frees goes straight to the next job, in the same worker thread.

Ending a job gives its in-flight slot to the next job in the same Lua step (lua/finish.lua,
lua/lib/slots.lua), which also puts that job in the due set. Sending a Celery create message
for it would cost a broker round trip, a fetch, an ack and four task events, and leave the
slot idle until some worker thread picks the message up (behind every poll that came due
meanwhile). So the task that ended the job keeps the handed-over creates and runs them itself
after its own step (``workers.tasks``). Nothing is lost if that worker dies first: the
admitted job is in the due set, and the sweeper resends its create once it is overdue, as it
did when a sent message was lost.

``Handover`` is a ``Sender``: every other message goes out as before.
"""

from __future__ import annotations

from typing import Any

from workers.names import TaskName
from workers.sender import Sender


class Handover:
    """A sender that keeps the plain creates of admitted jobs for the caller to run."""

    def __init__(self, send: Sender) -> None:
        self._send = send
        self.creates: list[tuple[str, int]] = []

    def __call__(
        self,
        name: str,
        args: tuple[Any, ...] = (),
        *,
        kwargs: dict[str, Any] | None = None,
        countdown: float | None = None,
        queue: str | None = None,
    ) -> None:
        if name == TaskName.CREATE and not (kwargs or countdown or queue) and len(args) == 2:
            self.creates.append((str(args[0]), int(args[1])))
            return
        self._send(name, args, kwargs=kwargs, countdown=countdown, queue=queue)
