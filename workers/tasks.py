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
from dataclasses import replace
from typing import Any, Protocol

from celery import Celery, Task, signals

from workers import account, delivery_threads, errors, latency, logs, pacing, schedule, transport
from workers.errors import JobFailure
from workers.finalize import cancel, fail, succeed_or_fail
from workers.handover import Handover
from workers.jobs import Followed, Job
from workers.names import JOB_TASKS, BatchState, Hold, State, TaskName, target_batch
from workers.pricing import worst_case_images
from workers.provider import AccountProblem, Rejected, Status, Transient
from workers.runtime import Runtime
from workers.sender import Sender
from workers.store import Delivery, Step, View

log = logging.getLogger("wanq.tasks")

CLAIMABLE = (State.QUEUED, State.WAITING, State.CREATING)
PASS_ON_AFTER = 0.5  # seconds a poll task of several polls before it sends the rest on, one each


class Retrying(Protocol):
    """What a create step needs of its task: Celery's ``Task.retry`` (or ``InlineCreate``'s)."""

    def retry(
        self,
        args: tuple[Any, ...] | None = None,
        kwargs: dict[str, Any] | None = None,
        *,
        countdown: float | None = None,
    ) -> BaseException: ...


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


# --- create ---------------------------------------------------------------------------------


def create_step(
    rt: Runtime,
    task: Retrying,
    job_id: str,
    seq: int,
    *,
    probe: bool = False,
    paced: bool = False,
    ack: Delivery | None = None,
) -> str:
    """Claim the job and create its remote task. ``ack``, the create's message, is
    acknowledged by the script of the step that stores the remote ID; on the other ways out
    the task's ack after it does."""
    jobs, settings = rt.store, rt.settings
    view = jobs.view(job_id, payload=True)
    job = view.job
    if job is None:
        return "stale"
    if job.state == State.RUNNING:
        return _poll_if_overdue(rt, job)
    if job.seq != seq or job.state not in CLAIMABLE:
        return "stale"
    if not paced and (settings.create_rate > 0 or view.pace_tightened):  # else: no pace script
        wait = jobs.pace(settings.create_rate, settings.max_countdown)
        if wait > 0:  # waiting for its pace slot is not being overdue: the sweeper must wait too
            reserved = wait <= settings.max_countdown
            countdown = min(wait, settings.max_countdown)
            jobs.postpone(job_id, time.time() + countdown)
            raise task.retry(kwargs={"probe": probe, "paced": reserved}, countdown=countdown)

    request = jobs.request(job_id, view.payload) or {}
    claim = jobs.claim(job_id, seq, rt.create_window(), worst_case_images(request), probe)
    if not claim.applied:
        return _not_claimed(rt, view, claim.previous)
    if claim.previous == State.CREATING:
        log.warning("job %s: a create died between POST and storing the ID (counted)", job_id)
    return _create_remote(rt, task, view, claim.seq, job.attempts + 1, request, ack)


def _not_claimed(rt: Runtime, view: View, why: str) -> str:
    """Cancelled jobs end; jobs of a blocked account, a paused or over-budget batch, or over
    the in-flight cap park in Redis (not as countdown messages in a worker) until they may
    go on."""
    job = view.job
    assert job is not None
    if why == BatchState.CANCELLED:
        cancel(rt.store, job.job_id, job.raw, rt.send)
    elif why == Hold.ACCOUNT:  # read before the claim, unless the block came since
        block = view.account or account.blocked(rt.store.redis)
        rt.store.park(job.job_id, job.seq, Hold.ACCOUNT, block.get("reason", "account blocked"))
        return "held"
    elif why in (Hold.PAUSED, Hold.BUDGET):
        rt.store.park(job.job_id, job.seq, Hold(why), f"batch {why}")
    elif why in ("full", "pricing"):
        rt.store.park(job.job_id, job.seq, Hold.SLOT, "waiting for an in-flight slot")
    return why


def _poll_if_overdue(rt: Runtime, job: Job) -> str:
    """A redelivered create that finds a remote ID polls instead, if its poll looks lost."""
    due = rt.store.due.when(job.job_id)
    if due is None or due > time.time():
        return "stale"
    rt.send(TaskName.POLL, (job.job_id, job.seq, Followed.of(job).text()))
    return "polling"


