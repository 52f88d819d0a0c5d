"""kombu's Redis transports with a full Redis counted as a lost connection, not a broken one,
one Redis client per channel instead of one per command (``_ReusedClient``), and the ack of a
message whose step script acknowledged it already (``acked_by_script``) kept in memory.

Under ``maxmemory`` with ``noeviction`` Redis refuses writes ("OOM command not allowed"),
every command queued in a MULTI included: kombu's ack (a ZREM and HDEL transaction) fails.
kombu counts ``ResponseError``, and so ``OutOfMemoryError``, among its channel errors; Celery
takes those as unrecoverable and the worker exits for good (issue 13: a plain worker died
within 2 s). Counted among the connection errors instead, an OOM is what a Redis restart is:
an OOM in the consumer's loop makes Celery reconnect with its retry loop until Redis takes
writes again. A refused ack is the QoS's below: the message is sent again once Redis takes
writes (a step run twice is harmless: the seq compare-and-set).

``install()`` (called by ``celeryconf.sending_app``) makes the URL schemes name these classes,
and ``celeryconf`` makes ``Task`` the base of wanq's tasks.
"""

from __future__ import annotations

import logging
from typing import Any

import celery
from kombu.transport import TRANSPORT_ALIASES, _transport_cache, virtual
from kombu.transport import redis as kombu_redis
from redis.exceptions import OutOfMemoryError

log = logging.getLogger("wanq.transport")

OOM_ERRORS: tuple[type[Exception], ...] = (OutOfMemoryError,)


class QoS(kombu_redis.QoS):
    """kombu's ack emulation, kept right when Redis refuses the write.

    kombu updates its in-memory list of delivered messages only after the Redis write, so
    every refused ack would hold a prefetch slot for good, and after ``prefetch_count`` of
    them the worker stops consuming (seen: a live worker that took no message after memory
    was freed). And a message whose ack Redis refused is mostly one whose task met the same
    full Redis: a create that could not claim its job leaves it ``queued``, which the
    sweeper rescues only after ``visibility_timeout`` (15 min by default). So a refused ack
    (or reject) frees the slot at once and the message goes back on its queue as soon as
    Redis takes writes again (tried every ``unacked_restore_interval``): the step runs again,
    which is harmless (the seq compare-and-set), where it had finished the run is stale.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._refused: dict[str, tuple[Any, str, str]] = {}  # tag -> (payload, exchange, key)

    def append(self, message: Any, delivery_tag: str) -> None:
        try:
            super().append(message, delivery_tag)
        except OOM_ERRORS:  # popped, but not recorded as unacked: it runs all the same
            log.warning("Redis is full: message %s runs without an unacked record", delivery_tag)
            virtual.QoS.append(self, message, delivery_tag)

    def ack(self, delivery_tag: str) -> None:
        if _ACKED_BY_SCRIPT.pop(delivery_tag, None):  # its record is gone: forget it here too
            virtual.QoS.ack(self, delivery_tag)
            return
        message = self._delivered.get(delivery_tag)
        task_id = message.headers.get("id") if message is not None else None
        if task_id in _FAILED_ON_OOM:  # the step did not happen: run it again, not ack it
            _FAILED_ON_OOM.discard(task_id)
            self._refuse(delivery_tag)
            return
        try:
            super().ack(delivery_tag)
        except OOM_ERRORS:
            self._refuse(delivery_tag)

    def reject(self, delivery_tag: str, requeue: bool = False) -> None:
        if _ACKED_BY_SCRIPT.pop(delivery_tag, None):  # its step is done: nothing to run again
            virtual.QoS.ack(self, delivery_tag)
            return
        try:
            super().reject(delivery_tag, requeue=requeue)
        except OOM_ERRORS:
            self._refuse(delivery_tag)

    def restore_visible(self, *args: Any, **kwargs: Any) -> None:
        self.restore_refused()
        try:  # kombu's mutex is a SET NX, refused by a full Redis: restore at a later round
            super().restore_visible(*args, **kwargs)
        except OOM_ERRORS:
            log.warning("Redis is full: unacked messages are restored once it takes writes")

    def restore_unacked(self, client: Any = None) -> None:
        self.restore_refused()  # at shutdown too, when Redis takes writes again by then
        super().restore_unacked(client)

    def restore_refused(self) -> int:
        """Put back on their queues the messages whose ack Redis refused, each in one
        transaction with its unacked record's removal; stops at the first refusal."""
        restored = 0
        for tag, (payload, exchange, routing_key) in list(self._refused.items()):
            try:
                with self.channel.conn_or_acquire() as client, client.pipeline() as pipe:
                    self._remove_from_indices(tag, pipe)
                    self.channel._do_restore_message(payload, exchange, routing_key, pipe)
                    pipe.execute()
            except OOM_ERRORS:
                break
            del self._refused[tag]
            restored += 1
        if restored:
            log.warning("Redis takes writes again: %d message(s) sent again", restored)
        return restored

    def _refuse(self, delivery_tag: str) -> None:
        message = self._delivered.get(delivery_tag)
        if message is not None:
            info = message.delivery_info
            self._refused[delivery_tag] = (message._raw, info["exchange"], info["routing_key"])
        log.warning("Redis is full: message %s is sent again once it takes writes", delivery_tag)
        virtual.QoS.ack(self, delivery_tag)


