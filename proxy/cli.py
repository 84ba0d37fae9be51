"""Operator commands, run against the configured destinations:

flask --app app setup     create datasets, tables, buckets and topics if missing
flask --app app replay    re-drive dead-lettered batches from DEAD_LETTER_DIR
"""

from __future__ import annotations

import sys

import click
from flask import Flask
from flask.cli import with_appcontext

from core import metrics
from core.retry import short_error
from destinations import build_dead_letter
from proxy.runtime import runtime


def register(app: Flask) -> None:
    app.cli.add_command(setup_command)
    app.cli.add_command(replay_command)


@click.command("setup")
@with_appcontext
def setup_command() -> None:
    """Create every configured destination's containers and tables; never touches existing data."""
    from flask import current_app

    failures = 0
    for destination in runtime(current_app).destinations:
        try:
            destination.setup()
        except Exception as exc:  # noqa: BLE001 - report every destination, then fail
            failures += 1
            click.echo(f"{destination.name}: FAILED: {exc}", err=True)
        else:
            click.echo(f"{destination.name}: ready")
    if failures:
        sys.exit(1)


@click.command("replay")
@click.option("--destination", "only", default=None, help="Replay only this destination's spool.")
@click.option("--dry-run", is_flag=True, help="Count what would be replayed; write nothing.")
@with_appcontext
def replay_command(only: str | None, dry_run: bool) -> None:
    """Re-drive spooled batches to their destinations; each batch is removed once written.

    Safe to run again: a batch is deleted only after its destination accepted it, so a
    re-run re-sends only what is still spooled (warehouses de-duplicate on insert_id)."""
    from flask import current_app

    rt = runtime(current_app)
    destinations = {d.name: d for d in rt.destinations}
    spool = build_dead_letter(rt.settings)
    batches = [b for b in spool.batches(only) if only is None or b.destination == only]
    totals = {"batches": len(batches), "rows": 0, "replayed": 0, "failed": 0, "skipped": 0}
    with click.progressbar(batches, label="replaying", show_pos=True, file=sys.stderr) as bar:
        for batch in bar:
            totals["rows"] += len(batch.rows)
            destination = destinations.get(batch.destination)
            if destination is None:
                totals["skipped"] += len(batch.rows)
                continue
            if dry_run:
                continue
            try:
                written, error = destination.redeliver(batch.table, batch.rows), None
            except Exception as exc:  # noqa: BLE001 - report the batch and go on with the others
                written, error = 0, short_error(exc)
            if error is None:
                spool.remove(batch)
                totals["replayed"] += written
                metrics.REPLAYED.labels(destination.name).inc(written)
            else:
                totals["failed"] += len(batch.rows)
                click.echo(f"\n{batch.destination}/{batch.table}: {len(batch.rows)} rows still failing: {error}", err=True)
    click.echo(
        f"replay: {totals['batches']} batches, {totals['rows']} rows: {totals['replayed']} replayed, "
        f"{totals['failed']} still failing, {totals['skipped']} skipped (destination not configured)"
        + (" [dry run]" if dry_run else "")
    )
    if totals["failed"]:
        sys.exit(1)
