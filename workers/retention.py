"""Retention: a batch and everything of it goes ``WANQ_RETENTION`` after it ended, or on purge.

Everything of a batch: its jobs' records and payloads (releasing the image references they
still hold, see ``workers.images``), its job list, counters, error codes, parked set and
submission pins, its places in the cluster sets (abandoned remote tasks followed for their
cost too: ``workers.abandoned``), and its entries of the results stream.

The workers' sweeper purges expired batches in slices (``SLICE`` jobs per script call, at most
``SWEEP_JOBS`` per pass), oldest end first, from the ``wanq:ended`` set finish.lua fills when
a batch's last job ends: no long Redis call and no beat process. ``wanq purge`` runs the same
purge at once. A purge cut short (a crash, a full pass) resumes where it stopped: each slice
removes its jobs from the head of the batch's list in the same script that deletes them.

The results stream is trimmed by age as well as by length (XTRIM MINID, approximate): a batch's
entries were all written before it ended, so they are older than the retention when the batch
expires. An immediate purge deletes the batch's entries itself, scanning the stream only
between the batch's submission and its end.
"""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import Iterable
from typing import Any

import redis

from workers import images, keys
from workers.connection import texts
from workers.scripts import load_script
from workers.store import JobStore

log = logging.getLogger("wanq.retention")

SLICE = 100  # jobs per purge script call (about a millisecond of Redis)
SWEEP_JOBS = 500  # jobs purged per sweeper pass, all batches together
STREAM_TRIM_LIMIT = 10_000  # stream entries trimmed by age per pass, at most
STREAM_SLICE = 500  # stream entries read per XRANGE while deleting a batch's entries
EXPIRED_LOOKED_AT = 20  # expired batches read per pass
ADOPT_SLICE = 200  # batches of the listing checked per pass for an end not yet recorded
CLOCK_SKEW = 60.0  # seconds of clock difference between hosts and Redis tolerated


class Purger:
    """Removes batches from Redis, a slice at a time."""

    def __init__(self, client: redis.Redis) -> None:
        self.redis: Any = client  # decode_responses=True (workers.connection.connect)
        self._purge = load_script(client, "purge")
        self._finish = load_script(client, "purge_batch")
        self._unenqueue = load_script(client, "unenqueue")

    def take_back(self, batch_id: str, job_ids: Iterable[str]) -> int:
        """Remove jobs a submission wrote to a batch that existed before it (an OOM stopped
        it), given last-written first; jobs a worker touched meanwhile stay. How many went."""
        taken = 0
        job_ids = iter(job_ids)
        while chunk := list(itertools.islice(job_ids, SLICE)):
            taken += int(
                self._unenqueue(
                    keys=[
                        keys.batch(batch_id),
                        keys.batch_jobs(batch_id),
                        keys.QUEUED,
                        keys.DUE,
                        keys.INFLIGHT,
                        keys.batch_ready(batch_id),
                    ],
                    args=[keys.job(""), keys.payload(""), *chunk],
                )
            )
        return taken

    def purge(
        self, batch_id: str, max_jobs: int | None = None, stream: bool = True
    ) -> tuple[bool, int]:
        """Purge up to ``max_jobs`` jobs of the batch (None: all): (batch gone, jobs looked at).
        ``stream``: delete its results stream entries too."""
        done, remaining = 0, 1
        while remaining and (max_jobs is None or done < max_jobs):
            remaining = int(
                self._purge(
                    keys=[
                        keys.batch_jobs(batch_id),
                        keys.DUE,
                        keys.QUEUED,
                        keys.HELD,
                        keys.INFLIGHT,
                        keys.batch_ready(batch_id),
                        keys.DELIVER,
                        keys.ABANDONED,
                        keys.POLLS,
                    ],
                    args=[SLICE, keys.job(""), keys.payload("")],
                )
            )
            done += SLICE
        if remaining:
            return False, done
        if stream:
            self._drop_stream_entries(batch_id)
        gone = self._finish(
            keys=[
                keys.batch(batch_id),
                keys.batch_codes(batch_id),
                keys.batch_parked(batch_id),
                keys.batch_jobs(batch_id),
                keys.batch_images(batch_id),
                keys.BATCHES,
                keys.ENDED,
                keys.DELIVER,
                keys.READY,
                keys.batch_ready(batch_id),
            ],
            args=[batch_id, images.IMAGE_PREFIX],
        )
        return bool(gone), done

    def _drop_stream_entries(self, batch_id: str) -> None:
        """XDEL the batch's results entries, scanning only its lifetime's part of the stream."""
        raw = self.redis.hmget(keys.batch(batch_id), "submitted_at", "finished_at")
        if raw[0] is None:
            return
        skew = CLOCK_SKEW * 1000  # entry IDs are Redis's clock, the batch's times the hosts'
        start = f"{int(float(raw[0]) * 1000 - skew)}-0"
        end = f"{int(float(raw[1]) * 1000 + skew)}" if raw[1] else "+"
        prefix = batch_id + ":"
        while True:
            entries = self.redis.xrange(keys.RESULTS, start, end, count=STREAM_SLICE)
            mine = [eid for eid, fields in entries if fields.get("job_id", "").startswith(prefix)]
            if mine:
                self.redis.xdel(keys.RESULTS, *mine)
            if len(entries) < STREAM_SLICE:
                return
            start = "(" + entries[-1][0]


