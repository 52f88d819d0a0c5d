"""The job store: Redis is the single source of truth for jobs, batches and results.

Each state change is one Lua script (``workers/lua``), compare-and-set on the job's ``seq``.
Task messages carry the seq they were sent for; a duplicate, a redelivery or a late original
finds the seq moved on and does nothing. That is what keeps one terminal record per job.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import redis
from redis.typing import EncodableT, FieldT

from workers import images, keys
from workers.config import Settings
from workers.connection import connect, text, text_map, texts
from workers.errors import STATUS_CHECK
from workers.jobs import Job
from workers.names import ALL_STATES, TERMINAL, BatchState, Hold, State
from workers.registries import JobSet, Registries
from workers.scripts import load_script, one_trip

__all__ = ["ALL_STATES", "TERMINAL", "Finish", "JobStore", "State", "Step"]

HOLDS = frozenset(h.value for h in Hold)

STREAM_MAXLEN = 1_000_000
DEFAULT_UNIT_MICROS = 30_000  # WANQ_UNIT_PRICE's default, $0.03 per image
PRICE_MEMORY = 60.0  # seconds a process trusts the batch price it saw recorded
PRICE_MEMORY_BATCHES = 1_000
ENQUEUE_SLICE = 100  # jobs per enqueue script: Redis runs nothing else meanwhile (~1 ms)
ENQUEUE_SLICE_BYTES = 8 * 1024 * 1024  # or fewer: requests inline images of up to 10 MB


@dataclass(frozen=True)
class Finish:
    """What a terminal transition did: only one caller per job sees ``ended``.

    ``admitted`` are the (job_id, seq) that took the freed in-flight slot: send their creates.
    """

    ended: bool
    batch_ended: bool = False
    callbacks_owed: bool = False
    admitted: tuple[tuple[str, int], ...] = ()

    def __bool__(self) -> bool:
        return self.ended


@dataclass(frozen=True)
class Enqueued:
    """What an enqueue did: the new job IDs, and the (job_id, seq) to send creates for."""

    new: list[str]
    admitted: list[tuple[str, int]]


@dataclass(frozen=True)
class View:
    """What a task reads before it acts, in one round trip: the job, its batch's control
    state, the account's block (empty when none) and whether 429s tightened the pace."""

    job: Job | None
    batch_state: str
    account: dict[str, str]
    pace_tightened: bool
    payload: str | None = None  # the stored request, when asked for (creates)


class EndWrites:
    """Writes owed once per ended job (its histograms, its generation time), queued as on a
    pipeline (``metrics.record_job_end`` and ``latency.learn`` take one) and run by the finish
    script in the one call that ends the job, in its round trip (lua/finish.lua, which runs
    these four commands, its END_WRITES, and refuses any other)."""

    def __init__(self) -> None:
        self.commands: list[list[str]] = []

    def hincrby(self, name: str, key: str, amount: int = 1) -> EndWrites:
        return self._add("HINCRBY", name, key, int(amount))

    def hincrbyfloat(self, name: str, key: str, amount: float = 1.0) -> EndWrites:
        return self._add("HINCRBYFLOAT", name, key, repr(float(amount)))

    def lpush(self, name: str, *values: str) -> EndWrites:
        return self._add("LPUSH", name, *values)

    def ltrim(self, name: str, start: int, end: int) -> EndWrites:
        return self._add("LTRIM", name, int(start), int(end))

    def _add(self, *command: Any) -> EndWrites:
        self.commands.append([str(part) for part in command])
        return self


@dataclass
class Delivery:
    """The task message a step's caller runs, given to the step's script to acknowledge with
    the step (lua/lib/acks.lua): ``acked`` once a script did, whatever the step's outcome."""

    tag: str
    acked: bool = False


@dataclass(frozen=True)
class Step:
    """The answer of a compare-and-set step: did it apply, and where the job is now."""

    applied: bool
    seq: int
    previous: str
    batch_cancelled: bool = False  # a poll's step refused: end the job as cancelled instead
    account_blocked: bool = False  # told to a poll's step only


