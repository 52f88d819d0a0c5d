"""Batch files: the one entry point for JSON Lines and CSV.

JSON Lines: one ``{"custom_id": ..., "body": {request}}`` object per line. CSV: a header row,
then one job a record (columns and conversion in ``producers.csvfile``). ``read_batch`` picks
the format from ``fmt`` or the file name (``.csv``), and every record of either format takes
the same path afterwards: custom_id rules, uniqueness in the batch, then ``validate_request``.

The file is streamed: memory stays flat whatever its size (only the set of custom_ids seen
grows), and a line (a CSV record) too long to be a request is skipped unread rather than
loaded. Every non-blank line yields a BatchLine, valid or carrying its error, so the
submitter can report each bad line by number and still submit the good ones.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from producers import csvfile
from producers.images import json_type
from producers.validation import (
    DEFAULT_OPTIONS,
    ValidationOptions,
    check_encodable,
    validate_request,
)
from workers import errors
from workers.errors import ValidationError

MAX_LINE_BYTES = 16 * 1024 * 1024  # a line longer than this -> WQ104 without parsing it
MAX_JOBS = 1_000_000  # lines past this -> one WQ106 and the reading stops: split the file
# (for CSV: a record of more characters than this, its final line break not counted)
MAX_CUSTOM_ID = 64
_SKIP_CHUNK = 1024 * 1024
FORMATS = ("jsonl", "csv")


@dataclass
class BatchLine:
    """One non-blank line of a batch file: its normalized request, or why it was refused."""

    line: int  # 1-based line number in the file (CSV: where the record starts; header = 1)
    custom_id: str | None  # None until the line's custom_id is known to be well formed
    body: dict | None  # the normalized request when valid
    error: ValidationError | None

    @property
    def valid(self) -> bool:
        return self.error is None


def read_batch(
    source: str | Path | IO[bytes],
    options: ValidationOptions = DEFAULT_OPTIONS,
    *,
    fmt: str | None = None,
) -> Iterator[BatchLine]:
    """Yield a BatchLine per non-blank line of a path, ``"-"`` (stdin) or a binary file.

    ``fmt`` is ``"jsonl"``, ``"csv"`` or None: by the file name (a path ending in ``.csv``,
    any case, is CSV), JSON Lines otherwise, and always for ``"-"`` and file objects.

    The file is opened here, so one that cannot be opened raises OSError at the call rather
    than at the first iteration; it is closed when the iteration ends. A CSV header is read
    here too: a wrong one raises ``csvfile.CsvHeaderError`` (a ValueError) at the call.
    """
    is_csv = _is_csv(source, fmt)
    stream, owned = _open(source)
    if is_csv:
        return _capped(_read_csv(csvfile.read_rows(stream, owned, MAX_LINE_BYTES), options))
    return _capped(_read(stream, owned, options))


def _capped(lines: Generator[BatchLine, None, None]) -> Iterator[BatchLine]:
    """At most MAX_JOBS lines, then one error line: a batch that size is a mistake or a split."""
    for count, line in enumerate(lines, start=1):
        if count > MAX_JOBS:
            detail = f"more than {MAX_JOBS:,} jobs; split the file into several batches"
            yield BatchLine(line.line, None, None, ValidationError(errors.BATCH_TOO_LARGE, detail))
            lines.close()
            return
        yield line


def _is_csv(source: str | Path | IO[bytes], fmt: str | None) -> bool:
    if fmt is None:
        named = isinstance(source, str | Path) and source != "-"
        return named and str(source).lower().endswith(".csv")
    if fmt.lower() not in FORMATS:
        raise ValueError(f"unknown batch file format {fmt!r}: expected 'jsonl' or 'csv'")
    return fmt.lower() == "csv"


def _open(source: str | Path | IO[bytes]) -> tuple[IO[bytes], bool]:
    """The stream to read, and whether it is ours to close."""
    if source == "-":
        return sys.stdin.buffer, False
    if isinstance(source, str | Path):
        return open(source, "rb"), True  # closed by _read
    return source, False


def _read(
    stream: IO[bytes], owned: bool, options: ValidationOptions
) -> Generator[BatchLine, None, None]:
    seen: set[str] = set()
    try:
        for number, raw in enumerate(_raw_lines(stream), start=1):
            if raw is None:
                too_long = f"longer than {MAX_LINE_BYTES:,} bytes"
                yield BatchLine(number, None, None, ValidationError(errors.LINE_TOO_LONG, too_long))
            elif raw.strip():
                yield _parse_line(number, raw, seen, options)
    finally:
        if owned:
            stream.close()


def _raw_lines(stream: IO[bytes]) -> Iterator[bytes | None]:
    """Each line's bytes, or None for a line over MAX_LINE_BYTES (the rest of it is skipped)."""
    limit = MAX_LINE_BYTES
    while raw := stream.readline(limit + 1):
        if len(raw) > limit and not raw.endswith(b"\n"):
            _skip_rest_of_line(stream)
            yield None
        else:
            yield raw


