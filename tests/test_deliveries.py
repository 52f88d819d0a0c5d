"""What ended jobs owe downstream: archived outputs whose hashes match what the provider
served, signed webhooks checked by a real receiver, Celery callbacks, and the per-batch
callback exactly once."""

from __future__ import annotations

import base64
import hashlib
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import requests

from producers.api import BatchOptions
from tests.conftest import jobs
from workers import deliveries, keys, netguard, webhooks
from workers.store import JobStore

SECRET = webhooks.generate_secret()


class Receiver:
    """A webhook receiver that verifies every signature and fails each job event once."""

    def __init__(self) -> None:
        self.events: list[dict] = []
        self.rejected = 0
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                try:
                    payload = webhooks.verify(SECRET, dict(self.headers), body)
                except Exception:
                    receiver.rejected += 1
                    self.send_response(401)
                    self.end_headers()
                    return
                msg_id = self.headers["webhook-id"]
                with receiver.lock:
                    seen_before = any(e["id"] == msg_id for e in receiver.events)
                    receiver.events.append({"id": msg_id, "payload": payload})
                first_try_of_job = payload["type"] == "job.ended" and not seen_before
                self.send_response(503 if first_try_of_job else 204)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/hooks"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@pytest.fixture
def receiver():
    receiver = Receiver()
    yield receiver
    receiver.server.shutdown()


def test_outputs_are_archived_with_matching_hashes(make_cluster, tmp_path):
    root = tmp_path / "archive"
    cluster = make_cluster(workers=2, worker_env={"WANQ_ARCHIVE_DIR": str(root)})
    client = cluster.client()
    report = cluster.submit(jobs(8, interleave_every=2))
    cluster.wait(report.batch_id)

    def archived() -> bool:
        return cluster.redis.zcard(keys.DELIVER) == 0

    from ops.localstack import wait_for

    wait_for(archived, "archives written", 60)
    for record in client.results(report.batch_id):
        folder = root / report.batch_id / record["custom_id"]
        for index, item in enumerate(record["outputs"]):
            path = Path(item["path"])
            assert path.parent == folder and path.name.startswith(f"{index:02d}.")
            if item["type"] == "image":
                served = requests.get(item["url"], timeout=5).content
                assert item["sha256"] == hashlib.sha256(served).hexdigest()
                assert item["bytes"] == len(served) == path.stat().st_size
                assert hashlib.sha256(path.read_bytes()).hexdigest() == item["sha256"]
            else:
                assert path.read_text(encoding="utf-8") == item["text"]


def test_signed_webhooks_retried_with_the_same_id_and_one_batch_event(make_cluster, receiver):
    cluster = make_cluster(
        workers=2,
        worker_env={"WANQ_WEBHOOK_SECRET": SECRET, "WANQ_WEBHOOK_ALLOW_HOSTS": "127.0.0.1"},
    )
    client = cluster.client()
    batch = BatchOptions(webhook_url=receiver.url)
    report = cluster.submit(
        jobs(6),
        batch=batch,
    )
    cluster.wait(report.batch_id)

    from ops.localstack import wait_for

    def all_delivered() -> bool:
        return cluster.redis.zcard(keys.DELIVER) == 0

    wait_for(all_delivered, "webhooks delivered", 90)
    assert receiver.rejected == 0
    job_events = [e for e in receiver.events if e["payload"]["type"] == "job.ended"]
    batch_events = [e for e in receiver.events if e["payload"]["type"] == "batch.ended"]
    ids = {e["id"] for e in job_events}
    assert len(ids) == 6 and len(job_events) == 12, "each job: a 503, then the same id again"
    assert len(batch_events) == 1, "the per-batch callback fires once"
    assert batch_events[0]["payload"]["data"]["counts"]["succeeded"] == 6
    for record in client.results(report.batch_id):
        state = json.loads(
            client.store.job(keys.job_id(report.batch_id, record["custom_id"]))["webhook"]
        )
        assert state["state"] == "delivered" and state["attempts"] == 2


