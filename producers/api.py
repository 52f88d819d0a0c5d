"""The Python API: the CLI's verbs for programs that submit jobs.

client = Wanq()                       # settings from WANQ_ variables
report = client.submit("edits.jsonl") # validated, enqueued; report.batch_id
client.wait(report.batch_id)
for record in client.results(report.batch_id): ...
"""

from __future__ import annotations

import csv
import io
import json
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from producers.batchfile import BatchLine
from producers.submit import Source, SubmitReport, submit_file, validate_file
from producers.validation import ValidationOptions
from workers import account, config, keys
from workers.finalize import public_record
from workers.store import ALL_STATES, TERMINAL, JobStore

RESULT_FIELDS = ("custom_id", "state", "remote_task_id", "attempts", "outputs", "usage", "error")


@dataclass
class BatchStatus:
    batch_id: str
    total: int
    counts: dict[str, int]
    cost: float
    failures: dict[str, int]
    account_block: dict[str, str] = field(default_factory=dict)

    @property
    def ended(self) -> int:
        return sum(self.counts.get(state, 0) for state in TERMINAL)

    @property
    def done(self) -> bool:
        return self.total > 0 and self.ended >= self.total

    def as_dict(self) -> dict[str, Any]:
        return {
            "batch_id": self.batch_id,
            "total": self.total,
            "counts": self.counts,
            "cost_usd": round(self.cost, 6),
            "failures_by_code": self.failures,
            "account": self.account_block or None,
            "done": self.done,
        }


class Wanq:
    """Producer-side access to a wanq cluster (its Redis); workers do the provider calls."""

    def __init__(self, settings: config.Settings | None = None) -> None:
        self.settings = settings or config.load()
        self.store = JobStore.from_url(self.settings.broker_url)

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
    ) -> SubmitReport:
        return submit_file(
            self.store,
            self._send_creates,
            source,
            batch_id=batch_id,
            allow_invalid=allow_invalid,
            options=options,
            on_line=on_line,
        )

    def status(self, batch_id: str) -> BatchStatus:
        raw = self.store.batch(batch_id)
        if not raw:
            raise KeyError(f"no batch {batch_id!r}")
        counts = {state.value: int(raw.get(f"n:{state.value}", 0)) for state in ALL_STATES}
        return BatchStatus(
            batch_id=batch_id,
            total=int(raw.get("total", 0)),
            counts=counts,
            cost=int(raw.get("cost_micros", 0)) / 1_000_000,
            failures=self.store.batch_codes(batch_id),
            account_block=account.blocked(self.store.redis),
        )

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

    def results(self, batch_id: str, state: str | None = None) -> Iterator[dict[str, Any]]:
        """One record per job, in submission order, streamed from Redis."""
        for job in self.store.iter_batch_jobs(batch_id):
            record = public_record(job["job_id"], job)
            if state is None or record["state"] == state:
                yield {name: record[name] for name in RESULT_FIELDS}

    def batches(self) -> list[str]:
        return self.store.redis.zrange(keys.BATCHES, 0, -1)

    def _send_creates(self, jobs: Iterable[tuple[str, int]]) -> None:
        from workers.app import app

        # This process may talk to another Redis than its environment names (wanq run, tests).
        with app.connection_for_write(self.settings.broker_url) as connection:
            producer = app.amqp.Producer(connection)
            for job_id, seq in jobs:
                app.send_task("wanq.create", args=(job_id, seq), producer=producer)


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
