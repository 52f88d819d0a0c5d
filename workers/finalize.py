"""The result callback: a job's outcome becomes its record and one stream entry, once.

Whoever ends a job (``end`` of a ``status_ending`` or ``failure_ending``, ``fail``,
``cancel``), however many times (duplicate polls, redelivered messages, a rescued job and its
late original), the Lua ``finish`` script lets exactly one of them through, and writes for it,
in the same script, the job's histograms (workers.metrics) and its generation time
(workers.latency). ``end_many`` writes the ends of several jobs in one round trip.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from typing import Any

from workers import keys, latency, logs, metrics
from workers.errors import CANCELLED, GENERATION_ERROR, JobFailure
from workers.names import State, TaskName, batch_target
from workers.pricing import worst_case_images
from workers.provider import Status, cost_micros
from workers.sender import Sender
from workers.store import Delivery, EndWrites, Finish, JobStore

log = logging.getLogger("wanq.finalize")


def public_record(job_id: str, job: dict[str, str]) -> dict[str, Any]:
    """A job as downstream consumers see it (results export, stream): no payload, no secret."""
    return {
        "job_id": job_id,
        "batch": job.get("batch"),
        "custom_id": job.get("custom_id"),
        "state": job.get("state"),
        "remote_task_id": job.get("remote_task_id") or None,
        "attempts": int(job.get("attempts") or 0),
        "outputs": _decode(job.get("outputs"), []),
        "usage": _decode(job.get("usage"), None),
        "error": _decode(job.get("error"), None),
        "history": _decode(job.get("history"), []),
    }


def cancel(store: JobStore, job_id: str, job: dict[str, str], send: Sender) -> Finish:
    """End a job as cancelled, whatever state it is in (the API has no remote cancel)."""
    failure = JobFailure(CANCELLED, "the batch was cancelled")
    ending = _ending(store, job_id, None, job, State.CANCELLED, error=failure.as_record())
    return end(store, ending, send)


def fail(
    store: JobStore,
    job_id: str,
    seq: int | None,
    job: dict[str, str],
    failure: JobFailure,
    send: Sender,
    extra: dict[str, Any] | None = None,
    ack: Delivery | None = None,
) -> Finish:
    ending = _ending(store, job_id, seq, job, State.FAILED, error=failure.as_record(), extra=extra)
    return end(store, ending, send, ack)


@dataclass(frozen=True)
class Ending:
    """A job's end, prepared for the finish script: written alone (``end``) or with the ends
    of other jobs in one round trip (``end_many``)."""

    job_id: str
    job: dict[str, str]  # the record as read before (for the log line)
    state: State
    error: dict[str, Any] | None
    finish: dict[str, Any]  # JobStore.finish's arguments


def status_ending(
    store: JobStore,
    job_id: str,
    seq: int,
    job: dict[str, str],
    status: Status,
    extra: dict[str, Any] | None,
) -> Ending:
    """Record a finished remote task: completed, or failed remotely (its generation time is
    learned by the end's own script). ``extra`` job fields go into the same atomic step (the
    poll that saw the end)."""
    if status.state == "completed":
        return _ending(
            store,
            job_id,
            seq,
            job,
            State.SUCCEEDED,
            outputs=status.outputs,
            usage=status.usage,
            extra=extra,
        )
    failure = JobFailure(GENERATION_ERROR, "the remote task failed", remote=status.error)
    return _ending(store, job_id, seq, job, State.FAILED, error=failure.as_record(), extra=extra)


def failure_ending(
    store: JobStore, job_id: str, seq: int | None, job: dict[str, str], failure: JobFailure
) -> Ending:
    return _ending(store, job_id, seq, job, State.FAILED, error=failure.as_record())


def end(store: JobStore, ending: Ending, send: Sender, ack: Delivery | None = None) -> Finish:
    """Write one end (``ack``, the caller's message, acknowledged by its script)."""
    ended = store.finish(ending.job_id, **ending.finish, ack=ack)
    _announce_end(ending, ended, send)
    return ended


def end_many(store: JobStore, endings: list[Ending], send: Sender) -> list[Finish | Exception]:
    """Write several ends in one round trip; an end whose script failed gives its exception."""
    answers = store.finish_many([{"job_id": e.job_id, **e.finish} for e in endings])
    for ending, ended in zip(endings, answers, strict=True):
        if not isinstance(ended, Exception):
            _announce_end(ending, ended, send)
    return answers


def _ending(
    store: JobStore,
    job_id: str,
    seq: int | None,
    job: dict[str, str],
    state: State,
    *,
    outputs: list[dict[str, str]] | None = None,
    usage: dict[str, Any] | None = None,
    error: dict[str, Any] | None = None,
    extra: dict[str, Any] | None = None,
) -> Ending:
    record = public_record(job_id, job)
    record.update(state=str(state), outputs=outputs or [], usage=usage, error=error)
    _learn_price(store, job_id, usage)  # before the end admits the next job: it prices it
    finish = {
        "seq": seq,
        "state": state,
        "record": record,
        "cost_micros": cost_micros(usage or {}),
        "unpriced_images": _unpriced_images(store, job_id, usage),
        "error_code": (error or {}).get("code", ""),
        "extra": extra,
        "on_end": _observed(store, job, state, error),
    }
    return Ending(job_id, job, state, error, finish)


def _announce_end(ending: Ending, ended: Finish, send: Sender) -> None:
    announce(ended, ending.job_id, send)
    if ended:  # once per ended job: its log line
        error = ending.error
        outcome = f"{error['code']} {error.get('message', '')}" if error else "completed"
        fields = logs.job_fields(ending.job_id, ending.job.get("remote_task_id", ""))
        log.info("job %s: %s", ending.state, outcome, extra=fields)


def _observed(
    store: JobStore, job: dict[str, str], state: State, error: dict[str, Any] | None
) -> EndWrites:
    """The histograms of an ending job and, for a completed one, its generation time (a
    failure's time says nothing of generation), for the finish script to write only if this
    call ends the job: counted once, in the end's own round trip."""
    writes = EndWrites()
    remote_done = state == State.SUCCEEDED or (error or {}).get("code") == GENERATION_ERROR
    metrics.observe_job_end(store.redis, job, remote_done=remote_done, pipe=writes)
    if state == State.SUCCEEDED:
        latency.learn(store.redis, job, time.time(), pipe=writes)
    return writes


def announce(ended: Finish, job_id: str, send: Sender) -> None:
    """Send what ending a job set off: the callbacks it (and maybe its batch) owes, and the
    create of the job admitted to its in-flight slot. The same script recorded them in Redis
    (``wanq:deliver``, the due set), so the sweeper resends them if this send is lost."""
    if not (ended.callbacks_owed or ended.admitted):
        return
    if ended.callbacks_owed:
        send(TaskName.DELIVER, (job_id,))
    if ended.batch_ended and ended.callbacks_owed:
        send(TaskName.DELIVER, (batch_target(keys.batch_of(job_id)),))
    for admitted in ended.admitted:
        send(TaskName.CREATE, admitted)


def _learn_price(store: JobStore, job_id: str, usage: dict[str, Any] | None) -> None:
    """What the provider charged per image, so the batch's budget reserves at its real price."""
    images = (usage or {}).get("image_count")
    micros = cost_micros(usage or {})
    if isinstance(images, int) and not isinstance(images, bool) and 0 < images <= 100 and micros:
        store.learn_price(keys.batch_of(job_id), -(-micros // images))  # rounded up


def _unpriced_images(store: JobStore, job_id: str, usage: dict[str, Any] | None) -> int:
    """The images of a completed task whose ``usage.cost`` was refused as out of bounds: the
    provider billed them, so they are estimated rather than counted as $0 (issue 13: with
    hostile costs a budgeted batch spent 118% of its cap). The image count the provider gave,
    or else the request's worst case."""
    if not usage or "cost" not in usage.get("invalid", ()):
        return 0
    images = usage.get("image_count")
    if isinstance(images, int) and not isinstance(images, bool):
        return images
    return worst_case_images(store.request(job_id, with_images=False) or {})  # parameters only


def _decode(raw: str | None, default: Any) -> Any:
    if not raw:
        return default
    try:
        return json.loads(raw)
    except ValueError:
        return default
