"""The ``wanq`` command line."""

from __future__ import annotations

import json
import signal
import sys
from pathlib import Path

import click

from producers import cli_cluster, cli_purge
from producers.batchfile import BatchLine
from producers.terminal import console, out
from producers.validation import ValidationOptions
from workers import config
from workers.errors import message_for

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
    except (OSError, ValueError) as exc:
        console.print(f"[red]cannot read {file}: {getattr(exc, 'strerror', None) or exc}[/]")
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
@click.option("--dry-run", is_flag=True, help="Validate and estimate the cost; enqueue nothing.")
@click.option("--max-cost", type=float, help="Budget in USD: creation pauses before passing it.")
@click.option("--webhook", help="POST each ended job, then the batch, here (signed).")
@click.option("--callback-task", help="Celery task called with each ended job's record.")
@click.option("--batch-callback-task", help="Celery task called once with the final counts.")
def submit(
    file: str,
    batch_id: str | None,
    allow_invalid: bool,
    wait: bool,
    truncate: bool,
    dry_run: bool,
    max_cost: float | None,
    webhook: str | None,
    callback_task: str | None,
    batch_callback_task: str | None,
) -> None:
    """Validate FILE (.jsonl or .csv; - for standard input) and enqueue its jobs."""
    if dry_run:
        _dry_run(file, truncate)
        return
    from producers.api import BatchOptions

    client = _client()
    batch = BatchOptions(max_cost, webhook, callback_task, batch_callback_task)
    report = _submit(client, file, batch_id, allow_invalid, truncate, batch)
    out.print(report.batch_id)
    if wait:
        _watch(client, report.batch_id)


def _dry_run(file: str, truncate: bool) -> None:
    from producers.estimate import estimate
    from producers.submit import validate_file

    settings = config.load()
    try:
        report = estimate(validate_file(file, _options(file, truncate, False)), settings.unit_price)
    except (OSError, ValueError) as exc:
        console.print(f"[red]cannot read {file}: {exc}[/]")
        sys.exit(EXIT_UNREADABLE)
    out.print(f"{report.lines} lines: {report.valid} valid, {report.invalid} invalid")
    for code, lines in sorted(report.invalid_by_code.items()):
        shown = ", ".join(map(str, lines[:20])) + (
            " ..." if report.invalid_counts[code] > 20 else ""
        )
        out.print(f"  {code} x{report.invalid_counts[code]} ({message_for(code)}): lines {shown}")
    out.print(
        f"at most {report.images_upper_bound} images, at most "
        f"${report.cost_upper_bound:.2f} at ${settings.unit_price}/image "
        "(n per job; max_images in interleaved mode)"
    )
    sys.exit(EXIT_INVALID if report.invalid else 0)


