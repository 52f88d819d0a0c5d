"""The Celery configuration wanq runs with, built from settings (nothing read at import).

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
- ``workers.transport`` (installed for the redis/rediss/sentinel schemes, and the tasks' base
  class): a full Redis (OOM) is a lost connection, not a reason to exit, and a step that
  failed on it runs again once Redis takes writes.

Producers publish through ``sending_app``: the same routes and serializer, no tasks.
"""

from __future__ import annotations

from typing import Any

from celery import Celery
from kombu import Queue

from workers import connection, keys, transport
from workers.config import Settings
from workers.names import ROUTES, QueueName


def celery_config(settings: Settings) -> dict[str, Any]:
    _, sentinel_options = connection.broker(settings.broker_url)
    return {
        "task_queues": [Queue(QueueName.POLL), Queue(QueueName.CREATE), Queue(QueueName.DELIVER)],
        "task_routes": {str(task): {"queue": str(queue)} for task, queue in ROUTES.items()},
        "task_default_queue": str(QueueName.CREATE),
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "task_acks_on_failure_or_timeout": True,
        "task_ignore_result": True,
        "task_serializer": "json",
        "accept_content": ["json"],
        "task_send_sent_event": True,
        "worker_send_task_events": True,
        "worker_pool": "threads",
        "worker_concurrency": settings.concurrency,
        "worker_prefetch_multiplier": 1,
        "worker_eta_task_limit": 20_000,
        "worker_hijack_root_logger": False,
        "broker_connection_retry_on_startup": True,
        "broker_transport_options": {
            "visibility_timeout": settings.visibility_timeout,
            "unacked_key": keys.UNACKED,  # the step scripts acknowledge in them
            "unacked_index_key": keys.UNACKED_INDEX,
            "unacked_restore_interval": 5,
            "unacked_restore_throttle": 1,
            "queue_order_strategy": "priority",
            **sentinel_options,  # master_name, sentinel_kwargs: empty for plain Redis
        },
    }


def sending_app(settings: Settings) -> Celery:
    """A Celery app that can send wanq's tasks (routes, serializer, events) but runs none."""
    broker_url, _ = connection.broker(settings.broker_url)
    transport.install()
    app = Celery("wanq", broker=broker_url, set_as_current=False, task_cls=transport.Task)
    app.conf.update(celery_config(settings))
    return app
