"""The ``wanq`` command line."""

from __future__ import annotations

import json
import os
import sys
from dataclasses import replace
from pathlib import Path

import click
from rich.console import Console

from producers.batchfile import BatchLine
from producers.validation import ValidationOptions
from workers import config

console = Console(stderr=True, soft_wrap=True)
out = Console(soft_wrap=True)

EXIT_INVALID = 1
EXIT_UNREADABLE = 2


def _options(source: str, truncate: bool, probe: bool) -> ValidationOptions:
    base = Path(source).resolve().parent if source != "-" else Path.cwd()
    return ValidationOptions(base_dir=base, truncate=truncate, probe_urls=probe)


def _client(settings: config.Settings | None = None):
    from producers.api import Wanq

    return Wanq(settings)


def _report_invalid(lines: list[BatchLine], limit: int = 20) -> None:
    for line in lines[:limit]:
        console.print(f"[red]line {line.line}[/] {line.custom_id or ''}: {line.error}")
    if len(lines) > limit:
        console.print(f"... and {len(lines) - limit} more invalid lines")


@click.group()
@click.version_option(package_name="wanq")
def main() -> None:
    """wanq: run large batches of wan26_i2i jobs on Celery + Redis."""


@main.command()
@click.argument("file")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per input line.")
@click.option("--truncate", is_flag=True, help="Truncate over-long texts instead of refusing.")
@click.option("--probe", is_flag=True, help="Check that image URLs answer (network).")
def validate(file: str, as_json: bool, truncate: bool, probe: bool) -> None:
    """Check every line of FILE; enqueue nothing. Exit 1 if any line is invalid."""
    from producers.submit import validate_file

    try:
        lines = validate_file(file, _options(file, truncate, probe))
    except OSError as exc:
        console.print(f"[red]cannot read {file}: {exc.strerror or exc}[/]")
        sys.exit(EXIT_UNREADABLE)
    valid = invalid = 0
    for line in lines:
        valid, invalid = valid + line.valid, invalid + (not line.valid)
        if as_json:
            click.echo(json.dumps(_line_json(line), ensure_ascii=False))
        elif not line.valid:
            console.print(f"[red]line {line.line}[/] {line.custom_id or ''}: {line.error}")
    if not as_json:
        console.print(f"{valid} valid, {invalid} invalid")
    sys.exit(EXIT_INVALID if invalid else 0)


def _line_json(line: BatchLine) -> dict:
    return {
        "line": line.line,
        "custom_id": line.custom_id,
        "valid": line.valid,
        "code": line.error.code if line.error else None,
        "message": str(line.error.message) if line.error else None,
    }


@main.command()
@click.argument("file")
@click.option("--batch-id", help="Name the batch (default: a new ID). Same ID again adds nothing.")
@click.option("--allow-invalid", is_flag=True, help="Submit the valid lines even if some are not.")
@click.option("--wait", is_flag=True, help="Show progress and return when every job has ended.")
@click.option("--truncate", is_flag=True, help="Truncate over-long texts instead of refusing.")
def submit(
    file: str, batch_id: str | None, allow_invalid: bool, wait: bool, truncate: bool
) -> None:
    """Validate FILE (or - for standard input) and enqueue its jobs; prints the batch ID."""
    client = _client()
    report = _submit(client, file, batch_id, allow_invalid, truncate)
    out.print(report.batch_id)
    if wait:
        from producers.progress import summary_table, watch

        status = watch(client, report.batch_id, console)
        console.print(summary_table(status))


def _submit(client, file: str, batch_id: str | None, allow_invalid: bool, truncate: bool):
    try:
        report = client.submit(
            file,
            batch_id=batch_id,
            allow_invalid=allow_invalid,
            options=_options(file, truncate, False),
        )
    except OSError as exc:
        console.print(f"[red]cannot read {file}: {exc.strerror or exc}[/]")
        sys.exit(EXIT_UNREADABLE)
    except ValueError as exc:
        console.print(f"[red]{exc}[/]")
        sys.exit(EXIT_UNREADABLE)
    if report.invalid:
        _report_invalid(report.invalid)
    if not report.submitted:
        console.print(
            f"[red]{len(report.invalid)} invalid lines: nothing submitted[/] "
            "(fix them, or pass --allow-invalid to submit the valid lines)"
        )
        sys.exit(EXIT_INVALID)
    console.print(
        f"batch {report.batch_id}: {report.enqueued} jobs enqueued, "
        f"{report.existing} already there, {len(report.invalid)} invalid lines skipped"
    )
    return report


