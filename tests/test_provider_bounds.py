"""Whatever a status answer holds, parsing it gives bounded values or a Transient fault: never
a number a Lua script cannot take (1e300, Infinity, NaN, negatives), never an exception that
would fail a poll again and again, never text that cannot be written as UTF-8."""

from __future__ import annotations

import json
import math
from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from workers import provider

JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**400), max_value=10**400)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(), children, max_size=4)
    ),
    max_leaves=20,
)
NUMBERISH = (
    st.sampled_from(["1e300", "Infinity", "-Infinity", "NaN", "-5", "0x10", "1_000", " 0.03 ", ""])
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.integers(min_value=-(10**400), max_value=10**400)
    | JSON
)


def completed(usage: object, content: object = None) -> dict:
    items = content if content is not None else [{"type": "image", "url": "https://x.test/a.png"}]
    return {"status": "completed", "output": [{"content": items}], "usage": usage}


def check_bounded(status: provider.Status) -> None:
    micros = provider.cost_micros(status.usage)
    assert isinstance(micros, int) and 0 <= micros <= 1000 * 1_000_000
    for name in ("cost", "discount"):
        if name in status.usage:
            value = Decimal(str(status.usage[name]))
            assert value.is_finite() and 0 <= value <= 1000
    if "image_count" in status.usage:
        assert type(status.usage["image_count"]) is int
        assert 0 <= status.usage["image_count"] <= provider.MAX_IMAGE_COUNT
    json.dumps(status.usage, allow_nan=False)  # storable, no NaN/Infinity left
    for item in status.outputs:
        json.dumps(item, ensure_ascii=False).encode("utf-8")  # writable as UTF-8


@settings(max_examples=300, deadline=None)
@given(cost=NUMBERISH, discount=NUMBERISH, count=NUMBERISH)
def test_usage_numbers_are_bounded_or_dropped(cost, discount, count):
    status = provider.parse_status(
        completed({"cost": cost, "discount": discount, "image_count": count})
    )
    check_bounded(status)
    dropped = {"cost", "discount", "image_count"} - set(status.usage)
    assert set(status.usage.get("invalid", [])) == dropped


@settings(max_examples=300, deadline=None)
@given(body=JSON)
def test_any_answer_parses_or_is_a_transient_fault(body):
    try:
        status = provider.parse_status(body if isinstance(body, dict) else {"status": body})
    except provider.Transient:
        return
    check_bounded(status)


@pytest.mark.parametrize(
    ("cost", "micros"),
    [("0.0600", 60_000), (0.06, 60_000), ("1000", 1_000_000_000), (2, 2_000_000), ("0", 0)],
)
def test_plain_costs_are_counted_exactly(cost, micros):
    assert provider.cost_micros({"cost": cost}) == micros


@pytest.mark.parametrize("cost", ["1e300", "Infinity", "NaN", -5, "-0.01", "1000.01", 1e308, True])
def test_hostile_costs_count_nothing_and_never_raise(cost):
    assert provider.cost_micros({"cost": cost}) == 0
    assert provider.cost_micros({"cost": float("inf") if cost == "Infinity" else cost}) == 0
    assert not math.isnan(provider.cost_micros({"cost": float("nan")}))


def test_texts_are_bounded_and_made_valid_unicode():
    text = "a\udc80b" + "x" * (provider.MAX_TEXT_CHARS + 10)
    status = provider.parse_status(completed({}, [{"type": "text", "text": text}]))
    assert status.outputs[0]["text"].startswith("a\ufffdb")
    assert len(status.outputs[0]["text"]) == provider.MAX_TEXT_CHARS


def test_image_urls_are_checked_as_strings():
    urls = ["http://127.0.0.1:1\\@cdn.test/a", "http://user@cdn.test/a", "javascript:alert(1)"]
    content = [{"type": "image", "url": url} for url in urls]
    status = provider.parse_status(completed({}, content))
    assert all(item["url"] == "" and "URL refused" in item["url_error"] for item in status.outputs)


def test_the_remote_error_is_bounded():
    body = {"status": "failed", "error": {"code": "x" * 10_000, "message": "\ud800", "extra": 1}}
    status = provider.parse_status(body)
    assert len(status.error["code"]) == provider.MAX_REMOTE_TEXT
    assert status.error["message"] == "\ufffd" and "extra" not in status.error
