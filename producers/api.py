"""The Python API: the CLI's verbs for programs that submit and steer batches.

client = Wanq()                                   # settings from WANQ_ variables
report = client.submit("edits.jsonl", max_cost=50.0, webhook_url="https://...")
client.wait(report.batch_id)
for record in client.results(report.batch_id): ...
client.retry(report.batch_id, codes=["001021097"])  # re-drive what failed for good
"""

from __future__ import annotations

import csv
import dataclasses
import functools
import io
import json
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from producers.batchfile import BatchLine
from producers.publish import TaskPublisher, task_publisher
from producers.submit import Source, SubmitReport, submit_file, validate_file
from producers.validation import ValidationOptions
from workers import config, connection, deliveries, keys
from workers.batches import BatchStatus, batch_status
from workers.finalize import cancel, public_record
from workers.store import TERMINAL, JobStore, State

RESULT_FIELDS = (
    "custom_id",
    "state",
    "remote_task_id",
    "attempts",
    "outputs",
    "usage",
    "error",
    "history",
)
URL_WARN_AFTER = 20 * 3600  # provider output URLs expire after about a day

__all__ = ["BatchStatus", "SubmitReport", "Wanq", "write_results"]


@dataclass(frozen=True)
class BatchOptions:
    """What a batch asks for beyond its jobs; kept in its Redis record."""

    max_cost: float | None = None  # USD cap: creation pauses before it would be passed
    webhook_url: str | None = None  # each ended job, then the batch, POSTed there (signed)
    callback_task: str | None = None  # a Celery task called with each ended job's record
    batch_callback_task: str | None = None  # a Celery task called once with the final counts

    def meta(self) -> dict[str, object]:
        meta: dict[str, object] = {"state": "active"}
        if self.max_cost is not None:
            meta["max_cost_micros"] = round(self.max_cost * 1_000_000)
        for name in ("webhook_url", "callback_task", "batch_callback_task"):
            if getattr(self, name):
                meta[name] = getattr(self, name)
                meta["deliver"] = "1"  # the workers owe this batch's jobs a delivery task
        return meta