def _submit(
    client, file: str, batch_id: str | None, allow_invalid: bool, truncate: bool, batch=None
):
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    columns = (
        SpinnerColumn(),
        TextColumn("submitting {task.completed:,} lines"),
        TimeElapsedColumn(),
    )
    try:
        with Progress(*columns, console=console, transient=True) as bar:
            task = bar.add_task("submit", total=None)
            report = client.submit(
                file,
                batch_id=batch_id,
                allow_invalid=allow_invalid,
                options=_options(file, truncate, False),
                batch=batch,
                on_line=lambda _line: bar.advance(task),
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


def _watch(client, batch_id: str):
    from producers.progress import summary_table, watch

    status = watch(client, batch_id, console)
    console.print(summary_table(status))
    return status


@main.command("watch")
@click.argument("batch")
def watch_command(batch: str) -> None:
    """Live progress of a batch: counts per state, cost, throughput and ETA."""
    client = _client()
    _batch_or_exit(client, batch)
    _watch(client, batch)


@main.command()
def batches() -> None:
    """Every batch with its state, progress and cost."""
    from rich.table import Table

    from producers.progress import when

    table = Table("batch", "state", "ended", "jobs", "failed", "cost", "purged")
    for status in _client().batches():
        table.add_row(
            status.batch_id,
            status.state,
            str(status.ended),
            str(status.total),
            str(status.counts.get("failed", 0)),
            f"${status.cost:.2f}",
            when(status.purge_at) if status.purge_at else "-",
        )
    out.print(table)


@main.command()
@click.argument("batch")
def cancel(batch: str) -> None:
    """Stop a batch: jobs not created are never created, jobs in flight end cancelled."""
    ended = _steer(lambda client: client.cancel(batch), batch)
    console.print(
        f"batch {batch} cancelled: {ended} jobs ended as cancelled "
        "(remote tasks already created run to their end upstream: no remote cancel)"
    )


@main.command()
@click.argument("batch")
def pause(batch: str) -> None:
    """Create no new remote tasks for BATCH; jobs in flight go on."""
    _steer(lambda client: client.pause(batch), batch)
    console.print(f"batch {batch} paused; `wanq resume {batch}` goes on")


@main.command()
@click.argument("batch")
@click.option("--max-cost", type=float, help="A new budget in USD (after a budget stop).")
def resume(batch: str, max_cost: float | None) -> None:
    """Go on after a pause or a budget stop."""
    released = _steer(lambda client: client.resume(batch, max_cost), batch)
    console.print(f"batch {batch} resumed: {released} waiting jobs released")


@main.command()
@click.argument("batch")
@click.option("--code", "codes", multiple=True, help="Only jobs that failed with this code.")
def retry(batch: str, codes: tuple[str, ...]) -> None:
    """Re-run the jobs of BATCH that failed for good; successes stay untouched."""
    reopened = _steer(lambda client: client.retry(batch, codes), batch)
    console.print(f"batch {batch}: {reopened} failed jobs re-queued")


@main.command("archive")
@click.argument("batch")
@click.option("--dir", "directory", help="Archive root (default WANQ_ARCHIVE_DIR or DATA/archive).")
def archive_command(batch: str, directory: str | None) -> None:
    """Download every output of BATCH not archived yet."""
    jobs, missing, stale = _steer(lambda client: client.archive(batch, directory), batch)
    if stale:
        console.print(
            f"[yellow]{stale} jobs ended over 20 h ago: their URLs expire after about 24 h[/]"
        )
    console.print(f"{jobs} succeeded jobs looked at; {missing} images still missing")
    sys.exit(EXIT_INVALID if missing else 0)


def _steer(action, batch: str):
    client = _client()
    _batch_or_exit(client, batch)
    return action(client)


def _batch_or_exit(client, batch: str) -> None:
    if not client.store.batch(batch):
        console.print(f"[red]no batch {batch!r}[/]")
        sys.exit(EXIT_INVALID)


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

    for signum in (signal.SIGTERM, signal.SIGHUP):  # stop what we started, as on Ctrl-C
        signal.signal(signum, cli_cluster.exit_on_signal)

    settings = config.load()
    stack = LocalStack(settings.data_path)
    try:
        settings = cli_cluster.local_parts(stack, settings, sim, workers)
        client = _client(settings)
        clock = Stopwatch()
        report = _submit(client, file, batch_id, allow_invalid, False)
        cli_cluster.print_flower(stack)
        final = watch(client, report.batch_id, console, timeout=timeout)
        target = Path(path or settings.data_path / "results" / f"{report.batch_id}.jsonl")
        target.parent.mkdir(parents=True, exist_ok=True)
        with open(target, "w", encoding="utf-8") as handle:
            written = write_results(client.results(report.batch_id), handle)
        console.print(summary_table(final, clock.elapsed))
        console.print(f"{written} results written to {target}")
        if settings.archive_dir:
            console.print(f"outputs archived under {Path(settings.archive_dir) / report.batch_id}")
    finally:
        if stack.processes:
            console.print("stopping what wanq run started ...")
            stack.stop()


main.add_command(cli_purge.purge)
for _command in cli_cluster.COMMANDS:
    main.add_command(_command)


if __name__ == "__main__":
    main()
