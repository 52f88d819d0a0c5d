"""What a batch would cost, before anything is submitted: ``wanq submit --dry-run``.

The figure is an upper bound: each valid line counts the most images it can be billed for
(``workers.pricing.worst_case_images``: ``n`` in editing mode, ``max_images`` when
interleaved; the provider may return fewer). Invalid lines cost nothing and are grouped by
code with their line numbers, so a report stays small however many lines are bad.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from producers.batchfile import BatchLine
from workers.pricing import worst_case_images

MAX_LINES_PER_CODE = 1000  # line numbers kept per error code; invalid_counts counts them all


@dataclass
class Estimate:
    lines: int = 0
    valid: int = 0
    invalid: int = 0
    invalid_by_code: dict[str, list[int]] = field(default_factory=dict)  # at most 1000 each
    invalid_counts: dict[str, int] = field(default_factory=dict)
    images_upper_bound: int = 0
    cost_upper_bound: float = 0.0  # images_upper_bound * unit price

    def as_dict(self) -> dict[str, Any]:
        return {
            "lines": self.lines,
            "valid": self.valid,
            "invalid": self.invalid,
            "invalid_by_code": {code: list(lines) for code, lines in self.invalid_by_code.items()},
            "invalid_counts": dict(self.invalid_counts),
            "images_upper_bound": self.images_upper_bound,
            "cost_upper_bound": round(self.cost_upper_bound, 6),
        }


def estimate(lines: Iterable[BatchLine], unit_price: float) -> Estimate:
    """Count, group and price batch lines in one pass (they may be a stream of any length)."""
    result = Estimate()
    for line in lines:
        result.lines += 1
        if line.error is None:
            result.valid += 1
            result.images_upper_bound += worst_case_images(line.body or {})
            continue
        code = line.error.code
        result.invalid += 1
        result.invalid_counts[code] = result.invalid_counts.get(code, 0) + 1
        numbers = result.invalid_by_code.setdefault(code, [])
        if len(numbers) < MAX_LINES_PER_CODE:
            numbers.append(line.line)
    result.cost_upper_bound = result.images_upper_bound * unit_price
    return result
