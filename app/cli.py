"""``flask`` commands: admin accounts, seeding, credits, the RQ worker and scheduler, and the overlay hub.

(The whole platform on one machine is ``python -m app.dev.serve``, what ``make run`` runs.)
"""
from __future__ import annotations

import click
from flask import Flask, current_app
from flask.cli import AppGroup, with_appcontext

from . import accounts

admin_cli = AppGroup("admin", help="Manage admin accounts.")


@admin_cli.command("create")
@click.argument("email")
@click.option("--password", envvar="GPUSHARE_ADMIN_PASSWORD", help="Asked for when not given.")
def create_admin(email: str, password: str | None) -> None:
    """Create an admin account, or make an existing account an admin."""
    from .accounts import audit
    from .extensions import db

    user = accounts.find_user(email)
    try:
        if user is None:
            if password is None:
                password = click.prompt("Password", hide_input=True, confirmation_prompt=True)
            user = accounts.create_user(email, password, is_admin=True)
            click.echo(f"Admin {user.email} created.")
        elif user.is_admin:
            click.echo(f"{user.email} is already an admin.")
        else:
            user.is_admin = True
            audit.record(None, "admin.grant", "user", user.id, email=user.email)
            db.session.commit()
            click.echo(f"{user.email} is now an admin.")
    except accounts.AccountError as exc:
        raise click.ClickException(str(exc)) from None


@click.command("seed")
def seed_command() -> None:
    """Add the missing models of the seed catalog."""
    from . import catalog

    added = catalog.seed()
    click.echo(f"Model catalog: {added} added.")


@click.command("worker")
@click.option("--burst", is_flag=True, help="Stop when the queues are empty.")
@click.option("--queue", "queues", multiple=True, help="A queue to work (repeatable; default: every queue).")
@with_appcontext
def worker_command(burst: bool, queues: tuple[str, ...]) -> None:
    """Run an RQ worker; each job runs in a fresh app context."""
    from rq import SimpleWorker

    import jobs

    unknown = sorted(set(queues) - set(jobs.QUEUES))
    if unknown:
        raise click.BadParameter(f"no queue {unknown[0]!r}; the queues are {', '.join(jobs.QUEUES)}",
                                 param_hint="--queue")

    app = current_app._get_current_object()

    class AppWorker(SimpleWorker):
        def perform_job(self, job, queue):
            with app.app_context():
                return super().perform_job(job, queue)

    worker = AppWorker([jobs.queue(name) for name in queues or jobs.QUEUES], connection=app.extensions["redis"])
    worker.work(burst=burst, with_scheduler=False, logging_level="WARNING")


@click.command("scheduler")
@with_appcontext
def scheduler_command() -> None:
    """Enqueue the periodic jobs (health checks, the hold sweeper) on their schedule."""
    from rq.cron import CronScheduler

    import jobs

    scheduler = CronScheduler(connection=current_app.extensions["redis"], name="gpushare")
    for job in jobs.periodic():
        scheduler.register(job.func, job.queue, interval=job.every_seconds,
                           job_timeout=job.timeout_seconds, result_ttl=600)
    scheduler.start()


@click.command("grant")
@click.argument("email")
@click.argument("dollars")
@click.option("--memo", default="granted from the command line", show_default=True)
@with_appcontext
def grant_command(email: str, dollars: str, memo: str) -> None:
    """Give a client credits (in US dollars) from the platform."""
    import uuid

    from .money import ledger, units

    user = accounts.find_user(email)
    if user is None:
        raise click.ClickException(f"no account with the e-mail {email}")
    try:
        ledger.grant(None, user, units.usd(dollars), memo=memo, transfer_id=f"grant:{uuid.uuid4().hex}")
    except (ledger.LedgerError, units.AmountError) as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"Granted {units.format_usd(units.usd(dollars))} to {user.email}; "
               f"balance {units.format_usd(ledger.balance(user).balance)}.")


def register_cli(app: Flask) -> None:
    from .hosts.hub import overlay_hub_command

    for command in (admin_cli, seed_command, worker_command, scheduler_command, grant_command,
                    overlay_hub_command):
        app.cli.add_command(command)
