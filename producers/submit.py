"""Submission: validated batch lines become job records and create messages.

The file is read once. Records go first (one Lua script per slice of a chunk, pipelined),
messages second: a job that exists without its message is found by the sweeper, while a
message without its record would be lost. Jobs are keyed by (batch, custom_id), so
submitting a file again adds nothing.
"""

from __future__ import annotations

import itertools
import json
import pickle
import re
import secrets
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from producers.batchfile import BatchLine, read_batch
from producers.validation import ValidationOptions
from workers.store import JobStore

BATCH_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
CHUNK = 500

Source = str | Path | IO[bytes]
Job = tuple[str, str, int]  # custom_id, request JSON, line number


@dataclass
class SubmitReport:
    batch_id: str
    valid: int = 0
    enqueued: int = 0
    existing: int = 0
    invalid: list[BatchLine] = field(default_factory=list)
    submitted: bool = True  # False when invalid lines stopped the whole file

    @property
    def lines(self) -> int:
        return self.valid + len(self.invalid)


def new_batch_id() -> str:
    return time.strftime("b%Y%m%d-%H%M%S-") + secrets.token_hex(3)


def check_batch_id(batch_id: str) -> str:
    if not BATCH_ID.match(batch_id):
        raise ValueError("batch IDs are 1-64 characters from A-Z a-z 0-9 . _ -")
    return batch_id


def validate_file(source: Source, options: ValidationOptions) -> Iterator[BatchLine]:
    """Every line checked, nothing enqueued: ``wanq validate``."""
    return read_batch(source, options)


def submit_file(
    store: JobStore,
    send_create: Callable[[Iterable[tuple[str, int]]], object],
    source: Source,
    *,
    batch_id: str | None = None,
    allow_invalid: bool = False,
    options: ValidationOptions | None = None,
    on_line: Callable[[BatchLine], None] | None = None,
    meta: dict[str, object] | None = None,
) -> SubmitReport:
    """Validate and enqueue a batch file, reading it once.

    With ``allow_invalid`` false, nothing is enqueued before every line is known valid: the
    valid jobs wait in an anonymous temporary spool (their normalized requests serialized
    once) until the end of the file, and are enqueued from there; with invalid lines the
    spool is dropped and the report lists them. With ``allow_invalid``, jobs are enqueued
    as they are read.
    """
    options = options or ValidationOptions()
    report = SubmitReport(check_batch_id(batch_id or new_batch_id()))
    jobs = _jobs(read_batch(source, options), report, on_line)
    if allow_invalid:
        store.open_batch(report.batch_id, meta or {})
        _enqueue(store, send_create, jobs, report)
        return report
    with _Spool() as spool:
        for chunk in _chunks(jobs):
            if not report.invalid:  # past the first invalid line, only the reading goes on
                spool.write(chunk)
        if report.invalid:
            report.submitted = False
            return report
        store.open_batch(report.batch_id, meta or {})
        _enqueue(store, send_create, spool.read(), report)
    return report


def _jobs(
    lines: Iterable[BatchLine], report: SubmitReport, on_line: Callable[[BatchLine], None] | None
) -> Iterator[Job]:
    """The valid lines as jobs (request serialized); the invalid ones go to the report."""
    for line in lines:
        if on_line:
            on_line(line)
        if not line.valid:
            report.invalid.append(line)
            continue
        report.valid += 1
        yield (str(line.custom_id), json.dumps(line.body), line.line)


def _chunks(jobs: Iterable[Job]) -> Iterator[list[Job]]:
    jobs = iter(jobs)
    while chunk := list(itertools.islice(jobs, CHUNK)):
        yield chunk


def _enqueue(
    store: JobStore,
    send_create: Callable[[Iterable[tuple[str, int]]], object],
    jobs: Iterable[Job],
    report: SubmitReport,
) -> None:
    """Records first, a chunk at a time, then the create messages of the new jobs that may
    start now (all of them without an in-flight cap)."""
    for chunk in _chunks(jobs):
        done = store.enqueue_many(report.batch_id, chunk)
        report.enqueued += len(done.new)
        report.existing += len(chunk) - len(done.new)
        if done.admitted:  # the rest wait in Redis for an in-flight slot (no message)
            send_create(done.admitted)


class _Spool:
    """Chunks of jobs in an anonymous temporary file (gone when closed), read back in order."""

    def __enter__(self) -> _Spool:
        self.file = tempfile.TemporaryFile(prefix="wanq-spool-")
        return self

    def write(self, chunk: list[Job]) -> None:
        pickle.dump(chunk, self.file, protocol=pickle.HIGHEST_PROTOCOL)

    def read(self) -> Iterator[Job]:
        self.file.seek(0)
        while True:
            try:
                chunk = pickle.load(self.file)  # our own file, written above
            except EOFError:
                return
            yield from chunk

    def __exit__(self, *exc: object) -> None:
        self.file.close()


__all__ = ["SubmitReport", "check_batch_id", "submit_file", "validate_file"]
