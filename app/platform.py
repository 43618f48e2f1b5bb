"""``flask serve``: migrate, seed, and run the whole platform until Ctrl-C.

It supervises the web app (gunicorn with gevent workers, running ``wsgi:app``)
and stops what it started, embedded servers included, when interrupted.
"""
from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import click
import stripe
import urllib3
from flask import current_app
from flask.cli import with_appcontext

from hostkit.engine import free_port

from . import ROOT, catalog, demo, demo_network, payouts
from .extensions import db

READY_TIMEOUT_SECONDS = 60
LOOPBACK_OVERLAY = "127.77.0.0/16"
STOP_TIMEOUT_SECONDS = 30


class Interrupted(Exception):
    pass


def _detach_from_terminal() -> None:
    """Run in the child before exec: its own process group, so Ctrl-C reaches only this
    supervisor (which then stops the child gracefully), and SIGTERM if the supervisor dies."""
    os.setsid()
    if sys.platform.startswith("linux"):
        import ctypes

        PR_SET_PDEATHSIG = 1
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def _raise_interrupted(signum, frame):
    raise Interrupted(signal.Signals(signum).name)


def _child_env() -> dict[str, str]:
    """The children share this process's database, Redis and data directory."""
    env = dict(os.environ)
    config = current_app.config
    env["DATABASE_URL"] = config["SQLALCHEMY_DATABASE_URI"]
    env["REDIS_URL"] = config["REDIS_URL"]
    env["GPUSHARE_DATA_DIR"] = config["GPUSHARE_DATA_DIR"]
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


def _gunicorn_command(binds: list[str], workers: int) -> list[str]:
    return [sys.executable, "-m", "gunicorn", "--worker-class", "gevent", "--workers", str(workers),
            *(arg for bind in binds for arg in ("--bind", bind)), "--no-control-socket", "--graceful-timeout", "20",
            "--access-logfile", "-", "--chdir", str(ROOT), "wsgi:app"]


def _wait_ready(url: str, process: subprocess.Popen) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise click.ClickException(f"the web server exited with status {process.returncode}; see the log above")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.2)
    raise click.ClickException(f"the web server did not answer {url} within {READY_TIMEOUT_SECONDS}s")


def _stop(process: subprocess.Popen, timeout: float = STOP_TIMEOUT_SECONDS) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def _banner(info: demo.Demo, env_path: Path, public: str, model: str | None) -> str:
    try_model = [
        f"  .venv/bin/python -c 'import openai; [print(c.choices[0].delta.content or \"\", end=\"\", flush=True) "
        f"for c in openai.OpenAI().chat.completions.create(model=\"{model}\", stream=True, "
        f"messages=[{{\"role\": \"user\", \"content\": \"What is the capital of France?\"}}]) if c.choices]'",
    ] if model else ["  (no demo host: start with --demo-model smollm2 to serve a model here)"]
    return "\n".join([
        "",
        f"gpushare is running at {public}",
        f"  admin: {info.admin_email} / {info.admin_password}",
        f"  demo client: {info.client_email} / {info.client_password}",
        f"  demo API key: {info.api_key}",
        f"  written to {env_path}",
        "",
        "Try it:",
        f"  set -a; . {env_path}; set +a",
        '  curl -s "$OPENAI_BASE_URL/models" -H "Authorization: Bearer $OPENAI_API_KEY"',
        *try_model,
        "",
        "Press Ctrl-C to stop.",
        "",
    ])


def _choose_overlay() -> None:
    """The WireGuard overlay where this machine can make interfaces; otherwise the loopback demo overlay,
    which the children inherit and the pages show."""
    from hostkit import wireguard

    config = current_app.config
    if config["OVERLAY_MODE"] != "wireguard":
        return
    can, why = wireguard.available()
    if can:
        return
    click.echo(f"Overlay: loopback only ({why}); hosts on other machines cannot join this router.")
    overrides = {"OVERLAY_MODE": "loopback", "OVERLAY_NETWORK": LOOPBACK_OVERLAY, "OVERLAY_NOTE": why}
    os.environ.update(overrides)
    config.update(overrides)


def _remove_hub() -> None:
    """The hub interface and its firewall go with the platform that made them."""
    from hostkit import wireguard
    from overlay import hub

    wireguard.remove_rules(hub.FIREWALL_TABLE)
    try:
        wireguard.Interface(current_app.config["OVERLAY_INTERFACE"]).delete()
    except wireguard.WireGuardError as error:
        click.echo(f"could not remove the overlay interface: {error}", err=True)


DEMO_ENGINE_PORT = 8100
DEMO_INTERFACE = "gpushare-demo"
DEMO_READY_TIMEOUT_SECONDS = 600
DEMO_STOP_SECONDS = 60  # the agent lets requests in flight finish, then stops its engine
DEMO_MODELS = {"smollm2": catalog.DEMO_MODEL, "tiny-chat": catalog.TINY_TEST_MODEL}


