"""Submission: validated batch lines become job records and create messages.

The file is read once. Records go first (one Lua script per slice of a chunk, pipelined),
messages second, once every record is written: a job that exists without its message is
found by the sweeper, while a message without its record would be lost. Jobs are keyed by
(batch, custom_id), so submitting a file again adds nothing; a line whose request changed
under a custom_id the batch already has is reported (WQ108) and refuses the file unless the
caller ignores it (the enqueue script keeps a SHA-1 of each request, ``req_sha1``, to compare
with). A file with no valid line is refused (WQ107): a batch of 0 jobs would never end.
"""

from __future__ import annotations

import hashlib
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
from typing import IO, TypeVar

import redis

from producers import room
from producers.batchfile import BatchLine, read_batch
from producers.inline import InlineImages
from producers.validation import ValidationOptions
from workers import errors, keys
from workers.config import Settings
from workers.errors import ValidationError
from workers.images import ImageStore
from workers.pricing import worst_case_images
from workers.retention import Purger
from workers.store import JobStore

BATCH_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
CHUNK = 500

Source = str | Path | IO[bytes]
T = TypeVar("T")
Job = tuple[str, str, int, str, int]  # custom_id, request JSON, line, image keys, worst case


@dataclass
class SubmitReport:
    batch_id: str
    valid: int = 0
    enqueued: int = 0
    existing: int = 0
    invalid: list[BatchLine] = field(default_factory=list)
    changed: list[BatchLine] = field(default_factory=list)  # WQ108: kept as first submitted
    submitted: bool = True  # False when the file was refused whole (see ``refusal``)
    refusal: str = ""  # the WQ code of why nothing was submitted

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
    ignore_changed: bool = False,
    max_inline_bytes: int = Settings.max_inline_bytes,
) -> SubmitReport:
    """Validate and enqueue a batch file, reading it once.

    Nothing is written before the whole file is read: the valid jobs wait in an anonymous
    temporary spool (their requests serialized once, inline images replaced by references,
    each distinct image spooled once, see ``producers.inline``). Then the batch must fit in
    Redis (``producers.room``: refused whole otherwise), its images are stored and pinned,
    its records written, and only then are create messages sent: workers see the batch
    whole or not at all. A refused file writes nothing and says why in ``report.refusal``:
    invalid lines without ``allow_invalid``, no valid line, or lines changed under
    custom_ids the batch already has (unless ``ignore_changed``).
    """
    options = options or ValidationOptions()
    report = SubmitReport(check_batch_id(batch_id or new_batch_id()))
    resubmitted = bool(batch_id) and store.redis.exists(keys.batch(report.batch_id)) > 0
    with _Spool() as spool, InlineImages() as inline:
        for chunk in _chunks(_jobs(read_batch(source, options), report, on_line, inline)):
            if resubmitted:
                report.changed += _changed(store, report.batch_id, chunk)
            if allow_invalid or not report.invalid:  # else only the reading goes on
                spool.write(chunk)
        if report.invalid and not allow_invalid:
            return _refuse(report, errors.BATCH_INVALID)
        if not report.valid:
            return _refuse(report, errors.BATCH_EMPTY)
        if report.changed and not ignore_changed:
            return _refuse(report, errors.CUSTOM_ID_CHANGED)
        _write(store, send_create, spool, inline, report, meta or {}, max_inline_bytes)
    return report


def _refuse(report: SubmitReport, code: str) -> SubmitReport:
    report.submitted, report.refusal = False, code
    return report


def _changed(store: JobStore, batch_id: str, chunk: list[Job]) -> list[BatchLine]:
    """Lines whose request differs from the one the batch already holds under their
    custom_id (jobs stored before ``req_sha1`` existed cannot be compared: left alone)."""
    pipe = store.redis.pipeline(transaction=False)
    for custom_id, *_ in chunk:
        pipe.hget(keys.job(keys.job_id(batch_id, custom_id)), "req_sha1")
    changed = []
    for (custom_id, request, line, *_), stored in zip(chunk, pipe.execute(), strict=True):
        if stored and stored != hashlib.sha1(request.encode()).hexdigest():
            detail = "resubmitted with another request; the stored one is kept"
            error = ValidationError(errors.CUSTOM_ID_CHANGED, detail, "custom_id")
            changed.append(BatchLine(line, custom_id, None, error))
    return changed


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
        worst = worst_case_images(line.body or {})  # stored: the claim reserves without a read
        yield (str(line.custom_id), json.dumps(line.body), line.line, ",".join(held), worst)


def _chunks(items: Iterable[T]) -> Iterator[list[T]]:
    items = iter(items)
    while chunk := list(itertools.islice(items, CHUNK)):
        yield chunk


def _write(
    store: JobStore,
    send_create: Callable[[Iterable[tuple[str, int]]], object],
    spool: _Spool,
    inline: InlineImages,
    report: SubmitReport,
    meta: dict[str, object],
    max_inline_bytes: int,
) -> None:
    """Room check, images, records; then the create messages of the new jobs that may start
    now (all of them without an in-flight cap; the rest wait in Redis for a slot).

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
    with _Spool() as fresh, _Spool() as admitted:
        pending: list[str] = []  # the chunk being written: its jobs that did not exist before
        try:
            store.open_batch(report.batch_id, meta)
            for sha in sizes:
                if not pins.pin(report.batch_id, sha):
                    pins.pin(report.batch_id, sha, inline.read(sha))
            for chunk in _chunks(spool.read()):
                if existed:
                    pending = _absent(store, report.batch_id, chunk)
                done = store.enqueue_many(report.batch_id, chunk)
                fresh.write(done.new)
                admitted.write(done.admitted)
                pending = []
                report.enqueued += len(done.new)
                report.existing += len(chunk) - len(done.new)
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
        for chunk in _chunks(admitted.read()):
            send_create(chunk)


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
        self.bytes += sum(len(job[1]) for job in chunk if isinstance(job, tuple) and len(job) > 2)
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