def _skip_rest_of_line(stream: IO[bytes]) -> None:
    while chunk := stream.readline(_SKIP_CHUNK):
        if chunk.endswith(b"\n"):
            return


def _read_csv(
    rows: Generator[csvfile.Row, None, None], options: ValidationOptions
) -> Generator[BatchLine, None, None]:
    seen: set[str] = set()
    try:
        for row in rows:
            if row.cells is None:
                yield BatchLine(row.line, None, None, row.error)
            else:
                yield _check_record(row.line, row.cells, seen, options, csvfile.request_body)
    finally:
        rows.close()  # closes the file now, even when the reading stopped early


def _parse_line(number: int, raw: bytes, seen: set[str], options: ValidationOptions) -> BatchLine:
    try:
        record = _load_object(raw)
    except ValidationError as error:
        return BatchLine(number, None, None, error)
    return _check_record(number, record, seen, options)


def _request(record: dict) -> object:
    return record["body"]


def _check_record(
    number: int,
    record: dict,
    seen: set[str],
    options: ValidationOptions,
    request: Callable[[dict], object] = _request,
) -> BatchLine:
    """The path every record takes, whatever its format: custom_id, uniqueness, request.

    ``record`` has a ``custom_id``; ``request`` makes the request out of it (JSONL: its
    ``body``; CSV: the cells). The custom_id is reported once it is known to be good, and
    counts as seen even when the request turns out bad.
    """
    custom_id = None
    try:
        custom_id = _custom_id(record)
        if custom_id in seen:
            raise ValidationError(errors.CUSTOM_ID_DUPLICATE, "seen earlier", "custom_id")
        seen.add(custom_id)
        body = validate_request(request(record), options)
    except ValidationError as error:
        return BatchLine(number, custom_id, None, error)
    return BatchLine(number, custom_id, body, None)


def _load_object(raw: bytes) -> dict:
    """A JSON object with ``custom_id`` and ``body`` (a leading BOM from Windows is fine)."""
    try:
        record = json.loads(raw.decode("utf-8-sig"))
    except UnicodeDecodeError as exc:
        raise ValidationError(errors.LINE_JSON, f"not UTF-8 at byte {exc.start}") from exc
    except json.JSONDecodeError as exc:
        raise ValidationError(errors.LINE_JSON, f"{exc.msg} at column {exc.colno}") from exc
    except (ValueError, RecursionError) as exc:  # an over-long number, or too deeply nested
        raise ValidationError(errors.LINE_JSON, type(exc).__name__) from exc
    if not isinstance(record, dict):
        raise ValidationError(errors.LINE_SHAPE, f"got {json_type(record)}")
    missing = [key for key in ("custom_id", "body") if key not in record]
    if missing:
        raise ValidationError(errors.LINE_SHAPE, f"missing {', '.join(missing)}")
    return record


def _custom_id(record: dict) -> str:
    custom_id = record["custom_id"]
    if not isinstance(custom_id, str):
        detail = f"got {json_type(custom_id)}"
        raise ValidationError(errors.CUSTOM_ID, detail, "custom_id")
    if not 1 <= len(custom_id) <= MAX_CUSTOM_ID:
        detail = f"got {len(custom_id)} characters"
        raise ValidationError(errors.CUSTOM_ID, detail, "custom_id")
    return check_encodable(custom_id, "custom_id")
