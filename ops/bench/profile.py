"""Where a job's CPU goes in a worker: ``python -m ops.bench.profile [--quick] [--md PATH]``.

Runs one completion batch (the bench's quick or tiny setting) through ONE worker process
while py-spy (``pip install py-spy``) samples it, then sorts every sample by the part of
the work it is in. Idle threads are not sampled (py-spy's default), so the shares are of the
CPU the worker spent. The parts, checked in this order on each sampled stack:

    task events     celery/events: the task-sent/received/started/succeeded events Flower reads
    logging         logging and wanq's log formatting (a "received" and a "succeeded" line
                    per task, and wanq's own lines)
    HTTP            requests, urllib3, http.client: the create and status calls
    wanq Redis      redis-py under wanq's own code: scripts, reads, pipelines
    broker          kombu (over redis-py): fetching, acknowledging and publishing messages
    wanq code       the rest of workers/: tasks, schedule, store logic
    Celery          the rest of celery/: the consumer, the thread pool, task tracing
    other
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

from ops.bench import completion
from ops.bench.cluster import Bench
from ops.bench.params import SIZES

PARTS = (
    ("task events", ("celery/events/",)),
    ("logging", ("logging/", "workers/logs.py", "pythonjsonlogger")),
    ("HTTP", ("requests/", "urllib3/", "http/client.py")),
)


def part(stack: str) -> str:
    """The part of the work one sampled stack (py-spy's collapsed form) is in."""
    for name, marks in PARTS:
        if any(mark in stack for mark in marks):
            return name
    has_redis = "redis/" in stack
    if "workers/" in stack and has_redis and "kombu/" not in stack:
        return "wanq Redis"
    if "kombu/" in stack:
        return "broker"
    if "workers/" in stack:
        return "wanq code"
    if "celery/" in stack:
        return "Celery"
    return "other"


OWN = {  # per part, the frames that say which call it was: the deepest one with this mark
    "task events": "celery/events/",
    "broker": "kombu/",
    "Celery": "celery/",
    "other": "",
}


def detail(stack: str, name: str) -> str:
    """Which call of its part a stack is in: the deepest frame of wanq's (or of the part's
    own package), as ``file.py:function``."""
    mark = OWN.get(name, "workers/")
    frames = [f for f in stack.split(";") if mark in f]
    if not frames:
        return "?"
    frame = frames[-1]
    function, _, where = frame.partition(" (")
    path = where.split(":")[0]
    short = "/".join(path.split("/")[-2:]) if mark else path.split("/")[-1]
    return f"{short}:{function}"


def shares(collapsed: str) -> dict[str, tuple[float, dict[str, float]]]:
    """Share of samples per part, and within it the shares of its top calls, from py-spy's
    raw output ("frame;frame;... count")."""
    counts: Counter[str] = Counter()
    calls: dict[str, Counter[str]] = {}
    for line in collapsed.splitlines():
        stack, _, n = line.rpartition(" ")
        if stack and n.isdigit():
            name = part(stack)
            counts[name] += int(n)
            calls.setdefault(name, Counter())[detail(stack, name)] += int(n)
    total = sum(counts.values()) or 1
    return {
        name: (n / total, {c: k / total for c, k in calls[name].most_common(TOP)})
        for name, n in counts.most_common()
    }


TOP = 4  # calls shown per part


def run(
    size: str, data_dir: Path
) -> tuple[dict[str, tuple[float, dict[str, float]]], completion.RunResult]:
    spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    params = SIZES[size]
    out = data_dir / "profile.txt"
    with Bench(params, data_dir) as bench:
        bench.start()
        original = bench.start_workers
        recorder: list[subprocess.Popen] = []

        def start_and_record(
            processes: int | None, cap: int, extra_env: dict | None = None
        ) -> list:
            started = original(processes, cap, extra_env)
            command = [spy, "record", "--pid", str(started[0].popen.pid), "--subprocesses"]
            command += ["--rate", "50", "--format", "raw", "--output", str(out), "--nonblocking"]
            recorder.append(subprocess.Popen(command, stdout=subprocess.DEVNULL))
            time.sleep(1.0)  # py-spy attaches before the batch is submitted
            return started

        bench.start_workers = start_and_record  # type: ignore[method-assign]
        result = completion.run(bench, 1)
        for process in recorder:
            process.wait(timeout=60)  # py-spy ends with the process it records
    return shares(out.read_text()), result


def markdown(
    found: dict[str, tuple[float, dict[str, float]]], result: completion.RunResult, size: str
) -> str:
    per_job = result.worker_cpu_s / max(1, result.ended) * 1000
    lines = [
        f"# Where a job's CPU goes (python -m ops.bench.profile, {size})",
        "",
        f"One worker process, {result.ended:,} jobs, {per_job:.1f} CPU ms per job in the "
        f"worker (py-spy's sampling included), {result.tasks_per_job:.1f} Celery tasks and "
        f"{result.polls_per_job:.2f} polls per job; py-spy samples of the worker's busy "
        "threads, by part, and the top calls of each:",
        "",
        "| part | share of the worker's CPU | CPU ms per job | top calls (share of all) |",
        "|---|---:|---:|---|",
    ]
    for name, (share, calls) in found.items():
        top = ", ".join(f"`{c}` {k:.0%}" for c, k in calls.items())
        lines.append(f"| {name} | {share:.0%} | {share * per_job:.1f} | {top} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ops.bench.profile", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="the quick size (default: tiny)")
    parser.add_argument("--md", metavar="PATH")
    parser.add_argument("--raw", metavar="PATH", help="keep py-spy's collapsed stacks here")
    args = parser.parse_args(argv)
    size = "quick" if args.quick else "tiny"
    data_dir = Path(tempfile.mkdtemp(prefix="wanq-profile-"))
    try:
        found, result = run(size, data_dir)
        if args.raw:
            shutil.copy(data_dir / "profile.txt", args.raw)
    finally:
        shutil.rmtree(data_dir, ignore_errors=True)
    text = markdown(found, result, size)
    if args.md:
        Path(args.md).write_text(text, encoding="utf-8")
    sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
