"""What a job owes once it has ended: its outputs archived, its Celery callback, its webhook;
and a batch, once its last job ends, its final callback with the counts.

Owed deliveries sit in ``wanq:deliver`` (put there by the same script that ended the job) until
every step is done, so a crash only delays them: the sweeper sends them again. Each step marks
itself done in the record, so a repeat skips it; a webhook repeated after a crash, or after
Redis replayed a cut AOF, carries the same ``webhook-id`` (derived from the job and its round,
never from a time), which lets receivers drop it.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from typing import Any

from workers import archive, keys, netguard, webhooks
from workers.batches import batch_status
from workers.config import Settings
from workers.finalize import public_record
from workers.names import TERMINAL, QueueName, State, target_batch
from workers.schedule import RetryPolicy
from workers.sender import Sender
from workers.store import JobStore

log = logging.getLogger("wanq.deliveries")


@dataclass(frozen=True)
class Outcome:
    """Done, or come back after ``retry_in`` seconds (a webhook that should be tried again)."""

    retry_in: float | None = None


def deliver(store: JobStore, settings: Settings, target: str, send: Sender) -> Outcome:
    batch_id = target_batch(target)
    if batch_id is not None:
        outcome = _deliver_batch(store, settings, batch_id, send)
    else:
        outcome = _deliver_job(store, settings, target, send)
    if outcome.retry_in is None:
        store.deliveries.remove(target)
    else:
        store.deliveries.add({target: time.time() + outcome.retry_in}, only_existing=True)
    return outcome


def _deliver_job(store: JobStore, settings: Settings, job_id: str, send: Sender) -> Outcome:
    job = store.job(job_id)
    if not job or job.get("state") not in TERMINAL:
        return Outcome()  # not ended (a Redis restored to before its end): its end sends this
    batch = store.batch(job["batch"])
    if settings.archive_dir and job["state"] == State.SUCCEEDED and not job.get("archived"):
        job = archive_job(store, settings, job_id, job)
    record = public_record(job_id, job)
    if batch.get("callback_task") and not job.get("callback_sent"):
        send(batch["callback_task"], (record,), queue=QueueName.CALLBACKS)
        store.set_fields(keys.job(job_id), {"callback_sent": "1"})
    if batch.get("webhook_url"):
        event = {"type": "job.ended", "data": record}
        msg_id = webhooks.message_id("job", job.get("event_id") or job_id)  # job and round
        return _webhook(store, settings, keys.job(job_id), batch["webhook_url"], msg_id, event)
    return Outcome()


def _deliver_batch(store: JobStore, settings: Settings, batch_id: str, send: Sender) -> Outcome:
    batch = store.batch(batch_id)
    if not batch or batch.get("final_sent"):
        return Outcome()
    counts = batch_status(store, batch_id).as_dict()
    if batch.get("batch_callback_task") and not batch.get("final_task_sent"):
        send(batch["batch_callback_task"], (counts,), queue=QueueName.CALLBACKS)
        store.set_fields(keys.batch(batch_id), {"final_task_sent": "1"})
    outcome = Outcome()
    if batch.get("webhook_url"):
        event = {"type": "batch.ended", "data": counts}
        msg_id = webhooks.message_id("batch", batch_id, batch.get("endings", "1"))
        outcome = _webhook(
            store, settings, keys.batch(batch_id), batch["webhook_url"], msg_id, event
        )
    if outcome.retry_in is None:
        store.set_fields(keys.batch(batch_id), {"final_sent": "1"})
    return outcome


def _webhook(
    store: JobStore, settings: Settings, key: str, url: str, msg_id: str, event: dict[str, Any]
) -> Outcome:
    """One signed attempt; its state is kept in the record under ``webhook`` (a state for
    another id belongs to an earlier round and starts afresh)."""
    state = json.loads(store.get_field(key, "webhook") or "{}")
    if state.get("id") != msg_id:
        state = {}
    if state.get("state") in ("delivered", "failed"):
        return Outcome()
    attempts = int(state.get("attempts", 0)) + 1
    receivers = netguard.Policy.from_setting(settings.webhook_allow_hosts)
    try:
        result = webhooks.deliver(url, settings.webhook_secret, msg_id, event, policy=receivers)
    except ValueError as exc:  # a URL stored before it was checked at submission
        result = webhooks.Delivery(False, None, False, None, str(exc))
    policy = RetryPolicy(settings.webhook_attempts, settings.backoff_base, settings.backoff_cap)
    again = result.retry and not policy.exhausted(attempts)
    state = {
        "id": msg_id,
        "state": "delivered" if result.ok else ("pending" if again else "failed"),
        "attempts": attempts,
        "last_status": result.status,
        "detail": result.detail,
    }
    store.set_fields(key, {"webhook": json.dumps(state)})
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
    store.set_fields(keys.job(job_id), fields)
    _announce_archived(store, job_id, {**job, **fields})
    return {**job, **fields}


def _announce_archived(store: JobStore, job_id: str, job: dict[str, str]) -> None:
    """A second ``wanq:results`` entry, ``event`` = ``archived``, once the outputs are saved:
    its record's outputs carry ``path``, ``bytes`` and ``sha256``, so consumers of the stream
    find the files without reading job hashes (the entry at the end has no ``event``)."""
    entry = {"job_id": job_id, "state": job["state"], "event": "archived"}
    entry["record"] = json.dumps(public_record(job_id, job))
    store.add_result_event(entry)


def download_limits(settings: Settings) -> archive.DownloadLimits:
    hosts = frozenset(h.strip() for h in settings.archive_allow_hosts.split(",") if h.strip())
    return archive.DownloadLimits(
        max_bytes=settings.archive_max_bytes,
        connect_timeout=settings.connect_timeout,
        read_timeout=settings.read_timeout,
        deadline=settings.archive_deadline,
        allow_private=settings.archive_allow_private,
        allowed_hosts=hosts,
    )
