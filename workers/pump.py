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
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import redis

from workers import keys
from workers.config import Settings
from workers.jobs import Followed
from workers.names import TaskName
from workers.scripts import load_script
from workers.sender import Preparer, Sender

log = logging.getLogger("wanq.pump")

LEASE_TTL = 3.0  # seconds: how long the polls of a pump that died wait for another pump
RENEW_EVERY = 1.0  # seconds between lease renewals (a process without it tries as often)
MOST = 2000  # entries one read takes; a full read is followed by the next at once


@dataclass(frozen=True)
class Due:
    """One poll the pump found due: the job, its entry's score (for the hand-off to check it
    is still current), and the poll's arguments (job_id, seq, jobs.Followed's text)."""

    job_id: str
    score: str
    args: tuple[str, int, str]


class Pump:
    """The pump's reads and hand-offs, over the store's client."""

    def __init__(
        self, client: redis.Redis, settings: Settings, send: Sender, prepare: Preparer | None
    ) -> None:
        self.redis, self.settings, self.send, self.prepare = client, settings, send, prepare
        self._read = load_script(client, "pump")
        self._hand_off = load_script(client, "hand_off")

    def due(self, by: float, most: int = MOST) -> list[Due]:
        """The polls due by ``by``, at most ``most``."""
        entries = self._read(keys=[keys.POLLS], args=[repr(by), most, keys.job("")])
        return [_due(entry) for entry in entries]

    def hand_off(self, polls: list[Due]) -> int:
        """One message for ``polls``; how many of them were still current."""
        args = tuple(itertools.chain.from_iterable(p.args for p in polls))
        prepared = self.prepare(TaskName.POLL, args) if self.prepare else None
        queue, message = prepared or ("", "")
        scores = itertools.chain.from_iterable((p.job_id, p.score) for p in polls)
        current = int(
            self._hand_off(keys=[keys.POLLS, queue or keys.POLL_QUEUE], args=[message, *scores])
        )
        if prepared is None and current:  # no template: sent after (the due set covers a loss)
            self.send(TaskName.POLL, args)
        return current

    def pump(self, now: float) -> int:
        """Hand off every poll due within half a tick of ``now``; how many went."""
        sent = 0
        while True:
            polls = self.due(now + self.settings.poll_tick / 2)
            size = self.settings.poll_batch
            for start in range(0, len(polls), size):
                sent += self.hand_off(polls[start : start + size])
            if len(polls) < MOST:
                return sent


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
    """The pump's loop in one worker process: pump every tick while it holds the lease."""
    tick = pump.settings.poll_tick
    holding, renew_at = False, 0.0
    while not stop.is_set():
        started = time.monotonic()
        try:
            if started >= renew_at:
                holding = take_lease(keys.POLL_PUMP_LEASE, holder, LEASE_TTL)
                renew_at = started + RENEW_EVERY
            if holding:
                pump.pump(time.time())
        except Exception:  # Redis down or full: try again; the due set covers what waits
            log.exception("poll pump failed; retrying")
            holding, renew_at = False, started + RENEW_EVERY
        next_turn = started + tick if holding else renew_at
        stop.wait(max(0.0, next_turn - time.monotonic()))
    if holding:  # a warm shutdown: the lease ends now (renewed for 1 ms), not in LEASE_TTL
        with contextlib.suppress(Exception):
            take_lease(keys.POLL_PUMP_LEASE, holder, 0.001)
