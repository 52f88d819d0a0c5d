"""CSV batch files through read_batch: columns to requests, header rules, per-record errors."""

from __future__ import annotations

import io
import sys
import types
from pathlib import Path
from typing import IO

import pytest
from PIL import Image

from producers import batchfile, csvfile
from producers.batchfile import BatchLine, read_batch
from producers.validation import ValidationOptions
from tests.test_batchfile import read_streamed
from workers import errors

HEADER = (
    "custom_id,prompt,image_1,image_2,image_3,image_4,negative_prompt,size,n,"
    "enable_interleave,max_images,prompt_extend,watermark,seed"
)
CAT = "https://example.com/cat.jpg"
DOG = "https://example.com/dog.png"


def write(tmp_path: Path, text: str | bytes, name: str = "batch.csv") -> Path:
    path = tmp_path / name
    path.write_bytes(text.encode() if isinstance(text, str) else text)
    return path


def short(*rows: str, header: str = "custom_id,prompt,image_1,n,enable_interleave") -> str:
    return "\r\n".join((header, *rows)) + "\r\n"


def codes(lines: list[BatchLine]) -> list[tuple[int, str | None]]:
    return [(item.line, item.error.code if item.error else None) for item in lines]


def request(content: list[dict], **parameters: object) -> dict:
    return {
        "model": "wan26_i2i",
        "input": {"messages": [{"role": "user", "content": content}]},
        "parameters": parameters,
    }


def test_valid_file_in_both_modes_gives_exactly_the_expected_bodies(tmp_path: Path) -> None:
    text = (
        HEADER + "\n"
        f"edit-1,make it a watercolor,{CAT},{DOG},,,blurry,1280*1280,2,false,,FALSE,yes,42\n"
        f"edit-2,only the defaults,{CAT},,,,,,,,,,,\n"
        f"mixed-1,tell a story,,,{DOG},,,,1,True,3,,0,0\n"
        "mixed-2,no image at all,,,,,,,,1,,,,\n"
    )
    result = list(read_batch(write(tmp_path, text)))
    assert [(item.line, item.custom_id, item.error) for item in result] == [
        (2, "edit-1", None),
        (3, "edit-2", None),
        (4, "mixed-1", None),
        (5, "mixed-2", None),
    ]
    assert [item.body for item in result] == [
        request(
            [{"text": "make it a watercolor"}, {"image": CAT}, {"image": DOG}],
            negative_prompt="blurry",
            size="1280*1280",
            n=2,
            enable_interleave=False,
            prompt_extend=False,
            watermark=True,
            seed=42,
        ),
        request([{"text": "only the defaults"}, {"image": CAT}]),
        request(
            [{"text": "tell a story"}, {"image": DOG}],
            n=1,
            enable_interleave=True,
            max_images=3,
            watermark=False,
            seed=0,
        ),
        request([{"text": "no image at all"}], enable_interleave=True),
    ]


def test_columns_may_come_in_any_order_and_only_the_required_ones_are_needed(
    tmp_path: Path,
) -> None:
    text = f"image_1, Prompt ,CUSTOM_ID\n{CAT},a fox,fox-1\n"
    [item] = read_batch(write(tmp_path, text))
    assert (item.custom_id, item.body) == ("fox-1", request([{"text": "a fox"}, {"image": CAT}]))


def test_leading_bom_is_not_part_of_the_first_column_name(tmp_path: Path) -> None:
    path = write(tmp_path, b"\xef\xbb\xbf" + short(f"a,hello,{CAT},,").encode())
    [item] = read_batch(path)
    assert (item.line, item.custom_id, item.valid) == (2, "a", True)


def test_quoted_prompt_keeps_commas_quotes_and_newlines(tmp_path: Path) -> None:
    prompt = 'first, a "quoted" word,\nthen a second line\r\nand a third'
    quoted = '"' + prompt.replace('"', '""') + '"'
    [item] = read_batch(write(tmp_path, short(f"a,{quoted},{CAT},,")))
    assert item.valid
    assert item.body is not None
    assert item.body["input"]["messages"][0]["content"][0] == {"text": prompt}