@main.command()
@click.argument("batch")
@click.option("--json", "as_json", is_flag=True)
def status(batch: str, as_json: bool) -> None:
    """Counts per state, cost so far, failures by code, and any account problem."""
    from producers.progress import summary_table

    try:
        state = _client().status(batch)
    except KeyError as exc:
        console.print(f"[red]{exc.args[0]}[/]")
        sys.exit(EXIT_INVALID)
    if as_json:
        click.echo(json.dumps(state.as_dict(), indent=2))
    else:
        out.print(summary_table(state))
        if state.account_block:
            out.print(
                "[bold red]Creation is paused for the whole cluster:[/] "
                f"{state.account_block.get('reason')}. Jobs are waiting, not failed; "
                "creation resumes by itself once the account works again."
            )


@main.command()
@click.argument("batch")
@click.option("--format", "fmt", type=click.Choice(["jsonl", "csv"]), default="jsonl")
@click.option("--state", help="Only jobs in this state (e.g. failed).")
@click.option("--out", "path", type=click.Path(dir_okay=False), help="Write here, not stdout.")
def results(batch: str, fmt: str, state: str | None, path: str | None) -> None:
    """One record per job: custom_id, state, remote task, attempts, outputs, usage, error."""
    from producers.api import write_results

    client = _client()
    if path:
        with open(path, "w", encoding="utf-8", newline="") as handle:
            n = write_results(client.results(batch, state), handle, fmt)
        console.print(f"{n} records written to {path}")
    else:
        write_results(client.results(batch, state), sys.stdout, fmt)


@main.command()
@click.argument("file")
@click.option("--out", "path", type=click.Path(dir_okay=False), help="Results file (JSON Lines).")
@click.option("--batch-id")
@click.option("--allow-invalid", is_flag=True, help="Submit the valid lines even if some are not.")
@click.option("--workers", default=2, show_default=True, help="Worker processes to start locally.")
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
    from ops.localstack import LocalStack
    from producers.api import write_results
    from producers.progress import Stopwatch, summary_table, watch

    settings = config.load()
    local = not settings.redis_url
    use_sim = (
        sim
        if sim is not None
        else (local and settings.provider_url == config.Settings.provider_url)
    )
    stack = LocalStack(settings.data_path)
    try:
        if local:
            stack.start_redis()
            console.print(f"started redis-server (AOF on) at {stack.redis_url}")
        if use_sim:
            stack.start_simulator()
            console.print(f"started the provider simulator at {stack.provider_url}")
        os.environ.update({k: v for k, v in stack.env.items() if k.startswith("WANQ_")})
        settings = config.load()
        if local:
            for i in range(workers):
                stack.start_worker(f"wanq{i + 1}")
            console.print(f"started {workers} workers; logs in {settings.data_path / 'logs'}")
        client = _client(replace(settings))
        clock = Stopwatch()
        report = _submit(client, file, batch_id, allow_invalid, False)
        final = watch(client, report.batch_id, console, timeout=timeout)
        target = Path(path or settings.data_path / "results" / f"{report.batch_id}.jsonl")
        target.parent.mkdir(parents=True, exist_ok=True)
        with open(target, "w", encoding="utf-8") as handle:
            written = write_results(client.results(report.batch_id), handle)
        console.print(summary_table(final, clock.elapsed))
        console.print(f"{written} results written to {target}")
    finally:
        if stack.processes:
            console.print("stopping what wanq run started ...")
            stack.stop()


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8765, show_default=True, type=int)
def sim(host: str, port: int) -> None:
    """Run the provider simulator (settings from WANQ_SIM_* variables)."""
    from ops import simulator

    simulator.serve(host=host, port=port, config=simulator.config_from_env(os.environ))


if __name__ == "__main__":
    main()
