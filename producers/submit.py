"""Submission: validated batch lines become job records and create messages.

The file is read once. Records go first (one Lua script per slice of a chunk, pipelined),
messages second, once every record is written: a job that exists without its message is
found by the sweeper, while a message without its record would be lost. Jobs are keyed by
(batch, custom_id), so submitting a file again adds nothing.
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

import redis

from producers import room
from producers.batchfile import BatchLine, read_batch
from producers.inline import InlineImages
from producers.validation import ValidationOptions
from workers import keys
from workers.config import Settings
from workers.images import ImageStore
from workers.retention import Purger
from workers.store import JobStore

BATCH_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
CHUNK = 500

Source = str | Path | IO[bytes]
Job = tuple[str, str, int, str]  # custom_id, request JSON, line number, image keys


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
    max_inline_bytes: int = Settings.max_inline_bytes,
) -> SubmitReport:
    """Validate and enqueue a batch file, reading it once.

    Nothing is written before the whole file is read: the valid jobs wait in an anonymous
    temporary spool (their requests serialized once, inline images replaced by references,
    each distinct image spooled once, see ``producers.inline``). Then the batch must fit in
    Redis (``producers.room``: refused whole otherwise), its images are stored and pinned,
    its records written, and only then are create messages sent: workers see the batch
    whole or not at all. With invalid lines and no ``allow_invalid``, nothing is written
    and the report lists them; with ``allow_invalid`` the valid lines go on.
    """
    options = options or ValidationOptions()
    report = SubmitReport(check_batch_id(batch_id or new_batch_id()))
    with _Spool() as spool, InlineImages() as inline:
        for chunk in _chunks(_jobs(read_batch(source, options), report, on_line, inline)):
            if allow_invalid or not report.invalid:  # else only the reading goes on
                spool.write(chunk)
        if report.invalid and not allow_invalid:
            report.submitted = False
            return report
        _write(store, send_create, spool, inline, report, meta or {}, max_inline_bytes)
    return report


def _jobs(
    lines: Iterable[BatchLine],
    report: SubmitReport,
    on_line: Callable[[BatchLine], None] | None,
    inline: InlineImages,
) -> Iterator[Job]:
    """The valid lines as jobs (request serialized, inline images as references); the invalid
    ones go to the report."""
    for line in lines:
        if on_line:
            on_line(line)
        if not line.valid:
            report.invalid.append(line)
            continue
        report.valid += 1
        held = inline.externalize(line.body or {})
        yield (str(line.custom_id), json.dumps(line.body), line.line, ",".join(held))


def _chunks(jobs: Iterable[Job]) -> Iterator[list[Job]]:
    jobs = iter(jobs)
    while chunk := list(itertools.islice(jobs, CHUNK)):
        yield chunk


def _write(
    store: JobStore,
    send_create: Callable[[Iterable[tuple[str, int]]], None],
    spool: _Spool,
    inline: InlineImages,
    report: SubmitReport,
    meta: dict[str, object],
    max_inline_bytes: int,
) -> None:
    """Room check, images, records; then the create messages of the jobs that are new.

    An OOM refusal on the way undoes what this submission wrote (a new batch is purged; an
    existing one loses only the jobs this submission added; both run even when Redis is
    full) and raises ``NoRoom``."""
    pins = ImageStore(store.redis)
    sizes = inline.sizes()
    stored = pins.stored(sizes)
    new = [n for sha, n in sizes.items() if sha not in stored]
    need = room.Need(sum(new), len(new), spool.jobs, spool.bytes)
    room.check(store.redis, need, max_inline_bytes)
    existed = bool(store.batch(report.batch_id))
    with _Spool() as fresh:
        pending: list[str] = []  # the chunk being written: its jobs that did not exist before
        try:
            store.open_batch(report.batch_id, meta)
            for sha in sizes:
                if not pins.pin(report.batch_id, sha):
                    pins.pin(report.batch_id, sha, inline.read(sha))
            for chunk in _chunks(spool.read()):
                if existed:
                    pending = _absent(store, report.batch_id, chunk)
                ids = store.enqueue_many(report.batch_id, chunk)
                fresh.write(ids)
                pending = []
                report.enqueued += len(ids)
                report.existing += len(chunk) - len(ids)
        except redis.RedisError as exc:
            if not room.is_oom(exc):
                raise
            if existed:
                written = itertools.chain(reversed(pending), fresh.read_backwards())
                Purger(store.redis).take_back(report.batch_id, written)
            else:
                Purger(store.redis).purge(report.batch_id)
            pins.unpin(report.batch_id)
            raise room.oom(exc, need) from exc
        pins.unpin(report.batch_id)  # the jobs hold their own references now
        for ids in _chunks(fresh.read()):
            send_create((job_id, 0) for job_id in ids)


def _absent(store: JobStore, batch_id: str, chunk: list[Job]) -> list[str]:
    """The chunk's job IDs that have no record yet, in order."""
    ids = [keys.job_id(batch_id, job[0]) for job in chunk]
    pipe = store.redis.pipeline(transaction=False)
    for job_id in ids:
        pipe.exists(keys.job(job_id))
    return [job_id for job_id, there in zip(ids, pipe.execute(), strict=True) if not there]


class _Spool:
    """Chunks of jobs (or IDs) in an anonymous temporary file (gone when closed), read back in
    order; ``jobs`` and ``bytes`` count what was written (requests' JSON for jobs)."""

    def __enter__(self) -> _Spool:
        self.file = tempfile.TemporaryFile(prefix="wanq-spool-")
        self.jobs = self.bytes = 0
        self.offsets: list[int] = []  # where each chunk starts: one int per CHUNK items
        return self

    def write(self, chunk: list) -> None:
        self.offsets.append(self.file.seek(0, 2))
        self.jobs += len(chunk)
        self.bytes += sum(len(job[1]) for job in chunk if isinstance(job, tuple))
        pickle.dump(chunk, self.file, protocol=pickle.HIGHEST_PROTOCOL)

    def read(self) -> Iterator:
        self.file.seek(0)
        while True:
            try:
                chunk = pickle.load(self.file)  # our own file, written above
            except EOFError:
                return
            yield from chunk

    def read_backwards(self) -> Iterator:
        """The items last-written first, a chunk in memory at a time."""
        for offset in reversed(self.offsets):
            self.file.seek(offset)
            yield from reversed(pickle.load(self.file))  # our own file, written above

    def __exit__(self, *exc: object) -> None:
        self.file.close()


__all__ = ["SubmitReport", "check_batch_id", "submit_file", "validate_file"]
