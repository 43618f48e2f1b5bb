"""``python -m app.dev.serve`` (what ``make run`` runs): migrate, seed, and run the whole platform until Ctrl-C.

The run takes a slot of its own on the machine (``instance``), starts its
janitor before anything else, then PostgreSQL and Redis (``embedded``, unless
``DATABASE_URL`` and ``REDIS_URL`` name servers), the app, and supervises the web app (gunicorn with gevent
workers), the RQ worker and scheduler, the overlay hub, the Stripe stand-in
and the demo host's agent: a process that dies is restarted with backoff.
Ctrl-C (or SIGTERM) at any moment stops what was started, in order; if this
process itself is killed, its children get SIGTERM and the janitor removes
whatever is left.
"""
from __future__ import annotations

import os
import secrets
import signal
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import click

from app import ROOT
from app.config import ConfigError
from hostkit.local.engine import CPU_THREADS_VARIABLE

from . import demo, demo_network
from .demo_hosts import DEMO_MODELS, DemoHosts
from .embedded import EmbeddedError, EmbeddedServices
from .instance import Instance, InstanceError, claim
from .janitor import RUN_MARKER, Janitor
from .supervisor import Supervisor

READY_TIMEOUT_SECONDS = 60


class Interrupted(KeyboardInterrupt):
    """Ctrl-C or SIGTERM: a BaseException, so that no ``except Exception`` on the way swallows it."""


_stop_signal: int | None = None


def _on_stop_signal(signum, frame):
    """Raise at once to break off whatever is blocking; remember it too, because a signal that lands in a
    finaliser or weakref callback has its exception swallowed (``checkpoint`` raises it again)."""
    global _stop_signal
    first = _stop_signal is None
    _stop_signal = signum
    if first:
        raise Interrupted(signal.Signals(signum).name)


def checkpoint() -> None:
    """Raise Interrupted if Ctrl-C or SIGTERM came, even if its first raise was lost."""
    if _stop_signal is not None:
        raise Interrupted(signal.Signals(_stop_signal).name)


def _python(*args: str) -> list[str]:
    return [sys.executable, *args]


def _start_services(data_dir: Path) -> EmbeddedServices | None:
    """PostgreSQL and Redis: those ``DATABASE_URL`` and ``REDIS_URL`` name, else embedded ones under the data
    directory, whose URLs go into the environment (the app and every child read them there) and into
    ``services.env`` while the run lasts (flask commands beside it read them there)."""
    if os.environ.get("DATABASE_URL") and os.environ.get("REDIS_URL"):
        return None
    services = EmbeddedServices(data_dir)
    try:
        if not os.environ.get("DATABASE_URL"):
            os.environ["DATABASE_URL"] = services.start_postgres()
        if not os.environ.get("REDIS_URL"):
            os.environ["REDIS_URL"] = services.start_redis()
    except EmbeddedError as error:
        raise click.ClickException(str(error)) from None
    services.publish(os.environ["DATABASE_URL"], os.environ["REDIS_URL"])
    return services


def _choose_overlay(instance: Instance) -> bool:
    """Settle the overlay for this run in the environment (the app and every child read it there): WireGuard
    where this machine can make interfaces, else the loopback demo overlay; this run's own network, hub
    interface and port unless set by hand. Returns whether it is WireGuard."""
    from hostkit import wireguard

    env = os.environ
    mode = env.get("OVERLAY_MODE") or "wireguard"
    if mode == "wireguard":
        can, why = wireguard.available()
        if not can:
            click.echo(f"Overlay: loopback only ({why}); hosts on other machines cannot join this router.")
            mode = "loopback"
            env["OVERLAY_NOTE"] = why
            if env.get("OVERLAY_NETWORK"):
                click.echo(f"  (OVERLAY_NETWORK={env['OVERLAY_NETWORK']} is for WireGuard: this run uses "
                           f"{instance.loopback_network})")
                env.pop("OVERLAY_NETWORK")
    env["OVERLAY_MODE"] = mode
    wireguard_mode = mode == "wireguard"
    env.setdefault("OVERLAY_NETWORK", instance.wireguard_network if wireguard_mode else instance.loopback_network)
    env.setdefault("OVERLAY_INTERFACE", instance.hub_interface)
    env.setdefault("OVERLAY_LISTEN_PORT", str(instance.hub_listen_port))
    return wireguard_mode


def _wait_ready(url: str, supervisor: Supervisor) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        supervisor.sleep(0.2)
    raise click.ClickException(f"the web server did not answer {url} within {READY_TIMEOUT_SECONDS}s; "
                               "see the log above")