class JobStore:
    """Jobs, batches and results in Redis; every multi-key change is one script."""

    SCRIPTS = (
        "enqueue",
        "step",
        "claim",
        "ambiguous",
        "park",
        "finish",
        "release",
        "reopen",
        "pace",
        "lease",
        "admit",
        "requeue",
        "repair",
        "price",
        "settle",
    )

    def __init__(
        self,
        client: redis.Redis,
        max_in_flight: int = 0,
        always_deliver: bool = False,
        unit_micros: int = DEFAULT_UNIT_MICROS,
    ) -> None:
        self.redis = client
        self.max_in_flight = max_in_flight
        self.unit_micros = unit_micros  # WANQ_UNIT_PRICE: prices a cost the provider hid
        self.always_deliver = always_deliver  # every ended job owes a delivery (archiving)
        sets = Registries(client)
        self.due, self.queued, self.held = sets.due, sets.queued, sets.held
        self.inflight, self.deliveries = sets.inflight, sets.deliveries
        self.parked = sets.parked
        self.abandoned = sets.abandoned  # remote tasks followed for their cost (lua/settle.lua)
        self._scripts = {name: load_script(client, name) for name in self.SCRIPTS}
        self._prices: dict[str, tuple[int, float]] = {}  # batch -> (price recorded, when)

    @classmethod
    def from_url(
        cls,
        url: str,
        max_in_flight: int = 0,
        always_deliver: bool = False,
        unit_micros: int = DEFAULT_UNIT_MICROS,
    ) -> JobStore:
        return cls(connect(url), max_in_flight, always_deliver, unit_micros)

    @classmethod
    def from_settings(cls, settings: Settings) -> JobStore:
        """The store as the cluster runs it: producers and workers alike get the cap, so a
        script behaves the same whoever calls it."""
        return cls.from_url(
            settings.broker_url,
            settings.max_in_flight,
            always_deliver=bool(settings.archive_dir),
            unit_micros=round(settings.unit_price * 1_000_000),
        )

    # --- producers -------------------------------------------------------------------------

    def enqueue(self, batch_id: str, custom_id: str, request: dict[str, Any], line: int = 0) -> int:
        """Enqueue one job; 1 when new, 0 when (batch, custom_id) exists."""
        return len(self.enqueue_many(batch_id, [(custom_id, json.dumps(request), line)]).new)

    def enqueue_many(self, batch_id: str, jobs: Sequence[tuple[Any, ...]]) -> Enqueued:
        """Enqueue jobs given as (custom_id, request JSON, line[, image keys comma-joined[,
        worst-case image count]]): which are new, in order (a job whose (batch, custom_id)
        exists is left as it is; a new one takes a reference on each image, see
        ``workers.images``), and which to send creates for now (all new ones without an
        in-flight cap; with one, those given a slot). One script per ENQUEUE_SLICE jobs (fewer
        when their requests pass ENQUEUE_SLICE_BYTES), all in one pipeline."""
        now = time.time()
        shared = [keys.batch(batch_id), keys.batch_jobs(batch_id), keys.QUEUED]
        script = self._scripts["enqueue"]
        pipe = self.redis.pipeline(transaction=False)
        job_ids = []
        args: list[str | int | float]
        job_keys, args, size = list(shared), [batch_id, now, self.max_in_flight], 0
        image_keys: list[str | int | float] = []  # each job's image keys, after the jobs' ARGV
        worsts: list[str | int | float] = []  # then each job's worst case ('' if not given)
        for custom_id, request, line, *more in jobs:
            job_id = keys.job_id(batch_id, custom_id)
            job_ids.append(job_id)
            job_keys += (keys.job(job_id), keys.payload(job_id))
            args += (job_id, custom_id, request, line)
            image_keys.append(more[0] if more else "")
            worsts.append(more[1] if len(more) > 1 else "")
            size += len(request)
            if len(args) >= 3 + 4 * ENQUEUE_SLICE or size >= ENQUEUE_SLICE_BYTES:
                script(keys=job_keys, args=args + image_keys + worsts, client=pipe)
                job_keys, args, size = list(shared), [batch_id, now, self.max_in_flight], 0
                image_keys, worsts = [], []
        if len(args) > 3:
            script(keys=job_keys, args=args + image_keys + worsts, client=pipe)
        answers = pipe.execute()
        created = (flag for flags, _ in answers for flag in flags)
        new = [job_id for job_id, flag in zip(job_ids, created, strict=True) if flag]
        return Enqueued(new, [pair for _, admitted in answers for pair in pairs(admitted)])

    def admit(self, count: int) -> list[tuple[str, int]]:
        """Give up to ``count`` free in-flight slots to waiting jobs, fairly between batches:
        (job_id, seq) to send creates for. The sweeper calls it for slots freed otherwise than
        by a job's end; ``resume`` and priority changes call it at once."""
        flat = self._scripts["admit"](keys=[], args=[self.max_in_flight, time.time(), count])
        return list(pairs(flat))

    def requeue_parked(self, batch_id: str, count: int) -> int:
        """Move up to ``count`` jobs parked by the batch's pause or budget back to waiting for a
        slot (``wanq resume``); how many moved. Admission then starts them."""
        return int(
            self._scripts["requeue"](
                keys=[keys.batch_parked(batch_id), keys.batch(batch_id)],
                args=[batch_id, count],
            )
        )

    def waiting_for_slot(self, batch_id: str | None = None) -> int:
        """Jobs that wait in Redis for an in-flight slot (of one batch, or of all)."""
        batch_ids = [batch_id] if batch_id else texts(self.redis.zrange(keys.READY, 0, -1))
        pipe = self.redis.pipeline(transaction=False)
        for each in batch_ids:
            pipe.zcard(keys.batch_ready(each))
        return sum(int(n) for n in pipe.execute())

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
        return text_map(self.redis.hgetall(keys.job(job_id)))

    def job_record(self, job_id: str) -> Job | None:
        return Job.parse(job_id, self.job(job_id))

    def view(self, job_id: str, *, payload: bool = False) -> View:
        pipe = self.redis.pipeline(transaction=False)
        _queue_view(pipe, job_id, payload)
        return _view_of(job_id, pipe.execute())

    def job_records(self, job_ids: Sequence[str]) -> list[Job | None]:
        """Several jobs in one round trip, in order (None for a job that is gone)."""
        pipe = self.redis.pipeline(transaction=False)
        for job_id in job_ids:
            pipe.hgetall(keys.job(job_id))
        replies = pipe.execute()
        return [Job.parse(j, text_map(raw)) for j, raw in zip(job_ids, replies, strict=True)]

    def job_seq(self, job_id: str) -> int:
        return int(self.redis.hget(keys.job(job_id), "seq") or 0)

    def batch_ids(self) -> list[str]:
        return texts(self.redis.zrange(keys.BATCHES, 0, -1))

    def set_fields(self, key: str, fields: Mapping[str, str]) -> None:
        """Plain field writes on a job's or batch's hash (delivery marks, archive paths)."""
        mapping: dict[FieldT, EncodableT] = {}
        mapping.update(fields.items())
        self.redis.hset(key, mapping=mapping)

    def get_field(self, key: str, name: str) -> str | None:
        value = self.redis.hget(key, name)
        return None if value is None else text(value)

    def add_result_event(self, fields: Mapping[str, str]) -> None:
        """An entry of the results stream besides a job's end (``event=archived``)."""
        entry: dict[FieldT, EncodableT] = {}
        entry.update(fields.items())
        self.redis.xadd(keys.RESULTS, entry, maxlen=STREAM_MAXLEN, approximate=True)

    def queue_length(self, queue: str) -> int:
        return int(self.redis.llen(queue))

    def request(
        self, job_id: str, raw: str | None = None, *, with_images: bool = True
    ) -> dict[str, Any] | None:
        """The job's request with its images (or with their references only, for a caller
        that reads its parameters); ``raw`` is the payload if already read."""
        if raw is None:
            raw = text(self.redis.get(keys.payload(job_id))) or None
        if raw and not with_images:
            return dict(json.loads(raw))
        try:
            return images.resolve(self.redis, json.loads(raw)) if raw else None
        except images.ImageMissing:  # the job ended (and let go of it) since the GET
            if self.redis.hget(keys.job(job_id), "state") in TERMINAL:
                return None
            raise

    def batch(self, batch_id: str) -> dict[str, str]:
        return text_map(self.redis.hgetall(keys.batch(batch_id)))

    def batch_codes(self, batch_id: str) -> dict[str, int]:
        raw = text_map(self.redis.hgetall(keys.batch_codes(batch_id)))
        return {code: int(n) for code, n in raw.items() if int(n) > 0}

    def iter_batch_jobs(self, batch_id: str, chunk: int = 500) -> Iterator[dict[str, str]]:
        """Job records in submission order, a slice at a time: memory stays flat."""
        start = 0
        while True:
            ids = texts(self.redis.lrange(keys.batch_jobs(batch_id), start, start + chunk - 1))
            if not ids:
                return
            pipe = self.redis.pipeline(transaction=False)
            for job_id in ids:
                pipe.hgetall(keys.job(job_id))
            for job_id, record in zip(ids, pipe.execute(), strict=True):
                if record:
                    yield {"job_id": job_id, **text_map(record)}
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
        then: tuple[str, str] | None = None,
        ack: Delivery | None = None,
        poll: bool = False,
        pump: bool = False,
    ) -> Step:
        """``then``: a (queue, message) pushed in the same script if the step applies, the
        next task of the job (workers.sender.Prepared): a step is never without its message.
        ``ack``: the task message the caller runs, acknowledged by the same script whether
        the step applies or is stale. ``poll``: the step of a poll that called the provider
        without reading the job first; the script reads for it what that read would have
        told (a cancelled batch refuses the step, unacknowledged; a blocked account).
        ``pump``: the job's next poll is left to the poll pump (workers.pump), due at ``due``."""
        step_keys, args = _step_call(
            job_id, seq, allowed, to, bump, due, incr, fields, then, ack, poll, pump
        )
        step = step_answer(self._scripts["step"](keys=step_keys, args=args))
        if ack:
            ack.acked = not step.batch_cancelled
        return step

    def steps_and_views(
        self, steps: Sequence[Mapping[str, Any]], view_ids: Sequence[str]
    ) -> tuple[list[Step | Exception], list[View | Exception]]:
        """``step`` for several jobs (each given as its keyword arguments, without ``ack``
        or ``then``) and ``view`` of others, all in one round trip. A step or read that failed
        (Redis out of memory, say) gives its exception in its place; the others stand."""
        calls = [("step", *_step_call(**_step_defaults(step))) for step in steps]
        answers, replies = self._one_trip(calls, lambda pipe: _queue_views(pipe, view_ids))
        stepped = [a if isinstance(a, Exception) else step_answer(a) for a in answers]
        views: list[View | Exception] = []
        for i, job_id in enumerate(view_ids):
            reply = replies[VIEW_REPLIES * i : VIEW_REPLIES * (i + 1)]
            failed = next((r for r in reply if isinstance(r, Exception)), None)
            views.append(failed or _view_of(job_id, reply))
        return stepped, views

    def load_scripts(self) -> None:
        """Load every script now (else the first call of each is refused, then loads it)."""
        for script in self._scripts.values():
            self.redis.script_load(script.script)

    def _one_trip(
        self,
        calls: Sequence[tuple[str, list[Any], list[Any]]],
        reads: Callable[[redis.client.Pipeline], None] | None = None,
    ) -> tuple[list[Any], list[Any]]:
        named = [(self._scripts[name], call_keys, args) for name, call_keys, args in calls]
        return one_trip(self.redis, named, reads)

    def finish(
        self,
        job_id: str,
        seq: int | None,
        state: State,
        record: dict[str, Any],
        *,
        ack: Delivery | None = None,
        **end: Any,
    ) -> Finish:
        """The terminal transition plus the stream entry, atomically and once per job.

        ``end``: ``cost_micros``, ``error_code``, ``extra`` fields written to the job hash in
        the same step (the last poll's count), ``on_end`` writes made only by the call that
        ends the job, ``unpriced_images`` (images whose cost the provider did not give as a
        usable number: the script counts them as estimated-unseen money at the batch's price).
        ``ack``: the task message the caller runs, acknowledged by the same script whether the
        job ends or the call is stale.
        """
        finish_keys, args = self._finish_call(job_id, seq, state, record, ack=ack, **end)
        answer = finish_answer(self._scripts["finish"](keys=finish_keys, args=args))
        if ack:
            ack.acked = True
        return answer

    def finish_many(self, ends: Sequence[Mapping[str, Any]]) -> list[Finish | Exception]:
        """``finish`` for several jobs (each given as its arguments, without ``ack``) in one
        round trip; a script that failed gives its exception in its place."""
        calls = [("finish", *self._finish_call(**end)) for end in ends]
        answers, _ = self._one_trip(calls)
        return [a if isinstance(a, Exception) else finish_answer(a) for a in answers]

    def _finish_call(
        self,
        job_id: str,
        seq: int | None,
        state: State,
        record: dict[str, Any],
        *,
        cost_micros: int = 0,
        unpriced_images: int = 0,
        error_code: str = "",
        extra: dict[str, Any] | None = None,
        ack: Delivery | None = None,
        on_end: EndWrites | None = None,
    ) -> tuple[list[Any], list[Any]]:
        """The finish script's keys and arguments (lua/finish.lua)."""
        batch_id = keys.batch_of(job_id)
        now = time.time()
        fields: list[Any] = []
        for name in ("outputs", "usage", "error"):
            if record.get(name) is not None:
                fields += [name, _encode(record[name])]
        for name, value in (extra or {}).items():
            fields += [name, _encode(value)]
        stream_record = {**record, "state": str(state), "completed_at": now}
        return (
            [
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
                keys.batch_ready(batch_id),
                keys.payload(job_id),  # released with the job's end (unless it failed)
                keys.ENDED,
            ],
            [
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
                unpriced_images,
                self.unit_micros,
                ack.tag if ack else "",
                json.dumps(on_end.commands if on_end else []),
                *fields,
            ],
        )

    def claim_and_view(
        self,
        job_id: str,
        seq: int,
        window: float,
        worst_images: int | None,
        probe: bool = False,
        check_pace: bool = False,
    ) -> tuple[Step, View]:
        """Claim for creation (lua/claim.lua), reserving at the store's unit price or the
        batch's learned one, and read back in the same round trip the ``view`` (with the
        payload) a create needs, as the claim leaves it. When not applied, ``previous`` says
        why: stale, busy, account, cancelled, paused, budget, full or pricing; unpriced
        (``worst_images`` None and none stored at submission); pace (``check_pace``: 429s
        have tightened the cluster's pace, for the caller to take a slot of it first). When
        applied, the state it was claimed from (``creating``: the last claim died between
        POST and ID)."""
        claim_keys, args = self._claim_call(
            job_id, seq, window, worst_images, probe, check_pace, read=True
        )
        return _claim_and_view(job_id, self._scripts["claim"](keys=claim_keys, args=args))

    def claims_and_views(
        self, jobs: Sequence[tuple[str, int]], window: float, check_pace: bool
    ) -> list[tuple[Step, View] | Exception]:
        """``claim_and_view`` for several jobs (their worst cases as stored, no probe) in one
        round trip; a claim that failed gives its exception in its place."""
        calls = [
            ("claim", *self._claim_call(job_id, seq, window, None, False, check_pace, read=True))
            for job_id, seq in jobs
        ]
        answers, _ = self._one_trip(calls)
        return [
            answer if isinstance(answer, Exception) else _claim_and_view(job_id, answer)
            for (job_id, _), answer in zip(jobs, answers, strict=True)
        ]

    def _claim_call(
        self,
        job_id: str,
        seq: int,
        window: float,
        worst_images: int | None,
        probe: bool,
        check_pace: bool = False,
        read: bool = False,
    ) -> tuple[list[Any], list[Any]]:
        """The claim script's keys and arguments (lua/claim.lua)."""
        batch_id = keys.batch_of(job_id)
        claim_keys = [keys.job(job_id), keys.batch(batch_id), keys.DUE, keys.QUEUED]
        args = [
            job_id,
            seq,
            repr(window),
            "" if worst_images is None else worst_images,
            self.unit_micros,
            self.max_in_flight,
            "1" if probe else "0",
            "1" if check_pace else "0",
        ]
        return claim_keys + ([keys.payload(job_id)] if read else []), args

    def learn_price(self, batch_id: str, micros_per_image: int) -> int:
        """Record what the provider charged this batch per image (kept at the highest seen).

        A price never falls, so a price this process saw recorded recently needs no script:
        most ended jobs skip the round trip. Entries expire after ``PRICE_MEMORY`` seconds, so
        a price lost with a cut AOF is written again soon."""
        now = time.monotonic()
        known, at = self._prices.get(batch_id, (-1, 0.0))
        if micros_per_image <= known and now - at < PRICE_MEMORY:
            return known
        script, args = self._scripts["price"], [micros_per_image, self.unit_micros]
        price = int(script(keys=[keys.batch(batch_id)], args=args))
        if len(self._prices) >= PRICE_MEMORY_BATCHES:
            self._prices.clear()
        self._prices[batch_id] = (price, now)
        return price

    def park(self, job_id: str, seq: int, reason: Hold, detail: str = "") -> bool:
        """Park a job: it waits (never fails) until its account or batch lets it go on.

        ``reason`` is ``account`` (cluster-wide, released by a successful probe), ``slot``
        (the in-flight cap is reached: released as jobs end), or ``paused`` / ``budget`` (this
        batch, released by ``wanq resume``). A parked job gives up its in-flight slot. One
        script: a worker that dies half-way cannot leave a waiting job in no set.
        """
        batch_id = keys.batch_of(job_id)
        applied = self._scripts["park"](
            keys=[
                keys.job(job_id),
                keys.batch(batch_id),
                keys.DUE,
                keys.QUEUED,
                self.parked_set(reason, batch_id).key,
                keys.INFLIGHT,
            ],
            args=[job_id, seq, str(reason), detail or str(reason), time.time()],
        )
        return bool(applied)

    def parked_set(self, reason: Hold, batch_id: str) -> JobSet:
        """Where a job parked for ``reason`` waits: cluster-wide sets, or its batch's."""
        if reason == Hold.ACCOUNT:
            return self.held
        if reason == Hold.SLOT:
            return JobSet(self.redis, keys.batch_ready(batch_id))
        return self.parked(batch_id)

    def release(self, zset: str, count: int) -> list[tuple[str, int]]:
        """Unpark up to ``count`` jobs of a parked set: (job_id, seq) to send creates for."""
        flat = self._scripts["release"](
            keys=[zset, keys.DUE], args=[count, time.time(), keys.job("")]
        )
        return list(pairs(flat))

    def reopen(self, job_id: str, codes: tuple[str, ...] = ()) -> tuple[int, str]:
        """Re-open a failed job for another round (lua/reopen.lua): its new seq and what to
        send it, ``poll`` (its known remote task is followed again), ``create`` or ``wait``
        (admission will); (-1, '') if it was not re-opened."""
        batch_id = keys.batch_of(job_id)
        seq, then = self._scripts["reopen"](
            keys=[keys.job(job_id), keys.batch(batch_id), keys.QUEUED, keys.batch_codes(batch_id)],
            args=[job_id, time.time(), ",".join(codes), STATUS_CHECK, self.max_in_flight],
        )
        return int(seq), text(then)

    def set_control(self, batch_id: str, state: str, **fields: Any) -> None:
        """Batch state: ``active``, ``paused``, ``budget`` (paused by its cap), ``cancelled``."""
        values: dict[FieldT, EncodableT] = {"state": state}
        for name, value in fields.items():
            values[name] = str(value)
        self.redis.hset(keys.batch(batch_id), mapping=values)

    def pace(self, rate: float, horizon: float, *, poll: bool = False) -> float:
        """Seconds until this caller's slot under a cluster-wide rate (GCRA); 0 = now.

        Creations also follow the rate 429s have tightened (``workers.pacing``); polls don't.
        """
        key = keys.POLL_PACE if poll else keys.CREATE_PACE
        tightened = keys.PACE_RATE + ":none" if poll else keys.PACE_RATE
        return float(
            self._scripts["pace"](keys=[key, tightened], args=[time.time(), rate, horizon])
        )

    def repair_slice(self, count: int) -> tuple[str, list[str]]:
        """The next ``count`` job IDs of the repair walk (batch after batch, wrapping round)."""
        cursor = text_map(self.redis.hgetall(keys.REPAIR_CURSOR))
        index, offset = int(cursor.get("batch") or 0), int(cursor.get("offset") or 0)
        found = texts(self.redis.zrange(keys.BATCHES, index, index))
        if not found:
            index, offset = 0, 0
            found = texts(self.redis.zrange(keys.BATCHES, 0, 0))
            if not found:
                return "", []
        batch_id = found[0]
        job_ids = texts(self.redis.lrange(keys.batch_jobs(batch_id), offset, offset + count - 1))
        if len(job_ids) < count:
            index, offset = index + 1, 0
        else:
            offset += count
        self.redis.hset(keys.REPAIR_CURSOR, mapping={"batch": index, "offset": offset})
        return batch_id, list(job_ids)

    def repair(self, job: Job, now: float) -> str:
        """Put the job back where the sweeper will move it on, if it is still misplaced when
        the script looks (lua/repair.lua); what was fixed, or '' if nothing was."""
        return self.repair_many([job], now)[0]

    def repair_many(self, jobs: Sequence[Job], now: float) -> list[str]:
        """``repair`` for several jobs in one round trip: the script itself checks each one,
        so the caller needs no look of its own at the sets first."""
        pipe = self.redis.pipeline(transaction=False)
        for job in jobs:
            parked = self.parked_set(Hold(job.hold), job.batch).key if job.hold in HOLDS else ""
            self._scripts["repair"](
                keys=[keys.job(job.job_id), keys.batch(job.batch), keys.DUE, keys.QUEUED, parked],
                args=[job.job_id, now],
                client=pipe,
            )
        return [text(what) for what in pipe.execute()] if jobs else []

    def postpone(self, job_id: str, when: float) -> None:
        """A create waiting for its pace slot is not overdue: move its sweep time on."""
        pipe = self.redis.pipeline(transaction=False)
        pipe.zadd(keys.DUE, {job_id: when}, xx=True)
        pipe.zadd(keys.QUEUED, {job_id: when}, xx=True)
        pipe.execute()

    def publish_cluster_settings(self) -> None:
        """What every process must agree on, written by each worker as it starts: scripts
        called with no cap of their own (a producer's) use this one."""
        self.redis.hset(keys.CLUSTER, mapping={"max_in_flight": self.max_in_flight})

    def take_lease(self, name: str, holder: str, ttl: float) -> bool:
        return bool(self._scripts["lease"](keys=[name], args=[holder, int(ttl * 1000)]))

    def count(self, name: str, by: int = 1) -> None:
        """Cluster counters (duplicate creations, rescues): kept, never hidden."""
        self.redis.hincrby(keys.STATS, name, by)

    def count_ambiguous_create(self, job_id: str, worst_images: int) -> int:
        """A POST whose outcome is unknown (no answer, a 5xx, an answer without an ID) may have
        made a remote task: counted on the cluster, the job and its batch, its worst case as
        unseen money at the batch's price (lua/ambiguous.lua), so duplicates are shown, not
        hidden. Returns the micro-USD counted."""
        script = self._scripts["ambiguous"]
        job_keys = [keys.job(job_id), keys.batch(keys.batch_of(job_id))]
        return int(script(keys=job_keys, args=[max(0, worst_images), self.unit_micros]))

    def settle(
        self,
        job_id: str,
        task_id: str,
        outcome: str,
        *,
        cost_micros: int = 0,
        next_at: float = 0.0,
        now: float | None = None,
    ) -> str:
        """What the sweeper learned about a job's abandoned remote task (lua/settle.lua):
        ``ended`` (its cost counted), ``running`` (asked again at ``next_at``) or ``give_up``;
        the script's answer (``settled``, ``running``, ``given_up``, ``stale``, ``absent``)."""
        answer = self._scripts["settle"](
            keys=[keys.job(job_id), keys.batch(keys.batch_of(job_id))],
            args=[
                job_id,
                task_id,
                outcome,
                cost_micros,
                repr(next_at),
                repr(time.time() if now is None else now),
            ],
        )
        return text(answer)

    def stats(self) -> dict[str, str]:
        return text_map(self.redis.hgetall(keys.STATS))


