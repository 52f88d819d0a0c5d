"""kombu's Redis transports with a full Redis counted as a lost connection, not a broken one.

Under ``maxmemory`` with ``noeviction`` Redis refuses writes ("OOM command not allowed"),
every command queued in a MULTI included: kombu's ack (a ZREM and HDEL transaction) fails.
kombu counts ``ResponseError``, and so ``OutOfMemoryError``, among its channel errors; Celery
takes those as unrecoverable and the worker exits for good (issue 13: a plain worker died
within 2 s). Counted among the connection errors instead, an OOM is what a Redis restart is:
a failed ack is logged and the message stays unacked (kombu restores it after
``visibility_timeout``; a redelivered step is harmless), and an OOM in the consumer's loop
makes Celery reconnect with its retry loop until Redis takes writes again.

Celery names the transport with ``broker_transport`` (``for_url``, in ``celeryconf``). A
Sentinel connection that switches to another sentinel URL reverts to kombu's own class (the
URL's scheme wins in ``Connection.switch``); the consumer keeps the error tuple it read at
start, so a worker still rides out the OOM.
"""

from __future__ import annotations

import logging
from typing import Any

from kombu.transport import redis as kombu_redis
from kombu.transport import virtual
from redis.exceptions import OutOfMemoryError

log = logging.getLogger("wanq.transport")

OOM_ERRORS: tuple[type[Exception], ...] = (OutOfMemoryError,)


class QoS(kombu_redis.QoS):
    """kombu's ack emulation, with the worker's own bookkeeping kept right when Redis refuses
    the write: kombu updates its in-memory list of delivered messages only after the Redis
    write, so every refused ack would hold a prefetch slot for good, and after
    ``prefetch_count`` of them the worker stops consuming (seen: a live worker that took no
    message after memory was freed). The Redis side is left as it is: an unacked message
    is restored after ``visibility_timeout``, a message not recorded as unacked is covered by
    the sweeper, and a step run twice is harmless (the seq compare-and-set)."""

    def append(self, message: Any, delivery_tag: str) -> None:
        try:
            super().append(message, delivery_tag)
        except OOM_ERRORS:
            log.warning("Redis is full: message %s runs without an unacked record", delivery_tag)
            virtual.QoS.append(self, message, delivery_tag)

    def ack(self, delivery_tag: str) -> None:
        try:
            super().ack(delivery_tag)
        except OOM_ERRORS:
            log.warning("Redis is full: ack of %s not recorded; redelivered later", delivery_tag)
            virtual.QoS.ack(self, delivery_tag)

    def reject(self, delivery_tag: str, requeue: bool = False) -> None:
        try:
            super().reject(delivery_tag, requeue=requeue)
        except OOM_ERRORS:
            log.warning("Redis is full: reject of %s not recorded", delivery_tag)
            virtual.QoS.ack(self, delivery_tag)


class Channel(kombu_redis.Channel):
    QoS = QoS


class SentinelChannel(kombu_redis.SentinelChannel):
    QoS = QoS


class Transport(kombu_redis.Transport):
    """``redis://`` and ``rediss://``: an OOM is a connection error."""

    Channel = Channel
    connection_errors = (*kombu_redis.Transport.connection_errors, *OOM_ERRORS)


class SentinelTransport(kombu_redis.SentinelTransport):
    """``sentinel://``: the same, for the master the sentinels name."""

    Channel = SentinelChannel
    connection_errors = (*kombu_redis.SentinelTransport.connection_errors, *OOM_ERRORS)


def for_url(broker_url: str) -> str | None:
    """The ``broker_transport`` for a broker URL (``connection.broker``'s form), or None to
    leave an unknown scheme to kombu."""
    scheme = broker_url.split("://", 1)[0].lower() if "://" in broker_url else ""
    if scheme in ("redis", "rediss"):
        return f"{__name__}:Transport"
    if scheme == "sentinel":
        return f"{__name__}:SentinelTransport"
    return None
