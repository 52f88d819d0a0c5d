"""The Python API: the CLI's verbs for programs that submit and steer batches.

client = Wanq()                                   # settings from WANQ_ variables
report = client.submit("edits.jsonl", max_cost=50.0, webhook_url="https://...")
client.wait(report.batch_id)
for record in client.results(report.batch_id): ...
client.retry(report.batch_id, codes=["001021097"])  # re-drive what failed for good

Errors are wanq's own (``workers.errors``): ``SubmissionRefused`` when a file is refused whole
(invalid lines without ``allow_invalid``, no valid line, or lines changed under a custom_id
the batch already has), with the report of every line; ``BatchNotFound`` (also a KeyError)
for an unknown batch ID.
"""

from __future__ import annotations

import csv
import dataclasses
import functools
import json
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import IO, Any

from producers.batchfile import BatchLine
from producers.publish import TaskPublisher, task_publisher
from producers.submit import Source, SubmitReport, submit_file, validate_file
from producers.validation import ValidationOptions
from workers import config, connection, deliveries, errors, keys, netguard
from workers.batches import BatchStatus, batch_status
from workers.celeryconf import sending_app
from workers.errors import BatchNotFound, SubmissionRefused
from workers.finalize import cancel, public_record
from workers.names import TaskName, priority_weight
from workers.store import ALL_STATES, TERMINAL, JobStore, State

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
STATES = tuple(s.value for s in ALL_STATES)
URL_WARN_AFTER = 20 * 3600  # provider output URLs expire after about a day

__all__ = [
    "BatchNotFound",
    "BatchStatus",
    "SubmissionRefused",
    "SubmitReport",
    "Wanq",
    "write_results",
]


@dataclass(frozen=True)
class BatchOptions:
    """What a batch asks for beyond its jobs; kept in its Redis record."""

    max_cost: float | None = None  # USD cap: creation pauses before it would be passed
    webhook_url: str | None = None  # each ended job, then the batch, POSTed there (signed)
    callback_task: str | None = None  # a Celery task called with each ended job's record
    batch_callback_task: str | None = None  # a Celery task called once with the final counts
    priority: str | float = "normal"  # high / normal / low or a weight: its share of the cap
    max_in_flight: int = 0  # this batch's own cap under the cluster's (0: none)

    def meta(self) -> dict[str, object]:
        if self.max_in_flight < 0:
            raise ValueError("max_in_flight is 0 (no limit of its own) or a positive number")
        meta: dict[str, object] = {"state": "active", "weight": priority_weight(self.priority)}
        if self.max_in_flight:
            meta["max_in_flight"] = self.max_in_flight
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
        self.store = JobStore.from_settings(self.settings)

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
        ignore_changed: bool = False,
    ) -> SubmitReport:
        """Validate and enqueue a batch file; raises ``SubmissionRefused`` (its ``report``
        lists the lines) when nothing was submitted. ``ignore_changed`` keeps the stored
        request of lines changed under an existing custom_id instead of refusing."""
        batch = batch or BatchOptions()
        if batch.webhook_url:
            netguard.parse(batch.webhook_url)  # ValueError for anything ambiguous, at once
            if not self.settings.webhook_secret:
                raise ValueError("a webhook needs WANQ_WEBHOOK_SECRET (whsec_...) to sign with")
        with self._publisher() as publisher:
            report = submit_file(
                self.store,
                functools.partial(publisher.publish, "wanq.create"),
                source,
                batch_id=batch_id,
                allow_invalid=allow_invalid,
                options=options,
                on_line=on_line,
                meta=batch.meta(),
                ignore_changed=ignore_changed,
                max_inline_bytes=self.settings.max_inline_bytes,
            )
        if not report.submitted:
            raise SubmissionRefused(report.refusal, _refusal_detail(report), report=report)
        return report

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
        return [self.status(b) for b in self.store.batch_ids()]

    def results(self, batch_id: str, state: str | None = None) -> Iterator[dict[str, Any]]:
        """One record per job, in submission order, streamed from Redis. An unknown batch or
        state raises (``BatchNotFound``, ValueError) before the first record."""
        self._require(batch_id)
        if state is not None and state not in STATES:
            raise ValueError(f"state must be one of {', '.join(STATES)}, not {state!r}")
        return self._results(batch_id, state)

    def _results(self, batch_id: str, state: str | None) -> Iterator[dict[str, Any]]:
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
        while moved := self.store.requeue_parked(batch_id, 1000):
            released += moved
        self._admit()
        return released

    def set_priority(self, batch_id: str, level: str | float) -> float:
        """Change a batch's share of the in-flight cap from now on; returns its weight."""
        self._require(batch_id)
        weight = priority_weight(level)
        self.store.set_fields(keys.batch(batch_id), {"weight": repr(weight)})
        self._admit()
        return weight

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
        sends: dict[str, list[tuple[str, int]]] = {"create": [], "poll": [], "wait": []}
        for job in self.store.iter_batch_jobs(batch_id):
            if job["state"] == State.FAILED:
                seq, then = self.store.reopen(job["job_id"], codes)
                if seq >= 0:
                    sends[then].append((job["job_id"], seq))
        self._publish(TaskName.CREATE, sends["create"])
        self._publish(TaskName.POLL, sends["poll"])  # known remote tasks: followed, not redone
        self._admit()
        return sum(len(jobs) for jobs in sends.values())

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
            raise BatchNotFound(detail=batch_id)

    def _admit(self) -> int:
        """Start waiting jobs on the free in-flight slots now, rather than at the next sweep."""
        started = 0
        with self._publisher() as publisher:
            while chunk := self.store.admit(1000):
                started += publisher.publish(TaskName.CREATE, chunk)
        return started

    def _publish(self, name: str, args_list: Iterable[tuple]) -> None:
        with self._publisher() as publisher:
            publisher.publish(name, args_list)

    @contextmanager
    def _publisher(self) -> Iterator[TaskPublisher]:
        app = sending_app(self.settings)
        # This process may talk to another Redis than its environment names (wanq run, tests).
        url, sentinel_options = connection.broker(self.settings.broker_url)
        with task_publisher(app, self.store.redis, url, sentinel_options) as publisher:
            yield publisher


