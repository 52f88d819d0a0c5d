"""Run a command again whenever it dies of an error, as a container restart policy would.

``python -m ops.supervise CMD ...`` is how ``wanq run`` and the tests start workers. It
matters because a Celery 5.7 worker exits ("Unrecoverable error: AttributeError ...
'hostname'", raised while kombu restores unacked messages on a lost connection) when Redis
restarts under it; docker-compose's ``restart: unless-stopped`` does the same job there.
SIGTERM and SIGINT are passed on to the command and end the supervision; SIGKILL of the
process group takes both down, like the loss of a machine.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time

FIRST_DELAY = 1.0
MAX_DELAY = 15.0
HEALTHY_AFTER = 60.0  # a run this long resets the delay


def main(argv: list[str]) -> int:
    if not argv:
        print("usage: python -m ops.supervise CMD [ARG ...]", file=sys.stderr)
        return 2
    stopping = False
    child: subprocess.Popen | None = None

    def forward(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True
        if child and child.poll() is None:
            child.send_signal(signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    delay = FIRST_DELAY
    while True:
        started = time.monotonic()
        child = subprocess.Popen(argv)
        code = child.wait()
        if stopping or code == 0:
            return code
        delay = FIRST_DELAY if time.monotonic() - started > HEALTHY_AFTER else delay
        print(
            f"supervise: {argv[0]} exited with {code}; starting it again in {delay:.0f} s",
            file=sys.stderr,
            flush=True,
        )
        time.sleep(delay)
        delay = min(delay * 2, MAX_DELAY)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