def _start_stripe_standin(public: str) -> subprocess.Popen | None:
    """With no Stripe key, start the local Stripe stand-in (app/stripe_standin.py) so credits can be bought
    for play; the web app and workers get its made-up key and webhook secret through the environment."""
    config = current_app.config
    if config["STRIPE_SECRET_KEY"] or not config["STRIPE_STANDIN"]:
        return None
    port = free_port()
    settings = {"STRIPE_SECRET_KEY": f"sk_test_standin_{secrets.token_hex(16)}",
                "STRIPE_WEBHOOK_SECRET": f"whsec_standin_{secrets.token_hex(16)}",
                "STRIPE_CONNECT_WEBHOOK_SECRET": f"whsec_standin_{secrets.token_hex(16)}",
                "STRIPE_API_BASE": f"http://127.0.0.1:{port}"}
    os.environ.update(settings)
    config.update(settings)
    env = {**_child_env(), "STRIPE_STANDIN_API_KEY": settings["STRIPE_SECRET_KEY"],
           "STRIPE_STANDIN_WEBHOOK_SECRET": settings["STRIPE_WEBHOOK_SECRET"],
           "STRIPE_STANDIN_CONNECT_WEBHOOK_SECRET": settings["STRIPE_CONNECT_WEBHOOK_SECRET"]}
    click.echo(f"Starting the local Stripe stand-in on {settings['STRIPE_API_BASE']} (no real payments)...")
    state = Path(config["GPUSHARE_DATA_DIR"]) / "stripe-standin.json"
    return subprocess.Popen([sys.executable, "-m", "app.stripe_standin", "--port", str(port),
                             "--webhook-url", f"{public}/stripe/webhook",
                             "--connect-webhook-url", f"{public}/stripe/connect-webhook", "--state", str(state)],
                            env=env, cwd=ROOT, preexec_fn=_detach_from_terminal)


def _start_demo_host(model: str, data_dir: Path, router_url: str, own_machine: bool, env: dict):
    """The demo host joins like any host: ``hostkit register`` with its owner's enrollment key, approval by
    the seeded admin, then ``hostkit agent``, which brings up the overlay and the engine. With
    ``own_machine`` it runs in the demo namespace, a second machine as far as the network can tell."""
    from app.models import Host

    state_dir, engine_dir = data_dir / "demo-host", data_dir / "engine"
    prefix = demo_network.command() if own_machine else []
    hostkit = [*prefix, sys.executable, "-m", "hostkit"]

    def register(key: str) -> None:
        done = subprocess.run([*hostkit, "register", "--router", router_url, "--invite", key, "--name",
                               demo.DEMO_HOST_NAME, "--engine-port", str(DEMO_ENGINE_PORT),
                               "--state-dir", str(state_dir)], cwd=ROOT, env=env, capture_output=True, text=True)
        if done.returncode != 0:
            raise click.ClickException(f"the demo host could not register: {done.stderr.strip()}")
        click.echo(done.stdout.strip())

    click.echo(f"Starting the demo host: {DEMO_MODELS[model]} on vLLM (CPU); this takes about a minute...")
    started = time.monotonic()
    host = demo.enroll_demo_host(state_dir, register)
    host = demo.approve_demo_host(host, DEMO_MODELS[model], engine_dir / "models" / model,
                                  Path(current_app.config["TOKENIZERS_DIR"]))
    click.echo(f"The demo host is approved (by {demo.DEMO_ADMIN_EMAIL}) at overlay address {host.overlay_address}.")
    agent = subprocess.Popen([*hostkit, "agent", "--state-dir", str(state_dir), "--engine", "process",
                              "--data-dir", str(engine_dir), "--heartbeat", "2", "--interface", DEMO_INTERFACE,
                              "--authorized-keys", str(state_dir / "authorized_keys")],
                             cwd=ROOT, env=env, preexec_fn=_detach_from_terminal)
    host_id, deadline = host.id, time.monotonic() + DEMO_READY_TIMEOUT_SECONDS
    while not db.session.get(Host, host_id, populate_existing=True).healthy:
        db.session.commit()
        if agent.poll() is not None:
            raise click.ClickException(f"the demo host's agent exited with status {agent.returncode}")
        if time.monotonic() > deadline:
            _stop(agent, DEMO_STOP_SECONDS)
            raise click.ClickException(f"the demo host was not serving after {DEMO_READY_TIMEOUT_SECONDS}s")
        time.sleep(0.5)
    click.echo(f"Demo host ready in {time.monotonic() - started:.0f}s"
               + (" (over the WireGuard overlay)." if own_machine else " (loopback overlay)."))
    return agent