def _create_remote(
    rt: Runtime,
    task: Retrying,
    view: View,
    seq: int,
    attempts: int,
    request: dict[str, Any],
    ack: Delivery | None = None,
) -> str:
    """POST, then store the remote ID and send the first poll. ``view`` was read before the
    claim: Redis is written for the account and the pace only when they were not clear."""
    job = view.job
    assert job is not None
    jobs, settings, job_id = rt.store, rt.settings, job.job_id
    try:
        remote_id = rt.provider.create(request)
    except AccountProblem as exc:
        account.block(jobs.redis, exc.http_status or 0, exc.plain())
        jobs.park(job_id, seq, Hold.ACCOUNT, exc.plain())
        log.warning("account problem, creation paused cluster-wide: %s", exc.plain())
        return "held"
    except Rejected as exc:
        fail(
            jobs,
            job_id,
            seq,
            job.raw,
            JobFailure(errors.HTTP_ERROR, str(exc), remote=exc.remote()),
            rt.send,
        )
        return "failed"
    except Transient as exc:
        if exc.ambiguous:  # the POST may have made a task: a possible duplicate, counted
            jobs.count_ambiguous_create(job_id, worst_case_images(request))
        if exc.http_status == 429:
            rate = pacing.tighten(jobs.redis, settings.create_rate)
            if rate is not None:
                log.warning("HTTP 429: cluster creation pace tightened to %.2f/s", rate)
        return _retry_create(rt, task, job, seq, attempts, exc)

    logs.bind_remote(remote_id)
    log.info("remote task created (attempt %d)", attempts)
    if view.account and account.unblock(jobs.redis):
        log.info("the account works again: creation resumes")
    if view.pace_tightened:
        pacing.relax(jobs.redis, settings.create_rate)
    delay = schedule.first_poll_delay(latency.estimate(jobs.redis), settings)
    now = time.time()
    fields = {
        "remote_task_id": remote_id,
        "created_at": now,
        "last_error": "",
        "poll_at": now + delay,
    }
    followed = replace(Followed.of(job), remote_task_id=remote_id, created_at=now)
    _step_and_poll(
        rt, job_id, seq, State.CREATING, delay, followed, due=now + delay, fields=fields, ack=ack
    )
    return "created"


def _retry_create(
    rt: Runtime, task: Retrying, job: Job, seq: int, attempts: int, exc: Transient
) -> str:
    """Back off and retry through Celery, or fail with a run code once attempts run out."""
    log.info("create attempt %d failed: %s", attempts, exc)
    if rt.retry.exhausted(attempts):
        code = errors.HTTP_ERROR if exc.http_status else errors.TASK_CREATION
        detail = f"gave up after {attempts} attempts: {exc}"
        fail(
            rt.store,
            job.job_id,
            seq,
            job.raw,
            JobFailure(code, detail, remote=exc.remote()),
            rt.send,
        )
        return "failed"
    delay = schedule.clamp(rt.retry.delay(attempts, exc.retry_after), rt.settings)
    backoff = rt.store.step(
        job.job_id,
        seq,
        (State.CREATING,),
        State.WAITING,
        due=time.time() + delay,
        fields={"last_error": str(exc)},
    )
    if not backoff.applied:
        return "stale"
    raise task.retry(args=(job.job_id, backoff.seq), kwargs={}, countdown=delay)


class _Deferred(Exception):
    """An inline create that has to wait: its create message was sent with a countdown."""


class InlineCreate:
    """The ``task`` of a create run inside the poll that freed its slot: a retry becomes a
    create message sent with the countdown (as Celery's retry would send), then ``_Deferred``."""

    def __init__(self, rt: Runtime, job_id: str, seq: int) -> None:
        self._rt, self._args = rt, (job_id, seq)

    def retry(
        self,
        args: tuple[Any, ...] | None = None,
        kwargs: dict[str, Any] | None = None,
        *,
        countdown: float | None = None,
    ) -> BaseException:
        self._rt.send(
            TaskName.CREATE, tuple(args or self._args), kwargs=kwargs, countdown=countdown
        )
        return _Deferred()


