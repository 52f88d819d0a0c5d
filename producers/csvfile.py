"""Batch files in CSV: a header row naming the columns, then one job a record.

Columns (any order, any subset holding the two required ones)::

    custom_id,prompt,image_1,image_2,image_3,image_4,negative_prompt,size,n,
    enable_interleave,max_images,prompt_extend,watermark,seed

A header naming an unknown column (a typo must not silently drop a setting), a column twice,
or missing ``custom_id`` or ``prompt`` raises ``CsvHeaderError`` (a ValueError) before any
record is read. Each record becomes the same request a JSON Lines file would carry: empty
cells are absent, images keep their column order, integers and booleans are parsed from
text (``WQ003`` when they do not parse; out-of-range values are passed on so validation
reports them with the provider's codes).

This module only reads: ``producers.batchfile`` is the entry point, and it puts every record
through the same custom_id and request checks as a JSON line.

Streaming: csv.reader is fed one physical line at a time from a text wrapper, so memory stays
flat. The feeder also knows what csv.reader does not say: where a record began (its line
number), how long it has grown (a record over the limit is abandoned unread, ``WQ104``),
whether its bytes were UTF-8, and how to skip to the end of a record that could not be
parsed (quote parity) so the next record is read from its real start.
"""

from __future__ import annotations

import csv
import difflib
import io
import re
from collections.abc import Generator, Iterator, Mapping
from dataclasses import dataclass
from typing import IO

from producers.images import describe
from producers.validation import MODEL
from workers import errors
from workers.errors import ValidationError

IMAGE_COLUMNS = ("image_1", "image_2", "image_3", "image_4")
PARAMETER_COLUMNS = (
    "negative_prompt",
    "size",
    "n",
    "enable_interleave",
    "max_images",
    "prompt_extend",
    "watermark",
    "seed",
)
COLUMNS = ("custom_id", "prompt", *IMAGE_COLUMNS, *PARAMETER_COLUMNS)
REQUIRED_COLUMNS = ("custom_id", "prompt")
INTEGER_COLUMNS = frozenset({"n", "max_images", "seed"})
BOOLEAN_COLUMNS = frozenset({"enable_interleave", "prompt_extend", "watermark"})

_TRUE = frozenset({"true", "1", "yes"})
_FALSE = frozenset({"false", "0", "no"})
_INTEGER = re.compile(r"[+-]?[0-9]+")
_MAX_DIGITS = 30  # beyond any column's range; longer values are capped (int() has a limit)
_UNDECODABLE = re.compile("[\udc80-\udcff]")  # what surrogateescape makes of non-UTF-8 bytes
_SKIP_CHUNK = 1024 * 1024
_FIELD_LIMIT_ERROR = "field larger than field limit"


class CsvHeaderError(ValueError):
    """The header row is missing, unreadable, or does not name the columns wanq knows."""


class _Text(io.TextIOWrapper):
    """The text view of the batch's bytes. Dropping it never closes the bytes underneath
    (a caller's stream is the caller's): ``_release`` decides, when the reading ends."""

    def __del__(self) -> None:
        pass


class _RecordTooLong(Exception):
    """Raised by the line feeder, through csv.reader, when a record outgrows the limit."""


@dataclass
class Row:
    """One non-blank CSV record: its cells by column name, or why it cannot be used."""

    line: int  # the line the record starts on (the header is line 1)
    cells: dict[str, str] | None
    error: ValidationError | None


def read_rows(stream: IO[bytes], owned: bool, limit: int) -> Generator[Row, None, None]:
    """Read and check the header now, then yield a Row per non-blank record.

    A bad header raises CsvHeaderError at the call. ``limit`` caps a record's characters
    (its final line break not counted). ``stream`` is closed at the end if ``owned``, and
    otherwise left open for the caller.
    """
    text = _Text(stream, encoding="utf-8-sig", errors="surrogateescape", newline="")
    lines = _Lines(text, limit)
    try:
        csv.field_size_limit(max(csv.field_size_limit(), limit))  # process-wide: never lowered
        reader = csv.reader(lines)
        columns = _header(reader, lines)
    except BaseException:
        _release(text, owned)
        raise
    return _rows(reader, lines, columns, text, owned)


def request_body(cells: Mapping[str, str]) -> dict:
    """The request a record stands for; ValidationError (WQ003) for a cell that will not parse.

    The prompt is always the text object (an empty one is refused by validation with
    001021006); images and parameters appear only when their cells are not empty.
    """
    content: list[dict] = [{"text": cells["prompt"]}]
    content += [{"image": cells[column]} for column in IMAGE_COLUMNS if cells.get(column)]
    parameters = {
        column: _parse(column, cells[column]) for column in PARAMETER_COLUMNS if cells.get(column)
    }
    return {
        "model": MODEL,
        "input": {"messages": [{"role": "user", "content": content}]},
        "parameters": parameters,
    }


def _parse(column: str, cell: str) -> object:
    if column in INTEGER_COLUMNS:
        return _integer(column, cell)
    if column in BOOLEAN_COLUMNS:
        return _boolean(column, cell)
    return cell


def _integer(column: str, cell: str) -> int:
    text = cell.strip()
    if not _INTEGER.fullmatch(text):
        detail = f"expected a base-10 integer, got {describe(cell)}"
        raise ValidationError(errors.FIELD_TYPE, detail, column)
    if len(text.lstrip("+-").lstrip("0")) > _MAX_DIGITS:
        return (-1 if text.startswith("-") else 1) * 10**_MAX_DIGITS
    return int(text)


