"""Text wanq did not write, on its way to a terminal, a spreadsheet or Redis: Rich markup and
escape sequences printed literally, CSV cells that cannot run as formulas, and lone
surrogates refused at validation (before anything is enqueued), with a code."""

from __future__ import annotations

import csv
import io
import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
from rich.console import Console

from ops.sample import request as sample_request
from producers.api import write_results
from producers.batchfile import read_batch
from producers.submit import submit_file
from producers.terminal import plain
from producers.validation import ValidationOptions, validate_request
from workers import errors
from workers.errors import ValidationError
from workers.store import JobStore

FAST = ValidationOptions(check_images=False)
HOSTILE_IDS = [
    "[/]",
    "[link=https://evil.example/]click me[/link]",
    "[bold red]fake error[/]",
    "\x1b[2J\x1b[31mred",
    "\x1b]8;;https://evil.example\x07link\x1b]8;;\x07",
    "rtl\u202eexe.txt",
]


def rendered(text: str) -> str:
    console = Console(file=io.StringIO(), force_terminal=False, width=200)
    console.print(f"[red]id[/] {plain(text)}")
    return console.file.getvalue()


@pytest.mark.parametrize("text", HOSTILE_IDS)
def test_untrusted_text_prints_literally_and_sends_no_control_characters(text):
    shown = rendered(text)
    assert "\x1b" not in shown and "\x07" not in shown and "\u202e" not in shown
    visible = text.replace("\x1b", "\\x1b").replace("\x07", "\\x07").replace("\u202e", "\\u202e")
    assert shown == f"id {visible}\n"


def test_a_trailing_backslash_does_not_escape_the_closing_tag_after_it():
    console = Console(file=io.StringIO(), force_terminal=False, width=200)
    console.print(f"[red]{plain('C:' + chr(92))}[/] after")
    assert console.file.getvalue() == "C:\\ after\n"


def test_a_link_in_markup_does_not_become_a_hyperlink_on_a_real_terminal():
    console = Console(file=io.StringIO(), force_terminal=True, color_system="truecolor")
    console.print(plain("[link=https://evil.example/]click[/link]"))
    assert "\x1b]8;" not in console.file.getvalue()  # OSC 8, the hyperlink sequence


def write(path: Path, lines: list[dict]) -> Path:
    path.write_text("".join(json.dumps(line) + "\n" for line in lines), encoding="utf-8")
    return path


def test_wanq_validate_prints_hostile_custom_ids_without_crashing(tmp_path):
    bad_body = {"model": "not-wan"}  # every line is invalid, so every custom_id is printed
    source = write(tmp_path / "b.jsonl", [{"custom_id": c, "body": bad_body} for c in HOSTILE_IDS])
    result = subprocess.run(
        [sys.executable, "-m", "ops.cli", "validate", str(source)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 1, result.stderr  # invalid lines, not a crash
    assert "Traceback" not in result.stderr
    report = result.stdout  # the report on stdout, notes on stderr
    assert f"0 valid, {len(HOSTILE_IDS)} invalid" in report
    assert "[/]" in report and "[link=https://evil.example/]" in report
    assert "\x1b" not in report + result.stderr and "\\x1b[2J" in report


# --- CSV export ------------------------------------------------------------------------------


FORMULAS = ['=HYPERLINK("http://evil","x")', "+1+1", "-2+3", "@SUM(A1)", "\tx", "\r=1"]


def test_csv_cells_that_start_like_formulas_are_neutralised():
    records = [
        {
            "custom_id": value,
            "state": "succeeded",
            "remote_task_id": value,  # provider-controlled
            "attempts": 1,
            "outputs": [{"type": "text", "text": value}],
            "usage": None,
            "error": None,
            "history": [],
        }
        for value in [*FORMULAS, "plain-id", "a=b"]
    ]
    out = io.StringIO()
    assert write_results(records, out, "csv") == len(records)

    rows = list(csv.DictReader(io.StringIO(out.getvalue())))
    for row, value in zip(rows, [*FORMULAS, "plain-id", "a=b"], strict=True):
        expected = "'" + value if value in FORMULAS else value
        assert row["custom_id"] == expected and row["remote_task_id"] == expected
        assert json.loads(row["outputs"])[0]["text"] == value  # JSON cells start with [
    assert out.getvalue().startswith('"custom_id","state"'), "every cell is quoted"


# --- lone surrogates -------------------------------------------------------------------------


def test_a_lone_surrogate_in_a_custom_id_is_refused_with_a_code():
    body = sample_request(0, random.Random(1), interleave=False)
    data = (
        json.dumps({"custom_id": "ok", "body": body})
        + "\n"
        + json.dumps({"custom_id": "bad-\ud800", "body": body})
        + "\n"
    ).encode()
    lines = list(read_batch(io.BytesIO(data), FAST))
    assert [line.valid for line in lines] == [True, False]
    assert lines[1].error.code == errors.TEXT_ENCODING and lines[1].error.field == "custom_id"


@pytest.mark.parametrize("where", ["text", "negative_prompt", "key"])
def test_a_lone_surrogate_in_the_request_is_refused_with_a_code(where):
    body = sample_request(0, random.Random(2), interleave=False)
    if where == "text":
        body["input"]["messages"][0]["content"][0]["text"] = "a cat \udc80"
    elif where == "negative_prompt":
        body["parameters"]["negative_prompt"] = "\ud83d"  # half of an emoji
    else:
        body["parameters"]["\udfff"] = 1
    with pytest.raises(ValidationError) as caught:
        validate_request(body, FAST)
    assert caught.value.code == errors.TEXT_ENCODING


def test_emoji_and_other_scripts_pass():
    body = sample_request(0, random.Random(3), interleave=False)
    body["input"]["messages"][0]["content"][0]["text"] = "水彩画 🎨 ñ"
    assert validate_request(body, FAST)["input"]["messages"][0]["content"][0]["text"].endswith("ñ")


def test_a_file_with_a_lone_surrogate_enqueues_nothing(redis_url):
    body = sample_request(0, random.Random(4), interleave=False)
    good = [json.dumps({"custom_id": f"ok-{i}", "body": body}) for i in range(50)]
    data = "\n".join([*good, json.dumps({"custom_id": "bad-\ud800", "body": body})]) + "\n"
    store = JobStore.from_url(redis_url)
    sent: list = []
    report = submit_file(store, sent.extend, io.BytesIO(data.encode()), batch_id="s", options=FAST)
    assert report.enqueued == 0 and sent == []
    assert report.invalid[0].error.code == errors.TEXT_ENCODING
    assert list(store.iter_batch_jobs("s")) == []


def test_wanq_submit_prints_hostile_custom_ids_and_enqueues_the_valid_ones(redis_url, tmp_path):
    body = sample_request(0, random.Random(5), interleave=False)
    lines = [{"custom_id": "[/]", "body": body}, {"custom_id": "[link=x]\x1b[2J", "body": {}}]
    source = write(tmp_path / "b.jsonl", lines)
    env = {**os.environ, "WANQ_REDIS_URL": redis_url}
    result = subprocess.run(
        [sys.executable, "-m", "ops.cli", "submit", str(source), "--allow-invalid"],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr and "\x1b[2J" not in result.stderr
    assert "[link=x]\\x1b[2J" in result.stderr
    batch_id = result.stdout.strip()
    jobs = list(JobStore.from_url(redis_url).iter_batch_jobs(batch_id))
    assert [job["custom_id"] for job in jobs] == ["[/]"]
