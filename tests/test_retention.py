"""Retention, purge and the room check (issue 12): a batch and everything of it goes, nothing
of another batch does; a batch that does not fit in Redis enqueues nothing."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from ops.localstack import wait_for
from producers import room
from producers.cli import main
from tests.test_shared_images import keys_like, line, make_jpeg
from workers import errors, keys


def traces(cluster, batch_id: str) -> list[str]:
    """Every trace of a batch in Redis: keys, set members, stream entries."""
    r = cluster.redis
    found = [k for k in r.scan_iter("wanq:*", count=1000) if batch_id in k]
    for zset in (keys.BATCHES, keys.ENDED, keys.DUE, keys.QUEUED, keys.DELIVER, keys.INFLIGHT):
        found += [f"{zset} {m}" for m in r.zrange(zset, 0, -1) if m.startswith(batch_id)]
    found += [
        f"stream {fields['job_id']}"
        for _, fields in r.xrange(keys.RESULTS)
        if fields["job_id"].startswith(batch_id + ":")
    ]
    return found


def cli(cluster, monkeypatch, *args: str):
    for name, value in {
        **cluster.worker_env,
        "WANQ_REDIS_URL": cluster.redis_url,
        "WANQ_PROVIDER_URL": cluster.stack.provider_url,
    }.items():
        monkeypatch.setenv(name, value)
    return CliRunner().invoke(main, list(args))


def test_purge_removes_every_key_of_a_batch_and_nothing_of_another(
    make_cluster, tmp_path, monkeypatch
):
    # failed jobs keep payloads and image references until their batch goes
    cluster = make_cluster(workers=2, sim_env={"WANQ_SIM_P_FAIL": "1"})
    shared, own = make_jpeg(tmp_path / "s.jpg", 7), make_jpeg(tmp_path / "o.jpg", 8)
    first = cluster.submit([line(i, [str(shared), str(own)]) for i in range(5)]).batch_id
    second = cluster.submit([line(i, [str(shared)]) for i in range(4)]).batch_id
    cluster.wait(first), cluster.wait(second)
    assert len(keys_like(cluster, keys.image("*"))) == 2
    before_second = sorted(traces(cluster, second))
    assert before_second
    shown = json.loads(cli(cluster, monkeypatch, "status", first, "--json").output)
    assert shown["purge_at"] == pytest.approx(shown["finished_at"] + 30 * 86400)

    result = cli(cluster, monkeypatch, "purge", first)
    assert result.exit_code == 0, result.output
    assert traces(cluster, first) == []
    assert sorted(traces(cluster, second)) == before_second
    (image,) = keys_like(cluster, keys.image("*"))  # the shared one, still used by `second`
    assert int(cluster.redis.hget(image, "refs")) == 4
    assert cluster.client().retry(second) == 4  # the survivor still works

    cluster.wait(second)
    result = cli(cluster, monkeypatch, "purge", "--ended-before", "2100-01-01")
    assert result.exit_code == 0, result.output
    assert traces(cluster, second) == []
    assert keys_like(cluster, "wanq:image*") == keys_like(cluster, "wanq:payload*") == []


def test_purge_refuses_a_running_batch_unless_forced(make_cluster, tmp_path, monkeypatch):
    cluster = make_cluster(workers=1, sim_env={"WANQ_SIM_LATENCY": "60"})
    image = make_jpeg(tmp_path / "a.jpg", 9)
    batch = cluster.submit([line(i, [str(image)]) for i in range(6)]).batch_id
    client = cluster.client()
    wait_for(lambda: client.status(batch).counts["running"] > 0, "a running job", 60)

    refused = cli(cluster, monkeypatch, "purge", batch)
    assert refused.exit_code == 1 and "running" in refused.output
    assert client.store.batch(batch)

    forced = cli(cluster, monkeypatch, "purge", batch, "--force")
    assert forced.exit_code == 0, forced.output
    assert traces(cluster, batch) == []
    assert keys_like(cluster, "wanq:image*") == []


def test_the_sweeper_purges_batches_past_their_retention(make_cluster, tmp_path):
    cluster = make_cluster(workers=1, worker_env={"WANQ_RETENTION": "3"})
    image = make_jpeg(tmp_path / "a.jpg", 10)
    batch = cluster.submit([line(i, [str(image)]) for i in range(5)]).batch_id
    status = cluster.wait(batch)
    assert status.purge_at == pytest.approx(status.finished_at + 3)
    wait_for(lambda: traces(cluster, batch) == [], "the batch purged by retention", 60)
    assert keys_like(cluster, "wanq:*image*") == []


def test_a_batch_too_large_for_redis_is_refused_whole(make_cluster, tmp_path, monkeypatch):
    cluster = make_cluster(workers=0, worker_env={"WANQ_MAX_INLINE_BYTES": "100000"})
    image = make_jpeg(tmp_path / "a.jpg", 11)
    with pytest.raises(room.NoRoom) as refused:
        cluster.submit([line(i, [str(image)]) for i in range(3)])
    assert refused.value.code == errors.NO_ROOM
    assert "needs" in str(refused.value) and "URLs" in str(refused.value)
    assert keys_like(cluster, "wanq:*") == []

    path = tmp_path / "batch.jsonl"
    path.write_text("".join(json.dumps(line(i, [str(image)])) + "\n" for i in range(3)))
    result = cli(cluster, monkeypatch, "submit", str(path))
    assert result.exit_code != 0
    assert "WQ110" in result.output and "needs" in result.output
    assert keys_like(cluster, "wanq:*") == []


def test_an_oom_mid_submission_leaves_no_half_batch(make_cluster, tmp_path, monkeypatch):
    cluster = make_cluster(workers=0)
    r = cluster.redis
    images = [make_jpeg(tmp_path / f"{n}.jpg", 20 + n, side=1200) for n in range(4)]
    monkeypatch.setattr(room, "check", lambda *args: None)  # let the writes meet the OOM
    r.config_set("maxmemory", int(r.info("memory")["used_memory"]) + 3_000_000)
    try:
        with pytest.raises(room.NoRoom) as refused:
            cluster.submit([line(i, [str(images[i % 4])]) for i in range(40)])
    finally:
        r.config_set("maxmemory", 0)
    assert "refused a write" in str(refused.value)
    assert keys_like(cluster, "wanq:*") == []


def test_retention_purges_expired_batches_only_including_ones_ended_before_the_upgrade(
    redis_url,
):
    from workers.retention import sweep
    from workers.store import JobStore, State

    store = JobStore.from_url(redis_url)
    for batch_id in ("old", "new"):
        store.open_batch(batch_id, {})
        store.enqueue_many(batch_id, [(f"c{i}", "{}", i) for i in range(3)])
    for i in range(3):
        store.finish(f"old:c{i}", None, State.SUCCEEDED, {"outputs": []})
    store.redis.zrem(keys.ENDED, "old")  # as a batch that ended before wanq:ended existed
    finished = float(store.batch("old")["finished_at"])

    assert sweep(store, retention=3600, now=finished + 60) == 0  # not expired yet
    assert store.batch("old")
    assert sweep(store, retention=3600, now=finished + 3601) == 1
    assert [k for k in store.redis.scan_iter("wanq:*") if "old" in k] == []
    assert store.redis.xlen(keys.RESULTS) == 0  # its stream entries aged out with it
    assert store.batch("new")["total"] == "3"
    assert store.redis.llen(keys.batch_jobs("new")) == 3


def test_a_submission_that_died_before_its_jobs_is_purged_with_its_pins(redis_url):
    from workers.images import ImageStore
    from workers.retention import sweep
    from workers.store import JobStore

    store = JobStore.from_url(redis_url)
    store.open_batch("dead", {})
    ImageStore(store.redis).pin("dead", "ab" * 32, b"\x00" * 100)  # then the submitter died
    submitted = float(store.batch("dead")["submitted_at"])
    sweep(store, retention=3600, now=submitted + 60)
    assert store.batch("dead") and store.redis.exists(keys.image("ab" * 32))
    sweep(store, retention=3600, now=submitted + 3601)
    assert list(store.redis.scan_iter("wanq:*image*")) == []
    assert not store.batch("dead")


def test_an_oom_while_adding_lines_to_an_existing_batch_takes_back_only_them(
    make_cluster, tmp_path, monkeypatch
):
    cluster = make_cluster(workers=0)  # no worker: every job stays queued
    r = cluster.redis
    image = make_jpeg(tmp_path / "a.jpg", 30)
    batch = cluster.submit([line(i, [str(image)]) for i in range(3)]).batch_id
    before = {k: r.dump(k) for k in r.scan_iter("wanq:*") if "queue" not in k}
    more = [line(i, [str(image)]) for i in range(3, 3000)]  # the image is stored: jobs only
    monkeypatch.setattr(room, "check", lambda *args: None)  # let the writes meet the OOM
    r.config_set("maxmemory", int(r.info("memory")["used_memory"]) + 200_000)
    try:
        with pytest.raises(room.NoRoom) as refused:
            cluster.submit(more, batch_id=batch)
    finally:
        r.config_set("maxmemory", 0)
    assert "refused a write" in str(refused.value)
    after = {k: r.dump(k) for k in r.scan_iter("wanq:*") if "queue" not in k}
    assert sorted(after) == sorted(before)
    assert r.llen(keys.batch_jobs(batch)) == 3 and r.zcard(keys.QUEUED) == 3
    assert cluster.client().status(batch).total == 3
    (stored,) = keys_like(cluster, keys.image("*"))
    assert int(r.hget(stored, "refs")) == 3
