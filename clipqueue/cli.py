"""The ``clipqueue`` command: database migrations (``clipqueue db upgrade``) and operator commands.

Only clipqueue's own commands: Flask's generic ones (``run``, ``shell``,
``routes``) would start a development server or a shell beside the service.
"""

from __future__ import annotations

import json
import os

import click
from flask.cli import ScriptInfo, with_appcontext
from flask_migrate.cli import db as db_commands

from clipqueue import create_app, deadletter, webhooks


@click.group()
@click.pass_context
def main(ctx: click.Context) -> None:
    """clipqueue: cut clips from VODs. Settings come from the environment, as for every process."""
    # with_appcontext builds the app from this, once, for the command that runs.
    ctx.obj = ScriptInfo(create_app=lambda *_args: create_app(), set_debug_flag=False)


main.add_command(db_commands, "db")


@main.command("worker")
@click.option("--concurrency", type=int, default=lambda: int(os.environ.get("WORKER_CONCURRENCY") or 2),
              show_default="WORKER_CONCURRENCY or 2", help="Clip jobs run at once on this host.")
@click.option("--loglevel", default="INFO", show_default=True)
def worker(concurrency: int, loglevel: str) -> None:
    """Run clip jobs, and finalizing and maintenance in slots of their own (the Procfile's worker)."""
    from clipqueue.worker import run

    raise SystemExit(run(concurrency, loglevel))


@main.command("worker-health")
@click.option("--max-age", type=float, default=None,
              help="Seconds since a worker's last heartbeat that still count as alive "
                   "(default: WORKER_HEARTBEAT_MAX_AGE_SECONDS).")
def worker_health(max_age: float | None) -> None:
    """Exit 0 if every worker on this host beat recently, 1 if not (a liveness probe; no app is loaded)."""
    from clipqueue.config import Settings
    from clipqueue.heartbeat import check, heartbeat_dir

    settings = Settings.from_env()
    healthy, lines = check(heartbeat_dir(settings.worker_heartbeat_dir),
                           settings.worker_heartbeat_max_age_seconds if max_age is None else max_age)
    for line in lines:
        click.echo(line, err=not healthy)
    raise SystemExit(0 if healthy else 1)


@main.group("dead-letter")
def dead_letter() -> None:
    """Inspect and replay jobs that failed for good."""


@dead_letter.command("list")
@with_appcontext
def dead_letter_list() -> None:
    """Print every dead-lettered job as a JSON line."""
    for entry in deadletter.list_entries():
        entry.pop("traceback", None)
        click.echo(json.dumps(entry, sort_keys=True))


@dead_letter.command("show")
@click.argument("clip_id")
@with_appcontext
def dead_letter_show(clip_id: str) -> None:
    """Print one dead-lettered job, with its traceback."""
    entry = deadletter.get_entry(clip_id)
    if entry is None:
        raise click.ClickException(f"clip {clip_id} is not in the dead-letter queue")
    click.echo(json.dumps(entry, indent=2, sort_keys=True))


@dead_letter.command("replay")
@click.argument("clip_ids", nargs=-1)
@click.option("--all", "replay_all", is_flag=True, help="Replay every dead-lettered job.")
@with_appcontext
def dead_letter_replay(clip_ids: tuple[str, ...], replay_all: bool) -> None:
    """Queue dead-lettered jobs again."""
    if replay_all:
        clip_ids = tuple(entry["clip_id"] for entry in deadletter.list_entries())
    if not clip_ids:
        raise click.UsageError("name clip ids, or pass --all")
    for clip_id in clip_ids:
        replayed = deadletter.replay(clip_id)
        click.echo(f"{clip_id}: {'replayed' if replayed else 'not in the dead-letter queue'}")


@dead_letter.command("purge")
@click.confirmation_option(prompt="Drop every dead-lettered job?")
@with_appcontext
def dead_letter_purge() -> None:
    """Drop every dead-lettered job (their clips stay failed)."""
    click.echo(f"purged {deadletter.purge()} job(s)")


@main.group("webhooks")
def webhooks_group() -> None:
    """Inspect and retry webhook deliveries."""


@webhooks_group.command("list")
@click.option("--status", type=click.Choice(["pending", "failed", "delivered"]),
              help="Only these (default: pending and failed, the undelivered ones).")
@click.option("--limit", type=click.IntRange(1, 10000), default=1000, show_default=True)
@with_appcontext
def webhooks_list(status: str | None, limit: int) -> None:
    """Print webhook deliveries as JSON lines, oldest first."""
    statuses = (status,) if status else (webhooks.DELIVERY_PENDING, webhooks.DELIVERY_FAILED)
    for entry in webhooks.list_deliveries(statuses, limit):
        click.echo(json.dumps(entry, sort_keys=True))


@webhooks_group.command("retry")
@click.argument("delivery_ids", nargs=-1)
@click.option("--all-failed", is_flag=True, help="Retry every delivery that was given up.")
@with_appcontext
def webhooks_retry(delivery_ids: tuple[str, ...], all_failed: bool) -> None:
    """Try undelivered webhook deliveries again now, with a fresh WEBHOOK_RETRY_HOURS."""
    if all_failed:
        failed = webhooks.list_deliveries((webhooks.DELIVERY_FAILED,), 100_000)
        delivery_ids = tuple(entry["id"] for entry in failed)
    if not delivery_ids:
        raise click.UsageError("name delivery ids, or pass --all-failed")
    for delivery_id in delivery_ids:
        if webhooks.get(delivery_id) is None:
            click.echo(f"{delivery_id}: no such delivery")
        elif webhooks.retry(delivery_id):
            click.echo(f"{delivery_id}: retried")
        else:
            click.echo(f"{delivery_id}: delivered already")
