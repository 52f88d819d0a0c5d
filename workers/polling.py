"""A poll in two halves: the status call and what it found (``ask``), then the step that
writes it down (``settle``): the job's next poll, or its end.

A poll message of one job does both at once, its step acknowledging the message. A message of
several (the poll pump's, workers.pump) asks for every job first, then settles them together
(``settle_together``): the next polls' steps and the reads the ends need in one Redis round
trip, the ends in a second, instead of one or two round trips per poll. A round trip's socket
calls were the largest part of a worker's CPU after the HTTP calls (docs/bench-profile.md).
Each poll still reaches exactly the state it did alone: every step and end is its own script,
compare-and-set on the job's seq, and one that fails leaves the others standing.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field, replace
from typing import Any

from workers import account, errors, finalize, latency, logs, schedule
from workers.errors import JobFailure
from workers.finalize import Ending, cancel
from workers.jobs import Followed
from workers.names import BatchState, State, TaskName
from workers.provider import AccountProblem, Rejected, Status, Transient
from workers.runtime import Runtime
from workers.sender import Sender
from workers.store import Delivery, Finish, Step, View

log = logging.getLogger("wanq.tasks")


@dataclass(frozen=True)
class Polled:
    """What one status call found, for its step: ``status`` when the remote task ended,
    ``failure`` when the job must fail, else its next poll in ``delay`` seconds, the step
    writing ``fields`` (``answered``: the call went through, so it lifts an account block it
    disproves). ``view``: the job as read before the call, when the message had no hint."""

    job_id: str
    seq: int
    followed: Followed
    view: View | None
    now: float
    status: Status | None = None
    failure: JobFailure | None = None
    delay: float = 0.0
    fields: dict[str, Any] = field(default_factory=dict)
    answered: bool = False

    @property
    def ends(self) -> bool:
        return self.status is not None or self.failure is not None


def ask(
    rt: Runtime, job_id: str, seq: int, *, known: str = "", paced: bool = False, send: Sender
) -> Polled | str:
    """One status call, or why there is none ("stale", "cancelled" once it ended the job,
    "paced" once it sent the poll on with a countdown). ``known``: what the message carries of
    the job (``jobs.Followed``, written by the step that sent it); without it the job is read
    first."""
    jobs, settings = rt.store, rt.settings
    followed = Followed.parse(known) if known else None
    view = None
    if followed is None:
        view = jobs.view(job_id)
        checked = _checked(rt, view, seq, send)
        if checked:
            return checked
        assert view.job is not None
        followed = Followed.of(view.job)
    logs.bind_remote(followed.remote_task_id)
    if not paced and settings.poll_rate > 0:  # no poll rate: no pace script to run
        wait = jobs.pace(settings.poll_rate, settings.max_countdown, poll=True)
        if wait > 0:
            reserved = wait <= settings.max_countdown
            countdown = min(wait, settings.max_countdown)
            again = (job_id, seq, followed.text())
            rt.send(TaskName.POLL, again, kwargs={"paced": reserved}, countdown=countdown)
            return "paced"
    now = time.time()
    polled = Polled(job_id, seq, followed, view, now)
    if now - followed.created_at > settings.poll_deadline:
        failure = JobFailure(errors.STATUS_CHECK, f"no result after {settings.poll_deadline:.0f} s")
        return replace(polled, failure=failure)
    try:
        status = rt.provider.status(followed.remote_task_id)
    except AccountProblem as exc:
        account.block(jobs.redis, exc.http_status or 0, exc.plain(), source="status")
        return replace(polled, delay=settings.max_countdown, fields={"unmeasured": 1})
    except Rejected as exc:
        failure = JobFailure(errors.STATUS_CHECK, str(exc), remote=exc.remote())
        return replace(polled, failure=failure)
    except Transient as exc:
        misses = followed.poll_errors + 1
        log.info("status check %d failed: %s", misses, exc)
        if misses >= settings.poll_max_errors:
            code = errors.RESULT_PARSING if exc.unparseable else errors.STATUS_CHECK
            detail = f"{misses} failed status checks: {exc}"
            return replace(polled, failure=JobFailure(code, detail, remote=exc.remote()))
        delay = rt.retry.delay(misses, exc.retry_after)
        fields = {"poll_errors": misses, "last_error": str(exc), "unmeasured": 1}
        return replace(polled, delay=delay, fields=fields)

    if status.done:
        return replace(polled, status=status)
    elapsed = now - followed.created_at
    estimate = latency.estimate(jobs.redis)
    delay = schedule.next_poll_delay(followed.polls + 1, elapsed, estimate, settings)
    fields = {"poll_errors": 0, "last_miss_at": now}
    return replace(polled, delay=delay, fields=fields, answered=True)


def settle(rt: Runtime, polled: Polled, send: Sender, ack: Delivery | None = None) -> str:
    """Write what one poll found: "polling", "finished", "failed", "cancelled" or "stale".
    ``ack``, the poll's message, is acknowledged by the script of the step it leads to (the
    next poll's or the end's); on the other ways out the task's ack after it does."""
    if polled.ends:
        view = polled.view or rt.store.view(polled.job_id)
        ending = _ending(rt, polled, view, send)
        if isinstance(ending, str):
            return ending
        ack_end = ack if polled.failure is None else None  # a failure's: the task acks after
        return _end_outcome(polled, finalize.end(rt.store, ending, send, ack_end))
    delay, followed, step = _next_poll(rt, polled)
    job_id, seq = polled.job_id, polled.seq
    moved = step_and_poll(rt, job_id, seq, State.RUNNING, delay, followed, **step, ack=ack)
    return _polled_again(rt, polled, moved, send)


