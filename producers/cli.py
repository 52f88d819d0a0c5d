"""The ``wanq`` command line. Data goes to stdout, progress and notes to stderr; errors are
one plain line and an exit code from ``producers.exits`` (the README's table)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from producers import cli_purge, exits
from producers.batchfile import BatchLine
from producers.progress import when
from producers.terminal import console, out, plain
from producers.validation import ValidationOptions
from workers import config, errors
from workers.errors import message_for
from workers.names import priority_name, priority_weight
from workers.store import ALL_STATES

EXIT_INVALID = exits.REFUSED
EXIT_UNREADABLE = exits.UNREADABLE
STATES = tuple(state.value for state in ALL_STATES)


def _options(source: str, truncate: bool, probe: bool) -> ValidationOptions:
    base = Path(source).resolve().parent if source != "-" else Path.cwd()
    return ValidationOptions(base_dir=base, truncate=truncate, probe_urls=probe)


def _client(settings: config.Settings | None = None):
    from producers.api import Wanq

    return Wanq(settings)


def _report_invalid(lines: list[BatchLine], limit: int = 20, what: str = "invalid") -> None:
    for line in lines[:limit]:
        console.print(
            f"[red]line {line.line}[/] {plain(line.custom_id or '')}: {plain(line.error)}"
        )
    if len(lines) > limit:
        console.print(f"... and {len(lines) - limit} more {what} lines")


@click.group(cls=exits.Group)
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
        console.print(
            f"[red]cannot read {plain(file)}: {plain(getattr(exc, 'strerror', None) or exc)}[/]"
        )
        sys.exit(EXIT_UNREADABLE)
    valid = invalid = 0
    for line in lines:  # the report on stdout (wanq validate f > report.txt keeps it)
        valid, invalid = valid + line.valid, invalid + (not line.valid)
        if as_json:
            click.echo(json.dumps(_line_json(line), ensure_ascii=False))
        elif not line.valid:
            click.echo(f"line {line.line} {plain(line.custom_id or '')}: {plain(line.error)}")
    if not as_json:
        click.echo(f"{valid} valid, {invalid} invalid")
    if not valid and not invalid:
        console.print(f"[red]{plain(file)} has no line: nothing to validate[/]")
    sys.exit(EXIT_INVALID if invalid or not valid else 0)


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
@click.option("--probe", is_flag=True, help="Check that image URLs answer (network).")
@click.option(
    "--ignore-changed",
    is_flag=True,
    help="With --batch-id of an existing batch: keep the stored request of lines whose "
    "request changed (WQ108) instead of refusing the file.",
)
@click.option("--dry-run", is_flag=True, help="Validate and estimate the cost; enqueue nothing.")
@click.option(
    "--max-cost",
    type=click.FloatRange(min=0, min_open=True),
    help="Budget in USD: creation stops before passing it.",
)
@click.option("--webhook", help="POST each ended job, then the batch, here (signed).")
@click.option("--callback-task", help="Celery task called with each ended job's record.")
@click.option("--batch-callback-task", help="Celery task called once with the final counts.")
@click.option(
    "--priority",
    default="normal",
    show_default=True,
    help="high, normal, low or a weight (0.1-1000): the batch's share of the in-flight cap.",
)
@click.option(
    "--max-in-flight",
    type=click.IntRange(min=0),
    default=0,
    help="This batch's own cap on remote tasks in flight, under the cluster's (0: none).",
)
def submit(
    file: str,
    batch_id: str | None,
    allow_invalid: bool,
    wait: bool,
    truncate: bool,
    probe: bool,
    ignore_changed: bool,
    dry_run: bool,
    max_cost: float | None,
    webhook: str | None,
    callback_task: str | None,
    batch_callback_task: str | None,
    priority: str,
    max_in_flight: int,
) -> None:
    """Validate FILE (.jsonl or .csv; - for standard input) and enqueue its jobs.

    Refused whole (exit 1, nothing enqueued): invalid lines without --allow-invalid (WQ109),
    no valid line at all (WQ107), lines changed under a custom_id the batch already has
    without --ignore-changed (WQ108)."""
    """Validate FILE (.jsonl or .csv; - for standard input) and enqueue its jobs."""
    try:
        priority_weight(priority)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--priority") from None
    if dry_run:
        _dry_run(file, truncate, probe)
        return
    from producers.api import BatchOptions

    client = _client()
    batch = BatchOptions(
        max_cost, webhook, callback_task, batch_callback_task, priority, max_in_flight
    )
    report = _submit(client, file, batch_id, allow_invalid, truncate, batch, probe, ignore_changed)
    out.print(plain(report.batch_id))
    if wait:
        _watch(client, report.batch_id)


def _dry_run(file: str, truncate: bool, probe: bool = False) -> None:
    from producers.estimate import estimate
    from producers.submit import validate_file

    settings = config.load()
    try:
        report = estimate(validate_file(file, _options(file, truncate, probe)), settings.unit_price)
    except (OSError, ValueError) as exc:
        console.print(f"[red]cannot read {plain(file)}: {plain(exc)}[/]")
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
    client,
    file: str,
    batch_id: str | None,
    allow_invalid: bool,
    truncate: bool,
    batch=None,
    probe: bool = False,
    ignore_changed: bool = False,
):
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    from workers.errors import SubmissionRefused

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
                options=_options(file, truncate, probe),
                batch=batch,
                on_line=lambda _line: bar.advance(task),
                ignore_changed=ignore_changed,
            )
    except OSError as exc:
        console.print(f"[red]cannot read {plain(file)}: {plain(exc.strerror or exc)}[/]")
        sys.exit(EXIT_UNREADABLE)
    except SubmissionRefused as refused:
        _refused(refused.report)
    except (ValueError, UnicodeDecodeError) as exc:
        console.print(f"[red]{plain(exc)}[/]")
        sys.exit(EXIT_UNREADABLE)
    if report.invalid:
        _report_invalid(report.invalid)
    console.print(
        f"batch {report.batch_id}: {report.enqueued} jobs enqueued, "
        f"{report.existing} already there, {len(report.invalid)} invalid lines skipped"
    )
    if report.changed:
        _report_invalid(report.changed, what="changed")
        console.print(
            f"[yellow]{len(report.changed)} lines changed under existing custom_ids: "
            "their stored requests were kept (--ignore-changed)[/]"
        )
    return report


def _refused(report) -> None:
    """Why a file was refused whole, line by line, and what to do; exits 1."""
    _report_invalid(report.invalid)
    if report.refusal == errors.BATCH_INVALID:
        hint = "fix them, or pass --allow-invalid to submit the valid lines"
        why = f"{len(report.invalid)} invalid lines: nothing submitted"
    elif report.refusal == errors.BATCH_EMPTY:
        hint = "a batch of no job would never end"
        why = f"no valid line in {report.lines} lines: nothing submitted"
    else:
        _report_invalid(report.changed, what="changed")
        hint = (
            "identical lines are a no-op; submit the changes under new custom_ids or another "
            "--batch-id, or pass --ignore-changed to keep the stored requests"
        )
        why = (
            f"{len(report.changed)} lines changed under custom_ids batch {report.batch_id} "
            "already has: nothing submitted"
        )
    console.print(f"[red]\\[{report.refusal}] {why}[/] ({hint})")
    sys.exit(EXIT_INVALID)


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

    table = Table("batch")
    table.add_column("state", no_wrap=True)  # a block's reason is read whole
    for name in ("priority", "ended", "jobs", "failed", "cost", "purged"):
        table.add_column(name)
    for status in _client().batches():
        table.add_row(
            plain(status.batch_id),
            plain(status.listing_state),
            status.priority,
            str(status.ended),
            str(status.total),
            str(status.counts.get("failed", 0)),
            f"${status.cost:.2f}",
            when(status.purge_at) if status.purge_at else "-",
        )
    out.print(table)


@main.command()
@click.argument("batch")
@click.argument("level")
def priority(batch: str, level: str) -> None:
    """Change BATCH's share of the in-flight cap: high, normal, low or a weight (0.1-1000)."""
    try:
        priority_weight(level)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="LEVEL") from None
    weight = _steer(lambda client: client.set_priority(batch, level), batch)
    console.print(f"batch {plain(batch)}: priority {priority_name(weight)} (weight {weight:g})")


