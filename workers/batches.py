"""A batch as people and callbacks see it: counts per state, cost, failures, controls."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from workers import account
from workers.config import Settings
from workers.retention import purge_at
from workers.store import ALL_STATES, TERMINAL, JobStore

CONTROL_WORDS = {
    "active": "running",
    "paused": "paused (wanq resume BATCH to go on)",
    "budget": "paused for budget: its --max-cost would be passed (wanq resume BATCH --max-cost X)",
    "cancelled": "cancelled",
}


@dataclass
class BatchStatus:
    batch_id: str
    total: int
    counts: dict[str, int]
    cost: float
    failures: dict[str, int]
    control: str = "active"
    max_cost: float | None = None
    reserved: float = 0.0
    submitted_at: float = 0.0
    finished_at: float | None = None
    account_block: dict[str, str] = field(default_factory=dict)
    purge_at: float | None = None  # when retention removes it (None: not ended yet)

    @property
    def ended(self) -> int:
        return sum(self.counts.get(state, 0) for state in TERMINAL)

    @property
    def done(self) -> bool:
        return self.total > 0 and self.ended >= self.total

    @property
    def state(self) -> str:
        """One word for listings: finished, or the batch's control state."""
        return "finished" if self.done else self.control

    def as_dict(self) -> dict[str, Any]:
        return {
            "batch_id": self.batch_id,
            "state": self.state,
            "total": self.total,
            "counts": self.counts,
            "cost_usd": round(self.cost, 6),
            "max_cost_usd": self.max_cost,
            "in_flight_worst_case_usd": round(self.reserved, 6),
            "failures_by_code": self.failures,
            "account": self.account_block or None,
            "done": self.done,
            "submitted_at": self.submitted_at,
            "finished_at": self.finished_at,
            "purge_at": self.purge_at,
        }


def batch_status(
    store: JobStore, batch_id: str, retention: float = Settings.retention
) -> BatchStatus:
    raw = store.batch(batch_id)
    if not raw:
        raise KeyError(f"no batch {batch_id!r}")

    def micros(name: str) -> float:
        return int(raw.get(name) or 0) / 1_000_000

    return BatchStatus(
        batch_id=batch_id,
        total=int(raw.get("total", 0)),
        counts={state.value: int(raw.get(f"n:{state.value}", 0)) for state in ALL_STATES},
        cost=micros("cost_micros"),
        failures=store.batch_codes(batch_id),
        control=raw.get("state") or "active",
        max_cost=micros("max_cost_micros") if raw.get("max_cost_micros") else None,
        reserved=micros("reserved_micros"),
        submitted_at=float(raw.get("submitted_at") or 0),
        finished_at=float(raw["finished_at"]) if raw.get("finished_at") else None,
        account_block=account.blocked(store.redis),
        purge_at=purge_at(raw, retention),
    )