def settle_together(rt: Runtime, polls: list[Polled], send: Sender) -> list[str | Exception]:
    """``settle`` for the polls of several jobs in two round trips (see the module's doc),
    an outcome for each in order: an exception where its write failed."""
    if not rt.settings.poll_batch:  # no pump to leave the next polls to: one at a time
        return [settle(rt, polled, send) for polled in polls]
    again = [p for p in polls if not p.ends]
    unread = [p for p in polls if p.ends and p.view is None]
    planned = [_next_poll(rt, p) for p in again]
    steps = [
        pumped_step(p.job_id, p.seq, State.RUNNING, step)
        for p, (_, _, step) in zip(again, planned, strict=True)
    ]
    stepped, views = rt.store.steps_and_views(steps, [p.job_id for p in unread])
    outcome: dict[int, str | Exception] = {}
    for polled, moved in zip(again, stepped, strict=True):
        logs.bind_job(polled.job_id)
        if isinstance(moved, Exception):
            outcome[id(polled)] = moved
        else:
            outcome[id(polled)] = _polled_again(rt, polled, moved, send)
    read = {id(p): view for p, view in zip(unread, views, strict=True)}
    endings: list[tuple[Polled, Ending]] = []
    for polled in polls:
        if not polled.ends:
            continue
        logs.bind_job(polled.job_id)
        view = polled.view or read[id(polled)]
        if isinstance(view, Exception):
            outcome[id(polled)] = view
            continue
        ending = _ending(rt, polled, view, send)
        if isinstance(ending, str):
            outcome[id(polled)] = ending
        else:
            endings.append((polled, ending))
    ended = finalize.end_many(rt.store, [e for _, e in endings], send) if endings else []
    for (polled, _), finish in zip(endings, ended, strict=True):
        if isinstance(finish, Exception):
            outcome[id(polled)] = finish
        else:
            outcome[id(polled)] = _end_outcome(polled, finish)
    return [outcome[id(p)] for p in polls]


def _end_outcome(polled: Polled, finish: Finish) -> str:
    """What an end's write did: "stale" when another end came first."""
    if not finish:
        return "stale"
    return "failed" if polled.failure is not None else "finished"