# Tasks that failed on a full Redis, by task ID: their ack becomes a redelivery (QoS.ack).
_FAILED_ON_OOM: set[str] = set()

# Delivery tags of messages a step script acknowledged with its step (lua/lib/acks.lua, one
# round trip fewer per poll): kombu's ack of them only forgets them in this process. A dict
# (insertion-ordered, atomic pop under the GIL) used as a set.
_ACKED_BY_SCRIPT: dict[str, bool] = {}


def acked_by_script(delivery_tag: str) -> None:
    """The message ``delivery_tag``'s unacked record is gone: its task's ack sends nothing."""
    if delivery_tag:
        _ACKED_BY_SCRIPT[delivery_tag] = True


def is_oom(exc: BaseException | None) -> bool:
    """Whether Redis refusing a write (OOM) caused ``exc``: kombu wraps it when publishing."""
    seen = 0
    while exc is not None and seen < 10:
        if isinstance(exc, OOM_ERRORS):
            return True
        exc, seen = exc.__cause__ or exc.__context__, seen + 1
    return False


class Task(celery.Task):
    """The base of wanq's tasks (``task_cls``): a task that failed because Redis was full did
    not do its step, and may have left its job where only a slow rescue finds it (a create
    that could not claim leaves the job ``queued``: the sweeper waits ``visibility_timeout``
    for those). Its message is sent again once Redis takes writes, instead of acked."""

    def on_failure(self, exc: Exception, task_id: str, args: Any, kwargs: Any, einfo: Any) -> None:
        if is_oom(exc):
            _FAILED_ON_OOM.add(task_id)
        super().on_failure(exc, task_id, args, kwargs, einfo)


class _ReusedClient:
    """kombu builds a new ``redis.Redis`` for every command it sends outside its event loop:
    each publish (the next poll), each unacked record and each ack. A client is cheap to keep
    and dear to build (redis-py copies its ~200 reply callbacks into a new case-insensitive
    dict: about 0.3 ms of a 0.6 ms publish, measured), so the channel keeps one per
    connection pool. A redis-py client is thread-safe (each command takes a connection from
    the pool); a pool dropped by a reconnect gets a new client with the new pool."""

    _reused: Any = None

    def _create_client(self, asynchronous: bool = False) -> Any:
        if asynchronous:  # the event loop's own client, built once by kombu
            return super()._create_client(asynchronous=True)  # type: ignore[misc]
        client = self._reused
        if client is None or client.connection_pool is not self.pool:  # type: ignore[attr-defined]
            client = self._reused = super()._create_client()  # type: ignore[misc]
        return client


class Channel(_ReusedClient, kombu_redis.Channel):
    QoS = QoS


class SentinelChannel(_ReusedClient, kombu_redis.SentinelChannel):
    QoS = QoS


class Transport(kombu_redis.Transport):
    """``redis://`` and ``rediss://``: an OOM is a connection error."""

    Channel = Channel
    connection_errors = (*kombu_redis.Transport.connection_errors, *OOM_ERRORS)


class SentinelTransport(kombu_redis.SentinelTransport):
    """``sentinel://``: the same, for the master the sentinels name."""

    Channel = SentinelChannel
    connection_errors = (*kombu_redis.SentinelTransport.connection_errors, *OOM_ERRORS)


SCHEMES = {
    "redis": f"{__name__}:Transport",
    "rediss": f"{__name__}:Transport",
    "sentinel": f"{__name__}:SentinelTransport",
}


def install() -> None:
    """Make kombu's ``redis``, ``rediss`` and ``sentinel`` schemes name these transports in
    this process (idempotent). By scheme, not by Celery's ``broker_transport``: a class path
    there becomes the URL's scheme in ``Connection.as_uri``, which Flower reads to find its
    broker client and the worker's banner shows; kombu's ``rediss`` TLS default applies only
    to that scheme; and ``Connection.switch`` (the next sentinel URL) takes the URL's scheme
    again. kombu caches the class per name: a name resolved before is resolved again."""
    for scheme, path in SCHEMES.items():
        if TRANSPORT_ALIASES.get(scheme) != path:
            TRANSPORT_ALIASES[scheme] = path
            _transport_cache.pop(scheme, None)