class Platform:
    """One run: what it started, and how to stop it."""

    def __init__(self, app, instance: Instance, wireguard: bool, supervisor: Supervisor,
                 services: EmbeddedServices | None):
        self.app, self.instance, self.wireguard, self.supervisor = app, instance, wireguard, supervisor
        self.services = services
        self.data_dir = Path(app.config["GPUSHARE_DATA_DIR"])
        self.demo_network = self.standin = False
        self.env = self._child_env()

    def _child_env(self) -> dict[str, str]:
        """The children share this process's database, Redis and data directory."""
        env = dict(os.environ)
        config = self.app.config
        env["DATABASE_URL"] = config["SQLALCHEMY_DATABASE_URI"]
        env["REDIS_URL"] = config["REDIS_URL"]
        env["GPUSHARE_DATA_DIR"] = config["GPUSHARE_DATA_DIR"]
        env.setdefault("PYTHONUNBUFFERED", "1")
        env.setdefault(CPU_THREADS_VARIABLE, "1")  # the demo's engines share this machine's cores
        return env

    def start_stripe_standin(self, public: str) -> None:
        """With no Stripe key, the local Stripe stand-in (app/dev/stripe_standin), so credits can be bought for
        play; the web app and workers get its made-up key and webhook secret through the environment."""
        from hostkit.local.engine import free_port

        config = self.app.config
        if config["STRIPE_SECRET_KEY"] or not config["STRIPE_STANDIN"]:
            return
        port = free_port()
        settings = {"STRIPE_SECRET_KEY": f"sk_test_standin_{secrets.token_hex(16)}",
                    "STRIPE_WEBHOOK_SECRET": f"whsec_standin_{secrets.token_hex(16)}",
                    "STRIPE_CONNECT_WEBHOOK_SECRET": f"whsec_standin_{secrets.token_hex(16)}",
                    "STRIPE_API_BASE": f"http://127.0.0.1:{port}"}
        self.env.update(settings)
        config.update(settings)
        env = {**self.env, "STRIPE_STANDIN_API_KEY": settings["STRIPE_SECRET_KEY"],
               "STRIPE_STANDIN_WEBHOOK_SECRET": settings["STRIPE_WEBHOOK_SECRET"],
               "STRIPE_STANDIN_CONNECT_WEBHOOK_SECRET": settings["STRIPE_CONNECT_WEBHOOK_SECRET"]}
        click.echo(f"Starting the local Stripe stand-in on {settings['STRIPE_API_BASE']} (no real payments)...")
        self.standin = True
        state = self.data_dir / "stripe-standin.json"
        self.supervisor.start("Stripe stand-in", _python(
            "-m", "app.dev.stripe_standin", "--port", str(port), "--webhook-url", f"{public}/stripe/webhook",
            "--connect-webhook-url", f"{public}/stripe/connect-webhook", "--state", str(state)),
            env=env, cwd=ROOT)

    def run(self, host: str, port: int, workers: int, demo_model: str, demo_reference: bool,
            demo_engine: str = "auto") -> None:
        from flask_migrate import upgrade

        public = f"http://{'127.0.0.1' if host in ('0.0.0.0', '::') else host}:{port}"
        click.echo("Applying database migrations...")
        upgrade()
        checkpoint()
        click.echo(f"Model catalog: {demo.seed_models()} models added.")
        router_url, binds = public, [f"{host}:{port}"]
        if self.wireguard and demo_model != "none":
            # Each demo host gets a machine of its own; they reach the router and the hub on the first veth address.
            self.demo_network = True
            for machine in self.instance.demo_machines:
                demo_network.create(machine)
            router = self.instance.demo_machines[0].router_address
            router_url = f"http://{router}:{port}"
            binds.append(f"{router}:{port}")
            endpoint = {"OVERLAY_ENDPOINT": f"{router}:{self.instance.hub_listen_port}"}
            self.env.update(endpoint)
            self.app.config.update(endpoint)
        info = demo.ensure_demo(self.data_dir, f"{public}/v1")
        checkpoint()
        self.start_stripe_standin(public)
        click.echo(f"Starting the web app on {public} ({workers} gevent workers)...")
        self.supervisor.start("web app", _python(
            "-m", "gunicorn", "--worker-class", "gevent", "--workers", str(workers),
            *(arg for bind in binds for arg in ("--bind", bind)), "--no-control-socket", "--graceful-timeout", "20",
            "--access-logfile", "-", "--chdir", str(ROOT), "wsgi:app"), env=self.env, cwd=ROOT)
        for name, command in (("RQ worker", ["worker", "--queue", "default"]),
                              ("verification worker", ["worker", "--queue", "verification"]),
                              ("RQ scheduler", ["scheduler"])):
            click.echo(f"Starting the {name}...")
            self.supervisor.start(name, _python("-m", "flask", "--app", "wsgi", *command), env=self.env, cwd=ROOT)
        if self.wireguard:
            click.echo(f"Starting the overlay hub ({self.instance.hub_interface})...")
            self.supervisor.start("overlay hub", _python("-m", "flask", "--app", "wsgi", "overlay-hub"),
                                  env=self.env, cwd=ROOT)
        _wait_ready(f"{public}/healthz", self.supervisor)
        if demo_model != "none":
            hosts = DemoHosts(self, checkpoint)
            hosts.start(demo_model, router_url, reference=demo_reference, engine=demo_engine)
            if self.standin:
                hosts.pay(public)
        click.echo(demo.banner(info, self.data_dir / "demo.env", public, DEMO_MODELS.get(demo_model)))
        while True:
            self.supervisor.sleep(1)

    def stop(self) -> None:
        """Stop every child in order, then the demo machine, the hub's interface and the embedded servers. Each
        step runs whatever the one before it met (a database restarted under us, say)."""
        from app.extensions import db

        steps = [self.supervisor.stop]
        if self.demo_network:
            steps += [lambda machine=machine: demo_network.remove(machine.namespace, machine.veth)
                      for machine in self.instance.demo_machines]
        if self.wireguard:
            steps.append(lambda: _remove_hub(self.app.config["OVERLAY_INTERFACE"]))
        # This process's own connections go before the server they point at.
        steps += [db.session.remove, db.engine.dispose]
        if self.services is not None:
            steps.append(self.services.stop)
        for step in steps:
            try:
                step()
            except Exception as error:  # the rest must still run; the janitor sweeps after us anyway
                click.echo(f"While stopping: {type(error).__name__}: {str(error).splitlines()[0][:200]}", err=True)


