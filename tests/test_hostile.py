"""Hostile input: random and mutated requests and batch lines (wrong types, huge strings, deep
nesting, broken JSON, binary junk, enormous data URIs). Validation never crashes, always
answers with a code, and nothing invalid is enqueued."""

from __future__ import annotations

import base64
import copy
import io
import json

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ops.sample import request as sample_request
from producers import batchfile
from producers.batchfile import read_batch
from producers.submit import submit_file
from producers.validation import ValidationOptions, validate_request
from workers import errors
from workers.store import JobStore

KNOWN_CODES = set(errors.MESSAGES)
FAST = ValidationOptions(check_images=False)
VALID = sample_request(1, __import__("random").Random(1), interleave=False)

junk_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=True)
    | st.text(max_size=50)
    | st.binary(max_size=20).map(lambda b: b.hex()),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=20,
)
PATHS = [
    ("model",),
    ("input",),
    ("input", "messages"),
    ("input", "messages", 0),
    ("input", "messages", 0, "role"),
    ("input", "messages", 0, "content"),
    ("input", "messages", 0, "content", 0),
    ("input", "messages", 0, "content", 0, "text"),
    ("input", "messages", 0, "content", 1, "image"),
    ("parameters",),
    ("parameters", "n"),
    ("parameters", "size"),
    ("parameters", "seed"),
    ("parameters", "enable_interleave"),
    ("parameters", "max_images"),
    ("parameters", "negative_prompt"),
]


def mutate(body: dict, path: tuple, value: object) -> dict:
    mutated = copy.deepcopy(body)
    target = mutated
    for step in path[:-1]:
        target = target[step]
    target[path[-1]] = value
    return mutated


def outcome(body: object) -> str:
    """'valid', or the error code; anything else (an exception) fails the test."""
    try:
        validate_request(body, FAST)
    except errors.ValidationError as exc:
        assert exc.code in KNOWN_CODES
        assert exc.message and len(str(exc)) < 1000, "messages never echo huge values"
        return exc.code
    return "valid"


@settings(max_examples=400, deadline=None)
@given(st.sampled_from(PATHS), junk_values)
def test_mutated_requests_answer_with_a_code(path, value):
    outcome(mutate(VALID, path, value))


@settings(max_examples=50, deadline=None)
@given(st.integers(min_value=1, max_value=3000))
def test_deep_nesting_is_refused_not_crashed(depth):
    nested: object = "x"
    for _ in range(depth):
        nested = {"a": nested} if depth % 2 else [nested]
    outcome(mutate(VALID, ("parameters", "size"), nested))
    line = b'{"custom_id": "d", "body": ' + b"[" * depth + b"]" * depth + b"}\n"
    [parsed] = list(read_batch(io.BytesIO(line), FAST))
    assert parsed.valid is False and parsed.error.code in KNOWN_CODES


def test_huge_strings_and_enormous_data_uris_are_refused_cheaply():
    assert (
        outcome(mutate(VALID, ("input", "messages", 0, "content", 0, "text"), "x" * 10**6))
        == errors.TEXT_LENGTH
    )
    eleven_mb = "data:image/png;base64," + base64.b64encode(b"\0" * (11 * 2**20)).decode()
    assert (
        outcome(mutate(VALID, ("input", "messages", 0, "content", 1, "image"), eleven_mb))
        == errors.IMAGE_BYTES
    )


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.binary(max_size=200), min_size=1, max_size=20))
def test_binary_junk_lines_each_get_a_code(lines):
    data = b"\n".join(line.replace(b"\n", b" ") for line in lines) + b"\n"
    for parsed in read_batch(io.BytesIO(data), FAST):
        assert parsed.valid is False
        assert parsed.error.code in KNOWN_CODES


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=300))
def test_broken_json_lines_get_a_code(text):
    parsed = list(read_batch(io.BytesIO(text.replace("\n", " ").encode() + b"\n"), FAST))
    assert all(p.error is not None and p.error.code in KNOWN_CODES for p in parsed if not p.valid)


def test_a_file_past_the_job_limit_is_cut_with_a_code(monkeypatch):
    monkeypatch.setattr(batchfile, "MAX_JOBS", 3)
    data = "".join(json.dumps({"custom_id": f"c{i}", "body": VALID}) + "\n" for i in range(5))
    parsed = list(read_batch(io.BytesIO(data.encode()), FAST))
    assert [p.valid for p in parsed] == [True, True, True, False]
    assert parsed[-1].error.code == errors.BATCH_TOO_LARGE


def test_nothing_invalid_is_enqueued(redis_url):
    """A file mixing valid lines with every kind of junk: only the valid lines get jobs, and
    every stored request passes validation again."""
    lines = []
    for i in range(40):
        if i % 4 == 0:
            lines.append(json.dumps({"custom_id": f"ok-{i}", "body": VALID}).encode())
        elif i % 4 == 1:
            lines.append(bytes(range(256))[i % 7 :: 3])
        elif i % 4 == 2:
            lines.append(
                json.dumps(
                    {"custom_id": f"m-{i}", "body": mutate(VALID, PATHS[i % len(PATHS)], [{}])}
                ).encode()
            )
        else:
            lines.append(b'{"custom_id": "x", "body": {"model": "wan26_i2i"')
    data = b"\n".join(line.replace(b"\n", b" ") for line in lines) + b"\n"
    store = JobStore.from_url(redis_url)
    sent: list = []
    report = submit_file(
        store, sent.extend, io.BytesIO(data), batch_id="hostile", allow_invalid=True, options=FAST
    )
    assert report.enqueued == len(sent) == 10
    assert len(report.invalid) == 30 and all(
        bad.error.code in KNOWN_CODES for bad in report.invalid
    )
    for job in store.iter_batch_jobs("hostile"):
        assert job["custom_id"].startswith("ok-")
        validate_request(store.request(job["job_id"]), FAST)


def test_a_file_is_read_once_and_nothing_is_enqueued_when_a_line_is_invalid(
    redis_url, tmp_path, opened
):
    """Valid lines wait in a spool until the whole file is known valid: the file is opened
    once, and a bad last line leaves Redis empty; without it, every job is enqueued once."""
    good = [json.dumps({"custom_id": f"ok-{i}", "body": VALID}) for i in range(1200)]
    path = tmp_path / "batch.jsonl"
    path.write_text("\n".join([*good, '{"custom_id": "bad", "body": {}}']) + "\n")
    store = JobStore.from_url(redis_url)
    sent: list = []
    report = submit_file(store, sent.extend, path, batch_id="spooled", options=FAST)
    assert not report.submitted and [bad.line for bad in report.invalid] == [1201]
    assert (report.valid, report.enqueued, sent, store.redis.dbsize()) == (1200, 0, [], 0)
    assert len(opened) == 1 and opened[0].closed

    path.write_text("\n".join(good) + "\n")
    report = submit_file(store, sent.extend, path, batch_id="spooled", options=FAST)
    assert report.submitted and report.enqueued == len(sent) == 1200
    assert sent == [(f"spooled:ok-{i}", 0) for i in range(1200)]
    assert len(opened) == 2
    for job in store.iter_batch_jobs("spooled"):
        assert validate_request(store.request(job["job_id"]), FAST) == VALID