def create_inline(rt: Runtime, job_id: str, seq: int) -> str:
    """Create an admitted job's remote task in this thread (see workers.handover). On any
    error the job's create message goes out after all: a stale seq makes it do nothing, and
    the due set covers a message lost with this worker."""
    logs.bind_job(job_id)
    try:
        outcome = create_step(rt, InlineCreate(rt, job_id, seq), job_id, seq)
    except _Deferred:
        outcome = "deferred"
    except Exception:
        log.exception("inline create failed; sending its create message")
        rt.send(TaskName.CREATE, (job_id, seq))
        outcome = "sent"
    log.info("handed-over create: %s", outcome)  # the benchmark counts these beside the tasks
    return outcome


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
    """One status call. ``known``: what the message carries of the job (``jobs.Followed``,
    written by the step that sent it); without it the job is read first. ``send`` takes what
    ending the job sets off (the poll task passes a ``Handover``, to run the create of the job
    given the freed slot itself). ``ack``, the poll's message, is acknowledged by the script of
    the step the status leads to (the next poll's or the end's); on the other ways out the
    task's ack after it does."""
    jobs, settings = rt.store, rt.settings
    send = send or rt.send
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
    if now - followed.created_at > settings.poll_deadline:
        failure = JobFailure(errors.STATUS_CHECK, f"no result after {settings.poll_deadline:.0f} s")
        return _fail(rt, job_id, seq, view, failure, send)
    try:
        status = rt.provider.status(followed.remote_task_id)
    except AccountProblem as exc:
        account.block(jobs.redis, exc.http_status or 0, exc.plain(), source="status")
        return _poll_again(rt, job_id, seq, followed, settings.max_countdown, {"unmeasured": 1})
    except Rejected as exc:
        failure = JobFailure(errors.STATUS_CHECK, str(exc), remote=exc.remote())
        return _fail(rt, job_id, seq, view, failure, send)
    except Transient as exc:
        misses = followed.poll_errors + 1
        log.info("status check %d failed: %s", misses, exc)
        if misses >= settings.poll_max_errors:
            code = errors.RESULT_PARSING if exc.unparseable else errors.STATUS_CHECK
            detail = f"{misses} failed status checks: {exc}"
            failure = JobFailure(code, detail, remote=exc.remote())
            return _fail(rt, job_id, seq, view, failure, send)
        delay = rt.retry.delay(misses, exc.retry_after)
        fields = {"poll_errors": misses, "last_error": str(exc), "unmeasured": 1}
        return _poll_again(rt, job_id, seq, followed, delay, fields, send=send, ack=ack)

    if status.done:
        return _end(rt, job_id, seq, view, status, now, send, ack)
    elapsed = now - followed.created_at
    polls = followed.polls + 1
    delay = schedule.next_poll_delay(polls, elapsed, latency.estimate(jobs.redis), settings)
    fields = {"poll_errors": 0, "last_miss_at": now}
    return _poll_again(rt, job_id, seq, followed, delay, fields, send=send, ack=ack, answered=True)


def poll_batch(rt: Runtime, flat: tuple[Any, ...]) -> str:
    """The polls of a ``wanq.poll`` message that carries several (``job_id, seq, known`` each,
    from the poll pump, workers.pump), one after another, then the creates of the jobs given
    the slots they freed (a message of one poll is a poll with its hint: its step acks it).

    The message is acknowledged after the task, as kombu does: a poll whose step is in is
    stale if it runs again. So is one whose step Redis refused for want of memory: the task
    then fails with it, and the message comes back once Redis takes writes. A batch that has
    taken ``PASS_ON_AFTER`` (a slow provider) sends each of the rest on as a poll message of
    its own (``wanq.poll`` with the same hint), for the threads that are free, so no poll
    waits long behind others."""
    handover = Handover(rt.send)
    started = time.monotonic()
    outcomes: dict[str, int] = {}
    full: Exception | None = None  # Redis refused a write: the message runs again (transport)
    for start in range(0, len(flat) - 2, 3):
        if start and time.monotonic() - started > PASS_ON_AFTER:
            rest = range(start, len(flat) - 2, 3)
            for first in rest:  # one message each, for as many threads as are free
                rt.send(TaskName.POLL, tuple(flat[first : first + 3]))
            outcomes["passed on"] = len(rest)
            break
        job_id, seq, known = flat[start : start + 3]
        logs.bind_job(str(job_id))
        try:
            outcome = poll_step(rt, str(job_id), int(seq), known=str(known), send=handover)
        except Exception as exc:  # one job's fault is not its neighbours': the sweeper resends it
            log.exception("poll failed; the job's poll is sent again once overdue")
            outcome, full = "error", (exc if transport.is_oom(exc) else full)
        outcomes[outcome] = outcomes.get(outcome, 0) + 1
    for admitted in handover.creates:
        create_inline(rt, *admitted)
    logs.unbind()
    if full is not None:
        raise full
    return " ".join(f"{what}:{n}" for what, n in outcomes.items())


