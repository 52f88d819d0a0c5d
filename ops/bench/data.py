"""Data at scale (issue 12): Redis bytes per job and the submitter's peak memory for a batch
whose jobs all share two local 3 MB JPEGs, and Redis memory after batches are purged. The
tiny size (the smoke test's) uses 0.3 MB images and batches of 10 jobs to purge: its figures
only show that the phase runs.

    redis_bytes_per_job_shared_images   (used_memory after - before - the images) / jobs,
                                        no worker running: every job stays queued
    submit_peak_rss_mb_shared_images    peak RSS of a ``wanq submit`` process for that batch,
                                        beside the same batch with 10 times fewer lines
    redis_after_purge_vs_baseline       used_memory after batches ran, ended and were purged,
                                        against before them, with no wanq key of them left

``python -m ops.bench.data [--quick]`` runs this phase alone (its own Redis and simulator).
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

from PIL import Image

from ops.bench import report
from ops.bench.cluster import Bench, wait_until
from ops.bench.params import SIZES, Params
from workers import keys
from workers.retention import Purger

IMAGE_BYTES = 3_000_000  # each shared JPEG: about this size
PURGE_BATCHES = 3
PURGE_JOBS = 50  # jobs per purged batch (each sends the simulator two 4 MB data URIs)
TINY_IMAGE_BYTES = 300_000
TINY_PURGE_JOBS = 10


@dataclass
class DataResult:
    jobs: int
    image_bytes: int  # the two distinct images as stored (raw bytes, MEMORY USAGE)
    bytes_per_job: float  # excluding the images
    submit_seconds: float
    submit_rss_mb: float
    small_jobs: int
    small_rss_mb: float
    baseline_memory: int
    after_purge_memory: int
    keys_left: int
    parts: dict[str, int]  # one job's record and payload (MEMORY USAGE), its message's length
    image_target: int = IMAGE_BYTES  # each shared JPEG's size, about
    purge_jobs: int = PURGE_JOBS  # jobs per purged batch


def jobs_for(params: Params) -> int:
    return {"full": 2000, "quick": 500}.get(params.size, 100)


def image_bytes_for(params: Params) -> int:
    return TINY_IMAGE_BYTES if params.size == "tiny" else IMAGE_BYTES


def purge_jobs_for(params: Params) -> int:
    return TINY_PURGE_JOBS if params.size == "tiny" else PURGE_JOBS


def make_jpeg(path: Path, seed: int, target: int = IMAGE_BYTES) -> Path:
    """A noise JPEG near ``target`` bytes (noise does not compress)."""
    rng = random.Random(seed)
    side = max(100, round(1000 * (target / IMAGE_BYTES) ** 0.5))  # 1000 for 3 MB
    while True:
        Image.frombytes("RGB", (side, side), rng.randbytes(side * side * 3)).save(path, quality=85)
        size = path.stat().st_size
        if size >= target * 0.95 or side >= 4000:
            return path
        side = int(side * min(1.5, (target / size) ** 0.5) + 1)


def write_batch(path: Path, n: int, images: list[Path]) -> Path:
    with open(path, "w", encoding="utf-8") as out:
        for i in range(n):
            content = [{"text": f"a watercolour of the scene #{i}"}]
            content += [{"image": str(image)} for image in images]
            body = {
                "model": "wan26_i2i",
                "input": {"messages": [{"role": "user", "content": content}]},
                "parameters": {"size": "1024*1024", "n": 1, "seed": i},
            }
            out.write(json.dumps({"custom_id": f"job-{i:06d}", "body": body}) + "\n")
    return path


SUBMIT = """
import resource, sys, time
from producers.cli import main
t0 = time.perf_counter()
try:
    main(["submit", sys.argv[1], "--batch-id", sys.argv[2]])
except SystemExit as exc:
    if exc.code:
        raise
