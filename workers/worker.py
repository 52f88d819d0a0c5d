"""``make_app(settings)``: the Celery app a worker runs, with wanq's tasks and its sweeper.

Settings are passed in, never read here: the entry module (``workers.app``), the CLI and the
tests each build the app from the settings they hold.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from typing import Any

from celery import Celery, bootsteps, signals

from workers import keys, logs, pump, sweeper, tasks
from workers.celeryconf import sending_app
from workers.config import Settings
from workers.event_batches import EventBatches
from workers.names import TaskName
from workers.runtime import Runtime
from workers.sender import CelerySender

log = logging.getLogger("wanq.sweeper")


def make_app(settings: Settings) -> Celery:
    app = sending_app(settings)
    # Workers send no task-sent events (producers do, for the creates they queue): the next
    # poll's task-received event follows at once, so Flower shows the same tasks, and those
    # publishes were 7% of a worker's CPU (docs/bench-profile.md).
    app.conf.task_send_sent_event = False
    app.set_current()
    # Messages go out through the store's client: the broker's Redis (one URL for both).
    sender = CelerySender(app, lambda: runtime.store.redis)
    runtime = Runtime(settings, sender, prepare=sender.prepare)
    app.wanq_runtime = runtime  # type: ignore[attr-defined]  # read by the sweeper step
    tasks.register(app, runtime)
    app.steps["worker"].add(SweeperStep)
    if settings.poll_batch:
        app.steps["worker"].add(PumpStep)
    app.steps["consumer"].add(EventBatches)  # task events published 0.1 s at a time

    def setup_logging(loglevel: str | int | None = None, **_: object) -> None:
        """Celery leaves logging to us: one handler, text or JSON, job IDs on job lines."""
        secrets = (settings.api_key, settings.webhook_secret)
        logs.configure(settings.log_format, loglevel or "INFO", secrets)

    signals.setup_logging.connect(setup_logging, weak=False)
    return app


def runtime_of(app: Celery) -> Runtime:
    runtime: Runtime = app.wanq_runtime  # type: ignore[attr-defined]
    return runtime


class _LeasedLoopStep(bootsteps.StartStopStep):
    """A thread in every worker process that works only while this process holds a Redis
    lease (named ``holder``): the sweeper's and the poll pump's."""

    def __init__(self, parent: Any, **kwargs: Any) -> None:
        super().__init__(parent, **kwargs)
        self._stop = threading.Event()
        self._runtime = runtime_of(parent.app)
        self.holder = f"{socket.gethostname()}:{os.getpid()}"

    def stop(self, parent: Any) -> None:
        self._stop.set()


class SweeperStep(_LeasedLoopStep):
    """Runs the sweeper in every worker; a Redis lease lets one of them sweep at a time."""

    def start(self, parent: Any) -> None:
        try:
            self._runtime.store.publish_cluster_settings()
        except Exception:  # Redis down at start: the sweeper's loop retries below
            log.exception("could not publish the cluster settings")
        threading.Thread(target=self._run, name="wanq-sweeper", daemon=True).start()

    def _run(self) -> None:
        rt = self._runtime
        while not self._stop.wait(rt.settings.sweep_interval):
            try:
                rt.store.publish_cluster_settings()
                if rt.store.take_lease(keys.SWEEPER_LEASE, self.holder, rt.settings.lease_ttl):
                    sweeper.sweep(rt.store, rt.settings, rt.send, rt.provider)
            except Exception:  # a sweep must never take the worker down
                log.exception("sweep failed; retrying next interval")


class PumpStep(_LeasedLoopStep):
    """Runs the poll pump (workers.pump) in every worker process; a Redis lease lets one of
    them pump at a time, and another take over within ``pump.LEASE_TTL`` when it dies."""

    def start(self, parent: Any) -> None:
        rt = self._runtime
        polls = pump.Pump(rt.store.redis, rt.settings, rt.send, rt.prepare)  # touches no Redis
        args = (polls, rt.store.take_lease, self.holder, self._stop)
        threading.Thread(target=pump.run, args=args, name="wanq-pump", daemon=True).start()


__all__ = ["TaskName", "make_app", "runtime_of"]
