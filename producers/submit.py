"""Submission: validated batch lines become job records and create messages.

Records go first (one Lua script per job, pipelined), messages second: a job that exists
without its message is found by the sweeper, while a message without its record would be
lost. Jobs are keyed by (batch, custom_id), so submitting a file again adds nothing.
"""

from __future__ import annotations

import re
import secrets
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from producers.batchfile import BatchLine, read_batch
from producers.validation import ValidationOptions
from workers import keys
from workers.store import JobStore

BATCH_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
CHUNK = 500

Source = str | Path | IO[bytes]


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
    send_create: Callable[[Iterable[tuple[str, int]]], None],
    source: Source,
    *,
    batch_id: str | None = None,
    allow_invalid: bool = False,
    options: ValidationOptions | None = None,
    on_line: Callable[[BatchLine], None] | None = None,
    meta: dict[str, object] | None = None,
) -> SubmitReport:
    """Validate and enqueue a batch file.

    With invalid lines and ``allow_invalid`` false, nothing is enqueued: the file is read
    twice (first only to validate), so standard input is spooled to a temporary file.
    """
    options = options or ValidationOptions()
    report = SubmitReport(check_batch_id(batch_id or new_batch_id()))
    with _rereadable(source, twice=not allow_invalid) as path:
        if not allow_invalid:
            invalid = [line for line in read_batch(path, options) if not line.valid]
            if invalid:
                report.invalid = invalid
                report.submitted = False
                return report
        store.open_batch(report.batch_id, meta or {})
        _enqueue(store, send_create, read_batch(path, options), report, on_line)
    return report


def _enqueue(
    store: JobStore,
    send_create: Callable[[Iterable[tuple[str, int]]], None],
    lines: Iterable[BatchLine],
    report: SubmitReport,
    on_line: Callable[[BatchLine], None] | None,
) -> None:
    chunk: list[BatchLine] = []
    for line in lines:
        if on_line:
            on_line(line)
        if not line.valid:
            report.invalid.append(line)
            continue
        report.valid += 1
        chunk.append(line)
        if len(chunk) >= CHUNK:
            _flush(store, send_create, chunk, report)
            chunk = []
    _flush(store, send_create, chunk, report)


def _flush(
    store: JobStore,
    send_create: Callable[[Iterable[tuple[str, int]]], None],
    chunk: list[BatchLine],
    report: SubmitReport,
) -> None:
    if not chunk:
        return
    pipe = store.redis.pipeline(transaction=False)
    for line in chunk:
        store.enqueue(report.batch_id, str(line.custom_id), line.body or {}, line.line, pipe=pipe)
    created = pipe.execute()
    fresh = [line for line, new in zip(chunk, created, strict=True) if new]
    report.enqueued += len(fresh)
    report.existing += len(chunk) - len(fresh)
    send_create((keys.job_id(report.batch_id, str(line.custom_id)), 0) for line in fresh)


class _rereadable:
    """A path for the source that can be read twice; standard input is spooled to disk."""

    def __init__(self, source: Source, twice: bool) -> None:
        self.source = source
        self.twice = twice
        self.spool: Path | None = None

    def __enter__(self) -> Source:
        if not self.twice or (isinstance(self.source, (str, Path)) and self.source != "-"):
            return self.source
        stream = _binary(self.source)
        with tempfile.NamedTemporaryFile("wb", prefix="wanq-stdin-", delete=False) as spool:
            shutil.copyfileobj(stream, spool)
        self.spool = Path(spool.name)
        return self.spool

    def __exit__(self, *exc: object) -> None:
        if self.spool:
            self.spool.unlink(missing_ok=True)


def _binary(source: Source) -> IO[bytes]:
    return sys.stdin.buffer if source == "-" else source  # type: ignore[return-value]


__all__ = ["SubmitReport", "check_batch_id", "submit_file", "validate_file"]