class Wanq:
    """Producer-side access to a wanq cluster (its Redis); workers do the provider calls."""

    def __init__(self, settings: config.Settings | None = None) -> None:
        self.settings = settings or config.load()
        self.store = JobStore.from_url(self.settings.broker_url)

    # --- submitting ----------------------------------------------------------------------

    def validate(
        self, source: Source, options: ValidationOptions | None = None
    ) -> Iterator[BatchLine]:
        return validate_file(source, options or ValidationOptions())

    def submit(
        self,
        source: Source,
        *,
        batch_id: str | None = None,
        allow_invalid: bool = False,
        options: ValidationOptions | None = None,
        on_line: Callable[[BatchLine], None] | None = None,
        batch: BatchOptions | None = None,
    ) -> SubmitReport:
        batch = batch or BatchOptions()
        if batch.webhook_url:
            if not batch.webhook_url.startswith(("http://", "https://")):
                raise ValueError("webhook URLs must be http:// or https://")
            if not self.settings.webhook_secret:
                raise ValueError("a webhook needs WANQ_WEBHOOK_SECRET (whsec_...) to sign with")
        with self._publisher() as publisher:
            return submit_file(
                self.store,
                functools.partial(publisher.publish, "wanq.create"),
                source,
                batch_id=batch_id,
                allow_invalid=allow_invalid,
                options=options,
                on_line=on_line,
                meta=batch.meta(),
                max_inline_bytes=self.settings.max_inline_bytes,
            )

    # --- watching --------------------------------------------------------------------------

    def status(self, batch_id: str) -> BatchStatus:
        return batch_status(self.store, batch_id, self.settings.retention)

    def wait(
        self,
        batch_id: str,
        on_status: Callable[[BatchStatus], None] | None = None,
        interval: float = 0.5,
        timeout: float | None = None,
    ) -> BatchStatus:
        """Return once every job of the batch is terminal, reporting progress on the way."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            status = self.status(batch_id)
            if on_status:
                on_status(status)
            if status.done or status.total == 0:
                return status
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"batch {batch_id} not finished after {timeout} s")
            time.sleep(interval)

    def batches(self) -> list[BatchStatus]:
        return [self.status(b) for b in self.store.redis.zrange(keys.BATCHES, 0, -1)]

    def results(self, batch_id: str, state: str | None = None) -> Iterator[dict[str, Any]]:
        """One record per job, in submission order, streamed from Redis."""
        for job in self.store.iter_batch_jobs(batch_id):
            record = public_record(job["job_id"], job)
            if state is None or record["state"] == state:
                yield {name: record[name] for name in RESULT_FIELDS}

    # --- steering --------------------------------------------------------------------------

    def pause(self, batch_id: str) -> None:
        """Jobs not created yet wait; jobs in flight go on (they are paid for)."""
        self._require(batch_id)
        self.store.set_control(batch_id, "paused")

    def resume(self, batch_id: str, max_cost: float | None = None) -> int:
        """Undo a pause (or a budget stop, with a higher cap); returns the jobs released."""
        self._require(batch_id)
        fields = {} if max_cost is None else {"max_cost_micros": round(max_cost * 1_000_000)}
        self.store.set_control(batch_id, "active", **fields)
        released = 0
        with self._publisher() as publisher:
            while chunk := self.store.release(keys.batch_parked(batch_id), 1000):
                released += publisher.publish("wanq.create", chunk)
        return released

    def cancel(self, batch_id: str) -> int:
        """Jobs not created yet are never created; jobs in flight end ``cancelled`` now.

        The API has no remote cancel: a remote task already created runs to its end upstream
        (and is billed); wanq just stops following it.
        """
        self._require(batch_id)
        self.store.set_control(batch_id, "cancelled")
        ended = 0
        with self._publisher() as publisher:
            for job in self.store.iter_batch_jobs(batch_id):
                if job["state"] not in TERMINAL:
                    ended += bool(cancel(self.store, job["job_id"], job, publisher.send_task))
        return ended

    def retry(self, batch_id: str, codes: Iterable[str] = ()) -> int:
        """Re-run jobs that failed for good (all, or those with these codes); successes stay."""
        self._require(batch_id)
        codes = tuple(codes)
        if self.store.batch(batch_id).get("state") == "cancelled":
            self.store.set_control(batch_id, "active")
        reopened = []
        for job in self.store.iter_batch_jobs(batch_id):
            if job["state"] == State.FAILED:
                seq = self.store.reopen(job["job_id"], codes)
                if seq >= 0:
                    reopened.append((job["job_id"], seq))
        self._publish("wanq.create", reopened)
        return len(reopened)

    def archive(self, batch_id: str, directory: str | None = None) -> tuple[int, int, int]:
        """Fetch every output not archived yet: (jobs looked at, files now missing, old URLs)."""
        self._require(batch_id)
        settings = self.settings
        if directory or not settings.archive_dir:
            root = directory or str(settings.data_path / "archive")
            settings = dataclasses.replace(settings, archive_dir=root)
        jobs = missing = stale = 0
        now = time.time()
        for job in self.store.iter_batch_jobs(batch_id):
            if job["state"] != State.SUCCEEDED:
                continue
            jobs += 1
            stale += now - float(job.get("completed_at") or now) > URL_WARN_AFTER
            saved = deliveries.archive_job(self.store, settings, job["job_id"], job)
            missing += sum(
                "path" not in o for o in json.loads(saved["outputs"]) if o["type"] == "image"
            )
        return jobs, missing, stale

    # --- plumbing --------------------------------------------------------------------------

    def _require(self, batch_id: str) -> None:
        if not self.store.batch(batch_id):
            raise KeyError(f"no batch {batch_id!r}")

    def _publish(self, name: str, args_list: Iterable[tuple]) -> None:
        with self._publisher() as publisher:
            publisher.publish(name, args_list)

    @contextmanager
    def _publisher(self) -> Iterator[TaskPublisher]:
        from workers.app import app

        # This process may talk to another Redis than its environment names (wanq run, tests).
        url, sentinel_options = connection.broker(self.settings.broker_url)
        with task_publisher(app, self.store.redis, url, sentinel_options) as publisher:
            yield publisher


def write_results(records: Iterable[dict[str, Any]], out: io.TextIOBase, fmt: str = "jsonl") -> int:
    """Stream records as JSON Lines or CSV (nested fields JSON-encoded); returns the count."""
    count = 0
    if fmt == "csv":
        writer = csv.DictWriter(out, fieldnames=RESULT_FIELDS)
        writer.writeheader()
        for record in records:
            writer.writerow({k: _cell(v) for k, v in record.items()})
            count += 1
        return count
    for record in records:
        out.write(json.dumps(record, ensure_ascii=False) + "\n")
        count += 1
    return count


def _cell(value: Any) -> Any:
    return json.dumps(value, ensure_ascii=False) if isinstance(value, (list, dict)) else value
