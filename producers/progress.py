"""What a person watching a batch sees: a live bar with counts per state, then a summary."""

from __future__ import annotations

import time

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from producers.api import BatchStatus, Wanq
from producers.terminal import plain

SHOWN = ("queued", "creating", "running", "waiting", "succeeded", "failed", "cancelled")


def counts_text(status: BatchStatus) -> str:
    parts = [
        f"{state} {status.counts.get(state, 0)}" for state in SHOWN if status.counts.get(state)
    ]
    text = "  ".join(parts) + f"  ${status.cost:.2f}"
    if status.unseen:
        text += f" (+ up to ${status.unseen:.2f} unseen)"
    if status.control != "active" and not status.done:
        text += f"  [bold yellow]{status.control.upper()}[/]"
    if status.account_block:
        text += f"  [bold red]PAUSED: {status.account_block.get('reason', '')}[/]"
    return text


def watch(
    client: Wanq, batch_id: str, console: Console, timeout: float | None = None
) -> BatchStatus:
    """Show a progress bar until every job of the batch is terminal."""
    columns = (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]}"),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        TextColumn("{task.fields[counts]}"),
    )
    with Progress(*columns, console=console, transient=False, refresh_per_second=4) as bar:
        task = bar.add_task(batch_id, total=None, counts="", rate="")
        clock = Stopwatch()
        first = client.status(batch_id).ended

        def update(status: BatchStatus) -> None:
            rate = (status.ended - first) / max(clock.elapsed, 1e-6)
            bar.update(
                task,
                total=status.total,
                completed=status.ended,
                counts=counts_text(status),
                rate=f"{rate:.1f} jobs/s",
            )

        return client.wait(batch_id, on_status=update, timeout=timeout)


def summary_table(status: BatchStatus, elapsed: float | None = None) -> Table:
    table = Table(title=f"batch {plain(status.batch_id)}", show_header=False)
    table.add_row("state", status.state)
    table.add_row("jobs", str(status.total))
    for state in SHOWN:
        if status.counts.get(state):
            table.add_row(state, str(status.counts[state]))
    table.add_row("cost (usage.cost)", f"${status.cost:.4f} counted")
    if status.unseen or status.duplicates_possible or status.abandoned:
        table.add_row("unseen (estimated)", f"up to ${status.unseen:.4f} not seen in usage")
    if status.duplicates_possible:
        table.add_row(
            "possible duplicates", f"{status.duplicates_possible} creates of unknown outcome"
        )
    if status.abandoned:
        table.add_row("remote tasks followed for their cost", str(status.abandoned))
    if status.reserved and status.max_cost is None:
        table.add_row("reserved in flight", f"${status.reserved:.4f}")
    table.add_row("priority", f"{status.priority} ({status.in_flight} in flight)")
    if status.waiting_for_slot:
        table.add_row("waiting for a slot", str(status.waiting_for_slot))
    if status.max_cost is not None:
        table.add_row(
            "budget (--max-cost)",
            f"${status.max_cost:.4f}, ${status.reserved:.4f} reserved in flight",
        )
    for code, n in sorted(status.failures.items()):
        table.add_row(f"failed {code}", str(n))
    if elapsed:
        table.add_row("elapsed", f"{elapsed:.1f} s ({status.ended / elapsed:.1f} jobs/s)")
    if status.account_block:
        table.add_row("account", plain(status.account_block.get("reason", "blocked")))
    if status.purge_at is not None:
        table.add_row("purged (retention)", when(status.purge_at))
    return table


def when(epoch: float) -> str:
    """A UTC time people read: ``2026-12-02 13:15 UTC``."""
    return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(epoch))


class Stopwatch:
    def __init__(self) -> None:
        self.start = time.monotonic()

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.start
