"""The three tasks: ``wanq.create`` starts a remote task, ``wanq.poll`` follows it,
``wanq.deliver`` sends what an ended job or batch owes.

``register(app, runtime)`` binds them to an app; the bodies use only the runtime passed in
(settings, store, provider, sender), never module globals. Create and poll take
``(job_id, seq)`` (a poll sent by the poll pump or a step also what it knows of the job, see
``jobs.Followed``, and a poll from the pump possibly more polls after it, ``job_id, seq,
known`` each: workers.pump): the request lives in Redis (claim check), the API key in the
worker's environment. A message whose seq no longer matches the job is stale (a duplicate,
a redelivery, a rescued job's late original) and does nothing. No task ever sleeps: every wait
is a poll waiting in Redis for the pump, or a countdown on a new message.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator
from typing import Any

from celery import Celery, Task, signals

from workers import delivery_threads, logs, polling, transport
from workers.creating import create_inline, create_step, create_together
from workers.handover import Handover
from workers.names import JOB_TASKS, TaskName, target_batch
from workers.runtime import Runtime
from workers.sender import Sender
from workers.store import Delivery

log = logging.getLogger("wanq.tasks")

PASS_ON_AFTER = 0.5  # seconds a poll task of several polls before it sends the rest on, one each


@signals.task_prerun.connect
def _bind_job(task: object = None, args: tuple = (), **_: object) -> None:
    """Every log line a job's task writes names the job (see workers.logs), Celery's own
    "succeeded" line too: it comes after postrun, so the next task's prerun unbinds."""
    name = getattr(task, "name", "")
    target = str(args[0]) if args else ""
    several = name == TaskName.POLL and len(args) > 3  # workers.pump: poll_batch binds each
    of_a_job = name == TaskName.DELIVER and target_batch(target) is None
    if (name in JOB_TASKS and not several) or of_a_job:
        logs.bind_job(target)
    else:
        logs.unbind()


def register(app: Celery, rt: Runtime) -> None:
    """Define wanq's tasks on ``app``, each a thin shell over the functions below."""

    @app.task(name=TaskName.CREATE, bind=True, max_retries=None)  # attempts counted in Redis
    def create(self: Task, job_id: str, seq: int, probe: bool = False, paced: bool = False) -> str:
        with _message(self) as message:
            return create_step(rt, self, job_id, seq, probe=probe, paced=paced, ack=message)

    @app.task(name=TaskName.POLL, bind=True)
    def poll(
        self: Task, job_id: str, seq: int, known: str = "", *more: Any, paced: bool = False
    ) -> str:
        if more:  # the polls due together: (job_id, seq, known) each, from the poll pump
            return poll_batch(rt, (job_id, seq, known, *more))
        handover = Handover(rt.send)
        with _message(self) as message:
            outcome = poll_step(
                rt, job_id, seq, known=known, paced=paced, send=handover, ack=message
            )
        for admitted in handover.creates:  # the slot this poll freed, used at once
            create_inline(rt, *admitted)
        if handover.creates:
            logs.bind_job(job_id)  # Celery's "succeeded" line is this poll's
        return outcome

    @app.task(name=TaskName.DELIVER)
    def deliver(target: str) -> str:
        """The callbacks a job or batch owes once it has ended (see workers.deliveries), run
        on the delivery threads (workers.delivery_threads), never on those that create and
        poll: a slow output host or receiver cannot starve them."""
        return delivery_threads.hand_over(rt.store, rt.settings, target, rt.send)


@contextlib.contextmanager
def _message(task: Task) -> Iterator[Delivery]:
    """The message ``task`` runs, for the script of the step it leads to to acknowledge with
    the step (workers/lua/lib/acks.lua); once one did, Celery's ack after the task only
    forgets it in memory (workers.transport)."""
    message = Delivery((task.request.properties or {}).get("delivery_tag") or "")
    try:
        yield message
    finally:
        if message.acked:
            transport.acked_by_script(message.tag)


