"""The job store: Redis is the single source of truth for jobs, batches and results.

Each state change is one Lua script (``workers/lua``), compare-and-set on the job's ``seq``.
Task messages carry the seq they were sent for; a duplicate, a redelivery or a late original
finds the seq moved on and does nothing. That is what keeps one terminal record per job.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from enum import StrEnum
from importlib import resources
from typing import Any

import redis

from workers import images, keys
from workers.connection import connect

STREAM_MAXLEN = 1_000_000
ENQUEUE_SLICE = 100  # jobs per enqueue script: Redis runs nothing else meanwhile (~1 ms)
ENQUEUE_SLICE_BYTES = 8 * 1024 * 1024  # or fewer: requests inline images of up to 10 MB


class State(StrEnum):
    QUEUED = "queued"
    CREATING = "creating"
    RUNNING = "running"
    WAITING = "waiting"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


TERMINAL = frozenset({State.SUCCEEDED, State.FAILED, State.CANCELLED})
ALL_STATES = tuple(State)


@dataclass(frozen=True)
class Finish:
    """What a terminal transition did: only one caller per job sees ``ended``.

    ``admitted`` is the (job_id, seq) that took the freed in-flight slot: send its create.
    """

    ended: bool
    batch_ended: bool = False
    callbacks_owed: bool = False
    admitted: tuple[str, int] | None = None

    def __bool__(self) -> bool:
        return self.ended


@dataclass(frozen=True)
class Step:
    """The answer of a compare-and-set step: did it apply, and where the job is now."""

    applied: bool
    seq: int
    previous: str


class JobStore:
    """Jobs, batches and results in Redis; every multi-key change is one script."""

    SCRIPTS = ("enqueue", "step", "claim", "finish", "release", "reopen", "pace", "lease")

    def __init__(
        self, client: redis.Redis, max_in_flight: int = 0, always_deliver: bool = False
    ) -> None:
        self.redis = client
        self.max_in_flight = max_in_flight
        self.always_deliver = always_deliver  # every ended job owes a delivery (archiving)
        lua = resources.files("workers") / "lua"
        self._scripts = {
            name: client.register_script((lua / f"{name}.lua").read_text()) for name in self.SCRIPTS
        }

    @classmethod
    def from_url(cls, url: str, max_in_flight: int = 0, always_deliver: bool = False) -> JobStore:
        return cls(connect(url), max_in_flight, always_deliver)

    # --- producers -------------------------------------------------------------------------

    def enqueue(self, batch_id: str, custom_id: str, request: dict[str, Any], line: int = 0) -> int:
        """Enqueue one job; 1 when new, 0 when (batch, custom_id) exists."""
        return len(self.enqueue_many(batch_id, [(custom_id, json.dumps(request), line)]))

    def enqueue_many(self, batch_id: str, jobs: Sequence[tuple]) -> list[str]:
        """Enqueue jobs given as (custom_id, request JSON, line[, image keys comma-joined]);
        the IDs of those that are new, in order (a job whose (batch, custom_id) exists is left
        as it is; a new one takes a reference on each image, see ``workers.images``). One script
        per ENQUEUE_SLICE jobs (fewer when their requests pass ENQUEUE_SLICE_BYTES), all in
        one pipeline."""
        now = time.time()
        shared = [keys.batch(batch_id), keys.batch_jobs(batch_id), keys.QUEUED]
        script = self._scripts["enqueue"]
        pipe = self.redis.pipeline(transaction=False)
        job_ids = []
        job_keys, args, size = list(shared), [batch_id, now], 0
        images: list[str] = []  # issue 12: each job's image keys, after the jobs' ARGV
        for custom_id, request, line, *held in jobs:
            job_id = keys.job_id(batch_id, custom_id)
            job_ids.append(job_id)
            job_keys += (keys.job(job_id), keys.payload(job_id))
            args += (job_id, custom_id, request, line)
            images.append(held[0] if held else "")
            size += len(request)
            if len(args) >= 2 + 4 * ENQUEUE_SLICE or size >= ENQUEUE_SLICE_BYTES:
                script(keys=job_keys, args=args + images, client=pipe)
                job_keys, args, size, images = list(shared), [batch_id, now], 0, []
        if len(args) > 2:
            script(keys=job_keys, args=args + images, client=pipe)
        created = (flag for flags in pipe.execute() for flag in flags)
        return [job_id for job_id, new in zip(job_ids, created, strict=True) if new]

    def open_batch(self, batch_id: str, meta: dict[str, Any]) -> None:
        now = time.time()
        pipe = self.redis.pipeline()
        pipe.hsetnx(keys.batch(batch_id), "submitted_at", now)
        if meta:
            pipe.hset(keys.batch(batch_id), mapping={k: str(v) for k, v in meta.items()})
        pipe.zadd(keys.BATCHES, {batch_id: now}, nx=True)
        pipe.execute()

    # --- reading ---------------------------------------------------------------------------

    def job(self, job_id: str) -> dict[str, str]:
        return self.redis.hgetall(keys.job(job_id))

    def request(self, job_id: str) -> dict[str, Any] | None:
        raw = self.redis.get(keys.payload(job_id))
        try:
            return images.resolve(self.redis, json.loads(raw)) if raw else None
        except images.ImageMissing:  # the job ended (and let go of it) since the GET
            if self.redis.hget(keys.job(job_id), "state") in TERMINAL:
                return None
            raise

    def batch(self, batch_id: str) -> dict[str, str]:
        return self.redis.hgetall(keys.batch(batch_id))

    def batch_codes(self, batch_id: str) -> dict[str, int]:
        raw = self.redis.hgetall(keys.batch_codes(batch_id))
        return {code: int(n) for code, n in raw.items() if int(n) > 0}

    def iter_batch_jobs(self, batch_id: str, chunk: int = 500) -> Iterator[dict[str, str]]:
        """Job records in submission order, a slice at a time: memory stays flat."""
        start = 0
        while True:
            ids = self.redis.lrange(keys.batch_jobs(batch_id), start, start + chunk - 1)
            if not ids:
                return
            pipe = self.redis.pipeline(transaction=False)
            for job_id in ids:
                pipe.hgetall(keys.job(job_id))
            for job_id, record in zip(ids, pipe.execute(), strict=True):
                if record:
                    yield {"job_id": job_id, **record}
            start += chunk

    # --- workers ---------------------------------------------------------------------------

    def step(
        self,
        job_id: str,
        seq: int,
        allowed: tuple[str, ...],
        to: str,
        *,
        bump: bool = True,
        due: float | None = None,
        incr: tuple[str, ...] = (),
        fields: dict[str, Any] | None = None,
    ) -> Step:
        batch_id = keys.batch_of(job_id)
        flat: list[Any] = []
        for name, value in (fields or {}).items():
            flat += [name, _encode(value)]
        applied, new_seq, previous = self._scripts["step"](
            keys=[keys.job(job_id), keys.batch(batch_id), keys.DUE, keys.QUEUED],
            args=[
                job_id,
                seq,
                ",".join(allowed),
                to,
                1 if bump else 0,
                "" if due is None else repr(due),
                ",".join(incr),
                *flat,
            ],
        )
        return Step(bool(applied), int(new_seq), previous)

    def finish(
        self,
        job_id: str,
        seq: int | None,
        state: State,
        record: dict[str, Any],
        *,
        cost_micros: int = 0,
        error_code: str = "",
        extra: dict[str, Any] | None = None,
        pipe: redis.client.Pipeline | None = None,
    ) -> Finish:
        """The terminal transition plus the stream entry, atomically and once per job.

        ``extra`` fields are written to the job hash in the same step (the last poll's count).

        With a pipeline the script's raw answer comes from ``pipe.execute()``: pass it to
        ``finish_answer``.
        """
        batch_id = keys.batch_of(job_id)
        now = time.time()
        fields: list[Any] = []
        for name in ("outputs", "usage", "error"):
            if record.get(name) is not None:
                fields += [name, _encode(record[name])]
        for name, value in (extra or {}).items():
            fields += [name, _encode(value)]
        stream_record = {**record, "state": str(state), "completed_at": now}
        answer = self._scripts["finish"](
            keys=[
                keys.job(job_id),
                keys.batch(batch_id),
                keys.DUE,
                keys.QUEUED,
                keys.HELD,
                keys.RESULTS,
                keys.batch_codes(batch_id),
                keys.DELIVER,
                keys.batch_parked(batch_id),
                keys.INFLIGHT,
                keys.SLOTS,
                keys.payload(job_id),  # issue 12: released with the job's end
                keys.ENDED,
            ],
            args=[
                job_id,
                "" if seq is None else seq,
                str(state),
                now,
                cost_micros,
                error_code,
                STREAM_MAXLEN,
                json.dumps(stream_record),
                self.max_in_flight,
                keys.job(""),
                "1" if self.always_deliver else "0",
                *fields,
            ],
            client=pipe or self.redis,
        )
        return answer if pipe is not None else finish_answer(answer)

    def claim(self, job_id: str, seq: int, due: float, worst_micros: int, died: bool) -> Step:
        """Claim for creation; ``previous`` says why not: stale, cancelled, paused, budget, full."""
        batch_id = keys.batch_of(job_id)
        applied, new_seq, why = self._scripts["claim"](
            keys=[keys.job(job_id), keys.batch(batch_id), keys.DUE, keys.QUEUED, keys.INFLIGHT],
            args=[
                job_id,
                seq,
                time.time(),
                repr(due),
                worst_micros,
                "1" if died else "0",
                self.max_in_flight,
            ],
        )
        return Step(bool(applied), int(new_seq), why)

    def park(self, job_id: str, seq: int, reason: str, detail: str = "") -> bool:
        """Park a job: it waits (never fails) until its account or batch lets it go on.

        ``reason`` is ``account`` (cluster-wide, released by a successful probe), ``slot``
        (the in-flight cap is reached: released as jobs end), or ``paused`` / ``budget`` (this
        batch, released by ``wanq resume``). A parked job gives up its in-flight slot.
        """
        step = self.step(
            job_id,
            seq,
            (State.QUEUED, State.CREATING, State.WAITING),
            State.WAITING,
            fields={"hold": reason, "last_error": detail or reason},
        )
        if step.applied:
            zset = PARKED_IN.get(reason) or keys.batch_parked(keys.batch_of(job_id))
            pipe = self.redis.pipeline()
            pipe.zadd(zset, {job_id: time.time()}, nx=True)
            pipe.zrem(keys.INFLIGHT, job_id)
            pipe.execute()
        return step.applied

    def release(self, zset: str, count: int) -> list[tuple[str, int]]:
        """Unpark up to ``count`` jobs of a parked set: (job_id, seq) to send creates for."""
        flat = self._scripts["release"](
            keys=[zset, keys.DUE], args=[count, time.time(), keys.job("")]
        )
        return [(flat[i], int(flat[i + 1])) for i in range(0, len(flat), 2)]

    def reopen(self, job_id: str, codes: tuple[str, ...] = ()) -> int:
        """Re-open a failed job for another round; its new seq, or -1 if not re-opened."""
        batch_id = keys.batch_of(job_id)
        return int(
            self._scripts["reopen"](
                keys=[
                    keys.job(job_id),
                    keys.batch(batch_id),
                    keys.QUEUED,
                    keys.batch_codes(batch_id),
                ],
                args=[job_id, time.time(), ",".join(codes)],
            )
        )

    def set_control(self, batch_id: str, state: str, **fields: Any) -> None:
        """Batch state: ``active``, ``paused``, ``budget`` (paused by its cap), ``cancelled``."""
        values = {"state": state, **{k: str(v) for k, v in fields.items()}}
        self.redis.hset(keys.batch(batch_id), mapping=values)

    def pace(self, rate: float, horizon: float, key: str = keys.CREATE_PACE) -> float:
        """Seconds until this caller's slot under a cluster-wide rate (GCRA); 0 = now.

        Creations also follow the rate 429s have tightened (``workers.pacing``).
        """
        tightened = keys.PACE_RATE if key == keys.CREATE_PACE else keys.PACE_RATE + ":none"
        return float(
            self._scripts["pace"](keys=[key, tightened], args=[time.time(), rate, horizon])
        )

    def take_lease(self, name: str, holder: str, ttl: float) -> bool:
        return bool(self._scripts["lease"](keys=[name], args=[holder, int(ttl * 1000)]))

    def count(self, name: str, by: int = 1) -> None:
        """Cluster counters (duplicate creations, rescues): kept, never hidden."""
        self.redis.hincrby(keys.STATS, name, by)

    def stats(self) -> dict[str, str]:
        return self.redis.hgetall(keys.STATS)


PARKED_IN = {"account": keys.HELD, "slot": keys.SLOTS}


def finish_answer(raw: list) -> Finish:
    ended, batch_ended, owed, admitted, admitted_seq = raw
    return Finish(
        bool(ended),
        bool(batch_ended),
        bool(owed),
        (admitted, int(admitted_seq)) if admitted else None,
    )


def _encode(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, (dict, list)):
        return json.dumps(value)
    return repr(value) if isinstance(value, float) else str(value)