def test_line_numbers_count_physical_lines_of_multi_line_records_and_blank_lines(
    tmp_path: Path,
) -> None:
    text = short(
        f'a,"two\nlines",{CAT},,',  # lines 2-3
        "",  # line 4, blank
        f'b,"three\n\nlines",{CAT},x,',  # lines 5-7, invalid n
        f"c,one line,{CAT},,",  # line 8
        ",,,,",  # line 9: every cell empty, skipped like a blank line
        f"d,last,{CAT},,",  # line 10
    )
    result = list(read_batch(write(tmp_path, text)))
    assert [(item.line, item.custom_id) for item in result] == [
        (2, "a"),
        (5, "b"),
        (8, "c"),
        (10, "d"),
    ]
    assert codes(result)[1] == (5, errors.FIELD_TYPE)


@pytest.mark.parametrize(
    ("column", "cell"),
    [
        ("n", "two"),
        ("n", "2.0"),
        ("n", "1_000"),
        ("n", "\u0663"),  # an Arabic-Indic 3: int() takes it, base-10 ASCII does not
        ("max_images", "3x"),
        ("seed", "1e3"),
        ("seed", "0x10"),
    ],
)
def test_cell_that_is_not_a_base_10_integer_is_wq003_naming_the_column(
    tmp_path: Path, column: str, cell: str
) -> None:
    header = f"custom_id,prompt,image_1,enable_interleave,{column}"
    text = short(f"a,hi,{CAT},true,{cell}", f"b,hi,{CAT},true,", header=header)
    result = list(read_batch(write(tmp_path, text)))
    assert codes(result) == [(2, errors.FIELD_TYPE), (3, None)]
    error = result[0].error
    assert error is not None
    assert error.field == column
    assert cell in error.message
    assert result[0].custom_id == "a"


@pytest.mark.parametrize("column", ["enable_interleave", "prompt_extend", "watermark"])
@pytest.mark.parametrize("cell", ["maybe", "2", "on", "t"])
def test_cell_that_is_not_a_boolean_is_wq003_naming_the_column(
    tmp_path: Path, column: str, cell: str
) -> None:
    header = f"custom_id,prompt,image_1,{column}"
    [item] = read_batch(write(tmp_path, short(f"a,hi,{CAT},{cell}", header=header)))
    assert item.error is not None
    assert (item.error.code, item.error.field) == (errors.FIELD_TYPE, column)


@pytest.mark.parametrize(
    ("cell", "value"),
    [("true", True), ("TRUE", True), ("Yes", True), ("1", True), (" no ", False), ("0", False)],
)
def test_boolean_spellings(tmp_path: Path, cell: str, value: bool) -> None:
    header = "custom_id,prompt,image_1,watermark"
    [item] = read_batch(write(tmp_path, short(f"a,hi,{CAT},{cell}", header=header)))
    assert item.body is not None
    assert item.body["parameters"] == {"watermark": value}


@pytest.mark.parametrize(
    ("row", "code", "field"),
    [
        (f"a,hi,{CAT},9,,", errors.N_RANGE, "parameters.n"),
        (f"a,hi,{CAT},0,,", errors.N_RANGE, "parameters.n"),
        (f"a,hi,{CAT},-1,,", errors.N_RANGE, "parameters.n"),
        (f"a,hi,{CAT},+5,,", errors.N_RANGE, "parameters.n"),
        ("a,hi,,,true,6", errors.MAX_IMAGES_RANGE, "parameters.max_images"),
        (f"a,hi,{CAT},,,", None, None),
    ],
)
def test_out_of_range_integers_get_the_providers_code(
    tmp_path: Path, row: str, code: str | None, field: str | None
) -> None:
    header = "custom_id,prompt,image_1,n,enable_interleave,max_images"
    [item] = read_batch(write(tmp_path, short(row, header=header)))
    got = (item.error.code, item.error.field) if item.error else (None, None)
    assert got == (code, field)


def test_seed_of_many_digits_is_out_of_range_not_a_crash(tmp_path: Path) -> None:
    header = "custom_id,prompt,image_1,seed"
    text = short(f"a,hi,{CAT},{'9' * 5000}", f"b,hi,{CAT},2147483647", header=header)
    result = list(read_batch(write(tmp_path, text)))
    assert codes(result) == [(2, errors.SEED_RANGE), (3, None)]
    assert result[1].body is not None
    assert result[1].body["parameters"] == {"seed": 2147483647}


