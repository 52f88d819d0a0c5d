"""read_batch: streaming JSON Lines with per-line errors, line numbers and custom_id rules."""

from __future__ import annotations

import io
import json
import sys
import types
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import pytest

from producers import batchfile
from producers.batchfile import BatchLine, read_batch
from producers.validation import ValidationOptions
from workers import errors


def body(text: str = "a fox in the snow", **parameters: object) -> dict:
    """A valid text-only interleaved request: no image to check, so lines stay cheap."""
    return {
        "model": "wan26_i2i",
        "input": {"messages": [{"role": "user", "content": [{"text": text}]}]},
        "parameters": {"enable_interleave": True, **parameters},
    }


def line(custom_id: object, request: object = None) -> bytes:
    return json.dumps({"custom_id": custom_id, "body": request or body()}).encode() + b"\n"


def write(tmp_path: Path, *lines: bytes) -> Path:
    path = tmp_path / "batch.jsonl"
    path.write_bytes(b"".join(lines))
    return path


def codes(lines: list[BatchLine]) -> list[tuple[int, str | None]]:
    return [(item.line, item.error.code if item.error else None) for item in lines]


def test_valid_lines_carry_the_normalized_body(tmp_path: Path) -> None:
    path = write(tmp_path, line("a"), line("b", body(seed=7)))
    result = list(read_batch(path))
    assert [(item.line, item.custom_id, item.valid) for item in result] == [
        (1, "a", True),
        (2, "b", True),
    ]
    assert result[1].body == body(seed=7)
    assert result[1].error is None


def test_blank_lines_are_skipped_but_counted(tmp_path: Path) -> None:
    path = write(tmp_path, b"\n", line("a"), b"   \t\r\n", b"\n", line("b"), b"\n")
    assert [(item.line, item.custom_id) for item in read_batch(path)] == [(2, "a"), (5, "b")]


def test_last_line_without_newline_is_read(tmp_path: Path) -> None:
    path = write(tmp_path, line("a"), line("b").rstrip(b"\n"))
    assert [item.custom_id for item in read_batch(path)] == ["a", "b"]


def test_crlf_and_a_leading_bom_are_accepted(tmp_path: Path) -> None:
    path = write(tmp_path, b"\xef\xbb\xbf" + line("a").replace(b"\n", b"\r\n"), line("b"))
    assert [(item.custom_id, item.valid) for item in read_batch(path)] == [("a", True), ("b", True)]


@pytest.mark.parametrize(
    ("raw", "code"),
    [
        (b'{"custom_id": "a", "body": \n', errors.LINE_JSON),
        (b"not json\n", errors.LINE_JSON),
        (b'{"custom_id": "\xff\xfe", "body": {}}\n', errors.LINE_JSON),
        (b"[" * 100_000 + b"\n", errors.LINE_JSON),
        (b'{"custom_id": "a", "body": {"n": ' + b"9" * 5000 + b"}}\n", errors.LINE_JSON),
        (b'["a", {}]\n', errors.LINE_SHAPE),
        (b'"a"\n', errors.LINE_SHAPE),
        (b'{"body": {}}\n', errors.LINE_SHAPE),
        (b'{"custom_id": "a"}\n', errors.LINE_SHAPE),
        (b'{"id": "a", "request": {}}\n', errors.LINE_SHAPE),
        (line(""), errors.CUSTOM_ID),
        (line("x" * 65), errors.CUSTOM_ID),
        (line(42), errors.CUSTOM_ID),
        (line(None), errors.CUSTOM_ID),
        (line("a", {"model": "wan26_i2i"}), errors.MISSING_INPUT),
        (line("a", body(size="1024x1024")), errors.SIZE_FORMAT),
        (line("a", ["not", "an", "object"]), errors.BODY_TYPE),
    ],
)
def test_bad_line_is_reported_and_the_next_line_still_read(
    tmp_path: Path, raw: bytes, code: str
) -> None:
    result = list(read_batch(write(tmp_path, raw, line("next"))))
    assert codes(result) == [(1, code), (2, None)]
    assert result[0].body is None
    assert not result[0].valid
    assert result[1].custom_id == "next"


def test_sixty_four_character_custom_id_is_fine(tmp_path: Path) -> None:
    custom_id = "界" * 64
    [item] = read_batch(write(tmp_path, line(custom_id)))
    assert (item.custom_id, item.valid) == (custom_id, True)


def test_invalid_custom_id_is_not_reported_as_the_line_id(tmp_path: Path) -> None:
    [item] = read_batch(write(tmp_path, line("x" * 65)))
    assert item.custom_id is None
    assert item.error is not None and item.error.field == "custom_id"


def test_body_errors_carry_the_custom_id(tmp_path: Path) -> None:
    [item] = read_batch(write(tmp_path, line("job-7", body(text=""))))
    assert item.custom_id == "job-7"
    assert item.error is not None
    assert (item.error.code, item.error.field) == (
        errors.TEXT_LENGTH,
        "input.messages[0].content[0].text",
    )


