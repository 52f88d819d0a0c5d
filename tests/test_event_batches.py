"""A worker's task events reach a listener whole, in batches (workers.event_batches): every
task's received, started and succeeded events arrive, in fewer publishes than events."""

from __future__ import annotations

import base64
import json
import threading
from collections import Counter

import redis

from ops.localstack import wait_for
from tests.conftest import jobs

WORKER_EVENTS = {"task-received", "task-started", "task-succeeded", "task-failed", "task-retried"}


def events_of(raw: bytes) -> list[dict]:
    """The events of one message on Celery's event exchange (a list for ``task-multi``)."""
    envelope = json.loads(raw)
    body = envelope["body"]
    if envelope.get("properties", {}).get("body_encoding") == "base64":
        body = base64.b64decode(body)
    found = json.loads(body)
    return found if isinstance(found, list) else [found]


class Listener:
    """Every message on the event exchange's channels, from a thread, until stopped."""

    def __init__(self, redis_url: str) -> None:
        self.pubsub = redis.Redis.from_url(redis_url).pubsub(ignore_subscribe_messages=True)
        self.pubsub.psubscribe("*celeryev*")
        self.messages: list[list[dict]] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stop.is_set():
            message = self.pubsub.get_message(timeout=0.2)
            if message and message["type"] == "pmessage":
                self.messages.append(events_of(message["data"]))

    def task_events(self) -> list[list[dict]]:
        """The workers' task events, per message (producers' task-sent events left out)."""
        batches = [[e for e in m if e.get("type") in WORKER_EVENTS] for m in self.messages]
        return [batch for batch in batches if batch]


def test_every_task_event_arrives_in_fewer_publishes_than_events(make_cluster):
    cluster = make_cluster(workers=1, sim_env={"WANQ_SIM_LATENCY": "1"})
    listener = Listener(cluster.redis_url)
    try:
        report = cluster.submit(jobs(16))
        cluster.wait(report.batch_id)

        seen: list[dict[str, Counter]] = []

        def whole() -> dict[str, Counter] | None:
            """Every task's three events, and no new task since the last look (deliveries
            run after the batch ends)."""
            kinds: dict[str, Counter] = {}
            for batch in listener.task_events():
                for event in batch:
                    kinds.setdefault(event["uuid"], Counter())[event["type"]] += 1
            done = kinds and all(
                k["task-received"] == k["task-started"] == k["task-succeeded"] == 1
                for k in kinds.values()
            )
            stable = done and seen[-1:] == [kinds]
            seen.append(kinds)
            return kinds if stable else None

        kinds = wait_for(whole, "each task's received, started and succeeded events", 30)
    finally:
        listener.stop.set()
        listener.thread.join(5)
    assert len(kinds) > 16  # a create per job (no cap here), and the polls (several a task)
    batches = listener.task_events()
    kinds = {uuid: Counter() for batch in batches for uuid in {e["uuid"] for e in batch}}
    events = sum(len(batch) for batch in batches)
    assert events == 3 * len(kinds)
    assert len(batches) < events / 2, f"{len(batches)} publishes for {events} events"