VIEW_REPLIES = 4  # the commands of a view without its payload (_queue_view)


def _queue_view(pipe: redis.client.Pipeline, job_id: str, payload: bool = False) -> None:
    pipe.hgetall(keys.job(job_id))
    pipe.hget(keys.batch(keys.batch_of(job_id)), "state")
    pipe.hgetall(keys.ACCOUNT)
    pipe.exists(keys.PACE_RATE)
    if payload:
        pipe.get(keys.payload(job_id))


def _queue_views(pipe: redis.client.Pipeline, job_ids: Sequence[str]) -> None:
    for job_id in job_ids:
        _queue_view(pipe, job_id)


def _view_of(job_id: str, replies: Sequence[Any]) -> View:
    raw, batch_state, block, tightened, *stored = replies
    return View(
        Job.parse(job_id, text_map(raw)),
        text(batch_state) or BatchState.ACTIVE,
        text_map(block),
        bool(tightened),
        text(stored[0]) if stored and stored[0] is not None else None,
    )


def _claim_and_view(job_id: str, answer: list[Any]) -> tuple[Step, View]:
    """A claim's answer with its read-back (lua/claim.lua) as the claim and the view."""
    applied, new_seq, why, raw, payload, block, tightened = answer
    view = View(
        Job.parse(job_id, text_map(_pairs_map(raw))),
        BatchState.ACTIVE,  # the claim itself refuses a cancelled or paused batch
        text_map(_pairs_map(block)),
        bool(tightened),
        text(payload) if payload is not None else None,
    )
    return Step(bool(applied), int(new_seq), text(why)), view


