"""What a job owes once it has ended: its outputs archived, its Celery callback, its webhook;
and a batch, once its last job ends, its final callback with the counts.

Owed deliveries sit in ``wanq:deliver`` (put there by the same script that ended the job) until
every step is done, so a crash only delays them: the sweeper sends them again. Each step marks
itself done in the record, so a repeat skips it; a webhook repeated after a crash carries the
same ``webhook-id``, which lets receivers drop it.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from typing import Any

from workers import archive, keys, webhooks
from workers.batches import batch_status
from workers.config import Settings
from workers.finalize import public_record
from workers.schedule import RetryPolicy
from workers.store import JobStore, State

log = logging.getLogger("wanq.deliveries")

BATCH_PREFIX = "batch:"


@dataclass(frozen=True)
class Outcome:
    """Done, or come back after ``retry_in`` seconds (a webhook that should be tried again)."""

    retry_in: float | None = None


def deliver(store: JobStore, settings: Settings, target: str, send_task) -> Outcome:
    if target.startswith(BATCH_PREFIX):
        outcome = _deliver_batch(store, settings, target.removeprefix(BATCH_PREFIX), send_task)
    else:
        outcome = _deliver_job(store, settings, target, send_task)
    if outcome.retry_in is None:
        store.redis.zrem(keys.DELIVER, target)
    else:
        store.redis.zadd(keys.DELIVER, {target: time.time() + outcome.retry_in}, xx=True)
    return outcome


def _deliver_job(store: JobStore, settings: Settings, job_id: str, send_task) -> Outcome:
    job = store.job(job_id)
    if not job:
        return Outcome()
    batch = store.batch(job["batch"])
    if settings.archive_dir and job["state"] == State.SUCCEEDED and not job.get("archived"):
        job = archive_job(store, settings, job_id, job)
    record = public_record(job_id, job)
    if batch.get("callback_task") and not job.get("callback_sent"):
        send_task(batch["callback_task"], args=(record,), queue=keys.CALLBACK_QUEUE)
        store.redis.hset(keys.job(job_id), "callback_sent", "1")
    if batch.get("webhook_url"):
        event = {"type": "job.ended", "data": record}
        msg_id = webhooks.message_id("job", job_id, job.get("completed_at", ""))
        return _webhook(store, settings, keys.job(job_id), batch["webhook_url"], msg_id, event)
    return Outcome()


def _deliver_batch(store: JobStore, settings: Settings, batch_id: str, send_task) -> Outcome:
    batch = store.batch(batch_id)
    if not batch or batch.get("final_sent"):
        return Outcome()
    counts = batch_status(store, batch_id).as_dict()
    if batch.get("batch_callback_task") and not batch.get("final_task_sent"):
        send_task(batch["batch_callback_task"], args=(counts,), queue=keys.CALLBACK_QUEUE)
        store.redis.hset(keys.batch(batch_id), "final_task_sent", "1")
    outcome = Outcome()
    if batch.get("webhook_url"):
        event = {"type": "batch.ended", "data": counts}
        msg_id = webhooks.message_id("batch", batch_id, batch.get("finished_at", ""))
        outcome = _webhook(
            store, settings, keys.batch(batch_id), batch["webhook_url"], msg_id, event
        )
    if outcome.retry_in is None:
        store.redis.hset(keys.batch(batch_id), "final_sent", "1")
    return outcome


def _webhook(
    store: JobStore, settings: Settings, key: str, url: str, msg_id: str, event: dict[str, Any]
) -> Outcome:
    """One signed attempt; its state is kept in the record under ``webhook``."""
    state = json.loads(store.redis.hget(key, "webhook") or "{}")
    if state.get("state") in ("delivered", "failed"):
        return Outcome()
    attempts = int(state.get("attempts", 0)) + 1
    result = webhooks.deliver(url, settings.webhook_secret, msg_id, event)
    policy = RetryPolicy(settings.webhook_attempts, settings.backoff_base, settings.backoff_cap)
    again = result.retry and not policy.exhausted(attempts)
    state = {
        "id": msg_id,
        "state": "delivered" if result.ok else ("pending" if again else "failed"),
        "attempts": attempts,
        "last_status": result.status,
        "detail": result.detail,
    }
    store.redis.hset(key, "webhook", json.dumps(state))
    if again:
        return Outcome(
            retry_in=min(policy.delay(attempts, result.retry_after), settings.max_countdown)
        )
    if not result.ok:
        log.warning("webhook %s for %s failed for good: %s", msg_id, key, result.detail)
    return Outcome()


def archive_job(
    store: JobStore, settings: Settings, job_id: str, job: dict[str, str]
) -> dict[str, str]:
    """Download what is not archived yet; a failure is recorded, never turned into a job failure."""
    outputs = json.loads(job.get("outputs") or "[]")
    directory = archive.archive_dir(settings.archive_dir, job["batch"], job["custom_id"])
    saved, problems = archive.archive_outputs(outputs, directory, download_limits(settings))
    fields = {
        "outputs": json.dumps(saved),
        "archived": "1",
        "archive_errors": json.dumps(problems),
    }
    store.redis.hset(keys.job(job_id), mapping=fields)
    return {**job, **fields}


def download_limits(settings: Settings) -> archive.DownloadLimits:
    hosts = frozenset(h.strip() for h in settings.archive_allow_hosts.split(",") if h.strip())
    return archive.DownloadLimits(
        max_bytes=settings.archive_max_bytes,
        connect_timeout=settings.connect_timeout,
        read_timeout=settings.read_timeout,
        allow_private=settings.archive_allow_private,
        allowed_hosts=hosts,
    )
