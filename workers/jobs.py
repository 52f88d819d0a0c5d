"""A job as Python reads it: the Redis hash parsed once into typed fields.

The hash stays the source of truth (Lua scripts read and write it); ``Job`` is a read-only
view so that callers stop writing ``int(job.get(...) or 0)`` at every use. ``raw`` keeps
the fields as stored, for the public record and for steps that pass them on.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from workers.names import State


def _int(raw: dict[str, str], name: str) -> int:
    try:
        return int(raw.get(name) or 0)
    except ValueError:
        return 0


def _float(raw: dict[str, str], name: str) -> float:
    try:
        return float(raw.get(name) or 0)
    except ValueError:
        return 0.0


@dataclass(frozen=True)
class Job:
    job_id: str
    state: State
    seq: int
    batch: str
    custom_id: str
    attempts: int
    polls: int
    poll_errors: int
    remote_task_id: str
    hold: str
    claimed_at: float
    created_at: float
    first_poll_at: float
    last_miss_at: float | None
    raw: dict[str, str] = field(repr=False, compare=False)

    @classmethod
    def parse(cls, job_id: str, raw: dict[str, str]) -> Job | None:
        """None for a hash that is gone (purged) or holds no state."""
        if not raw or raw.get("state") not in State._value2member_map_:
            return None
        return cls(
            job_id=job_id,
            state=State(raw["state"]),
            seq=_int(raw, "seq"),
            batch=raw.get("batch", ""),
            custom_id=raw.get("custom_id", ""),
            attempts=_int(raw, "attempts"),
            polls=_int(raw, "polls"),
            poll_errors=_int(raw, "poll_errors"),
            remote_task_id=raw.get("remote_task_id", ""),
            hold=raw.get("hold", ""),
            claimed_at=_float(raw, "claimed_at"),
            created_at=_float(raw, "created_at"),
            first_poll_at=_float(raw, "first_poll_at"),
            last_miss_at=_float(raw, "last_miss_at") if raw.get("last_miss_at") else None,
            raw=raw,
        )


@dataclass(frozen=True)
class Followed:
    """What a poll's message carries of its running job: the fields the step that sent it
    left. They hold as long as the job's seq is the message's (each of them changes only with a
    step, and every step moves the seq), so a poll that has them calls the provider without
    reading the job first; the step after the call checks the seq, as every step does (one
    round trip per unfinished poll instead of two). Polls sent without them (the sweeper's,
    a reopened job's) read the job."""

    remote_task_id: str
    created_at: float
    polls: int
    poll_errors: int
    polled: bool  # the job's first poll is recorded (first_poll_at)

    @classmethod
    def of(cls, job: Job) -> Followed:
        return cls(
            job.remote_task_id, job.created_at, job.polls, job.poll_errors, bool(job.first_poll_at)
        )

    def text(self) -> str:
        """One message argument: the remote ID last, so that no character of it can shift
        the numbers."""
        numbers = f"{self.created_at!r}|{self.polls}|{self.poll_errors}|{int(self.polled)}"
        return f"{numbers}|{self.remote_task_id}"

    @classmethod
    def parse(cls, text: str) -> Followed | None:
        """None for anything but what ``text`` writes: the poll reads the job instead."""
        parts = text.split("|", 4) if isinstance(text, str) else []
        if len(parts) != 5 or not parts[4]:
            return None
        created_at, polls, poll_errors, polled, remote_task_id = parts
        try:
            numbers = float(created_at), int(polls), int(poll_errors)
        except ValueError:
            return None
        if not math.isfinite(numbers[0]):
            return None
        return cls(remote_task_id, *numbers, polled == "1")