def _pay_demo_host(public: str) -> None:
    """The demo host's owner is paid through the stand-in, so the admin's money page has a payout to show."""
    try:
        outcome = demo.pay_demo_host(public)
    except (payouts.PayoutError, stripe.StripeError, urllib3.exceptions.HTTPError) as exc:
        click.echo(f"The demo payout could not be made ({exc}); payouts still run every hour.")
        return
    if outcome.get("paid"):
        click.echo(f"Paid the demo host's owner {demo.DEMO_HOST_EARNINGS / 1e6:.2f} USD through the Stripe stand-in "
                   "(see Admin > Money).")


@click.command("serve")
@click.option("--host", envvar="HOST", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", envvar="PORT", default=8000, show_default=True, type=click.IntRange(1, 65535))
@click.option("--workers", envvar="WEB_CONCURRENCY", default=2, show_default=True, type=click.IntRange(1, 64))
@click.option("--demo-model", envvar="GPUSHARE_DEMO_MODEL", default="smollm2", show_default=True,
              type=click.Choice([*DEMO_MODELS, "none"]), help="What the demo host serves; none for no demo host.")
@with_appcontext
def serve_command(host: str, port: int, workers: int, demo_model: str) -> None:
    """Migrate, seed, and run the platform until Ctrl-C."""
    from flask_migrate import upgrade

    signal.signal(signal.SIGTERM, _raise_interrupted)
    data_dir = Path(current_app.config["GPUSHARE_DATA_DIR"])
    public = f"http://{'127.0.0.1' if host in ('0.0.0.0', '::') else host}:{port}"
    children: list[subprocess.Popen] = []
    agent = None
    own_machine = False
    try:
        click.echo("Applying database migrations...")
        upgrade()
        click.echo(f"Model catalog: {catalog.seed()} models added.")
        _choose_overlay()
        wireguard = current_app.config["OVERLAY_MODE"] == "wireguard"
        router_url, binds = public, [f"{host}:{port}"]
        if wireguard and demo_model != "none":
            # The demo host gets a machine of its own; it reaches the router and the hub on the veth address.
            demo_network.create()
            own_machine = True
            router_url = f"http://{demo_network.ROUTER_ADDRESS}:{port}"
            binds.append(f"{demo_network.ROUTER_ADDRESS}:{port}")
            hub_port = current_app.config["OVERLAY_LISTEN_PORT"]
            endpoint = {"OVERLAY_ENDPOINT": f"{demo_network.ROUTER_ADDRESS}:{hub_port}"}
            os.environ.update(endpoint)
            current_app.config.update(endpoint)
        info = demo.ensure_demo(data_dir, f"{public}/v1")
        standin = _start_stripe_standin(public)
        if standin is not None:
            children.append(standin)
        click.echo(f"Starting the web app on {public} ({workers} gevent workers)...")
        env = _child_env()
        web = subprocess.Popen(_gunicorn_command(binds, workers), env=env, cwd=ROOT,
                               preexec_fn=_detach_from_terminal)
        children.append(web)
        for command in ("worker", "scheduler"):
            click.echo(f"Starting the RQ {command}...")
            children.append(subprocess.Popen([sys.executable, "-m", "flask", "--app", "wsgi", command], env=env,
                                             cwd=ROOT, preexec_fn=_detach_from_terminal))
        if wireguard:
            click.echo(f"Starting the overlay hub ({current_app.config['OVERLAY_INTERFACE']})...")
            children.append(subprocess.Popen([sys.executable, "-m", "flask", "--app", "wsgi", "overlay-hub"],
                                             env=env, cwd=ROOT, preexec_fn=_detach_from_terminal))
        _wait_ready(f"{public}/healthz", web)
        if demo_model != "none":
            agent = _start_demo_host(demo_model, data_dir, router_url, own_machine, env)
        if standin is not None and demo_model != "none":
            _pay_demo_host(public)
        click.echo(_banner(info, data_dir / "demo.env", public, DEMO_MODELS.get(demo_model)))
        while all(child.poll() is None for child in [*children, *([agent] if agent else [])]):
            time.sleep(0.5)
        raise click.ClickException("a platform process exited unexpectedly; stopping the rest")
    except (KeyboardInterrupt, Interrupted):
        click.echo("\nStopping gpushare...")
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not strand a server
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        if agent is not None:
            _stop(agent, DEMO_STOP_SECONDS)
        for child in reversed(children):
            _stop(child)
        if own_machine:
            demo_network.remove()
        if current_app.config["OVERLAY_MODE"] == "wireguard":
            _remove_hub()
        db.session.remove()  # this process's own connections go before the server they point at
        db.engine.dispose()
        services = current_app.extensions.get("embedded")
        if services is not None:
            services.stop()
        click.echo("Stopped.")