def test_empty_prompt_is_refused_for_its_length(tmp_path: Path) -> None:
    [item] = read_batch(write(tmp_path, short(f"a,,{CAT},,")))
    assert item.error is not None
    assert item.error.code == errors.TEXT_LENGTH


@pytest.mark.parametrize(
    ("header", "names"),
    [
        ("custom_id,image_1", ["missing required column", "'prompt'"]),
        ("prompt,image_1,n", ["missing required column", "'custom_id'"]),
        ("image_1", ["missing required columns", "'custom_id', 'prompt'"]),
        ("custom_id,promt,image_1", ["unknown column 'promt'", "did you mean 'prompt'"]),
        ("custom_id,prompt,colour", ["unknown column 'colour'", "known columns:"]),
        ("custom_id,prompt,", ["column 3 has no name"]),
        ("custom_id,prompt,n,N", ["'n' appears more than once"]),
    ],
)
def test_bad_header_raises_value_error_at_the_call(
    tmp_path: Path, header: str, names: list[str]
) -> None:
    path = write(tmp_path, f"{header}\na,hi,{CAT}\n")
    with pytest.raises(ValueError) as caught:
        read_batch(path)
    for name in names:
        assert name in str(caught.value)


@pytest.mark.parametrize("text", [b"", b"\n\n", b"\xef\xbb\xbf"])
def test_empty_csv_file_has_no_header(tmp_path: Path, text: bytes) -> None:
    with pytest.raises(csvfile.CsvHeaderError, match="the file is empty"):
        read_batch(write(tmp_path, text))


def test_bad_header_closes_the_file_we_opened(tmp_path: Path, opened: list[IO[bytes]]) -> None:
    with pytest.raises(ValueError, match="unknown column"):
        read_batch(str(write(tmp_path, "custom_id,prompt,size_\n")))
    assert opened[0].closed


def test_duplicate_custom_id_is_wq103_even_after_an_invalid_row(tmp_path: Path) -> None:
    text = short(f"a,hi,{CAT},,", f"b,hi,{CAT},x,", f"a,hi,{CAT},,", f"b,hi,{CAT},,")
    result = list(read_batch(write(tmp_path, text)))
    assert codes(result) == [
        (2, None),
        (3, errors.FIELD_TYPE),
        (4, errors.CUSTOM_ID_DUPLICATE),
        (5, errors.CUSTOM_ID_DUPLICATE),
    ]
    assert [item.custom_id for item in result] == ["a", "b", "a", "b"]


@pytest.mark.parametrize("custom_id", ["", "x" * 65])
def test_bad_custom_id_is_wq102_and_not_reported_as_the_id(tmp_path: Path, custom_id: str) -> None:
    [item] = read_batch(write(tmp_path, short(f"{custom_id},hi,{CAT},,")))
    assert item.error is not None
    assert (item.custom_id, item.error.code) == (None, errors.CUSTOM_ID)


def test_wrong_number_of_fields_is_wq101_for_that_row_only(tmp_path: Path) -> None:
    text = short(f"a,hi,{CAT}", f"b,hi,{CAT},,,extra", f"c,hi,{CAT},,")
    result = list(read_batch(write(tmp_path, text)))
    assert codes(result) == [(2, errors.LINE_SHAPE), (3, errors.LINE_SHAPE), (4, None)]
    assert result[0].error is not None
    assert "3 fields, the header has 5" in result[0].error.message
    assert result[0].custom_id is None
    assert result[2].custom_id == "c"