print("WANQ-RSS", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, time.perf_counter() - t0)
"""


def submit(bench: Bench, path: Path, batch_id: str) -> tuple[float, float]:
    """``wanq submit`` in a process of its own: (peak RSS in MB, seconds)."""
    env = {**bench.stack.env}
    done = subprocess.run(
        [sys.executable, "-c", SUBMIT, str(path), batch_id],
        env=env,
        capture_output=True,
        text=True,
        timeout=1800,
        check=True,
    )
    line = next(x for x in done.stdout.splitlines() if x.startswith("WANQ-RSS"))
    _, rss_kb, seconds = line.split()
    return int(rss_kb) / 1024, float(seconds)


def usage(r, key: str) -> int:
    return int(r.execute_command("MEMORY", "USAGE", key, "SAMPLES", "0") or 0)


def run_and_purge(bench: Bench, client, path: Path, ids: list[str]) -> None:
    """Submit ``path`` once per batch ID, wait until every batch ended, purge them all."""
    for batch_id in ids:
        submit(bench, path, batch_id)
    for batch_id in ids:
        wait_until(lambda b=batch_id: client.status(b).done, 600)
    for batch_id in ids:
        Purger(bench.redis()).purge(batch_id)


def run(bench: Bench) -> DataResult:
    n = jobs_for(bench.params)
    root = bench.data_dir / "data-bench"
    root.mkdir(exist_ok=True)
    target, purge_jobs = image_bytes_for(bench.params), purge_jobs_for(bench.params)
    images = [make_jpeg(root / f"shared-{k}.jpg", k, target) for k in range(2)]
    big = write_batch(root / "shared.jsonl", n, images)
    small = write_batch(root / "shared-small.jsonl", max(1, n // 10), images)
    purged = write_batch(root / "purged.jsonl", purge_jobs, images)
    r = bench.redis()

    bench.flush()
    before = bench.used_memory()
    rss, seconds = submit(bench, big, "bench-shared")
    after = bench.used_memory()
    image_bytes = sum(usage(r, k) for k in r.scan_iter(keys.image("*")))
    first = "bench-shared:job-000000"
    parts = {
        "job_record": usage(r, keys.job(first)),
        "payload": usage(r, keys.payload(first)),
        "create_message": len((r.lindex(keys.CREATE_QUEUE, 0) or "").encode()),
    }
    bench.flush()
    small_rss, _ = submit(bench, small, "bench-shared-small")
    bench.flush()

    workers = bench.start_workers(1, bench.params.cap)
    client = bench.client()
    # A warm-up batch first: what the first batch leaves for good (Lua scripts cached, the
    # results stream and the workers' counters created) is in the baseline, not the growth.
    run_and_purge(bench, client, purged, ["bench-warmup"])
    baseline = bench.used_memory()
    ids = [f"bench-purge-{k}" for k in range(PURGE_BATCHES)]
    run_and_purge(bench, client, purged, ids)
    left = sum(1 for k in r.scan_iter("wanq:*", count=1000) if "bench-" in k)
    after_purge = bench.used_memory()
    bench.stop_processes(workers)
    bench.flush()
    return DataResult(
        jobs=n,
        image_bytes=image_bytes,
        bytes_per_job=(after - before - image_bytes) / n,
        submit_seconds=seconds,
        submit_rss_mb=rss,
        small_jobs=max(1, n // 10),
        small_rss_mb=small_rss,
        baseline_memory=baseline,
        after_purge_memory=after_purge,
        keys_left=left,
        parts=parts,
        image_target=target,
        purge_jobs=purge_jobs,
    )


def figures(res: DataResult) -> list[report.Figure]:
    growth = res.submit_rss_mb / res.small_rss_mb - 1
    after = res.after_purge_memory / res.baseline_memory - 1
    return [
        report.figure(
            "redis_bytes_per_job_shared_images",
            f"Redis bytes per job, two shared {res.image_target / 1e6:g} MB images",
            res.bytes_per_job,
            "B",
            ("<", 4096, "plus one raw copy of each distinct image"),
            "the job record, its payload (the request with references, not images), its "
            "place in the batch list and the queued set and its create message; each distinct "
            "image is stored once as raw bytes",
            f"{res.jobs:,} jobs; images {res.image_bytes / 1e6:.1f} MB in Redis (2 raw copies); "
            + ", ".join(f"{name} {n:,} B" for name, n in res.parts.items()),
        ),
        report.figure(
            "submit_peak_rss_mb_shared_images",
            f"Peak RSS of wanq submit, two shared {res.image_target / 1e6:g} MB images",
            res.submit_rss_mb,
            "MB",
            ("<", 250, "and within 20 % of 10x fewer lines"),
            "the interpreter and its imports, plus a bounded window of images (one data URI "
            "per distinct file, producers.images / producers.inline); lines and jobs are "
            "spooled to disk",
            f"{res.jobs:,} lines {res.submit_rss_mb:.0f} MB in {res.submit_seconds:.1f} s; "
            f"{res.small_jobs:,} lines {res.small_rss_mb:.0f} MB ({growth:+.0%})",
            also=abs(growth) <= 0.20,
        ),
        report.figure(
            "redis_after_purge_vs_baseline",
            "Redis used_memory after batches ran and were purged, vs before",
            after * 100,
            "%",
            ("<", 5, "and no wanq key of the purged batches left"),
            "what the workers keep that belongs to no batch (stats, pacing, the results "
            "stream's emptied radix tree) and allocator fragmentation",
            f"{PURGE_BATCHES} batches of {res.purge_jobs} jobs after a warm-up batch; "
            f"{res.baseline_memory:,} -> "
            f"{res.after_purge_memory:,} bytes; {res.keys_left} keys left",
            also=res.keys_left == 0,
        ),
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ops.bench.data")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--tiny", action="store_true")
    args = parser.parse_args(argv)
    params = SIZES["tiny" if args.tiny else "quick" if args.quick else "full"]
    with (
        tempfile.TemporaryDirectory(prefix="wanq-bench-data-") as tmp,
        Bench(params, Path(tmp)) as bench,
    ):
        bench.start()
        res = run(bench)
    for fig in figures(res):
        print(json.dumps({fig.key: fig.as_dict()}))
    print(json.dumps(asdict(res)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
