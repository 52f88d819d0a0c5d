"""Room in Redis, checked before a batch writes anything: a batch that would not fit is refused.

Redis runs with ``noeviction``: past ``maxmemory`` it refuses writes. So before the first write
the submitter knows what the batch adds (the distinct images Redis does not hold yet, plus
its jobs) and what Redis has (``maxmemory`` less ``used_memory`` less a reserve for the
workers' own writes; with no ``maxmemory``, ``WANQ_MAX_INLINE_BYTES`` per batch). A batch
that would not fit is refused whole with ``WQ110``, how much it needs and has, and a hint.
A Redis that refuses a write anyway (OOM mid-submission) gets the same error, after the
submitter has taken back what it wrote (``producers.submit``).
"""

from __future__ import annotations

from dataclasses import dataclass

import redis

from workers import errors
from workers.errors import CodedError

JOB_OVERHEAD = 1536  # bytes per job besides its payload: record, list and set entries, stream
RESERVE = 0.05  # of maxmemory, kept for what the workers write while the batch runs
HINT = (
    "pass images as http(s) URLs (Redis then stores none), split the batch, or raise the "
    "limit (Redis maxmemory, or WANQ_MAX_INLINE_BYTES when Redis has none)"
)


@dataclass
class NoRoom(CodedError, ValueError):
    """The batch does not fit in Redis: nothing of it is enqueued."""

    def __str__(self) -> str:  # no square brackets: the CLI prints this through rich markup
        return f"{self.code}: {self.message}"


@dataclass(frozen=True)
class Need:
    image_bytes: int  # distinct images Redis does not hold yet
    images: int
    jobs: int
    payload_bytes: int

    @property
    def total(self) -> int:
        return self.image_bytes + self.payload_bytes + self.jobs * JOB_OVERHEAD


def room(client: redis.Redis, max_inline_bytes: int) -> tuple[int | None, str]:
    """Bytes Redis can still take, and where that figure comes from (None: no limit)."""
    info = client.info("memory")
    maxmemory, used = int(info.get("maxmemory") or 0), int(info.get("used_memory") or 0)
    if maxmemory:
        return int(maxmemory * (1 - RESERVE)) - used, f"maxmemory {mb(maxmemory)}, used {mb(used)}"
    if max_inline_bytes > 0:
        return max_inline_bytes, "WANQ_MAX_INLINE_BYTES (Redis has no maxmemory)"
    return None, "no limit"


def check(client: redis.Redis, need: Need, max_inline_bytes: int) -> None:
    """Raise NoRoom unless ``need`` fits."""
    has, source = room(client, max_inline_bytes)
    if has is not None and need.total > has:
        raise NoRoom(errors.NO_ROOM, describe(need, has, source))


def describe(need: Need, has: int | None, source: str) -> str:
    room_text = "unknown room" if has is None else f"{mb(max(has, 0))} free ({source})"
    return (
        f"the batch needs {mb(need.total)} ({need.jobs:,} jobs, {need.images} new distinct "
        f"images of {mb(need.image_bytes)}) and Redis has {room_text}; {HINT}"
    )


def oom(exc: redis.RedisError, need: Need) -> NoRoom:
    """The error for a write Redis refused mid-submission (after the submission was undone)."""
    detail = describe(need, None, "")
    return NoRoom(errors.NO_ROOM, f"Redis refused a write (out of memory: {exc}); {detail}")


def is_oom(exc: BaseException) -> bool:
    return isinstance(exc, redis.exceptions.OutOfMemoryError) or str(exc).startswith("OOM")


def mb(n: int) -> str:
    return f"{n / 1e6:,.1f} MB"