def _remove_hub(interface: str) -> None:
    """The hub interface and its firewall go with the platform that made them."""
    from hostkit import wireguard
    from overlay import hub

    try:
        hub.remove(interface)
    except wireguard.WireGuardError as error:
        click.echo(f"could not remove the overlay interface: {error}", err=True)


@click.command("serve")
@click.option("--host", envvar="HOST", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", envvar="PORT", default=8000, show_default=True, type=click.IntRange(1, 65535))
@click.option("--workers", envvar="WEB_CONCURRENCY", default=2, show_default=True, type=click.IntRange(1, 64))
@click.option("--demo-model", envvar="GPUSHARE_DEMO_MODEL", default="smollm2", show_default=True,
              type=click.Choice([*DEMO_MODELS, "none"]), help="What the demo host serves; none for no demo host.")
@click.option("--demo-reference/--no-demo-reference", envvar="GPUSHARE_DEMO_REFERENCE", default=True,
              show_default=True, help="Run a reference engine that verifies the demo host; without it the demo "
                                      "hosts are taken as verified (a faster start on a small machine).")
@click.option("--demo-engine", envvar="GPUSHARE_DEMO_ENGINE", default="auto", show_default=True,
              type=click.Choice(["auto", "podman", "process"]),
              help="How the demo chat host runs vLLM: in a podman container (auto: where podman runs as root here) "
                   "or as a plain process.")
def serve(host: str, port: int, workers: int, demo_model: str, demo_reference: bool, demo_engine: str) -> None:
    """Migrate, seed, and run the platform until Ctrl-C."""
    # Explicitly: a process started with SIGINT ignored (a background job of a script) would not get Python's
    # KeyboardInterrupt.
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, _on_stop_signal)
    os.environ.setdefault(RUN_MARKER, uuid.uuid4().hex)  # every process this run starts carries it (janitor.py)
    data_dir = Path(os.environ.get("GPUSHARE_DATA_DIR") or "instance").resolve()
    os.environ["GPUSHARE_DATA_DIR"] = str(data_dir)
    public = f"http://{'127.0.0.1' if host in ('0.0.0.0', '::') else host}:{port}"
    os.environ.setdefault("GPUSHARE_PUBLIC_URL", public)
    try:
        instance, _lock = claim(data_dir)
    except InstanceError as error:
        raise click.ClickException(str(error)) from None
    platform = janitor = services = None
    supervisor = Supervisor(click.echo, checkpoint)
    try:
        wireguard = _choose_overlay(instance)
        janitor = Janitor(os.environ[RUN_MARKER], data_dir, instance, wireguard)
        services = _start_services(data_dir)
        from app import create_app

        try:
            app = create_app()
        except ConfigError as error:
            raise click.ClickException(f"refusing to start: {error}") from None
        checkpoint()
        with app.app_context():
            platform = Platform(app, instance, wireguard, supervisor, services)
            try:
                platform.run(host, port, workers, demo_model, demo_reference, demo_engine)
            finally:
                signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not strand a server
                signal.signal(signal.SIGTERM, signal.SIG_IGN)
                click.echo("\nStopping gpushare...")
                platform.stop()
    except Interrupted:
        pass
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        if platform is None:
            supervisor.stop()
            if services is not None:
                services.stop()
        if janitor is not None:
            janitor.finish()
    click.echo("Stopped.")


if __name__ == "__main__":
    serve(prog_name="python -m app.dev.serve")