def test_over_long_record_is_wq104_and_the_next_record_starts_where_it_should(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(batchfile, "MAX_LINE_BYTES", 200)
    monkeypatch.setattr(csvfile, "_SKIP_CHUNK", 7)
    long_quoted = '"' + "x" * 150 + '\n,still, "" inside\n' + "y" * 150 + '"'
    text = short(
        f"a,hi,{CAT},,",  # line 2
        f"b,{long_quoted},{CAT},,",  # lines 3-5: too long on its last line
        f"c,{'z' * 300},{CAT},,",  # line 6: one long physical line
        f'd,"{"w" * 300}\ne,inside,{CAT},,\n",{CAT},,',  # lines 7-9: too long on its first
        f"f,hi,{CAT},,",  # line 10
    )
    result = list(read_batch(write(tmp_path, text)))
    assert codes(result) == [
        (2, None),
        (3, errors.LINE_TOO_LONG),
        (6, errors.LINE_TOO_LONG),
        (7, errors.LINE_TOO_LONG),
        (10, None),
    ]
    assert [item.custom_id for item in result] == ["a", None, None, None, "f"]


def test_record_of_exactly_the_limit_is_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    row = f"a,{'p' * 40},{CAT},,"
    monkeypatch.setattr(batchfile, "MAX_LINE_BYTES", len(row))  # its CRLF not counted
    text = short(row, f"b,{'p' * 41},{CAT},,", header="custom_id,prompt,image_1,n,watermark")
    assert codes(list(read_batch(write(tmp_path, text)))) == [(2, None), (3, errors.LINE_TOO_LONG)]


def test_row_that_is_not_utf8_is_refused_and_the_rest_read(tmp_path: Path) -> None:
    text = short("a,caf\xe9,X,,", f"b,hi,{CAT},,").replace("X", CAT).encode("latin-1")
    result = list(read_batch(write(tmp_path, text)))
    assert codes(result) == [(2, errors.LINE_CSV), (3, None)]
    assert result[0].error is not None
    assert "UTF-8" in result[0].error.message


def test_local_images_are_resolved_against_base_dir(tmp_path: Path) -> None:
    (tmp_path / "pics").mkdir()
    Image.new("RGB", (400, 400), "red").save(tmp_path / "pics" / "red.png")
    path = write(tmp_path, short("a,hi,pics/red.png,,"))
    [found] = read_batch(path, ValidationOptions(base_dir=tmp_path))
    [lost] = read_batch(path, ValidationOptions(base_dir=tmp_path / "elsewhere"))
    assert found.body is not None
    image = found.body["input"]["messages"][0]["content"][1]["image"]
    assert image.startswith("data:image/png;base64,")
    assert lost.error is not None
    assert lost.error.code == errors.IMAGE_REFERENCE


def test_fmt_csv_reads_a_file_object_and_leaves_it_open() -> None:
    stream = io.BytesIO(short(f"a,hi,{CAT},,", f"b,hi,{CAT},2,").encode())
    result = list(read_batch(stream, fmt="csv"))
    assert [(item.line, item.custom_id, item.valid) for item in result] == [
        (2, "a", True),
        (3, "b", True),
    ]
    assert not stream.closed


def test_file_object_without_fmt_is_jsonl() -> None:
    stream = io.BytesIO(short(f"a,hi,{CAT},,").encode())
    assert {item.error.code for item in read_batch(stream) if item.error} == {errors.LINE_JSON}


def test_dash_with_fmt_csv_reads_stdin(monkeypatch: pytest.MonkeyPatch) -> None:
    buffer = io.BytesIO(short(f"from-stdin,hi,{CAT},,").encode())
    monkeypatch.setattr(sys, "stdin", types.SimpleNamespace(buffer=buffer))
    assert [item.custom_id for item in read_batch("-", fmt="csv")] == ["from-stdin"]
    assert not buffer.closed


def test_format_follows_the_extension_unless_fmt_says_otherwise(tmp_path: Path) -> None:
    text = short(f"a,hi,{CAT},,")
    upper = write(tmp_path, text, "BATCH.CSV")
    named_jsonl = write(tmp_path, text, "batch.jsonl")
    assert [item.valid for item in read_batch(upper)] == [True]
    assert [item.valid for item in read_batch(named_jsonl, fmt="CSV")] == [True]
    forced = list(read_batch(upper, fmt="jsonl"))
    assert {item.error.code for item in forced if item.error} == {errors.LINE_JSON}
    with pytest.raises(ValueError, match="'xlsx'"):
        read_batch(upper, fmt="xlsx")


def test_large_csv_is_streamed(tmp_path: Path) -> None:
    path = tmp_path / "big.csv"
    with path.open("w", encoding="utf-8", newline="") as f:
        f.write("custom_id,prompt,enable_interleave,seed\r\n")
        f.writelines(f'job-{i},"prompt, number {i}",true,{i}\r\n' for i in range(20_000))
    count, first, last = read_streamed(path, "csv")
    assert (first.line, first.custom_id) == (2, "job-0")
    assert (count, last.line, last.custom_id) == (20_000, 20_001, "job-19999")
    assert last.body is not None
    assert last.body["parameters"] == {"enable_interleave": True, "seed": 19_999}
