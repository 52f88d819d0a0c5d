"""``python -m workers.processes [celery worker options]``: a wanq worker on every core.

A Celery worker of the thread pool is one process: one GIL, one core, whatever the machine
has. wanq's tasks are short (an HTTP call and a Redis script), so a busy worker is
CPU-bound in Python, and more cores only help as more processes. This starts
``WANQ_WORKER_PROCESSES`` Celery workers (0, the default: one per core), each
``celery -A workers.app worker`` with the options given and a hostname of its own, passes
SIGTERM and SIGINT on (a warm shutdown: running tasks finish, held messages go back to
Redis), and ends when they end. If one dies of an error the others are stopped and its exit
code returned, so a supervisor (``ops.supervise``, a container restart policy) restarts the
whole set. With one process it simply becomes that worker (exec).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys

from workers import config

CELERY = (sys.executable, "-m", "celery", "-A", "workers.app", "worker")
STOP_TIMEOUT = 60.0


def count(settings: config.Settings) -> int:
    """Worker processes to start: the setting, or one per core the process may use."""
    if settings.worker_processes > 0:
        return settings.worker_processes
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def commands(n: int, options: list[str]) -> list[list[str]]:
    """One celery command per process; ``-n NAME@HOST`` becomes NAME-1@HOST, NAME-2@HOST..."""
    rest, name = list(options), "wanq@%h"
    for flag in ("-n", "--hostname"):
        if flag in rest:
            at = rest.index(flag)
            name = rest[at + 1]
            del rest[at : at + 2]
    if n == 1:
        return [[*CELERY, "-n", name, *rest]]
    node, _, host = name.partition("@")
    return [[*CELERY, "-n", f"{node}-{i}@{host or '%h'}", *rest] for i in range(1, n + 1)]


def main(argv: list[str] | None = None) -> int:
    options = sys.argv[1:] if argv is None else argv
    found = commands(count(config.load()), options)
    if len(found) == 1:
        os.execv(sys.executable, found[0])
    children = [subprocess.Popen(command) for command in found]
    stopping = False

    def forward(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True
        for child in children:
            if child.poll() is None:
                child.send_signal(signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    code = 0
    while any(child.poll() is None for child in children):
        pid, status = os.wait()
        ended = next((c for c in children if c.pid == pid), None)
        if ended is None:
            continue
        ended.returncode = os.waitstatus_to_exitcode(status)
        if ended.returncode and not stopping:  # one died: stop the set, report its code
            code = ended.returncode
            forward(signal.SIGTERM, None)
    for child in children:
        child.wait(timeout=STOP_TIMEOUT)
    return code


if __name__ == "__main__":
    sys.exit(main())
