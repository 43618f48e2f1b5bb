"""The overlay as the platform runs it: each host's WireGuard configuration, and the hub daemon.

``flask --app wsgi overlay-hub`` runs on the router machine as root. It makes
the hub interface and its firewall, then keeps the hub's peers equal to the
approved hosts: at start, whenever a host is approved, suspended or rejected
(a Redis message, so a suspended host is cut off at once), and every
``OVERLAY_RECONCILE_SECONDS`` in case a message was missed.
"""
from __future__ import annotations

import ipaddress
import signal
import sys
import time
from functools import cache
from pathlib import Path
from urllib.parse import urlsplit

import click
from flask import current_app
from flask.cli import with_appcontext
from redis.exceptions import RedisError
from sqlalchemy import select, update
from sqlalchemy.exc import SQLAlchemyError

from hostkit import wireguard
from overlay import hub

from ..extensions import db, redis_client
from ..models import Host
from . import diagnostics


@cache
def _public_key(key_file: str) -> str:
    return wireguard.public_key(hub.load_private_key(Path(key_file)))


def hub_public_key() -> str:
    return _public_key(current_app.config["OVERLAY_PRIVATE_KEY_FILE"])


def hub_endpoint() -> str:
    config = current_app.config
    if config["OVERLAY_ENDPOINT"]:
        return config["OVERLAY_ENDPOINT"]
    return f"{urlsplit(config['PUBLIC_URL']).hostname}:{config['OVERLAY_LISTEN_PORT']}"


def config_for(host: Host) -> dict:
    """What ``hostkit agent`` needs to join the overlay (an approved host only)."""
    config = current_app.config
    network = ipaddress.ip_network(config["OVERLAY_NETWORK"])
    answer = {"mode": config["OVERLAY_MODE"], "address": str(host.overlay_address),
              "network": str(network), "hub_address": str(next(network.hosts())), "engine_port": host.engine_port,
              "diagnostics_key": diagnostics.platform_public_key()}
    if config["OVERLAY_MODE"] == "wireguard":
        answer |= {"hub_public_key": hub_public_key(), "hub_endpoint": hub_endpoint(),
                   "keepalive": wireguard.KEEPALIVE_SECONDS}
    return answer


def wanted() -> list[hub.Wanted]:
    rows = db.session.execute(select(Host.public_key, Host.overlay_address, Host.wg_endpoint)
                              .where(Host.status == "approved", Host.overlay_address.is_not(None),
                                     Host.public_key.is_not(None)))
    return [hub.Wanted(key, str(address), endpoint) for key, address, endpoint in rows]


def reconcile(the_hub: hub.Hub) -> hub.Changes:
    changes = the_hub.reconcile(wanted())
    for key, endpoint in (changes.endpoints or {}).items():
        db.session.execute(update(Host).where(Host.public_key == key, Host.wg_endpoint.is_distinct_from(endpoint))
                           .values(wg_endpoint=endpoint))
    db.session.commit()
    return changes


@click.command("overlay-hub")
@click.option("--once", is_flag=True, help="Bring the hub up, reconcile once and exit.")
@with_appcontext
def overlay_hub_command(once: bool) -> None:
    """Run the router's WireGuard hub (as root): peers follow the approved hosts."""
    config = current_app.config
    if config["OVERLAY_MODE"] != "wireguard":
        raise click.ClickException(f"OVERLAY_MODE is {config['OVERLAY_MODE']}: there is no hub to run")
    can, why = wireguard.available()
    if not can:
        raise click.ClickException(f"cannot run the overlay hub: {why}")
    private = hub.load_private_key(Path(config["OVERLAY_PRIVATE_KEY_FILE"]))
    the_hub = hub.Hub(config["OVERLAY_INTERFACE"], config["OVERLAY_NETWORK"], private, config["OVERLAY_LISTEN_PORT"])
    try:
        how = the_hub.up()
    except wireguard.WireGuardError as error:
        raise click.ClickException(f"cannot bring the hub up: {error}") from None
    click.echo(f"Overlay hub {config['OVERLAY_INTERFACE']} ({how}) at {the_hub.address}, "
               f"listening on UDP {config['OVERLAY_LISTEN_PORT']}", err=True)
    if once:
        reconcile(the_hub)
        return
    # Stopped, it takes its interface down: a userspace one (wireguard-go) would outlive it otherwise.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        _serve(the_hub, config["OVERLAY_RECONCILE_SECONDS"])
    except KeyboardInterrupt:
        pass
    finally:
        the_hub.down()
        click.echo(f"Overlay hub {config['OVERLAY_INTERFACE']} removed", err=True)


def _serve(the_hub: hub.Hub, period: int) -> None:
    subscription = None
    while True:
        try:
            changes = reconcile(the_hub)
        except SQLAlchemyError as error:  # the database is away: keep the peers we have, try again shortly
            db.session.rollback()
            click.echo(f"Overlay: cannot read the approved hosts ({type(error).__name__}); retrying", err=True)
            time.sleep(min(period, 5))
            continue
        if changes.added or changes.removed:
            click.echo(f"Overlay peers: {len(changes.added)} added, {len(changes.removed)} removed", err=True)
        subscription = _wait_for_change(subscription, period)


def _wait_for_change(subscription, period: float):
    """Until a host's approval changes (a Redis message) or ``period`` passes; without Redis, the period alone.
    Returns the subscription to wait on next time (None after Redis failed)."""
    deadline = time.monotonic() + period
    try:
        if subscription is None:
            subscription = redis_client.pubsub(ignore_subscribe_messages=True)
            subscription.subscribe(hub.CHANNEL)
        while (left := deadline - time.monotonic()) > 0:
            if subscription.get_message(timeout=left) is not None:
                break
        return subscription
    except RedisError:
        if subscription is not None:
            subscription.close()
        time.sleep(max(deadline - time.monotonic(), 0))
        return None
