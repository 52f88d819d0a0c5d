"""A batch as people and callbacks see it: counts per state, cost, failures, controls."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from workers import account
from workers.config import Settings
from workers.errors import CANCELLED, BatchNotFound
from workers.names import PRIORITIES, priority_name
from workers.retention import purge_at
from workers.store import ALL_STATES, TERMINAL, JobStore

CONTROL_WORDS = {
    "active": "running",
    "paused": "paused (wanq resume BATCH to go on)",
    "budget": "stopped by its budget: creating more would pass --max-cost "
    "(wanq resume BATCH --max-cost HIGHER)",
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
    weight: float = 2.0  # its share of the in-flight cap (workers.names.PRIORITIES)
    max_in_flight: int = 0  # its own cap under the cluster's (0: none)
    in_flight: int = 0  # its jobs holding an in-flight slot now
    waiting_for_slot: int = 0  # its jobs waiting in Redis for a slot (no message yet)
    # USD of remote tasks whose usage.cost is not (yet) seen: possible duplicates' and
    # abandoned tasks' worst cases (workers.abandoned); apart from cost and reserved
    unseen: float = 0.0
    duplicates_possible: int = 0  # creates whose outcome is unknown: a remote task may exist
    abandoned: int = 0  # remote tasks of ended jobs followed for their cost now
    price_per_image: float | None = None  # the most the provider was seen to charge

    purge_at: float | None = None  # when retention removes it (None: not ended yet)

    @property
    def priority(self) -> str:
        return priority_name(self.weight)

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

    @property
    def max_cost_needed(self) -> float:
        """The least cap under which nothing more can be created: spent plus reserved."""
        return self.cost + self.reserved

    @property
    def listing_state(self) -> str:
        """``state``, plus what holds the batch back when it is not its own doing: the
        account block that stops creation for the whole cluster (``wanq batches``)."""
        if self.account_block and not self.done and self.control == "active":
            return f"blocked: {self.account_block.get('reason') or 'account'}"
        return self.state

    def explain(self) -> list[str]:
        """Plain sentences for what keeps this batch from going on, and what to do."""
        lines = []
        if self.control == "budget" and not self.done:
            cap = f"${self.max_cost:.4f}" if self.max_cost is not None else "its cap"
            lines.append(
                f"Creation stopped by the budget: ${self.cost:.4f} spent and "
                f"${self.reserved:.4f} reserved in flight; one more job would pass --max-cost "
                f"{cap}. Jobs wait, none failed. Raise the cap to go on: "
                f"wanq resume {self.batch_id} --max-cost HIGHER"
            )
        elif self.control == "paused" and not self.done:
            lines.append(f"Paused by hand: wanq resume {self.batch_id} goes on.")
        if self.account_block:
            lines.append(
                f"Creation is paused for the whole cluster: {self.account_block.get('reason')}. "
                "Jobs are waiting, not failed; creation resumes by itself once the account "
                "works again."
            )
        return lines

    def as_dict(self) -> dict[str, Any]:
        return {
            "batch_id": self.batch_id,
            "state": self.state,
            "total": self.total,
            "counts": self.counts,
            "cost_usd": round(self.cost, 6),
            "max_cost_usd": self.max_cost,
            "in_flight_worst_case_usd": round(self.reserved, 6),
            "unseen_possible_usd": round(self.unseen, 6),
            "duplicates_possible": self.duplicates_possible,
            "abandoned_followed": self.abandoned,
            "price_per_image_usd": self.price_per_image,
            "failures_by_code": self.failures,
            "account": self.account_block or None,
            "priority": self.priority,
            "weight": self.weight,
            "max_in_flight": self.max_in_flight or None,
            "in_flight": self.in_flight,
            "waiting_for_slot": self.waiting_for_slot,
            "notes": self.explain(),  # what holds the batch back, and what to do
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
        raise BatchNotFound(detail=batch_id)

    def micros(name: str) -> float:
        return int(raw.get(name) or 0) / 1_000_000

    return BatchStatus(
        batch_id=batch_id,
        total=int(raw.get("total", 0)),
        counts={state.value: int(raw.get(f"n:{state.value}", 0)) for state in ALL_STATES},
        cost=micros("cost_micros"),
        failures={  # cancelled jobs (WQ200) are counted as cancelled, not as failures
            code: n for code, n in store.batch_codes(batch_id).items() if code != CANCELLED
        },
        control=raw.get("state") or "active",
        max_cost=micros("max_cost_micros") if raw.get("max_cost_micros") else None,
        reserved=micros("reserved_micros"),
        submitted_at=float(raw.get("submitted_at") or 0),
        finished_at=float(raw["finished_at"]) if raw.get("finished_at") else None,
        account_block=account.blocked(store.redis),
        weight=float(raw.get("weight") or PRIORITIES["normal"]),
        max_in_flight=int(raw.get("max_in_flight") or 0),
        in_flight=int(raw.get("inflight") or 0),
        waiting_for_slot=store.waiting_for_slot(batch_id),
        unseen=micros("unseen_micros"),
        duplicates_possible=int(raw.get("duplicates_possible") or 0),
        abandoned=max(0, int(raw.get("abandoned") or 0)),
        price_per_image=micros("price_micros") if raw.get("price_micros") else None,
        purge_at=purge_at(raw, retention),
    )
