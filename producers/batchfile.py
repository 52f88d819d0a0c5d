"""Batch files in JSON Lines: one ``{"custom_id": ..., "body": {request}}`` object per line.

The file is streamed: memory stays flat whatever its size (only the set of custom_ids seen
grows), and a line too long to be a request is skipped unread rather than loaded. Every
non-blank line yields a BatchLine, valid or carrying its error, so the submitter can report
each bad line by number and still submit the good ones.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from producers.images import json_type
from producers.validation import DEFAULT_OPTIONS, ValidationOptions, validate_request
from workers import errors
from workers.errors import ValidationError

MAX_LINE_BYTES = 16 * 1024 * 1024  # a line longer than this -> WQ104 without parsing it
MAX_CUSTOM_ID = 64
_SKIP_CHUNK = 1024 * 1024


@dataclass
class BatchLine:
    """One non-blank line of a batch file: its normalized request, or why it was refused."""

    line: int  # 1-based line number in the file
    custom_id: str | None  # None until the line's custom_id is known to be well formed
    body: dict | None  # the normalized request when valid
    error: ValidationError | None

    @property
    def valid(self) -> bool:
        return self.error is None


def read_batch(
    source: str | Path | IO[bytes], options: ValidationOptions = DEFAULT_OPTIONS
) -> Iterator[BatchLine]:
    """Yield a BatchLine per non-blank line of a path, ``"-"`` (stdin) or a binary file.

    The file is opened here, so one that cannot be opened raises OSError at the call rather
    than at the first iteration; it is closed when the iteration ends.
    """
    stream, owned = _open(source)
    return _read(stream, owned, options)


def _open(source: str | Path | IO[bytes]) -> tuple[IO[bytes], bool]:
    """The stream to read, and whether it is ours to close."""
    if source == "-":
        return sys.stdin.buffer, False
    if isinstance(source, str | Path):
        return open(source, "rb"), True  # closed by _read
    return source, False


def _read(stream: IO[bytes], owned: bool, options: ValidationOptions) -> Iterator[BatchLine]:
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


def _parse_line(number: int, raw: bytes, seen: set[str], options: ValidationOptions) -> BatchLine:
    """Check one line top to bottom; its custom_id is reported once it is known to be good."""
    custom_id = None
    try:
        record = _load_object(raw)
        custom_id = _custom_id(record)
        if custom_id in seen:
            raise ValidationError(errors.CUSTOM_ID_DUPLICATE, "seen earlier", "custom_id")
        seen.add(custom_id)
        body = validate_request(record["body"], options)
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
    return custom_id
