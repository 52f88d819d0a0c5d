"""Archives in one place (issue 12): an S3 destination shared by every worker (against moto's
standalone server, started here), and deliveries routed to the workers of one machine."""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from ops.localstack import free_port, wait_for
from tests.conftest import WORKER_ENV, jobs
from workers import keys

BUCKET = "wanq-archive"


@pytest.fixture
def s3(tmp_path: Path) -> Iterator[dict[str, str]]:
    """moto's S3-compatible server on loopback, and the environment that points s3fs at it."""
    pytest.importorskip("moto")
    boto3 = pytest.importorskip("boto3")
    port = free_port()
    log = open(tmp_path / "moto.log", "wb")  # noqa: SIM115 - closed below
    server = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    env = {
        "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}",
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    try:
        client = boto3.client(
            "s3",
            endpoint_url=env["AWS_ENDPOINT_URL"],
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
            region_name="us-east-1",
        )
        wait_for(lambda: client.list_buckets() is not None, "moto server", 30)
        client.create_bucket(Bucket=BUCKET)
        yield {**env, "client": client}
    finally:
        server.terminate()
        server.wait(10)
        log.close()


def outputs_by_job(cluster, batch_id: str) -> dict[str, int]:
    """custom_id -> number of outputs each succeeded job has."""
    counts = {}
    for job in cluster.client().results(batch_id):
        counts[job["custom_id"]] = len(job["outputs"] or [])
    return counts


def test_every_worker_archives_to_one_s3_bucket(make_cluster, s3):
    env = {k: v for k, v in s3.items() if k != "client"}
    env["WANQ_ARCHIVE_DIR"] = f"s3://{BUCKET}/nightly"
    cluster = make_cluster(workers=2, worker_env=env)
    report = cluster.submit(jobs(12))
    cluster.wait(report.batch_id)
    expected = outputs_by_job(cluster, report.batch_id)

    def archived() -> dict[str, int]:
        listing = s3["client"].list_objects_v2(Bucket=BUCKET, Prefix=f"nightly/{report.batch_id}/")
        found: dict[str, int] = {}
        for item in listing.get("Contents", []):
            custom_id = item["Key"].split("/")[2]
            found[custom_id] = found.get(custom_id, 0) + 1
        return found

    wait_for(lambda: archived() == expected, "every output in the bucket", 60)
    for job in cluster.client().results(report.batch_id):
        assert all(o["path"].startswith(f"s3://{BUCKET}/nightly/") for o in job["outputs"])


def test_deliveries_routed_to_one_machine_put_every_output_in_its_directory(make_cluster, tmp_path):
    near, far = tmp_path / "near", tmp_path / "far"
    cluster = make_cluster(workers=0)
    queues = {"runner": [keys.CREATE_QUEUE, keys.POLL_QUEUE], "archiver": [keys.DELIVER_QUEUE]}
    for name, root in (("runner", far), ("archiver", near)):
        env = {**WORKER_ENV, "WANQ_ARCHIVE_DIR": str(root)}
        worker = cluster.stack.start_worker(name, env, queues=queues[name])
        wait_for(lambda w=worker: "ready." in w.log.read_text(), f"worker {name}", 60)
    report = cluster.submit(jobs(12))
    cluster.wait(report.batch_id)
    expected = outputs_by_job(cluster, report.batch_id)

    def archived() -> dict[str, int]:
        batch_dir = near / report.batch_id
        if not batch_dir.is_dir():
            return {}
        return {d.name: len(list(d.iterdir())) for d in batch_dir.iterdir()}

    wait_for(lambda: archived() == expected, "every output on the archiving machine", 60)
    assert not far.exists() or not any(far.rglob("*.*"))
    shutil.rmtree(near)