def purge_at(batch: dict[str, str], retention: float) -> float | None:
    """When the batch will be purged (epoch seconds), or None while it has not ended."""
    finished = batch.get("finished_at")
    return float(finished) + retention if finished else None


def ended_before(client: redis.Redis, when: float) -> list[str]:
    """Batches that ended before ``when`` (still in Redis), oldest end first."""
    return texts(client.zrangebyscore(keys.ENDED, "-inf", f"({when}"))


def sweep(store: JobStore, retention: float, now: float | None = None) -> int:
    """One retention pass of the sweeper: trim the stream by age, purge up to SWEEP_JOBS jobs
    of expired batches. Returns how many batches it removed entirely."""
    r: Any = store.redis
    now = time.time() if now is None else now
    cutoff = now - retention
    minid = f"{int(cutoff * 1000)}-0"  # whole stream nodes only (~), bounded work a pass
    r.xtrim(keys.RESULTS, minid=minid, approximate=True, limit=STREAM_TRIM_LIMIT)
    _adopt(r)
    budget, removed = SWEEP_JOBS, 0
    purger = Purger(r)
    for batch_id in r.zrangebyscore(keys.ENDED, "-inf", cutoff, start=0, num=EXPIRED_LOOKED_AT):
        finished, total = r.hmget(keys.batch(batch_id), "finished_at", "total")
        if finished is not None and float(finished) > cutoff:
            continue  # re-opened by wanq retry and ended again later: finish.lua moved it
        if finished is None and int(total or 0) > 0:
            r.zrem(keys.ENDED, batch_id)  # re-opened and running: it comes back when it ends
            continue
        gone, done = purger.purge(batch_id, budget, stream=False)
        budget -= done
        if gone:
            removed += 1
            log.info("batch %s purged: retention of %.0f s passed", batch_id, retention)
        if budget <= 0:
            break
    return removed


def _adopt(r: Any) -> None:
    """Batches that ended before ``wanq:ended`` existed join it, and so do batches whose
    submission died before writing a job (they never end; their image pins would stay):
    a cursor walks the batch listing, ADOPT_SLICE batches a pass, and starts over once
    through (a batch's end is recorded by finish.lua itself)."""
    start = int(r.get(keys.RETENTION_CURSOR) or 0)
    batch_ids = r.zrange(keys.BATCHES, start, start + ADOPT_SLICE - 1)
    r.set(keys.RETENTION_CURSOR, 0 if len(batch_ids) < ADOPT_SLICE else start + ADOPT_SLICE)
    if not batch_ids:
        return
    pipe = r.pipeline(transaction=False)
    for batch_id in batch_ids:
        pipe.hmget(keys.batch(batch_id), "finished_at", "total", "submitted_at")
    ended = {}
    for batch_id, (finished, total, submitted) in zip(batch_ids, pipe.execute(), strict=True):
        if finished:
            ended[batch_id] = float(finished)
        elif not int(total or 0) and submitted:  # a submission that died before its jobs
            ended[batch_id] = float(submitted)
    if ended:
        r.zadd(keys.ENDED, ended, nx=True)
