"""Creating a job's remote task: claim it, POST its request, store the remote ID.

The claim reads back in its own round trip what the create needs (the job, its request, the
account's block: lua/claim.lua; the worst case it reserves was stored at submission). A
``wanq.create`` message runs ``create_step``; the creates of the jobs given the slots a poll
freed run in the poll's thread (workers.handover): one at a time (``create_inline``), or for a
poll message of several jobs together (``create_together``): their claims in one round trip,
their POSTs one after another, their steps in a second.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, replace
from typing import Any, Protocol

from workers import account, errors, images, latency, logs, pacing, polling, schedule
from workers.errors import JobFailure
from workers.finalize import cancel, fail
from workers.jobs import Followed, Job
from workers.names import BatchState, Hold, State, TaskName
from workers.pricing import worst_case_images
from workers.provider import AccountProblem, Rejected, Transient
from workers.runtime import Runtime
from workers.store import Delivery, Step, View

log = logging.getLogger("wanq.tasks")

CLAIMABLE = (State.QUEUED, State.WAITING, State.CREATING)


class Retrying(Protocol):
    """What a create step needs of its task: Celery's ``Task.retry`` (or ``InlineCreate``'s)."""

    def retry(
        self,
        args: tuple[Any, ...] | None = None,
        kwargs: dict[str, Any] | None = None,
        *,
        countdown: float | None = None,
    ) -> BaseException: ...


@dataclass(frozen=True)
class Claimed:
    """A job claimed for creation, with what its create needs: the view its claim read back
    (``view.job`` as the claim left it), the seq the claim gave it, and its request."""

    view: View
    seq: int
    request: dict[str, Any]

    @property
    def job(self) -> Job:
        assert self.view.job is not None
        return self.view.job


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
    claimed = _claim(rt, task, job_id, seq, probe=probe, paced=paced)
    if isinstance(claimed, str):
        return claimed
    remote_id, outcome = _post(rt, task, claimed)
    if remote_id is None:
        return outcome
    delay, followed, step = _created(rt, claimed, remote_id)
    polling.step_and_poll(rt, job_id, claimed.seq, State.CREATING, delay, followed, **step, ack=ack)
    return "created"


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
        outcome = _send_instead(rt, job_id, seq)
    return _log_handed_over(outcome)


def create_together(rt: Runtime, admitted: list[tuple[str, int]]) -> list[str]:
    """``create_inline`` for several jobs in two round trips: their claims (as the submission
    priced them) in one, their POSTs one after another, their steps (the remote ID, the
    first poll left to the pump) in a second. A claim that must wait for the creation pace,
    or whose job has no stored worst case, goes the one-at-a-time way."""
    settings = rt.settings
    if len(admitted) < 2 or not settings.poll_batch or settings.create_rate > 0:
        return [create_inline(rt, job_id, seq) for job_id, seq in admitted]
    outcomes = [""] * len(admitted)
    posted: list[tuple[int, Claimed, str]] = []
    try:
        claims = rt.store.claims_and_views(admitted, rt.create_window(), check_pace=True)
    except Exception as exc:  # Redis went away: each create the one-at-a-time way
        claims = [exc] * len(admitted)
    for i, ((job_id, seq), answer) in enumerate(zip(admitted, claims, strict=True)):
        if isinstance(answer, Exception) or answer[0].previous in ("pace", "unpriced"):
            outcomes[i] = create_inline(rt, job_id, seq)
            continue
        logs.bind_job(job_id)
        remote_id, outcome, claimed = None, "", None
        try:
            found = _claim_outcome(rt, job_id, *answer)
            if isinstance(found, str):
                outcome = found
            else:
                claimed = found
                remote_id, outcome = _post(rt, InlineCreate(rt, job_id, seq), found)
        except _Deferred:
            outcome = "deferred"
        except Exception:
            outcome = _send_instead(rt, job_id, seq)
        if remote_id is None or claimed is None:
            outcomes[i] = _log_handed_over(outcome)
        else:
            posted.append((i, claimed, remote_id))
    steps = []
    for _, claimed, remote_id in posted:
        logs.bind_job(claimed.job.job_id)
        _, _, step = _created(rt, claimed, remote_id)
        steps.append(polling.pumped_step(claimed.job.job_id, claimed.seq, State.CREATING, step))
    try:
        stepped: list[Step | Exception] = rt.store.steps_and_views(steps, [])[0] if steps else []
    except Exception as exc:  # Redis went away: as if this worker died after the POSTs
        stepped = [exc] * len(steps)
    for (i, claimed, _), moved in zip(posted, stepped, strict=True):
        logs.bind_job(claimed.job.job_id)
        if isinstance(moved, Exception):  # POSTed, ID not stored: as if killed in between
            log.error("storing the remote ID failed: %s", moved)
            outcomes[i] = _log_handed_over(_send_instead(rt, *admitted[i], failed=False))
        else:
            outcomes[i] = _log_handed_over("created" if moved.applied else "stale")
    return outcomes


def _log_handed_over(outcome: str) -> str:
    log.info("handed-over create: %s", outcome)  # the benchmark counts these beside the tasks
    return outcome


def _send_instead(rt: Runtime, job_id: str, seq: int, failed: bool = True) -> str:
    """The create message of an inline create that failed (``failed``: logged with the
    exception being handled); its seq is stale once the claim went in: the due set covers it."""
    if failed:
        log.exception("inline create failed; sending its create message")
    rt.send(TaskName.CREATE, (job_id, seq))
    return "sent"


def _claim(
    rt: Runtime, task: Retrying, job_id: str, seq: int, *, probe: bool, paced: bool
) -> Claimed | str:
    """Claim the job (taking a slot of the creation pace first when one is set or 429s
    tightened it): the claimed job, or the outcome of a create that goes no further."""
    jobs, settings = rt.store, rt.settings
    if not paced and settings.create_rate > 0:  # a configured pace: its slot, if the job may go
        job = jobs.view(job_id).job
        if job is None or job.seq != seq or job.state not in CLAIMABLE:
            return _stale(rt, job)
        _take_pace_slot(rt, task, job_id, probe)
        paced = True
    worst: int | None = None  # stored at submission; a record without it is worked out here
    while True:
        window = rt.create_window()
        claim, view = jobs.claim_and_view(job_id, seq, window, worst, probe, not paced)
        if claim.previous == "unpriced" and worst is None:
            request = jobs.request(job_id, view.payload, with_images=False) or {}
            worst = worst_case_images(request)
        elif claim.previous == "pace" and not paced:  # 429s tightened the pace: a slot first
            _take_pace_slot(rt, task, job_id, probe)
            paced = True
        else:
            return _claim_outcome(rt, job_id, claim, view)


def _claim_outcome(rt: Runtime, job_id: str, claim: Step, view: View) -> Claimed | str:
    """What a claim's answer leads to: the claimed job with its request, or the outcome of a
    create that goes no further (stale, parked, cancelled, or failed for a missing image)."""
    job = view.job
    if job is None or claim.previous in ("stale", "unpriced"):
        return _stale(rt, job)
    if not claim.applied:
        return _not_claimed(rt, view, claim.previous)
    if claim.previous == State.CREATING:
        log.warning("job %s: a create died between POST and storing the ID (counted)", job_id)
    try:
        request = rt.store.request(job_id, view.payload) or {}
    except images.ImageMissing as exc:  # a reference-counting bug: never POSTed, so not paid
        failure = JobFailure(errors.TASK_CREATION, f"a reference image is not stored: {exc}")
        fail(rt.store, job_id, claim.seq, job.raw, failure, rt.send)
        return "failed"
    return Claimed(view, claim.seq, request)


def _stale(rt: Runtime, job: Job | None) -> str:
    """A create for a job that moved on does nothing; one that finds a remote ID polls
    instead, if its poll looks lost."""
    if job is not None and job.state == State.RUNNING:
        return _poll_if_overdue(rt, job)
    return "stale"


def _take_pace_slot(rt: Runtime, task: Retrying, job_id: str, probe: bool) -> None:
    """A slot of the cluster's creation pace, or the create retried with a countdown (waiting
    for its pace slot is not being overdue: the sweeper must wait too)."""
    settings = rt.settings
    wait = rt.store.pace(settings.create_rate, settings.max_countdown)
    if wait > 0:
        reserved = wait <= settings.max_countdown
        countdown = min(wait, settings.max_countdown)
        rt.store.postpone(job_id, time.time() + countdown)
        raise task.retry(kwargs={"probe": probe, "paced": reserved}, countdown=countdown)


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


def _post(rt: Runtime, task: Retrying, claimed: Claimed) -> tuple[str | None, str]:
    """POST the request: the remote ID, or None and the outcome of a create that failed
    (held for the account, failed, retried later)."""
    jobs, settings, job, seq = rt.store, rt.settings, claimed.job, claimed.seq
    job_id = job.job_id
    try:
        return rt.provider.create(claimed.request), ""
    except AccountProblem as exc:
        account.block(jobs.redis, exc.http_status or 0, exc.plain())
        jobs.park(job_id, seq, Hold.ACCOUNT, exc.plain())
        log.warning("account problem, creation paused cluster-wide: %s", exc.plain())
        return None, "held"
    except Rejected as exc:
        failure = JobFailure(errors.HTTP_ERROR, str(exc), remote=exc.remote())
        fail(jobs, job_id, seq, job.raw, failure, rt.send)
        return None, "failed"
    except Transient as exc:
        if exc.ambiguous:  # the POST may have made a task: a possible duplicate, counted
            jobs.count_ambiguous_create(job_id, worst_case_images(claimed.request))
        if exc.http_status == 429:
            rate = pacing.tighten(jobs.redis, settings.create_rate)
            if rate is not None:
                log.warning("HTTP 429: cluster creation pace tightened to %.2f/s", rate)
        return None, _retry_create(rt, task, job, seq, job.attempts, exc)


def _created(
    rt: Runtime, claimed: Claimed, remote_id: str
) -> tuple[float, Followed, dict[str, Any]]:
    """After the POST: the step that stores the remote ID and schedules the first poll (its
    delay, what the job holds once it is in, the step's writes). The view was read with the
    claim: Redis is written for the account and the pace only when they were not clear."""
    jobs, settings, view = rt.store, rt.settings, claimed.view
    logs.bind_remote(remote_id)
    log.info("remote task created (attempt %d)", claimed.job.attempts)
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
    followed = replace(Followed.of(claimed.job), remote_task_id=remote_id, created_at=now)
    return delay, followed, {"due": now + delay, "fields": fields}


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
