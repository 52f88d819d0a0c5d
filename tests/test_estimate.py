"""Dry-run estimates: worst-case images per request, invalid lines by code, the cost bound."""

from __future__ import annotations

from pathlib import Path

import pytest

from producers import estimate as estimate_module
from producers.batchfile import BatchLine, read_batch
from producers.estimate import Estimate, estimate
from workers import errors
from workers.errors import ValidationError
from workers.pricing import worst_case_images

CAT = "https://example.com/cat.jpg"


def params(**parameters: object) -> dict:
    return {"model": "wan26_i2i", "parameters": parameters}


@pytest.mark.parametrize(
    ("request_body", "images"),
    [
        ({"model": "wan26_i2i"}, 1),  # no parameters: editing, n defaults to 1
        (params(), 1),
        (params(n=3), 3),
        (params(enable_interleave=False, n=4), 4),
        (params(enable_interleave=False, max_images=2), 1),  # max_images only when interleaved
        (params(enable_interleave=True), 5),  # max_images defaults to 5
        (params(enable_interleave=True, max_images=2), 2),
        (params(enable_interleave=True, n=1, max_images=1), 1),
    ],
)
def test_worst_case_images_by_mode_with_defaults(request_body: dict, images: int) -> None:
    assert worst_case_images(request_body) == images


@pytest.mark.parametrize(
    ("request_body", "images"),
    [
        (params(n="3"), 4),
        (params(n=True), 4),
        (params(n=9), 4),
        (params(enable_interleave=True, max_images=0), 5),
        ({"parameters": "not an object"}, 1),
    ],
)
def test_worst_case_images_errs_high_on_unvalidated_values(request_body: dict, images: int) -> None:
    assert worst_case_images(request_body) == images


def ok(line: int, **parameters: object) -> BatchLine:
    return BatchLine(line, f"job-{line}", params(**parameters), None)


def bad(line: int, code: str) -> BatchLine:
    return BatchLine(line, None, None, ValidationError(code))


def test_upper_bound_sums_valid_lines_and_prices_them() -> None:
    lines = [
        ok(1),  # editing, default n: 1
        ok(2, n=3),  # 3
        ok(3, enable_interleave=True),  # default max_images: 5
        ok(4, enable_interleave=True, max_images=2),  # 2
        bad(5, errors.N_RANGE),  # costs nothing
    ]
    result = estimate(lines, unit_price=0.25)
    assert (result.lines, result.valid, result.invalid) == (5, 4, 1)
    assert result.images_upper_bound == 11
    assert result.cost_upper_bound == pytest.approx(11 * 0.25)


def test_invalid_lines_are_grouped_by_code_with_their_line_numbers() -> None:
    lines = [
        bad(2, errors.LINE_JSON),
        ok(3),
        bad(4, errors.SIZE_FORMAT),
        bad(7, errors.LINE_JSON),
        bad(9, errors.CUSTOM_ID_DUPLICATE),
        bad(12, errors.LINE_JSON),
    ]
    result = estimate(lines, unit_price=0.03)
    assert result.invalid_by_code == {
        errors.LINE_JSON: [2, 7, 12],
        errors.SIZE_FORMAT: [4],
        errors.CUSTOM_ID_DUPLICATE: [9],
    }
    assert result.invalid_counts == {
        errors.LINE_JSON: 3,
        errors.SIZE_FORMAT: 1,
        errors.CUSTOM_ID_DUPLICATE: 1,
    }
    assert (result.valid, result.invalid, result.images_upper_bound) == (1, 5, 1)


def test_line_numbers_are_capped_per_code_but_all_are_counted() -> None:
    cap = estimate_module.MAX_LINES_PER_CODE
    lines = [bad(number, errors.TEXT_LENGTH) for number in range(1, cap + 251)]
    result = estimate(lines, unit_price=0.03)
    assert result.invalid_counts == {errors.TEXT_LENGTH: cap + 250}
    assert result.invalid_by_code[errors.TEXT_LENGTH] == list(range(1, cap + 1))
    assert result.invalid == cap + 250


def test_empty_batch_costs_nothing() -> None:
    assert estimate([], unit_price=0.03) == Estimate(0, 0, 0, {}, {}, 0, 0.0)


def test_as_dict_is_json_ready_and_rounds_the_cost() -> None:
    result = estimate([ok(1, n=3), bad(2, errors.MODEL)], unit_price=0.1)
    assert result.as_dict() == {
        "lines": 2,
        "valid": 1,
        "invalid": 1,
        "invalid_by_code": {errors.MODEL: [2]},
        "invalid_counts": {errors.MODEL: 1},
        "images_upper_bound": 3,
        "cost_upper_bound": 0.3,  # 3 * 0.1 is 0.30000000000000004 in floats
    }


def test_estimate_of_a_real_csv_batch(tmp_path: Path) -> None:
    path = tmp_path / "batch.csv"
    path.write_text(
        "custom_id,prompt,image_1,n,enable_interleave,max_images\n"
        f"a,edit twice,{CAT},2,,\n"  # 2
        "b,story,,,true,\n"  # 5
        "c,story,,,true,3\n"  # 3
        f"d,too many,{CAT},7,,\n"  # 001021011
        f"a,again,{CAT},,,\n"  # WQ103
        f"e,not a number,{CAT},x,,\n"  # WQ003
    )
    result = estimate(read_batch(path), unit_price=0.03)
    assert (result.lines, result.valid, result.invalid) == (6, 3, 3)
    assert result.images_upper_bound == 10
    assert result.cost_upper_bound == pytest.approx(0.3)
    assert result.invalid_by_code == {
        errors.N_RANGE: [5],
        errors.CUSTOM_ID_DUPLICATE: [6],
        errors.FIELD_TYPE: [7],
    }
