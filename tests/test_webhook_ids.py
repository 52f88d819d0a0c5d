"""Webhook ids a receiver can deduplicate on across any replay: a job and a batch ended, their
webhooks delivered, then Redis "loses" the delivery records and the end times change (what a
replay after an AOF cut to `everysec` looks like): the same ids go out again. A new round
(`wanq retry`) gets new ones. Real Redis, the real finish script, a real receiver."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from workers import config, deliveries, keys, webhooks
from workers.errors import JobFailure
from workers.store import JobStore, State

SECRET = webhooks.generate_secret()


@pytest.fixture
def receiver() -> Iterator[tuple[str, list[tuple[str, dict]]]]:
    seen: list[tuple[str, dict]] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            seen.append((self.headers["webhook-id"], webhooks.verify(SECRET, self.headers, body)))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}/hook", seen
    server.shutdown()
    server.server_close()


def ended_batch(store: JobStore, url: str, state: State) -> str:
    store.open_batch("b", {"state": "active", "webhook_url": url, "deliver": "1"})
    store.enqueue("b", "j1", {"model": "wan26_i2i"})
    job_id = keys.job_id("b", "j1")
    failed = state == State.FAILED
    error = JobFailure("001021095", "remote failed").as_record() if failed else None
    record = {"outputs": [], "usage": None, "error": error}
    assert store.finish(job_id, None, state, record, error_code="001021095" if failed else "")
    return job_id


def deliver_all(store: JobStore, settings: config.Settings, job_id: str) -> None:
    sent: list = []
    for target in (job_id, "batch:b"):
        assert (
            deliveries.deliver(store, settings, target, lambda *a, **k: sent.append(a)).retry_in
            is None
        )


def forget_deliveries(store: JobStore, job_id: str) -> None:
    """What a replay after a cut AOF leaves: the end re-done later, its deliveries owed again."""
    store.redis.hdel(keys.job(job_id), "webhook")
    store.redis.hset(keys.job(job_id), "completed_at", "1999999999.5")
    store.redis.hdel(keys.batch("b"), "webhook", "final_sent")
    store.redis.hset(keys.batch("b"), "finished_at", "1999999999.6")


SETTINGS = config.Settings(webhook_secret=SECRET, webhook_allow_hosts="127.0.0.1")


def test_a_replayed_end_is_announced_with_the_same_ids(redis_url, receiver):
    url, seen = receiver
    store = JobStore.from_url(redis_url)
    job_id = ended_batch(store, url, State.SUCCEEDED)

    deliver_all(store, SETTINGS, job_id)
    forget_deliveries(store, job_id)
    deliver_all(store, SETTINGS, job_id)

    assert [event["type"] for _, event in seen] == ["job.ended", "batch.ended"] * 2
    assert seen[0][0] == seen[2][0], "the job's webhook-id survived the replay"
    assert seen[1][0] == seen[3][0], "the batch's webhook-id survived the replay"
    assert seen[0][0] == webhooks.message_id("job", f"{job_id}:1")  # the job's first round


def test_a_new_round_after_wanq_retry_gets_new_ids(redis_url, receiver):
    url, seen = receiver
    store = JobStore.from_url(redis_url)
    job_id = ended_batch(store, url, State.FAILED)
    deliver_all(store, SETTINGS, job_id)

    assert store.reopen(job_id)[0] >= 0
    failure = JobFailure("001021095", "failed again").as_record()
    record = {"outputs": [], "usage": None, "error": failure}
    assert store.finish(job_id, None, State.FAILED, record, error_code="001021095")
    deliver_all(store, SETTINGS, job_id)

    ids = [msg_id for msg_id, _ in seen]
    assert len(seen) == 4 and len(set(ids)) == 4, "round 2 is a new event for job and batch"
    assert ids[2] == webhooks.message_id("job", f"{job_id}:2")