def test_a_job_not_ended_owes_no_webhook(make_cluster, receiver):
    """A deliver message that outlived a Redis restored to before its job's end (a cut AOF)
    sends nothing: the job's real end owes its webhook, under the one ID of that end."""
    cluster = make_cluster(
        workers=1,
        worker_env={"WANQ_WEBHOOK_SECRET": SECRET, "WANQ_WEBHOOK_ALLOW_HOSTS": "127.0.0.1"},
    )
    report = cluster.submit(jobs(1), batch=BatchOptions(webhook_url=receiver.url))
    cluster.wait(report.batch_id)
    from ops.localstack import wait_for

    wait_for(lambda: cluster.redis.zcard(keys.DELIVER) == 0, "webhooks delivered", 60)
    seen = len(receiver.events)
    job_id = keys.job_id(report.batch_id, "job-00000")
    cluster.redis.hset(keys.job(job_id), "state", "running")
    cluster.redis.hdel(keys.job(job_id), "event_id", "webhook")
    store = JobStore.from_url(cluster.redis_url)
    outcome = deliveries.deliver(store, cluster.settings, job_id, lambda *a, **k: None)
    assert outcome.retry_in is None and len(receiver.events) == seen


def test_webhook_receiver_refuses_a_bad_signature(receiver):
    own = netguard.Policy.from_setting("127.0.0.1")
    delivery = webhooks.deliver(
        receiver.url, webhooks.generate_secret(), "msg_x", {"a": 1}, policy=own
    )
    assert not delivery.ok and delivery.status == 401 and receiver.rejected == 1


def callback_messages(cluster) -> list[tuple[str, tuple]]:
    found = []
    for raw in cluster.redis.lrange(keys.CALLBACK_QUEUE, 0, -1):
        envelope = json.loads(raw)
        args = json.loads(base64.b64decode(envelope["body"]))[0]
        found.append((envelope["headers"]["task"], args))
    return found


def test_celery_callbacks_per_job_and_once_per_batch(make_cluster):
    cluster = make_cluster(workers=2)
    batch = BatchOptions(callback_task="shop.on_result", batch_callback_task="shop.on_batch")
    report = cluster.submit(jobs(5), batch=batch)
    cluster.wait(report.batch_id)
    from ops.localstack import wait_for

    wait_for(lambda: cluster.redis.zcard(keys.DELIVER) == 0, "callbacks sent", 60)
    messages = callback_messages(cluster)
    per_job = [args[0] for name, args in messages if name == "shop.on_result"]
    per_batch = [args[0] for name, args in messages if name == "shop.on_batch"]
    assert sorted(r["custom_id"] for r in per_job) == [f"job-{i:05d}" for i in range(5)]
    assert all(r["state"] == "succeeded" and r["outputs"] for r in per_job)
    assert len(per_batch) == 1 and per_batch[0]["counts"]["succeeded"] == 5


def test_wanq_archive_fetches_what_is_missing(make_cluster, tmp_path):
    cluster = make_cluster(workers=1)  # workers archive nothing: no WANQ_ARCHIVE_DIR
    client = cluster.client()
    report = cluster.submit(jobs(3))
    cluster.wait(report.batch_id)
    root = tmp_path / "later"
    import dataclasses

    client.settings = dataclasses.replace(
        client.settings, archive_allow_hosts=cluster.stack.provider_url.split("//")[1]
    )
    assert client.archive(report.batch_id, str(root)) == (3, 0, 0)
    files = sorted(p.name for p in root.rglob("*") if p.is_file())
    images = sum(
        item["type"] == "image" for r in client.results(report.batch_id) for item in r["outputs"]
    )
    assert len(files) == sum(len(r["outputs"]) for r in client.results(report.batch_id))
    assert images and all(
        "sha256" in o for r in client.results(report.batch_id) for o in r["outputs"]
    )
