"""wanq's vocabularies: job states, batch states, hold reasons, task and queue names.

Python code uses these enums; the Lua scripts get the same words from a preamble generated
from them (``lua_constants``), so a word is spelled in exactly one place.
"""

from __future__ import annotations

from enum import StrEnum


class State(StrEnum):
    """A job's state: queued -> creating -> running -> succeeded | failed (+ waiting, cancelled)."""

    QUEUED = "queued"
    CREATING = "creating"
    RUNNING = "running"
    WAITING = "waiting"  # backing off before a retry, or parked (see Hold)
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


TERMINAL = frozenset({State.SUCCEEDED, State.FAILED, State.CANCELLED})
ALL_STATES = tuple(State)


class BatchState(StrEnum):
    """A batch's control state, set by its owner or by its budget."""

    ACTIVE = "active"
    PAUSED = "paused"
    BUDGET = "budget"  # paused by its --max-cost
    CANCELLED = "cancelled"


class Hold(StrEnum):
    """Why a waiting job is parked in Redis instead of having a message in a queue."""

    ACCOUNT = "account"  # the account is blocked (401/403): released by a successful probe
    SLOT = "slot"  # the in-flight cap is reached: released as jobs end
    PAUSED = "paused"  # its batch is paused: released by ``wanq resume``
    BUDGET = "budget"  # its batch's budget would be passed: released by ``wanq resume``


PRIORITIES = {"low": 1.0, "normal": 2.0, "high": 4.0}  # weights: shares of the in-flight cap
MIN_WEIGHT, MAX_WEIGHT = 0.1, 1000.0  # a weight is never 0: every active batch gets a share


def priority_weight(level: str | float) -> float:
    """``high`` / ``normal`` / ``low`` or a number; the weight that divides the cap.

    Raises ValueError (with the accepted forms) for anything else.
    """
    if isinstance(level, str) and level.strip().lower() in PRIORITIES:
        return PRIORITIES[level.strip().lower()]
    try:
        weight = float(level)
    except (TypeError, ValueError):
        weight = float("nan")
    if not MIN_WEIGHT <= weight <= MAX_WEIGHT:  # NaN fails too
        raise ValueError(
            f"priority is high, normal, low or a weight from {MIN_WEIGHT:g} to {MAX_WEIGHT:g}, "
            f"not {level!r}"
        )
    return weight


def priority_name(weight: float) -> str:
    for name, value in PRIORITIES.items():
        if value == weight:
            return name
    return f"{weight:g}"


class TaskName(StrEnum):
    CREATE = "wanq.create"
    POLL = "wanq.poll"
    DELIVER = "wanq.deliver"


class QueueName(StrEnum):
    CREATE = "wanq.create"
    POLL = "wanq.poll"
    DELIVER = "wanq.deliver"
    CALLBACKS = "wanq.callbacks"  # batches' own callback tasks: consumed by the user's workers


ROUTES: dict[TaskName, QueueName] = {
    TaskName.CREATE: QueueName.CREATE,
    TaskName.POLL: QueueName.POLL,
    TaskName.DELIVER: QueueName.DELIVER,
}
JOB_TASKS = frozenset({TaskName.CREATE, TaskName.POLL})  # their first argument is a job ID

BATCH_TARGET = "batch:"  # a delivery target naming a batch instead of a job


def batch_target(batch_id: str) -> str:
    return BATCH_TARGET + batch_id


def target_batch(target: str) -> str | None:
    """The batch a delivery target names, or None when it names a job."""
    return target.removeprefix(BATCH_TARGET) if target.startswith(BATCH_TARGET) else None


def lua_constants() -> str:
    """The vocabularies as Lua locals, prepended to every script (``S_QUEUED = 'queued'``...)."""
    lines = [f"local S_{s.name} = '{s.value}'" for s in State]
    lines += [f"local B_{s.name} = '{s.value}'" for s in BatchState]
    lines += [f"local H_{h.name} = '{h.value}'" for h in Hold]
    lines.append(f"local BATCH_TARGET = '{BATCH_TARGET}'")
    return "\n".join(lines) + "\n"