def step_and_poll(
    rt: Runtime,
    job_id: str,
    seq: int,
    state: State,
    delay: float,
    followed: Followed,
    **step: Any,
) -> Step:
    """Move the job from ``state`` to running with its next poll due in ``delay``, the poll
    carrying ``followed`` (what the job holds once the step is in): the poll's message is
    pushed by the step's own script when the sender can render it (one round trip fewer, and
    no step without its poll if this worker dies), else sent once the step is in. With the
    poll pump (``poll_batch``, workers.pump) the step leaves the poll to it instead: the
    pump reads what the poll carries from the job when it is due."""
    if rt.settings.poll_batch:
        return rt.store.step(**pumped_step(job_id, seq, state, step))
    known = followed.text()
    poll = (job_id, seq + 1, known)  # the seq the step gives the job
    prepared = rt.prepare(TaskName.POLL, poll, countdown=delay) if rt.prepare else None
    moved = rt.store.step(job_id, seq, (state,), State.RUNNING, then=prepared, **step)
    if moved.applied and prepared is None:
        rt.send(TaskName.POLL, (job_id, moved.seq, known), countdown=delay)
    return moved


def first_poll(polled: bool, now: float) -> dict[str, float]:
    return {} if polled else {"first_poll_at": now}


def _checked(rt: Runtime, view: View, seq: int, send: Sender) -> str:
    """Why a poll that read its job stops ("stale", or "cancelled" once it ended the job),
    or "" to go on."""
    job = view.job
    if job is None or job.seq != seq or job.state != State.RUNNING:
        return "stale"
    if view.batch_state == BatchState.CANCELLED:
        cancel(rt.store, job.job_id, job.raw, send)
        return "cancelled"
    return ""


def _next_poll(rt: Runtime, polled: Polled) -> tuple[float, Followed, dict[str, Any]]:
    """The step that schedules the next poll: its delay, what the job holds once it is in,
    and the step's writes (workers.store.step's ``poll``: the script reads for it what the
    poll did not: a cancelled batch, a blocked account)."""
    delay = schedule.clamp(polled.delay, rt.settings)
    now = time.time()
    fields = {**polled.fields, **first_poll(polled.followed.polled, now), "poll_at": now + delay}
    errors_now = int(fields.get("poll_errors", polled.followed.poll_errors))
    followed = polled.followed
    after = replace(followed, polls=followed.polls + 1, poll_errors=errors_now, polled=True)
    step = {"due": now + delay, "incr": ("polls",), "fields": fields, "poll": True}
    return delay, after, step


def pumped_step(job_id: str, seq: int, state: State, step: dict[str, Any]) -> dict[str, Any]:
    """A step from ``state`` to running, its next poll left to the pump, as ``JobStore.step``
    and ``JobStore.steps_and_views`` take it (``step``: its due time and writes)."""
    return {
        "job_id": job_id,
        "seq": seq,
        "allowed": (state,),
        "to": State.RUNNING,
        "pump": True,
        **step,
    }


def _polled_again(rt: Runtime, polled: Polled, moved: Step, send: Sender) -> str:
    """After the next poll's step: a cancelled batch ends the job instead; a call that went
    through lifts an account block it disproves."""
    if moved.batch_cancelled:
        cancel(rt.store, polled.job_id, rt.store.job(polled.job_id), send)
        return "cancelled"
    if polled.answered and moved.account_blocked:
        _answered(rt, account.blocked(rt.store.redis))
    return "polling" if moved.applied else "stale"


def _ending(rt: Runtime, polled: Polled, view: View, send: Sender) -> Ending | str:
    """The end a poll that ends its job leads to, from the job's record: the remote task's
    (a status that says it ended: this poll counted in the same atomic step) or the poll's
    failure; or why not ("stale", "cancelled"). A job of a cancelled batch ends cancelled
    whatever its poll found, whether or not the poll read the job before its call."""
    checked = _checked(rt, view, polled.seq, send)
    if checked:
        return checked
    job = view.job
    assert job is not None
    if polled.failure is not None:
        return finalize.failure_ending(rt.store, polled.job_id, polled.seq, job.raw, polled.failure)
    assert polled.status is not None
    _answered(rt, view.account)
    seen = {"polls": job.polls + 1, **first_poll(bool(job.first_poll_at), polled.now)}
    return finalize.status_ending(rt.store, polled.job_id, polled.seq, job.raw, polled.status, seen)


def _answered(rt: Runtime, block: dict[str, str]) -> None:
    """A status call went through while the account was blocked (``block``, read by the
    poll): lift the block it disproves (an outage only polls saw ends here)."""
    if account.status_worked(rt.store.redis, block):
        log.info("a status call went through: the account works again, creation resumes")