@main.command()
@click.argument("batch")
def cancel(batch: str) -> None:
    """Stop a batch: jobs not created are never created, jobs in flight end cancelled."""
    ended = _steer(lambda client: client.cancel(batch), batch)
    console.print(
        f"batch {plain(batch)} cancelled: {ended} jobs ended as cancelled "
        "(remote tasks already created run to their end upstream: no remote cancel)"
    )


@main.command()
@click.argument("batch")
def pause(batch: str) -> None:
    """Create no new remote tasks for BATCH; jobs in flight go on."""
    _steer(lambda client: client.pause(batch), batch)
    console.print(f"batch {plain(batch)} paused; `wanq resume {plain(batch)}` goes on")


@main.command()
@click.argument("batch")
@click.option(
    "--max-cost",
    type=click.FloatRange(min=0, min_open=True),
    help="A new budget in USD (after a budget stop).",
)
def resume(batch: str, max_cost: float | None) -> None:
    """Go on after a pause or a budget stop (a budget stop needs a higher --max-cost)."""
    client = _client()
    before = client.status(batch)
    released = client.resume(batch, max_cost)
    console.print(f"batch {plain(batch)} resumed: {released} waiting jobs released")
    if before.control == "budget" and (max_cost is None or max_cost <= before.max_cost_needed):
        cap = f"${max_cost:.4f}" if max_cost is not None else f"${before.max_cost or 0:.4f}"
        console.print(
            f"[yellow]the budget cap {cap} still holds: ${before.cost:.4f} spent and "
            f"${before.reserved:.4f} reserved in flight, so the released jobs stop again "
            f"before passing it. Raise it: wanq resume {plain(batch)} --max-cost HIGHER[/]"
        )


