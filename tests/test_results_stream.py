"""The ``wanq:results`` stream tells consumers where the archived files are (issue 15)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from ops.localstack import wait_for
from tests.conftest import jobs
from workers import keys


def test_an_archived_entry_carries_each_outputs_path_and_sha256(make_cluster, tmp_path):
    archive = tmp_path / "archive"
    cluster = make_cluster(workers=1, worker_env={"WANQ_ARCHIVE_DIR": str(archive)})
    report = cluster.submit(jobs(2, interleave_every=99))  # edits: images only
    assert cluster.wait(report.batch_id).counts["succeeded"] == 2

    def archived() -> list[dict]:
        entries = cluster.redis.xrange(keys.RESULTS)
        found = [e for _, e in entries if e.get("event") == "archived"]
        return found if len(found) == 2 else []

    entries = wait_for(archived, "two archived entries", 60)
    ended = [e for _, e in cluster.redis.xrange(keys.RESULTS) if "event" not in e]
    assert len(ended) == 2  # the entry written when the job ended is still there, unchanged
    for entry in entries:
        record = json.loads(entry["record"])
        assert entry["state"] == record["state"] == "succeeded"
        images = [o for o in record["outputs"] if o["type"] == "image"]
        assert images
        for output in images:
            data = Path(output["path"]).read_bytes()
            assert Path(output["path"]).is_relative_to(archive)
            assert output["sha256"] == hashlib.sha256(data).hexdigest()
            assert output["bytes"] == len(data)
