"""The two tasks: ``wanq.create`` starts a remote task, ``wanq.poll`` follows it.

Both take ``(job_id, seq)`` and nothing else: the request lives in Redis (claim check), the
API key in the worker's environment. A message whose seq no longer matches the job is stale
(a duplicate, a redelivery, a rescued job's late original) and does nothing. Neither task
ever sleeps: every wait is a countdown on a new message.
"""

from __future__ import annotations

import logging
import time

from celery import signals

from workers import account, delivery_threads, errors, keys, logs, pacing, schedule
from workers.app import app, provider, settings, store
from workers.errors import JobFailure
from workers.finalize import cancel, fail, latency_estimate, succeed_or_fail
from workers.pricing import worst_case_images
from workers.provider import AccountProblem, Rejected, Transient
from workers.store import State

log = logging.getLogger("wanq.tasks")

RETRY = schedule.RetryPolicy.from_settings(settings)
CLAIMABLE = (State.QUEUED, State.WAITING, State.CREATING)


@signals.task_prerun.connect
def _bind_job(task: object = None, args: tuple = (), **_: object) -> None:
    """Every log line a job's task writes names the job (see workers.logs), Celery's own
    "succeeded" line too: it comes after postrun, so the next task's prerun unbinds."""
    name = getattr(task, "name", "")
    target = str(args[0]) if args else ""
    if name in logs.JOB_TASKS or (name == "wanq.deliver" and not target.startswith("batch:")):
        logs.bind_job(target)
    else:
        logs.unbind()


def create_window() -> float:
    """How long a create can be in flight; a claim older than this died between POST and ID."""
    return settings.connect_timeout + settings.read_timeout + 5.0


@app.task(name="wanq.create", bind=True, max_retries=None)  # attempts are counted in Redis
def create(self, job_id: str, seq: int, probe: bool = False, paced: bool = False) -> str:
    jobs = store()
    job = jobs.job(job_id)
    if job.get("state") == State.RUNNING:
        return _poll_if_overdue(job_id, job)
    if not job or int(job["seq"]) != seq or job["state"] not in CLAIMABLE:
        return "stale"
    now = time.time()
    died_in_window = job["state"] == State.CREATING
    if died_in_window and now - float(job.get("claimed_at") or 0) < create_window():
        return "busy"  # another worker is creating it right now
    block = account.blocked(jobs.redis)
    if block and not probe:
        jobs.park(job_id, seq, "account", block.get("reason", "account blocked"))
        return "held"
    if not paced:
        wait = jobs.pace(settings.create_rate, settings.max_countdown)
        if wait > 0:
            reserved = wait <= settings.max_countdown
            raise self.retry(
                kwargs={"probe": probe, "paced": reserved},
                countdown=min(wait, settings.max_countdown),
            )

    request = jobs.request(job_id) or {}
    worst = round(worst_case_images(request) * settings.unit_price * 1_000_000)
    claim = jobs.claim(job_id, seq, now + create_window(), worst, died_in_window)
    if not claim.applied:
        return _not_claimed(job_id, seq, job, claim.previous)
    if died_in_window:
        jobs.count("create_window_losses")
        log.warning("job %s: a create died between POST and storing the ID", job_id)
    attempts = int(job.get("attempts") or 0) + 1
    return _create_remote(self, job_id, claim.seq, job, attempts, request)


def _not_claimed(job_id: str, seq: int, job: dict[str, str], why: str) -> str:
    """Cancelled jobs end; jobs of a paused or over-budget batch, or over the in-flight cap,
    park in Redis (not as countdown messages in a worker) until they may go on."""
    if why == "cancelled":
        cancel(store(), job_id, job)
    elif why in ("paused", "budget"):
        store().park(job_id, seq, why, f"batch {why}")
    elif why == "full":
        store().park(job_id, seq, "slot", "waiting for an in-flight slot")
    return why


def _poll_if_overdue(job_id: str, job: dict[str, str]) -> str:
    """A redelivered create that finds a remote ID polls instead, if its poll looks lost."""
    due = store().redis.zscore(keys.DUE, job_id)
    if due is None or due > time.time():
        return "stale"
    poll.apply_async((job_id, int(job["seq"])))
    return "polling"


def _create_remote(
    task, job_id: str, seq: int, job: dict[str, str], attempts: int, request: dict
) -> str:
    jobs = store()
    try:
        remote_id = provider().create(request)
    except AccountProblem as exc:
        account.block(jobs.redis, exc.http_status or 0, exc.plain())
        jobs.park(job_id, seq, "account", exc.plain())
        log.warning("account problem, creation paused cluster-wide: %s", exc.plain())
        return "held"
    except Rejected as exc:
        fail(jobs, job_id, seq, job, JobFailure(errors.HTTP_ERROR, str(exc), remote=exc.remote()))
        return "failed"
    except Transient as exc:
        if exc.ambiguous:  # no answer to a POST: a duplicate remote task is possible; count it
            jobs.count("create_ambiguous")
            jobs.redis.hincrby(keys.job(job_id), "create_ambiguous", 1)
        if exc.http_status == 429:
            rate = pacing.tighten(jobs.redis, settings.create_rate)
            if rate is not None:
                log.warning("HTTP 429: cluster creation pace tightened to %.2f/s", rate)
        return _retry_create(task, job_id, seq, job, attempts, exc)

    logs.bind_remote(remote_id)
    log.info("remote task created (attempt %d)", attempts)
    if account.unblock(jobs.redis):
        log.info("the account works again: creation resumes")
    pacing.relax(jobs.redis, settings.create_rate)
    delay = schedule.first_poll_delay(latency_estimate(jobs), settings)
    now = time.time()
    running = jobs.step(
        job_id,
        seq,
        (State.CREATING,),
        State.RUNNING,
        due=now + delay,
        fields={"remote_task_id": remote_id, "created_at": now, "last_error": ""},
    )
    if running.applied:
        poll.apply_async((job_id, running.seq), countdown=delay)
    return "created"