@main.command()
@click.argument("batch")
@click.option("--code", "codes", multiple=True, help="Only jobs that failed with this code.")
def retry(batch: str, codes: tuple[str, ...]) -> None:
    """Re-run the jobs of BATCH that failed for good; successes stay untouched."""
    reopened = _steer(lambda client: client.retry(batch, codes), batch)
    console.print(f"batch {plain(batch)}: {reopened} failed jobs re-queued")


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
    """An unknown batch: one line and exit 1, the same for every command (via exits)."""
    if not client.store.batch(batch):
        raise errors.BatchNotFound(detail=batch)


@main.command()
@click.argument("batch")
@click.option("--json", "as_json", is_flag=True)
def status(batch: str, as_json: bool) -> None:
    """Counts per state, cost so far, failures by code, and any account problem."""
    from producers.progress import summary_table

    state = _client().status(batch)
    if as_json:
        click.echo(json.dumps(state.as_dict(), indent=2))
    else:
        out.print(summary_table(state))
        for sentence in state.explain():
            out.print(f"[bold yellow]{plain(sentence)}[/]")


@main.command()
@click.argument("batch")
@click.option("--format", "fmt", type=click.Choice(["jsonl", "csv"]), default="jsonl")
@click.option("--state", type=click.Choice(STATES), help="Only jobs in this state.")
@click.option("--out", "path", type=click.Path(dir_okay=False), help="Write here, not stdout.")
def results(batch: str, fmt: str, state: str | None, path: str | None) -> None:
    """One record per job: custom_id, state, remote task, attempts, outputs, usage, error."""
    from producers.api import write_results

    client = _client()
    records = client.results(batch, state)  # an unknown batch stops here, before any file
    if path:
        with open(path, "w", encoding="utf-8", newline="") as handle:
            n = write_results(records, handle, fmt)
        console.print(f"{n} records written to {plain(path)}")
    else:
        write_results(records, sys.stdout, fmt)


main.add_command(cli_purge.purge)


if __name__ == "__main__":
    main()
