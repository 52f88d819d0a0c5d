"""Deliveries (archive downloads, webhooks) run on a few threads of their own in each worker.

Why: one output host answering a byte every few seconds held every thread of two workers and
stopped a following batch cold (issue 13). A queue of their own is not enough when the same
threads consume it, and a separate worker process for ``wanq.deliver`` is a deployment that
``celery -A workers.app worker`` (every queue) does not give by default. So the ``wanq.deliver``
task only hands its target to this pool and returns at once: creates and polls keep every
Celery thread, and a slow host can hold at most ``WANQ_DELIVERY_THREADS`` threads, each for at
most ``WANQ_ARCHIVE_DEADLINE`` per download.

Nothing is lost by handing over: the target stays in ``wanq:deliver`` until its delivery is
done (``workers.deliveries``). When every thread is busy and the small backlog is full, the
hand-over is refused and the sweeper sends the target again after its grace period. While a
delivery runs it holds a lock (``keys.delivering``) and its ``wanq:deliver`` score is pushed
past the time it may take, so no second copy runs meanwhile; a worker that dies mid-delivery
leaves both to expire, and the sweeper sends it again. The threads are daemons: stopping a
worker never waits for a slow download.
"""

from __future__ import annotations

import functools
import logging
import os
import queue
import threading
import time
from collections.abc import Callable

from workers import deliveries, keys
from workers.config import Settings
from workers.names import TaskName
from workers.sender import Sender
from workers.store import JobStore

log = logging.getLogger("wanq.deliveries")

BACKLOG_PER_THREAD = 4  # targets waiting for a thread before hand-overs are refused
MAX_OUTPUTS = 6  # what one job's archive may download (5 images), with room to spare


class DeliveryThreads:
    """A fixed number of daemon threads reading a bounded queue; ``offer`` never blocks."""

    def __init__(self, threads: int, backlog: int) -> None:
        self._queue: queue.Queue[Callable[[], object]] = queue.Queue(maxsize=max(1, backlog))
        for n in range(max(1, threads)):
            name = f"wanq-delivery-{n}"
            threading.Thread(target=self._work, name=name, daemon=True).start()

    def offer(self, work: Callable[[], object]) -> bool:
        """True if a thread will run ``work``; False if all are busy and the backlog is full."""
        try:
            self._queue.put_nowait(work)
        except queue.Full:
            return False
        return True

    def _work(self) -> None:
        while True:
            work = self._queue.get()
            try:
                work()
            except Exception:  # one failed delivery must not take its thread down
                log.exception("delivery failed; the sweeper sends it again")


@functools.cache
def _pool(threads: int) -> DeliveryThreads:
    return DeliveryThreads(threads, threads * BACKLOG_PER_THREAD)


def hand_over(store: JobStore, settings: Settings, target: str, send: Sender) -> str:
    """Give ``target`` to this worker's delivery threads: "handed over", or "deferred" (the
    sweeper sends it again)."""
    pool = _pool(max(1, settings.delivery_threads))
    accepted = pool.offer(lambda: run(store, settings, target, send))
    return "handed over" if accepted else "deferred"


def run(store: JobStore, settings: Settings, target: str, send: Sender) -> str:
    """Deliver once, under a lock, then send the next attempt when one is due."""
    lock, token = keys.delivering(target), f"{os.getpid()}:{threading.get_ident()}"
    hold = lease_seconds(settings)
    if not store.redis.set(lock, token, nx=True, px=int(hold * 1000)):
        return "busy"  # another thread or worker is delivering it now
    try:
        store.deliveries.add({target: time.time() + hold}, only_existing=True)
        outcome = deliveries.deliver(store, settings, target, send)
    except Exception:  # owed again at once: the sweeper sends it after its grace period
        store.deliveries.add({target: time.time()}, only_existing=True)
        raise
    finally:
        if store.redis.get(lock) == token:
            store.redis.delete(lock)
    if outcome.retry_in is not None:
        send(TaskName.DELIVER, (target,), countdown=outcome.retry_in)
        return "retry"
    return "delivered"


def lease_seconds(settings: Settings) -> float:
    """The longest one delivery may take: every output to its deadline, then the webhook."""
    return MAX_OUTPUTS * settings.archive_deadline + 2 * (
        settings.connect_timeout + settings.read_timeout
    )