def _retry_create(
    task, job_id: str, seq: int, job: dict[str, str], attempts: int, exc: Transient
) -> str:
    """Back off and retry through Celery, or fail with a run code once attempts run out."""
    jobs = store()
    log.info("create attempt %d failed: %s", attempts, exc)
    if RETRY.exhausted(attempts):
        code = errors.HTTP_ERROR if exc.http_status else errors.TASK_CREATION
        detail = f"gave up after {attempts} attempts: {exc}"
        fail(jobs, job_id, seq, job, JobFailure(code, detail, remote=exc.remote()))
        return "failed"
    delay = schedule.clamp(RETRY.delay(attempts, exc.retry_after), settings)
    backoff = jobs.step(
        job_id,
        seq,
        (State.CREATING,),
        State.WAITING,
        due=time.time() + delay,
        fields={"last_error": str(exc)},
    )
    if not backoff.applied:
        return "stale"
    raise task.retry(args=(job_id, backoff.seq), kwargs={}, countdown=delay)


@app.task(name="wanq.poll")
def poll(job_id: str, seq: int, paced: bool = False) -> str:
    jobs = store()
    job = jobs.job(job_id)
    if not job or int(job["seq"]) != seq or job["state"] != State.RUNNING:
        return "stale"
    logs.bind_remote(job.get("remote_task_id", ""))
    if not paced:
        wait = jobs.pace(settings.poll_rate, settings.max_countdown, keys.POLL_PACE)
        if wait > 0:
            reserved = wait <= settings.max_countdown
            poll.apply_async(
                (job_id, seq), {"paced": reserved}, countdown=min(wait, settings.max_countdown)
            )
            return "paced"
    if jobs.redis.hget(keys.batch(job["batch"]), "state") == "cancelled":
        cancel(jobs, job_id, job)
        return "cancelled"
    now = time.time()
    if now - float(job["created_at"]) > settings.poll_deadline:
        failure = JobFailure(errors.STATUS_CHECK, f"no result after {settings.poll_deadline:.0f} s")
        fail(jobs, job_id, seq, job, failure)
        return "failed"
    try:
        status = provider().status(job["remote_task_id"])
    except AccountProblem as exc:
        account.block(jobs.redis, exc.http_status or 0, exc.plain(), source="status")
        return _poll_again(job_id, seq, job, settings.max_countdown, {})
    except Rejected as exc:
        failure = JobFailure(errors.STATUS_CHECK, str(exc), remote=exc.remote())
        fail(jobs, job_id, seq, job, failure)
        return "failed"
    except Transient as exc:
        misses = int(job.get("poll_errors") or 0) + 1
        log.info("status check %d failed: %s", misses, exc)
        if misses >= settings.poll_max_errors:
            code = errors.RESULT_PARSING if exc.unparseable else errors.STATUS_CHECK
            fail(
                jobs,
                job_id,
                seq,
                job,
                JobFailure(code, f"{misses} failed status checks: {exc}", remote=exc.remote()),
            )
            return "failed"
        delay = RETRY.delay(misses, exc.retry_after)
        return _poll_again(job_id, seq, job, delay, {"poll_errors": misses, "last_error": str(exc)})
    if account.status_worked(jobs.redis):
        log.info("a status call went through: the account works again, creation resumes")

    if status.done:  # this poll is counted in the same atomic step that ends the job
        seen = {"polls": int(job.get("polls") or 0) + 1, **_first_poll(job, now)}
        return "finished" if succeed_or_fail(jobs, job_id, seq, job, status, seen) else "stale"
    polls = int(job.get("polls") or 0) + 1
    delay = schedule.next_poll_delay(polls, latency_estimate(jobs), settings)
    return _poll_again(job_id, seq, job, delay, {"poll_errors": 0, "last_miss_at": now})


def _poll_again(job_id: str, seq: int, job: dict[str, str], delay: float, fields: dict) -> str:
    delay = schedule.clamp(delay, settings)
    now = time.time()
    step = store().step(
        job_id,
        seq,
        (State.RUNNING,),
        State.RUNNING,
        due=now + delay,
        incr=("polls",),
        fields={**fields, **_first_poll(job, now)},
    )
    if not step.applied:
        return "stale"
    poll.apply_async((job_id, step.seq), countdown=delay)
    return "polling"


def _first_poll(job: dict[str, str], now: float) -> dict[str, float]:
    return {} if job.get("first_poll_at") else {"first_poll_at": now}


@app.task(name="wanq.deliver")
def deliver(target: str) -> str:
    """The callbacks a job or batch owes once it has ended (see workers.deliveries), run on
    the delivery threads (workers.delivery_threads): never on the threads that create and poll."""
    return delivery_threads.hand_over(store(), settings, target, app.send_task)
