"""The ``wanq`` commands that start or look after local processes: ``run`` (start what is
missing, submit, wait), ``up`` / ``down`` (a local stack that stays up), ``doctor``,
``metrics`` and ``sim``.

They live in ``ops`` because they start what ``ops`` holds (Redis, workers, Flower, the
simulator): ``ops`` imports ``producers`` and ``workers``, never the other way round.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shlex
import signal
import sys
from pathlib import Path
from urllib.parse import urlsplit

import click
import redis

from ops import doctor as checks
from ops import simulator
from ops.localstack import LocalStack, StackError, running_stack, stop_recorded
from ops.simulator import STATE_FILE_VARIABLE
from producers import exits
from producers.api import write_results
from producers.cli import EXIT_INVALID, _client, _submit
from producers.progress import Stopwatch, summary_table, watch
from producers.submit import check_batch_id, new_batch_id
from producers.terminal import console, out, plain
from workers import config, connection, processes
from workers import metrics as job_metrics
from workers.errors import ConfigError


def exit_on_signal(signum: int, _frame: object) -> None:
    """SIGTERM/SIGHUP as an exit, so ``finally`` blocks stop what a command started."""
    raise SystemExit(128 + signum)


def _wants_sim(settings: config.Settings, sim: bool | None) -> bool:
    """The simulator by default only on the embedded path: no Redis and no provider set."""
    if sim is not None:
        return sim
    return not settings.redis_url and settings.provider_url == config.Settings.provider_url


def local_parts(stack, settings: config.Settings, sim: bool | None, workers: int):
    """Start what ``wanq run`` needs and is missing, or use what ``wanq up`` left running."""

    want_sim = _wants_sim(settings, sim)
    up = None if settings.redis_url else running_stack(settings.data_path)
    if up:
        console.print(
            f"using the stack `wanq up` started: Redis at {config.safe_url(up['redis_url'])}"
        )
        stack.env["WANQ_REDIS_URL"] = up["redis_url"]
        if up["provider_url"] and want_sim:
            stack.env["WANQ_PROVIDER_URL"] = up["provider_url"]
            want_sim = False
        stack.flower_url = up["flower_url"]
    local = not settings.redis_url and not up
    if local:
        stack.start_redis()
        console.print(f"started redis-server (AOF on) at {stack.redis_url}")
    if want_sim:
        stack.start_simulator(sim_state(settings))
        console.print(f"started the provider simulator at {stack.provider_url}")
    os.environ.update({k: v for k, v in stack.env.items() if k.startswith("WANQ_")})
    if local:
        stack.start_flower()
        stack.start_worker("wanq1", _processes(workers))
        n, why = (workers, "--workers") if workers else (processes.count(settings), "one per core")
        console.print(f"started {n} workers ({why}); logs in {settings.data_path / 'logs'}")
    return config.load()


def sim_state(settings: config.Settings) -> dict[str, str]:
    """The simulator keeps its tasks under the data directory across a restart of the stack,
    so a resumed ``wanq run`` follows the jobs that were in flight (``ops.simulator``)."""

    return {STATE_FILE_VARIABLE: str(settings.data_path / "simulator" / "tasks.json")}


def _processes(workers: int) -> dict[str, str] | None:
    """--workers N as the worker start's WANQ_WORKER_PROCESSES; 0 keeps the setting (whose
    default, 0, is one process per core: see workers/processes.py)."""
    return {"WANQ_WORKER_PROCESSES": str(workers)} if workers else None


def print_flower(stack) -> None:
    """Flower's URL once it answers (it starts beside the workers, so the batch is not kept
    waiting for it)."""

    if not stack.flower_url:
        return
    try:
        url = stack.wait_flower()
    except StackError:
        console.print(f"[yellow]Flower did not answer; see {stack.data_dir / 'logs'}[/]")
        return
    console.print(f"watch the queues in Flower: [bold]{url}[/]")


@click.command()
@click.option(
    "--workers", default=0, show_default=True, help="Worker processes (0: WANQ_WORKER_PROCESSES)."
)
@click.option(
    "--sim", is_flag=True, help="Start the provider simulator on WANQ_PROVIDER_URL's port."
)
@click.option("--redis-port", default=6379, show_default=True, type=int)
@click.option("--flower-port", default=5555, show_default=True, type=int)
def up(workers: int, sim: bool, redis_port: int, flower_port: int) -> None:
    """Start a local cluster that stays up: Redis (AOF), workers, Flower, maybe the simulator.

    Pid files and logs go under the data directory (WANQ_DATA_DIR, ~/.wanq); `wanq down`
    stops it. Without WANQ_REDIS_URL, Redis listens on 127.0.0.1:REDIS_PORT."""

    settings = config.load()
    if running_stack(settings.data_path):
        raise click.ClickException(f"a stack is already up under {settings.data_path}: wanq down")
    stack = LocalStack(settings.data_path, detached=True)
    try:
        if settings.redis_url:
            stack.redis_url = settings.redis_url
        else:
            stack.start_redis(port=redis_port)
        if sim:
            stack.start_simulator(
                sim_state(settings), port=urlsplit(settings.provider_url).port or 8765
            )
        stack.start_flower(port=flower_port, persistent=True)
        stack.start_worker("wanq1", _processes(workers))
        stack.wait_flower()
    except StackError as exc:
        stack.stop()
        raise click.ClickException(str(exc)) from exc
    stack.record()
    out.print(f"redis     {config.safe_url(stack.redis_url)}  (data in {stack.data_dir / 'redis'})")
    if sim:
        out.print(f"simulator {stack.provider_url}")
    out.print(f"workers   {workers or 'one per core'}  (logs in {stack.data_dir / 'logs'})")
    out.print(f"Flower    [bold]{stack.flower_url}[/]")
    if not settings.redis_url and redis_port != 6379:
        out.print(f"set WANQ_REDIS_URL={stack.redis_url} for other wanq commands")
    out.print("stop it with: wanq down")


DOWN_TIMEOUT = 30.0  # workers finish their current tasks, Redis writes its AOF
DOWN_TIMEOUT_NO_REDIS = 3.0  # nothing to finish without Redis: workers would only retry it


@click.command()
def down() -> None:
    """Stop the stack `wanq up` started (workers finish their current tasks; nothing is lost).

    When the stack's Redis no longer answers, workers cannot finish or acknowledge anything
    and would spend the whole grace period reconnecting: they are given a few seconds."""
    data_path = config.load().data_path
    up = running_stack(data_path)
    timeout = DOWN_TIMEOUT
    if up and not _answers(up.get("redis_url") or ""):
        console.print("Redis is not answering: workers are stopped without waiting for it")
        timeout = DOWN_TIMEOUT_NO_REDIS
    stopped = stop_recorded(data_path, timeout=timeout)
    out.print(f"stopped: {', '.join(stopped)}" if stopped else "nothing was running")


def _answers(redis_url: str) -> bool:
    """True when the Redis at ``redis_url`` answers a PING within a second."""
    if not redis_url:
        return False
    try:
        if connection.parse_sentinel(redis_url):
            return bool(connection.connect(redis_url).ping())
        client = redis.Redis.from_url(redis_url, socket_timeout=1, socket_connect_timeout=1)
        return bool(client.ping())
    except (redis.RedisError, ValueError, OSError):
        return False


@click.command()
@click.option("--json", "as_json", is_flag=True, help="One JSON object per check.")
@click.option(
    "--worker-timeout", default=3.0, show_default=True, help="Seconds to wait for workers."
)
def doctor(as_json: bool, worker_timeout: float) -> None:
    """Check the configuration, Redis (reachable, persistent, no eviction), the workers on
    every queue and the provider (reachable, key accepted). Exit 1 if anything fails."""

    marks = {
        checks.OK: "[green]ok  [/]",
        checks.WARN: "[yellow]warn[/]",
        checks.FAIL: "[red]FAIL[/]",
    }
    results = checks.run(worker_timeout=worker_timeout)
    for check in results:
        if as_json:
            click.echo(json.dumps(check.__dict__))
        else:
            out.print(f"{marks[check.verdict]} {check.name:<18} {plain(check.detail)}")
    if any(check.verdict == checks.FAIL for check in results):
        sys.exit(1)


@click.command()
@click.option("--port", default=9808, show_default=True, type=int)
@click.option("--addr", default="127.0.0.1", show_default=True, help="0.0.0.0 in a container.")
def metrics(port: int, addr: str) -> None:
    """Serve Prometheus metrics of the jobs on /metrics (states, cost, failures, in flight)."""

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    job_metrics.serve(config.load(), port, addr)


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8765, show_default=True, type=int)
def sim(host: str, port: int) -> None:
    """Run the provider simulator (settings from WANQ_SIM_* variables)."""

    try:
        sim_config = simulator.config_from_env(os.environ)
    except ValueError as exc:  # one line naming the WANQ_SIM_ variable, exit 3
        name, _, why = str(exc).partition(": ")
        known = name in {f.name for f in dataclasses.fields(simulator.SimConfig)}
        raise ConfigError(detail=f"WANQ_SIM_{name.upper()}: {why}" if known else str(exc)) from None
    simulator.serve(host=host, port=port, config=sim_config)


@click.command()
@click.argument("file")
@click.option("--out", "path", type=click.Path(dir_okay=False), help="Results file (JSON Lines).")
@click.option("--batch-id")
@click.option("--allow-invalid", is_flag=True, help="Submit the valid lines even if some are not.")
@click.option(
    "--workers", default=0, show_default=True, help="Worker processes (0: WANQ_WORKER_PROCESSES)."
)
@click.option(
    "--sim/--no-sim",
    default=None,
    help="Start the provider simulator (default: when "
    "no Redis is configured and the provider URL is the default).",
)
@click.option(
    "--timeout", type=float, default=None, help="Give up waiting after this many seconds."
)
def run(
    file: str,
    path: str | None,
    batch_id: str | None,
    allow_invalid: bool,
    workers: int,
    sim: bool | None,
    timeout: float | None,
) -> None:
    """The one-machine path: start what is missing, submit FILE, wait, write the results."""
    for signum in (signal.SIGTERM, signal.SIGHUP):  # stop what we started, as on Ctrl-C
        signal.signal(signum, exit_on_signal)

    settings = config.load()
    batch_id = check_batch_id(batch_id or new_batch_id())  # known before anything is sent
    stack = LocalStack(settings.data_path)
    submitting = False
    try:
        settings = local_parts(stack, settings, sim, workers)
        client = _client(settings)
        clock = Stopwatch()
        submitting = True
        report = _submit(client, file, batch_id, allow_invalid, False)
        print_flower(stack)
        final = watch(client, report.batch_id, console, timeout=timeout)
        target = Path(path or settings.data_path / "results" / f"{report.batch_id}.jsonl")
        target.parent.mkdir(parents=True, exist_ok=True)
        with open(target, "w", encoding="utf-8") as handle:
            written = write_results(client.results(report.batch_id), handle)
        console.print(summary_table(final, clock.elapsed))
        console.print(f"{written} results written to {target}")
        if settings.archive_dir:
            archived = Path(settings.archive_dir) / report.batch_id
            console.print(f"outputs archived under {plain(archived)}")
    except TimeoutError:
        console.print(f"[yellow]batch {batch_id} not finished after --timeout {timeout:g} s[/]")
        _resume_hint(batch_id, file, path, allow_invalid, stack)
        sys.exit(EXIT_INVALID)
    except (KeyboardInterrupt, SystemExit) as stop:
        signalled = isinstance(stop, KeyboardInterrupt) or (stop.code or 0) >= 128
        if not (submitting and signalled):
            raise
        console.print("\n[yellow]interrupted[/]")
        _resume_hint(batch_id, file, path, allow_invalid, stack)
        code = exits.INTERRUPTED if isinstance(stop, KeyboardInterrupt) else stop.code
        raise SystemExit(code) from None
    finally:
        if stack.processes:
            console.print("stopping what wanq run started ...")
            stack.stop()


def _resume_hint(batch_id: str, file: str, path: str | None, allow_invalid: bool, stack) -> None:
    """What an interrupted ``wanq run`` leaves and the command that goes on with it."""
    again = ["wanq", "run", file, "--batch-id", batch_id]
    again += ["--allow-invalid"] if allow_invalid else []
    again += ["--out", path] if path else []
    console.print(
        f"\nbatch [bold]{batch_id}[/] is kept in Redis; go on with\n"
        f"  {plain(shlex.join(again))}\n"
        f"(identical lines are not enqueued twice; `wanq status {batch_id}` shows where it is)"
    )
    if any(p.name == "simulator" for p in stack.processes):
        console.print(
            "the simulator this run started keeps its tasks in "
            f"{plain(stack.data_dir / 'simulator')} when it stops: the jobs in flight "
            "are followed again when the run goes on"
        )


@click.command(context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
@click.argument("celery_options", nargs=-1, type=click.UNPROCESSED)
def worker(celery_options: tuple[str, ...]) -> None:
    """Run a wanq worker on every core: WANQ_WORKER_PROCESSES processes (0, the default: one
    per core), each `celery -A workers.app worker CELERY_OPTIONS` (e.g. -Q wanq.poll)."""
    sys.exit(processes.main(list(celery_options)))


COMMANDS = (run, up, down, doctor, metrics, sim, worker)
