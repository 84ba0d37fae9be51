"""Operator commands, run against the configured destinations:

flask --app app setup     create datasets, tables, buckets and topics if missing
flask --app app replay    re-drive dead-lettered batches from DEAD_LETTER_DIR
"""

from __future__ import annotations

import io
import sys
import time

import click
from flask import Flask
from flask.cli import with_appcontext

from core import metrics
from core.retry import short_error
from destinations import build_dead_letter
from destinations.deadletter import SpooledBatch
from proxy.runtime import runtime


def register(app: Flask) -> None:
    app.cli.add_command(setup_command)
    app.cli.add_command(replay_command)


@click.command("setup")
@with_appcontext
def setup_command() -> None:
    """Create every configured destination's containers and tables; never touches existing data.

    Prints a line as each destination starts and another when it is done, so a slow
    warehouse shows where the time goes."""
    from flask import current_app

    destinations = runtime(current_app).destinations
    failures = 0
    for number, destination in enumerate(destinations, 1):
        step = f"setup [{number}/{len(destinations)}] {destination.name}"
        click.echo(f"{step}: creating what is missing and checking write access ...")
        started = time.monotonic()
        try:
            destination.setup()
        except Exception as exc:  # noqa: BLE001 - report every destination, then fail
            failures += 1
            click.echo(f"{step}: FAILED after {time.monotonic() - started:.1f} s: {short_error(exc)}", err=True)
        else:
            click.echo(f"{step}: ready ({time.monotonic() - started:.1f} s)")
    click.echo(f"setup: {len(destinations) - failures} of {len(destinations)} destinations ready")
    if failures:
        sys.exit(1)


@click.command("replay")
@click.option("--destination", "only", default=None, help="Replay only this destination's spool.")
@click.option("--dry-run", is_flag=True, help="Count what would be replayed; write nothing.")
@with_appcontext
def replay_command(only: str | None, dry_run: bool) -> None:
    """Re-drive spooled batches to their destinations; each batch is removed once written.

    Safe to run again: a batch is deleted only after its destination accepted it, so a
    re-run re-sends only what is still spooled (warehouses de-duplicate on insert_id).
    On a terminal it shows a progress bar; otherwise (logs, CI) it prints a line per batch."""
    from flask import current_app

    rt = runtime(current_app)
    destinations = {d.name: d for d in rt.destinations}
    spool = build_dead_letter(rt.settings)
    batches = [b for b in spool.batches(only) if only is None or b.destination == only]
    totals = {"batches": len(batches), "rows": 0, "replayed": 0, "failed": 0, "skipped": 0}
    interactive = click.get_text_stream("stdout").isatty()

    def report(number: int, batch: SpooledBatch, outcome: str) -> None:
        if not interactive:
            click.echo(f"replay [{number}/{len(batches)}] {batch.destination}/{batch.table}: {len(batch.rows)} rows {outcome}")

    with click.progressbar(batches, label="replaying", show_pos=True, file=sys.stderr if interactive else io.StringIO()) as bar:
        for number, batch in enumerate(bar, 1):
            totals["rows"] += len(batch.rows)
            destination = destinations.get(batch.destination)
            if destination is None:
                totals["skipped"] += len(batch.rows)
                report(number, batch, "skipped (destination not configured)")
                continue
            if dry_run:
                report(number, batch, "would be replayed [dry run]")
                continue
            try:
                written, error = destination.redeliver(batch.table, batch.rows), None
            except Exception as exc:  # noqa: BLE001 - report the batch and go on with the others
                written, error = 0, short_error(exc)
            if error is None:
                spool.remove(batch)
                totals["replayed"] += written
                metrics.REPLAYED.labels(destination.name).inc(written)
                report(number, batch, "replayed")
            else:
                totals["failed"] += len(batch.rows)
                if interactive:
                    click.echo(f"\n{batch.destination}/{batch.table}: {len(batch.rows)} rows still failing: {error}", err=True)
                report(number, batch, f"still failing: {error}")
    click.echo(
        f"replay: {totals['batches']} batches, {totals['rows']} rows: {totals['replayed']} replayed, "
        f"{totals['failed']} still failing, {totals['skipped']} skipped (destination not configured)"
        + (" [dry run]" if dry_run else "")
    )
    if totals["failed"]:
        sys.exit(1)
