"""``flask`` commands: admin accounts, seeding, and ``serve`` (the whole platform on one machine)."""
from __future__ import annotations

import click
from flask import Flask
from flask.cli import AppGroup

from . import accounts, catalog

admin_cli = AppGroup("admin", help="Manage admin accounts.")


@admin_cli.command("create")
@click.argument("email")
@click.option("--password", envvar="GPUSHARE_ADMIN_PASSWORD", help="Asked for when not given.")
def create_admin(email: str, password: str | None) -> None:
    """Create an admin account, or make an existing account an admin."""
    from . import audit
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
    added = catalog.seed()
    click.echo(f"Model catalog: {added} added.")


def register_cli(app: Flask) -> None:
    from .platform import serve_command

    app.cli.add_command(admin_cli)
    app.cli.add_command(seed_command)
    app.cli.add_command(serve_command)