def _boolean(column: str, cell: str) -> bool:
    text = cell.strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    detail = f"expected true/false, 1/0 or yes/no, got {describe(cell)}"
    raise ValidationError(errors.FIELD_TYPE, detail, column)


def _header(reader: Iterator[list[str]], lines: _Lines) -> tuple[str, ...]:
    """The column names of the first non-blank record, checked against COLUMNS."""
    row = _header_row(reader, lines)
    names = tuple(cell.strip().lower() for cell in row)
    for position, (cell, name) in enumerate(zip(row, names, strict=True), start=1):
        if not name:
            raise CsvHeaderError(f"CSV header: column {position} has no name")
        if name not in COLUMNS:
            raise CsvHeaderError(f"CSV header: unknown column {describe(cell)}{_hint(name)}")
        if name in names[: position - 1]:
            raise CsvHeaderError(f"CSV header: column {name!r} appears more than once")
    missing = [name for name in REQUIRED_COLUMNS if name not in names]
    if missing:
        raise CsvHeaderError(_missing_message(missing))
    return names


def _header_row(reader: Iterator[list[str]], lines: _Lines) -> list[str]:
    try:
        for row in reader:
            if any(row):
                break
            lines.start_record()
        else:
            raise CsvHeaderError(_missing_message(REQUIRED_COLUMNS) + " (the file is empty)")
    except _RecordTooLong as exc:
        detail = f"longer than {lines.limit:,} characters"
        raise CsvHeaderError(f"CSV header cannot be read: {detail}") from exc
    except csv.Error as exc:
        raise CsvHeaderError(f"CSV header cannot be read: {exc}") from exc
    if lines.undecodable:
        raise CsvHeaderError("CSV header is not UTF-8 text")
    lines.start_record()
    return row


def _missing_message(missing: tuple[str, ...] | list[str]) -> str:
    quoted = ", ".join(repr(name) for name in missing)
    plural = "s" if len(missing) > 1 else ""
    return f"CSV header: missing required column{plural} {quoted}"


def _hint(name: str) -> str:
    close = difflib.get_close_matches(name, COLUMNS, n=1)
    known = ", ".join(COLUMNS)
    return f" (did you mean {close[0]!r}?)" if close else f" (known columns: {known})"


def _rows(
    reader: Iterator[list[str]],
    lines: _Lines,
    columns: tuple[str, ...],
    text: io.TextIOWrapper,
    owned: bool,
) -> Generator[Row, None, None]:
    try:
        while True:
            error: ValidationError | None = None
            try:
                row = next(reader)
            except StopIteration:
                return
            except _RecordTooLong:
                lines.skip_record()
                detail = f"longer than {lines.limit:,} characters"
                error = ValidationError(errors.LINE_TOO_LONG, detail)
            except csv.Error as exc:
                lines.skip_record()
                error = _csv_error(exc, lines.limit)
            if error is not None:
                yield Row(lines.first, None, error)
            elif any(row):  # blank lines and all-empty records are skipped, like blank lines
                yield _row(lines, row, columns)
            lines.start_record()
    finally:
        _release(text, owned)


def _row(lines: _Lines, row: list[str], columns: tuple[str, ...]) -> Row:
    if lines.undecodable:
        error = ValidationError(errors.LINE_CSV, "not UTF-8 text")
        return Row(lines.first, None, error)
    if len(row) != len(columns):
        detail = f"CSV record has {len(row)} fields, the header has {len(columns)}"
        return Row(lines.first, None, ValidationError(errors.LINE_SHAPE, detail))
    return Row(lines.first, dict(zip(columns, row, strict=True)), None)


def _csv_error(exc: csv.Error, limit: int) -> ValidationError:
    if _FIELD_LIMIT_ERROR in str(exc):
        return ValidationError(errors.LINE_TOO_LONG, f"a field longer than {limit:,} characters")
    return ValidationError(errors.LINE_CSV, str(exc))


def _release(text: io.TextIOWrapper, owned: bool) -> None:
    """Close the file if it is ours; otherwise let go of it without closing the caller's."""
    if owned:
        text.close()
    elif not text.closed:
        text.detach()


class _Lines:
    """The physical lines fed to csv.reader, and what is known of the current record."""

    def __init__(self, text: io.TextIOWrapper, limit: int) -> None:
        self.text = text
        self.limit = limit
        self.number = 0  # physical lines started so far
        self.at_line_start = True
        self.start_record()

    def start_record(self) -> None:
        self.first = self.number + 1
        self.size = 0  # characters of the record read so far
        self.quotes = 0  # '"' characters in them: odd means inside a quoted field
        self.undecodable = False

    def __iter__(self) -> _Lines:
        return self

    def __next__(self) -> str:
        budget = max(self.limit + 2 - self.size, 1)  # room for the limit plus a CRLF
        line = self._read(budget)
        if not line:
            raise StopIteration
        self.size += len(line)
        if _UNDECODABLE.search(line):
            self.undecodable = True
        ending = len(line) - len(line.rstrip("\r\n"))
        if self.size - ending > self.limit:
            raise _RecordTooLong
        return line

    def skip_record(self) -> None:
        """Read past the rest of an abandoned record, in bounded chunks."""
        while (self.quotes % 2 or not self.at_line_start) and self._read(_SKIP_CHUNK):
            pass  # to the end of the line, then on while a quoted field is still open

    def _read(self, size: int) -> str:
        """Up to ``size`` characters of the current line, keeping count of lines and quotes."""
        chunk = self.text.readline(size)
        if chunk:
            if self.at_line_start:
                self.number += 1
                if self.size == 0:  # the record's first line
                    self.first = self.number
            self.at_line_start = chunk.endswith(("\n", "\r"))
            self.quotes += chunk.count('"')
        return chunk
