"""``wanq purge``: remove batches from Redis now, rather than at the end of their retention.

Everything of a batch goes (``workers.retention``): records, payloads and the images only it
still used, lists, counters, codes, parked sets and results stream entries. A batch still
running is refused unless ``--force``, which cancels it first (its jobs end ``cancelled``).
"""

from __future__ import annotations

import sys
from datetime import UTC, datetime

import click

from producers.terminal import console
from workers import retention

EXIT_REFUSED = 1


class StillRunning(Exception):
    """The batch has jobs that have not ended: purging it needs ``force``."""


def purge_batch(client, batch_id: str, force: bool = False) -> int:
    """Purge one batch (``client``: a ``producers.api.Wanq``); how many jobs it cancelled."""
    status = client.status(batch_id)
    cancelled = 0
    if not status.done and status.total:
        if not force:
            raise StillRunning(f"batch {batch_id} has {status.total - status.ended} jobs running")
        cancelled = client.cancel(batch_id)
    retention.Purger(client.store.redis).purge(batch_id)
    return cancelled


def parse_date(text: str) -> float:
    """An ISO 8601 date or date-time (UTC unless it names a zone) as epoch seconds."""
    try:
        moment = datetime.fromisoformat(text)
    except ValueError as exc:
        detail = f"{text!r} is not an ISO date (2026-12-01 or 2026-12-01T08:00)"
        raise click.BadParameter(detail) from exc
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


@click.command()
@click.argument("batch", required=False)
@click.option("--force", is_flag=True, help="Cancel a batch still running, then purge it.")
@click.option("--ended-before", help="Purge every batch that ended before this date (UTC).")
def purge(batch: str | None, force: bool, ended_before: str | None) -> None:
    """Remove BATCH (or every batch that ended before a date) and all its data from Redis."""
    from producers.api import Wanq

    if bool(batch) == bool(ended_before):
        raise click.UsageError("name a BATCH or give --ended-before DATE (one of them)")
    client = Wanq()
    if ended_before:
        ended = retention.ended_before(client.store.redis, parse_date(ended_before))
        for batch_id in ended:
            retention.Purger(client.store.redis).purge(batch_id)
        console.print(f"{len(ended)} batches purged (ended before {ended_before})")
        return
    assert batch is not None  # one of the two, checked above
    if not client.store.batch(batch):
        console.print(f"[red]no batch {batch!r}[/]")
        sys.exit(EXIT_REFUSED)
    try:
        cancelled = purge_batch(client, batch, force)
    except StillRunning as exc:
        console.print(f"[red]{exc}[/]: nothing purged (--force cancels it first)")
        sys.exit(EXIT_REFUSED)
    extra = f" ({cancelled} jobs cancelled first)" if cancelled else ""
    console.print(f"batch {batch} purged{extra}")
