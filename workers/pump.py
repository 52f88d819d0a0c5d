"""The poll pump: the polls that come due together go out in one Celery message.

Every Celery message costs a worker about a millisecond of CPU before its task runs (the fetch,
its unacked record, the countdown timer, three task events, two log lines; docs/
bench-profile.md): more than the status call a poll makes. With one countdown message per poll,
that was the largest part of wanq's CPU per job. So a step that schedules a job's next poll
puts the job in a Redis zset at its due time (``keys.POLLS``, lua/step.lua) instead of pushing
a message, and one worker process at a time (a Redis lease) reads the polls due every
``poll_tick`` and hands them to the workers ``poll_batch`` to a ``wanq.poll`` message (its
arguments ``job_id, seq, known`` for each job; ``workers.tasks.poll_batch``). A poll goes out
within half a tick of its time, early or late. A message of one poll is the poll task as
steps sent it before, with its hint.

Nothing is lost on the way:
- the read (lua/pump.lua) removes nothing; the hand-off (lua/hand_off.lua) removes the entries
  and pushes their message in one step, so a pump that dies in between leaves them for the next;
- a message in a worker is kombu's to restore (acks late), as every poll's was;
- a poll's step also puts the job in the due set, so the sweeper resends a poll that is overdue
  whatever happened to it; a duplicate poll is stale at its step (the seq).

Celery has no primitive for this: its countdowns are per message, and ``celery.contrib.batches``
style buffering holds messages in one worker's memory, which a kill loses until the visibility
timeout. Hence this small loop.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import redis
from redis.commands.core import Script

from workers import keys, schedule
from workers.config import Settings
from workers.jobs import Followed
from workers.names import TaskName
from workers.scripts import load_script, one_trip
from workers.sender import Preparer, Sender

log = logging.getLogger("wanq.pump")

LEASE_TTL = 3.0  # seconds: how long the polls of a pump that died wait for another pump
RENEW_EVERY = 1.0  # seconds between lease renewals (a process without it tries as often)
MOST = 2000  # entries one read takes; a full read is followed by the next at once
# most seconds between reads while no poll is due soon: a step schedules its poll at least
# schedule.MIN_INTERVAL ahead, so a read this often still sees it coming
IDLE_WAIT = schedule.MIN_INTERVAL / 2


@dataclass(frozen=True)
class Due:
    """One poll the pump found due: the job, its entry's score (for the hand-off to check it
    is still current), and the poll's arguments (job_id, seq, jobs.Followed's text)."""

    job_id: str
    score: str
    args: tuple[str, int, str]


class Pump:
    """The pump's reads and hand-offs, over the store's client.

    A tick's hand-off and the next tick's read share one round trip: each read takes the polls
    due within the coming tick (by ``now`` + 1.5 ticks), and the next tick hands them off, in
    the pipeline of its own read. A poll still goes out within half a tick of its time; a
    poll already due when read (a poll scheduled less than a tick ahead, or a pump that just
    took over) goes at once."""

    def __init__(
        self, client: redis.Redis, settings: Settings, send: Sender, prepare: Preparer | None
    ) -> None:
        self.redis, self.settings, self.send, self.prepare = client, settings, send, prepare
        self._read = load_script(client, "pump")
        self._hand_off = load_script(client, "hand_off")
        self._next: list[Due] = []  # read last tick, handed off this one
        self.next_read = 0.0  # when the next read is needed (time.time()): the next tick's

    def due(self, by: float, most: int = MOST) -> list[Due]:
        """The polls due by ``by``, at most ``most``."""
        entries = self._read(keys=[keys.POLLS], args=[repr(by), most, keys.job("")])
        return [_due(entry) for entry in entries]

    def hand_off(self, polls: list[Due]) -> int:
        """One message for ``polls``; how many of them were still current."""
        return self._hand_off_with(polls)[0]

    def pump(self, now: float) -> int:
        """Hand off the polls read last tick, read those of the next, and hand off at once any
        found due already; how many went."""
        tick = self.settings.poll_tick
        soon = now + tick / 2
        sent, read, earliest = self._hand_off_with(self._next, then_read=now + 1.5 * tick)
        self._next = [p for p in read if float(p.score) > soon]
        # nothing to hand off next tick: read again when the earliest poll comes within reach
        self.next_read = now + tick if self._next else earliest - 1.5 * tick
        due_now = [p for p in read if float(p.score) <= soon]
        full = len(read) >= MOST
        while due_now:  # a full read may have left more due now: read on until all went
            more, due_now, _ = self._hand_off_with(due_now, then_read=soon if full else None)
            sent, full = sent + more, len(due_now) >= MOST
        return sent

    def forget(self) -> None:
        """Drop what was read for the next tick (the lease went: another pump reads it)."""
        self._next = []

    def _hand_off_with(
        self, polls: list[Due], then_read: float | None = None
    ) -> tuple[int, list[Due], float]:
        """``polls`` handed off ``poll_batch`` to a message, then (``then_read``) the polls
        due by then read, all in one round trip: how many were current, what was read, and
        when the earliest poll left in the set is due (infinity: none). A hand-off Redis
        refused (out of memory) is raised once the others went."""
        size = self.settings.poll_batch
        chunks = [polls[start : start + size] for start in range(0, len(polls), size)]
        calls: list[tuple[Script, list[Any], list[Any]]] = []
        unsent: list[tuple[Any, ...] | None] = []  # messages without a template, sent after
        for chunk in chunks:
            args = tuple(itertools.chain.from_iterable(p.args for p in chunk))
            prepared = self.prepare(TaskName.POLL, args) if self.prepare else None
            queue, message = prepared or ("", "")
            scores = itertools.chain.from_iterable((p.job_id, p.score) for p in chunk)
            hand_off_keys = [keys.POLLS, queue or keys.POLL_QUEUE]
            calls.append((self._hand_off, hand_off_keys, [message, *scores]))
            unsent.append(None if prepared else args)
        if then_read is not None:
            calls.append((self._read, [keys.POLLS], [repr(then_read), MOST, keys.job("")]))
        answers, replies = one_trip(self.redis, calls, _earliest)
        read = answers.pop() if then_read is not None else []
        if isinstance(read, Exception):
            raise read
        sent, refused = 0, None
        for answer, later in zip(answers, unsent, strict=True):
            if isinstance(answer, Exception):  # its entries stay for a later read
                refused = answer
                continue
            sent += int(answer)
            if later is not None and answer:  # sent after: the due set covers a loss
                self.send(TaskName.POLL, later)
        if refused is not None:
            raise refused
        (first,) = replies
        earliest = float(first[0][1]) if isinstance(first, list) and first else math.inf
        return sent, [_due(entry) for entry in read], earliest


def _earliest(pipe: redis.client.Pipeline) -> None:
    pipe.zrange(keys.POLLS, 0, 0, withscores=True)


def _due(entry: list[Any]) -> Due:
    job_id, score, seq, created_at, polls, poll_errors, first_poll_at, remote = (
        x.decode() if isinstance(x, bytes) else str(x) for x in entry
    )
    try:  # the hint's one spelling is Followed.text; unreadable fields: the poll reads the job
        known = Followed(
            remote, float(created_at), int(polls), int(poll_errors), bool(first_poll_at)
        ).text()
    except ValueError:
        known = ""
    return Due(job_id, score, (job_id, int(seq or 0), known))


def run(
    pump: Pump, take_lease: Callable[[str, str, float], bool], holder: str, stop: threading.Event
) -> None:
    """The pump's loop in one worker process: pump every tick while it holds the lease, or
    less often while no poll is due soon (when the earliest comes within reach, at most
    ``IDLE_WAIT`` later: an idle worker reads Redis 4 times a second, not 20)."""
    tick = pump.settings.poll_tick
    idle_wait = max(tick, IDLE_WAIT)
    holding, renew_at = False, 0.0
    while not stop.is_set():
        started = time.monotonic()
        try:
            if started >= renew_at:
                holding = take_lease(keys.POLL_PUMP_LEASE, holder, LEASE_TTL)
                renew_at = started + RENEW_EVERY
            if holding:
                pump.pump(time.time())
            else:
                pump.forget()
        except Exception:  # Redis down or full: try again; the due set covers what waits
            log.exception("poll pump failed; retrying")
            holding, renew_at = False, started + RENEW_EVERY
            pump.forget()
        wait = min(max(pump.next_read - time.time(), tick), idle_wait)
        next_turn = min(started + wait, renew_at) if holding else renew_at
        stop.wait(max(0.0, next_turn - time.monotonic()))
    if holding:  # a warm shutdown: the lease ends now (renewed for 1 ms), not in LEASE_TTL
        with contextlib.suppress(Exception):
            take_lease(keys.POLL_PUMP_LEASE, holder, 0.001)