def test_duplicate_custom_id_is_refused_after_the_first(tmp_path: Path) -> None:
    path = write(tmp_path, line("a"), line("b"), line("a"), line("a", body(text="")))
    result = list(read_batch(path))
    assert codes(result) == [
        (1, None),
        (2, None),
        (3, errors.CUSTOM_ID_DUPLICATE),
        (4, errors.CUSTOM_ID_DUPLICATE),
    ]
    assert result[2].custom_id == "a"


def test_an_id_first_seen_on_an_invalid_line_is_still_taken(tmp_path: Path) -> None:
    path = write(tmp_path, line("a", body(text="")), line("a"))
    assert codes(list(read_batch(path))) == [
        (1, errors.TEXT_LENGTH),
        (2, errors.CUSTOM_ID_DUPLICATE),
    ]


def test_over_long_line_is_skipped_unparsed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(batchfile, "MAX_LINE_BYTES", 300)
    monkeypatch.setattr(batchfile, "_SKIP_CHUNK", 7)
    long_line = line("long", body(text="x" * 1000))
    path = write(tmp_path, line("a"), long_line, b"{broken\n", line("b"))
    result = list(read_batch(path))
    assert codes(result) == [(1, None), (2, errors.LINE_TOO_LONG), (3, errors.LINE_JSON), (4, None)]
    assert result[1].custom_id is None


def test_line_of_exactly_the_limit_is_parsed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    at_limit = line("a")
    monkeypatch.setattr(batchfile, "MAX_LINE_BYTES", len(at_limit) - 1)  # newline not counted
    no_newline = line("b").rstrip(b"\n")
    path = write(tmp_path, at_limit, line("c").rstrip(b"\n") + b" " * 100 + b"\n", no_newline)
    assert codes(list(read_batch(path))) == [(1, None), (2, errors.LINE_TOO_LONG), (3, None)]


def test_over_long_last_line_without_newline(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(batchfile, "MAX_LINE_BYTES", 50)
    path = write(tmp_path, line("a", body(text="x" * 100)).rstrip(b"\n"))
    assert codes(list(read_batch(path))) == [(1, errors.LINE_TOO_LONG)]


def test_reads_from_a_binary_file_object() -> None:
    stream = io.BytesIO(line("a") + b"\n" + line("b"))
    assert [(item.line, item.custom_id) for item in read_batch(stream)] == [(1, "a"), (3, "b")]
    assert not stream.closed  # the caller's stream is the caller's to close


def test_dash_reads_stdin(monkeypatch: pytest.MonkeyPatch) -> None:
    stdin = types.SimpleNamespace(buffer=io.BytesIO(line("from-stdin")))
    monkeypatch.setattr(sys, "stdin", stdin)
    assert [item.custom_id for item in read_batch("-")] == ["from-stdin"]


def test_path_given_as_str_is_opened_binary_and_closed_at_the_end(
    tmp_path: Path, opened: list[IO[bytes]]
) -> None:
    lines = read_batch(str(write(tmp_path, line("a"), line("b"))))
    assert next(lines).custom_id == "a"
    assert not opened[0].closed
    assert [item.custom_id for item in lines] == ["b"]
    assert opened[0].closed


def test_missing_file_raises_at_the_call(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        read_batch(tmp_path / "missing.jsonl")


def test_options_reach_the_validator(tmp_path: Path) -> None:
    path = write(tmp_path, line("a", body(text="x" * 2001)))
    [refused] = read_batch(path)
    [truncated] = read_batch(path, ValidationOptions(truncate=True))
    assert refused.error is not None and refused.error.code == errors.TEXT_LENGTH
    assert truncated.valid
    assert truncated.body is not None
    assert truncated.body["input"]["messages"][0]["content"][0]["text"] == "x" * 2000


def generated_lines(count: int) -> Iterator[bytes]:
    for i in range(count):
        yield line(f"job-{i}", body(seed=i))


def test_large_file_is_streamed(tmp_path: Path) -> None:
    path = tmp_path / "big.jsonl"
    with path.open("wb") as f:
        f.writelines(generated_lines(20_000))
    count, first, last = read_streamed(path, "jsonl")
    assert (first.line, first.custom_id) == (1, "job-0")
    assert (count, last.line, last.custom_id) == (20_000, 20_000, "job-19999")


def read_streamed(path: Path, fmt: str) -> tuple[int, BatchLine, BatchLine]:
    """Read a big batch file, checking it is streamed: a generator that has read no more
    than a buffer's worth when the first line comes out, and every line valid. Returns the
    count, the first and the last line."""
    with path.open("rb") as f:
        lines = read_batch(f, fmt=fmt)
        assert isinstance(lines, types.GeneratorType)
        first = next(lines)
        assert f.tell() < 64 * 1024  # a line or a buffer consumed, not the file
        count, last = 1, first
        for last in lines:
            assert last.valid
            count += 1
    return count, first, last
