"""Shared images (issue 12): each distinct image stored once, the provider receiving the very
bytes a batch of distinct images sends, references released when jobs no longer need them and
kept while they may (failed jobs, re-drives, crashes)."""

from __future__ import annotations

import base64
import hashlib
import random
import re
import time
from pathlib import Path

from PIL import Image

from ops.localstack import wait_for
from tests.conftest import QUICK_RECOVERY
from workers import keys
from workers.store import TERMINAL


def make_jpeg(path: Path, seed: int, side: int = 640) -> Path:
    """A noisy JPEG (noise does not compress: a few hundred KB)."""
    rng = random.Random(seed)
    Image.frombytes("RGB", (side, side), rng.randbytes(side * side * 3)).save(path, quality=90)
    return path


def data_uri(path: Path) -> str:
    return "data:image/jpeg;base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def line(i: int, images: list[str]) -> dict:
    content = [{"text": f"make it a watercolour #{i}"}] + [{"image": ref} for ref in images]
    body = {
        "model": "wan26_i2i",
        "input": {"messages": [{"role": "user", "content": content}]},
        "parameters": {"size": "1024*1024", "n": 1},
    }
    return {"custom_id": f"job-{i:04d}", "body": body}


def received(cluster, job: dict) -> list[str]:
    """SHA-256 of each image string the provider received for this job, in order."""
    task = cluster.sim(f"/_sim/tasks/{job['remote_task_id']}")
    content = task["request"]["input"]["messages"][0]["content"]
    hashes = [re.search(r"sha256:([0-9a-f]{64})", item["image"]) for item in content[1:]]
    return [found.group(1) for found in hashes if found]


def keys_like(cluster, pattern: str) -> list[str]:
    return list(cluster.redis.scan_iter(pattern, count=1000))


def test_shared_images_reach_the_provider_byte_for_byte_and_leave_with_their_jobs(
    make_cluster, tmp_path
):
    cluster = make_cluster(workers=2)
    a, b = make_jpeg(tmp_path / "a.jpg", 1), make_jpeg(tmp_path / "b.jpg", 2)
    uris = {a: data_uri(a), b: data_uri(b)}
    # local files and the same images inline, in both orders: three ways to name two images
    orders = [[str(a), str(b)], [str(b), str(a)], [uris[a], str(b)], [str(a)]]
    lines = [line(i, orders[i % len(orders)]) for i in range(24)]
    expected = {
        f"job-{i:04d}": [sha(uris[Path(r)] if not r.startswith("data:") else r) for r in o]
        for i, o in ((i, orders[i % len(orders)]) for i in range(24))
    }
    client = cluster.client()
    report = cluster.submit(lines)

    assert len(keys_like(cluster, keys.image("*"))) <= 2  # one copy each, not one per use
    final = cluster.wait(report.batch_id)
    assert final.counts["succeeded"] == 24
    for job in client.store.iter_batch_jobs(report.batch_id):
        assert received(cluster, job) == expected[job["custom_id"]]
        assert "images" not in job
    assert keys_like(cluster, keys.payload("*")) == []
    assert keys_like(cluster, keys.image("*")) == []
    assert keys_like(cluster, keys.batch_images("*")) == []


def test_failed_jobs_keep_payload_and_images_for_a_retry_then_release_them(make_cluster, tmp_path):
    cluster = make_cluster(workers=2, sim_env={"WANQ_SIM_P_FAIL": "1"})
    a = make_jpeg(tmp_path / "a.jpg", 3)
    report = cluster.submit([line(i, [str(a)]) for i in range(6)])
    final = cluster.wait(report.batch_id)
    assert final.counts["failed"] == 6
    (image,) = keys_like(cluster, keys.image("*"))
    assert int(cluster.redis.hget(image, "refs")) == 6
    assert len(keys_like(cluster, keys.payload("*"))) == 6

    cluster.sim("/_sim/config", {"p_fail": 0})
    assert cluster.client().retry(report.batch_id) == 6
    final = cluster.wait(report.batch_id)
    assert final.counts["succeeded"] == 6
    for job in cluster.client().store.iter_batch_jobs(report.batch_id):
        assert received(cluster, job) == [sha(data_uri(a))]
    assert keys_like(cluster, keys.payload("*")) == []
    assert keys_like(cluster, keys.image("*")) == []


def test_sigkilled_workers_lose_no_needed_image_and_leak_none(make_cluster, tmp_path):
    # a short visibility timeout: the killed worker's messages come back within the test;
    # an in-flight cap: most jobs wait parked for a slot meanwhile, and must stay rebuildable
    # and what the killed worker had claimed is sent again within seconds (QUICK_RECOVERY)
    fast = {
        **QUICK_RECOVERY,
        "WANQ_VISIBILITY_TIMEOUT": "10",
        "WANQ_MAX_COUNTDOWN": "5",
        "WANQ_MAX_IN_FLIGHT": "30",
    }
    cluster = make_cluster(workers=3, sim_env={"WANQ_SIM_LATENCY": "2"}, worker_env=fast)
    a, b = make_jpeg(tmp_path / "a.jpg", 4), make_jpeg(tmp_path / "b.jpg", 5)
    report = cluster.submit([line(i, [str(a), str(b)][: 1 + i % 2]) for i in range(120)])
    client = cluster.client()
    wait_for(lambda: client.status(report.batch_id).ended >= 20, "a sixth of the batch", 120)
    cluster.workers[0].kill()

    waiting = 0

    def every_open_job_can_be_rebuilt() -> bool:
        nonlocal waiting
        for job in client.store.iter_batch_jobs(report.batch_id):
            # waiting for a slot: queued in the batch's ready set, or parked (waiting)
            waiting += job["state"] in ("queued", "waiting")
            if job["state"] not in TERMINAL:
                request = client.store.request(job["job_id"])  # raises if an image is gone
                # gone only if the job ended between the two reads
                assert request is not None or client.store.job(job["job_id"])["state"] in TERMINAL
        return True

    deadline = time.monotonic() + 180
    while not client.status(report.batch_id).done and time.monotonic() < deadline:
        assert every_open_job_can_be_rebuilt()
    final = cluster.wait(report.batch_id, timeout=180)
    assert final.counts["succeeded"] == 120
    assert waiting > 0  # parked jobs were among those checked
    assert keys_like(cluster, keys.payload("*")) == []
    assert keys_like(cluster, keys.image("*")) == []