def _refusal_detail(report: SubmitReport) -> str:
    if report.refusal == errors.CUSTOM_ID_CHANGED:
        return f"{len(report.changed)} lines changed under custom_ids batch {report.batch_id} has"
    if report.refusal == errors.BATCH_INVALID:
        return f"{len(report.invalid)} of {report.lines} lines"
    return f"{report.lines} lines, none valid"


def write_results(records: Iterable[dict[str, Any]], out: IO[str], fmt: str = "jsonl") -> int:
    """Stream records as JSON Lines or CSV (nested fields JSON-encoded); returns the count.

    CSV cells are quoted and, when they start like a formula, neutralised the way OWASP
    describes (see ``spreadsheet_safe``): custom_ids, prompts and the provider's fields are
    not ours, and a spreadsheet would run ``=HYPERLINK(...)`` from any of them."""
    count = 0
    if fmt == "csv":
        writer = csv.DictWriter(out, fieldnames=RESULT_FIELDS, quoting=csv.QUOTE_ALL)
        writer.writeheader()
        for record in records:
            writer.writerow({k: _cell(v) for k, v in record.items()})
            count += 1
        return count
    for record in records:
        out.write(json.dumps(record, ensure_ascii=False) + "\n")
        count += 1
    return count


FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def spreadsheet_safe(cell: str) -> str:
    """A cell a spreadsheet shows as text: one starting with = + - @ tab or CR gets a leading
    single quote (OWASP, CSV injection). Nested JSON (``[``, ``{``) never starts that way."""
    return "'" + cell if cell.startswith(FORMULA_START) else cell


def _cell(value: Any) -> Any:
    if isinstance(value, (list, dict)):
        value = json.dumps(value, ensure_ascii=False)
    return spreadsheet_safe(value) if isinstance(value, str) else value