def _checked(rt: Runtime, view: View, seq: int, send: Sender) -> str:
    """Why a poll that read its job stops before calling the provider ("stale", or
    "cancelled" once it ended the job), or "" to go on."""
    job = view.job
    if job is None or job.seq != seq or job.state != State.RUNNING:
        return "stale"
    if view.batch_state == BatchState.CANCELLED:
        cancel(rt.store, job.job_id, job.raw, send)
        return "cancelled"
    return ""


def _end(
    rt: Runtime,
    job_id: str,
    seq: int,
    view: View | None,
    status: Status,
    now: float,
    send: Sender,
    ack: Delivery | None,
) -> str:
    """The status says the remote task ended: the job's record, read now if the poll did not
    read it before the call, goes into its end (this poll counted in the same atomic step)."""
    if view is None:
        view = rt.store.view(job_id)
        checked = _checked(rt, view, seq, send)
        if checked:
            return checked
    job = view.job
    assert job is not None
    _answered(rt, view.account)
    seen = {"polls": job.polls + 1, **_first_poll(bool(job.first_poll_at), now)}
    ended = succeed_or_fail(rt.store, job_id, seq, job.raw, status, seen, send, ack)
    return "finished" if ended else "stale"


def _answered(rt: Runtime, block: dict[str, str]) -> None:
    """A status call went through while the account was blocked (``block``, read by the
    poll): lift the block it disproves (an outage only polls saw ends here)."""
    if account.status_worked(rt.store.redis, block):
        log.info("a status call went through: the account works again, creation resumes")


def _fail(
    rt: Runtime, job_id: str, seq: int, view: View | None, failure: JobFailure, send: Sender
) -> str:
    """End the job as failed: its record as read before the call, or read now."""
    record = view.job.raw if view and view.job else rt.store.job(job_id)
    fail(rt.store, job_id, seq, record, failure, send)
    return "failed"


def _poll_again(
    rt: Runtime,
    job_id: str,
    seq: int,
    followed: Followed,
    delay: float,
    fields: dict[str, Any],
    *,
    send: Sender | None = None,
    ack: Delivery | None = None,
    answered: bool = False,
) -> str:
    """The next poll, its step told what the poll did not read (workers.store.step's
    ``poll``): a cancelled batch ends the job instead; ``answered``, a status call that went
    through, lifts an account block it disproves."""
    delay = schedule.clamp(delay, rt.settings)
    now = time.time()
    fields = {**fields, **_first_poll(followed.polled, now), "poll_at": now + delay}
    errors_now = int(fields.get("poll_errors", followed.poll_errors))
    after = replace(followed, polls=followed.polls + 1, poll_errors=errors_now, polled=True)
    step = _step_and_poll(
        rt,
        job_id,
        seq,
        State.RUNNING,
        delay,
        after,
        due=now + delay,
        incr=("polls",),
        fields=fields,
        ack=ack,
        poll=True,
    )
    if step.batch_cancelled:
        cancel(rt.store, job_id, rt.store.job(job_id), send or rt.send)
        return "cancelled"
    if answered and step.account_blocked:
        _answered(rt, account.blocked(rt.store.redis))
    return "polling" if step.applied else "stale"


def _step_and_poll(
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
        return rt.store.step(job_id, seq, (state,), State.RUNNING, pump=True, **step)
    known = followed.text()
    poll = (job_id, seq + 1, known)  # the seq the step gives the job
    prepared = rt.prepare(TaskName.POLL, poll, countdown=delay) if rt.prepare else None
    moved = rt.store.step(job_id, seq, (state,), State.RUNNING, then=prepared, **step)
    if moved.applied and prepared is None:
        rt.send(TaskName.POLL, (job_id, moved.seq, known), countdown=delay)
    return moved


def _first_poll(polled: bool, now: float) -> dict[str, float]:
    return {} if polled else {"first_poll_at": now}
