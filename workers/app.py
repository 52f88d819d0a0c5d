"""The Celery app. ``celery -A workers.app worker`` with no other flags consumes every queue.

Why these settings:
- acks_late + reject_on_worker_lost: a message is acknowledged only after its task ran, so
  a killed worker's messages come back (kombu restores them after ``visibility_timeout``).
- Every countdown is capped at ``max_countdown`` <= visibility_timeout / 2, so a held
  countdown poll is never redelivered while its worker is alive (celery/celery#2599), and
  restore runs every few seconds instead of kombu's default of every 100 s.
- ``worker_eta_task_limit`` bounds the countdown messages one worker holds (celery#1302).
- Separate queues for creation, polling and deliveries (archive, webhooks); polls are read
  first, so a creation backlog never delays a poll.
- The thread pool: every task is a short HTTP call plus a Redis script, never a wait.
"""

from __future__ import annotations

import functools
import logging
import os
import socket
import threading

from celery import Celery, bootsteps, signals
from kombu import Queue

from workers import config, connection, keys, logs
from workers.provider import ProviderClient
from workers.store import JobStore

settings = config.load()
broker_url, sentinel_options = connection.broker(settings.broker_url)

app = Celery("wanq", broker=broker_url, include=["workers.tasks"])
app.conf.update(
    task_queues=[Queue(keys.POLL_QUEUE), Queue(keys.CREATE_QUEUE), Queue(keys.DELIVER_QUEUE)],
    task_routes={
        "wanq.create": {"queue": keys.CREATE_QUEUE},
        "wanq.poll": {"queue": keys.POLL_QUEUE},
        "wanq.deliver": {"queue": keys.DELIVER_QUEUE},
    },
    task_default_queue=keys.CREATE_QUEUE,
    task_acks_late=True,
    task_reject_on_worker_lost=True,
    task_acks_on_failure_or_timeout=True,
    task_ignore_result=True,
    task_serializer="json",
    accept_content=["json"],
    task_send_sent_event=True,
    worker_send_task_events=True,
    worker_pool="threads",
    worker_concurrency=settings.concurrency,
    worker_prefetch_multiplier=1,
    worker_eta_task_limit=20_000,
    worker_hijack_root_logger=False,
    broker_connection_retry_on_startup=True,
    broker_transport_options={
        "visibility_timeout": settings.visibility_timeout,
        "unacked_restore_interval": 5,
        "unacked_restore_throttle": 1,
        "queue_order_strategy": "priority",
        **sentinel_options,  # master_name, sentinel_kwargs: empty for plain Redis
    },
)


@signals.setup_logging.connect
def _setup_logging(loglevel: str | int | None = None, **_: object) -> None:
    """Celery leaves logging to us: one handler, text or JSON, job IDs on job lines."""
    logs.configure(
        settings.log_format, loglevel or "INFO", (settings.api_key, settings.webhook_secret)
    )


@functools.cache
def store() -> JobStore:
    return JobStore.from_url(
        settings.broker_url, settings.max_in_flight, always_deliver=bool(settings.archive_dir)
    )


@functools.cache
def provider() -> ProviderClient:
    return ProviderClient(settings)


class Sweeper(bootsteps.StartStopStep):
    """Runs the sweeper in every worker; a Redis lease lets one of them sweep at a time."""

    def __init__(self, parent: object, **kwargs: object) -> None:
        super().__init__(parent, **kwargs)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self, parent: object) -> None:
        holder = f"{socket.gethostname()}:{os.getpid()}"
        self._thread = threading.Thread(
            target=self._run, args=(holder,), name="wanq-sweeper", daemon=True
        )
        self._thread.start()

    def stop(self, parent: object) -> None:
        self._stop.set()

    def _run(self, holder: str) -> None:
        from workers import sweeper  # the tasks module imports this one

        log = logging.getLogger("wanq.sweeper")
        while not self._stop.wait(settings.sweep_interval):
            try:
                if store().take_lease(keys.SWEEPER_LEASE, holder, settings.lease_ttl):
                    sweeper.sweep(store(), settings)
            except Exception:  # a sweep must never take the worker down
                log.exception("sweep failed; retrying next interval")


app.steps["worker"].add(Sweeper)
