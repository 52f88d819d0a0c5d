"""Task events sent in batches of half a second, not one publish per loop turn.

Celery's worker buffers its task events (received, started, succeeded) and publishes the
buffer on the next turn of its event loop: at wanq's rates a turn holds one or two events,
so each costs a whole PUBLISH, and those publishes were 9 % of a worker's CPU
(docs/bench-profile.md). ``EventBatches`` flushes the buffer at most every FLUSH_INTERVAL
instead. Flower gets the same events, in the ``task-multi`` messages it already reads from
Celery's own buffering, at most FLUSH_INTERVAL later; a full buffer (Celery's
``buffer_limit``) still goes out at once, and the worker flushes what is left when it stops.

Written here because Celery has no setting for it: the flush is scheduled by the consumer's
``on_send_event_buffered``, which only knows "soon".
"""

from __future__ import annotations

import threading
from typing import Any

from celery import bootsteps

FLUSH_INTERVAL = 0.5  # seconds an event may wait for the events after it


class EventBatches(bootsteps.StartStopStep):
    """A consumer step after Celery's ``Events``: its dispatcher's buffered task events are
    flushed by one timer on the event loop, armed by the first event after a flush."""

    requires = ("celery.worker.consumer.events:Events",)

    def __init__(self, parent: Any, **kwargs: Any) -> None:
        super().__init__(parent, **kwargs)
        self._lock = threading.Lock()
        self._armed = False

    def start(self, parent: Any) -> None:
        dispatcher = parent.event_dispatcher
        if parent.hub is None or dispatcher is None or not dispatcher.buffer_group:
            return  # no event loop: Celery publishes every event itself
        with self._lock:
            self._armed = False  # a timer of an earlier connection may be gone with it
        dispatcher.on_send_buffered = lambda: self._buffered(parent)

    def stop(self, parent: Any) -> None:
        self._flush(parent)

    def _buffered(self, consumer: Any) -> None:
        """Called on the pool's threads as each event is buffered: arm the timer once. The
        timer itself is set on the loop's thread (kombu's timer is not thread-safe;
        ``call_soon`` is what Celery itself calls from these threads)."""
        with self._lock:
            if self._armed:
                return
            self._armed = True
        consumer.hub.call_soon(self._arm, consumer)

    def _arm(self, consumer: Any) -> None:
        consumer.hub.call_later(FLUSH_INTERVAL, self._flush, consumer)

    def _flush(self, consumer: Any) -> None:
        with self._lock:
            self._armed = False
        dispatcher = consumer.event_dispatcher
        if dispatcher is not None:
            dispatcher.flush()