# --- poll -----------------------------------------------------------------------------------


def poll_step(
    rt: Runtime,
    job_id: str,
    seq: int,
    *,
    known: str = "",
    paced: bool = False,
    send: Sender | None = None,
    ack: Delivery | None = None,
) -> str:
    """One status call and its step (workers.polling). ``known``: what the message carries of
    the job (``jobs.Followed``); without it the job is read first. ``send`` takes what ending
    the job sets off (the poll task passes a ``Handover``, to run the create of the job given
    the freed slot itself). ``ack``, the poll's message, is acknowledged by the script of the
    step the status leads to; on the other ways out the task's ack after it does."""
    send = send or rt.send
    polled = polling.ask(rt, job_id, seq, known=known, paced=paced, send=send)
    if isinstance(polled, str):
        return polled
    return polling.settle(rt, polled, send, ack)


def poll_batch(rt: Runtime, flat: tuple[Any, ...]) -> str:
    """The polls of a ``wanq.poll`` message that carries several (``job_id, seq, known`` each,
    from the poll pump, workers.pump): their status calls one after another, then their steps
    together (``polling.settle_together``: two Redis round trips for all), then the creates
    of the jobs given the slots they freed (a message of one poll is a poll with its hint: its
    step acks it).

    The message is acknowledged after the task, as kombu does: a poll whose step is in is
    stale if it runs again. So is one whose step Redis refused for want of memory: the task
    then fails with it, and the message comes back once Redis takes writes. A batch that has
    taken ``PASS_ON_AFTER`` (a slow provider) sends each of the rest on as a poll message of
    its own (``wanq.poll`` with the same hint), for the threads that are free, so no poll
    waits long behind others."""
    handover = Handover(rt.send)
    started = time.monotonic()
    outcomes: dict[str, int] = {}
    passed = 0
    asked: list[polling.Polled] = []
    found: list[str | Exception] = []
    for start in range(0, len(flat) - 2, 3):
        if start and time.monotonic() - started > PASS_ON_AFTER:
            rest = range(start, len(flat) - 2, 3)
            for first in rest:  # one message each, for as many threads as are free
                rt.send(TaskName.POLL, tuple(flat[first : first + 3]))
            passed = len(rest)
            break
        job_id, seq, known = flat[start : start + 3]
        logs.bind_job(str(job_id))
        polled: polling.Polled | str | Exception
        try:
            polled = polling.ask(rt, str(job_id), int(seq), known=str(known), send=handover)
        except Exception as exc:  # one job's fault is not its neighbours': the sweeper resends it
            polled = exc
        if isinstance(polled, polling.Polled):
            asked.append(polled)
        else:
            found.append(_log_if_failed(polled))
    try:
        settled = polling.settle_together(rt, asked, handover)
    except Exception as exc:  # Redis went away: every poll of the batch is the sweeper's
        settled = [exc] * len(asked)
    for polled, outcome in zip(asked, settled, strict=True):
        logs.bind_job(polled.job_id)
        found.append(_log_if_failed(outcome))
    full: Exception | None = None  # Redis refused a write: the message runs again (transport)
    for outcome in found:
        if isinstance(outcome, Exception):
            full = outcome if transport.is_oom(outcome) else full
            outcome = "error"
        outcomes[outcome] = outcomes.get(outcome, 0) + 1
    if passed:
        outcomes["passed on"] = passed
    create_together(rt, handover.creates)
    logs.unbind()
    if full is not None:
        raise full
    return " ".join(f"{what}:{n}" for what, n in outcomes.items())


def _log_if_failed(outcome: str | Exception) -> str | Exception:
    if isinstance(outcome, Exception):
        log.error(
            "poll failed; the job's poll is sent again once overdue",
            exc_info=(type(outcome), outcome, outcome.__traceback__),
        )
    return outcome