def _pairs_map(flat: list[Any]) -> dict[Any, Any]:
    """A script's flat HGETALL reply (field, value, field, value, ...) as a mapping."""
    return dict(zip(flat[::2], flat[1::2], strict=True))


def _step_defaults(step: Mapping[str, Any]) -> dict[str, Any]:
    """A step given by keyword, with ``step``'s defaults for what it leaves out."""
    return {
        "bump": True,
        "due": None,
        "incr": (),
        "fields": None,
        "then": None,
        "ack": None,
        "poll": False,
        "pump": False,
        **step,
    }


def _step_call(
    job_id: str,
    seq: int,
    allowed: tuple[str, ...],
    to: str,
    bump: bool,
    due: float | None,
    incr: tuple[str, ...],
    fields: dict[str, Any] | None,
    then: tuple[str, str] | None,
    ack: Delivery | None,
    poll: bool,
    pump: bool,
) -> tuple[list[Any], list[Any]]:
    """The step script's keys and arguments (lua/step.lua)."""
    flat: list[Any] = []
    for name, value in (fields or {}).items():
        flat += [name, _encode(value)]
    queue, message = then or (None, "")
    step_keys = [keys.job(job_id), keys.batch(keys.batch_of(job_id)), keys.DUE, keys.QUEUED]
    args = [
        job_id,
        seq,
        ",".join(allowed),
        to,
        1 if bump else 0,
        "" if due is None else repr(due),
        ",".join(incr),
        message,
        ack.tag if ack else "",
        "1" if poll else "",
        "1" if pump else "",
        *flat,
    ]
    return step_keys + ([queue] if queue else []), args


def step_answer(answer: list[Any]) -> Step:
    return Step(
        bool(answer[0]),
        int(answer[1]),
        text(answer[2]) or "",
        batch_cancelled=len(answer) > 3 and bool(answer[3]),
        account_blocked=len(answer) > 4 and bool(answer[4]),
    )


def finish_answer(raw: list[Any]) -> Finish:
    ended, batch_ended, owed, admitted = raw
    return Finish(bool(ended), bool(batch_ended), bool(owed), pairs(admitted))


def pairs(flat: list[Any]) -> tuple[tuple[str, int], ...]:
    """A script's flat ``job_id, seq, job_id, seq, ...`` answer as (job_id, seq) pairs."""
    return tuple((str(flat[i]), int(flat[i + 1])) for i in range(0, len(flat), 2))


def _encode(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, (dict, list)):
        return json.dumps(value)
    return repr(value) if isinstance(value, float) else str(value)
