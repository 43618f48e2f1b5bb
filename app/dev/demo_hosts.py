"""``make run``'s demo hosts, which join like any host: ``hostkit register`` with their owner's enrollment key,
approval by the seeded admin, then ``hostkit agent``, which brings up the overlay and the engine. Over WireGuard
each runs in a namespace of its own, another machine as far as the network can tell.

One serves the demo chat model, one the demo embedding model, and one is the chat model's reference engine
(float32), which verifies the first: once both are up the model is calibrated against the demo host, which then
passes its checks and its benchmark before it serves. Without the reference (``--no-demo-reference``, a faster
start on a small machine) the demo hosts are taken as verified at approval.
"""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import click

from app import ROOT

from . import demo, demo_network

DEMO_ENGINE_PORT = 8100
DEMO_READY_TIMEOUT_SECONDS = 600
DEMO_STOP_SECONDS = 60  # the agent lets requests in flight finish, then stops its engine
DEMO_MODELS = {"smollm2": demo.DEMO_MODEL, "tiny-chat": demo.TINY_TEST_MODEL}
PROGRESS_SECONDS = 20


class DemoHosts:
    """The demo hosts of one run (``serve.Platform``), started under its supervisor; ``checkpoint`` raises when
    the run is being stopped."""

    def __init__(self, platform, checkpoint: Callable[[], None]):
        self.platform, self.checkpoint = platform, checkpoint

    def start(self, model: str, router_url: str, *, reference: bool, engine: str = "auto") -> None:
        """Start them all at once, and wait until they serve."""
        platform = self.platform
        chat, embeddings, reference_machine = platform.instance.demo_machines
        names = f"{DEMO_MODELS[model]}, {demo.DEMO_EMBEDDING_MODEL}" + (
            f" and {DEMO_MODELS[model]}'s reference engine" if reference else "")
        if reference:
            click.echo(f"Building {DEMO_MODELS[model]} for the demo host and its reference engine...")
            demo.build_shared_model(model, platform.data_dir / "engine", platform.data_dir / "engine-reference")
        engine = self.chat_engine(engine)
        click.echo(f"Starting the demo hosts: {names} on vLLM (CPU); this takes a few minutes...")
        started = time.monotonic()
        host_id = self.start_one(demo.DEMO_HOST_NAME, "demo-host", "engine", model, chat, router_url,
                                 trusted=not reference, engine=engine)
        waiting = {host_id: demo.DEMO_HOST_NAME,
                   self.start_one(demo.DEMO_EMBEDDINGS_HOST_NAME, "demo-embeddings-host", "engine-embeddings",
                                  "minilm", embeddings, router_url, trusted=not reference):
                       demo.DEMO_EMBEDDINGS_HOST_NAME}
        if reference:
            waiting[self.start_one(demo.DEMO_REFERENCE_HOST_NAME, "demo-reference-host", "engine-reference", model,
                                   reference_machine, router_url, reference=True)] = demo.DEMO_REFERENCE_HOST_NAME
        deadline, told, calibrating = time.monotonic() + DEMO_READY_TIMEOUT_SECONDS, time.monotonic(), not reference
        while waiting:
            for name in [waiting.pop(h) for h in list(waiting) if demo.ready(h)]:
                click.echo(f"The {name} is {'up' if name == demo.DEMO_REFERENCE_HOST_NAME else 'serving'}, "
                           f"{time.monotonic() - started:.0f}s after start"
                           + (" (over the WireGuard overlay)." if platform.wireguard else " (loopback overlay)."))
            if not calibrating and demo.healthy(host_id) and demo.DEMO_REFERENCE_HOST_NAME not in waiting.values():
                calibrating = True
                if demo.calibrate(host_id):
                    click.echo(f"Calibrating verification of {DEMO_MODELS[model]} against the demo host "
                               f"({demo.DEMO_CALIBRATION_CHECKS} canaries scored by the reference engine)...")
            if reference and host_id in waiting and calibrating and time.monotonic() - told > PROGRESS_SECONDS:
                told = time.monotonic()
                click.echo(f"  verifying the demo host: {demo.verification_progress(host_id)}")
            if waiting and time.monotonic() > deadline:
                raise click.ClickException(f"the {' and the '.join(waiting.values())} were not serving after "
                                           f"{DEMO_READY_TIMEOUT_SECONDS}s")
            platform.supervisor.sleep(0.5)

    @staticmethod
    def chat_engine(choice: str) -> str:
        """How the demo chat host runs its engine (``choice``: auto, podman or process): in a podman container
        where podman runs as root here (from the engine image built on this machine, once), else as a plain
        process. The host page says which."""
        from hostkit.isolation import runtime_reachable
        from hostkit.local.engine import EngineError
        from hostkit.local.image import engine_root

        if choice == "process":
            return "process"
        if os.geteuid() != 0 or not runtime_reachable("podman"):
            if choice == "podman":
                raise click.ClickException("GPUSHARE_DEMO_ENGINE=podman needs podman, run as root")
            click.echo("The demo host runs vLLM as a plain process (with podman installed and root, it would run "
                       "in an isolated container).")
            return "process"
        click.echo("The demo host runs vLLM in a podman container; building its engine image (once)...")
        try:
            engine_root()
        except EngineError as error:
            if choice == "podman":
                raise click.ClickException(f"no engine image for the demo host: {error}") from None
            click.echo(f"No engine image ({error}): the demo host runs vLLM as a plain process.")
            return "process"
        return "podman"

    def start_one(self, name: str, folder: str, engine_folder: str, model: str, machine, router_url: str, *,
                  reference: bool = False, trusted: bool = False, engine: str = "process") -> int:
        """Register, approve and start one demo host's agent on ``machine`` (an ``instance.DemoMachine``), with
        its state in ``folder`` and its engine's models, caches and logs in ``engine_folder``; a ``reference``
        is marked so before its agent starts (its engine then runs in float32), a ``trusted`` one taken as
        verified. Returns its id."""
        platform = self.platform
        state_dir, engine_dir = platform.data_dir / folder, platform.data_dir / engine_folder
        prefix = demo_network.command(machine) if platform.wireguard else []
        hostkit = [*prefix, sys.executable, "-m", "hostkit"]

        def register(key: str) -> None:
            done = subprocess.run([*hostkit, "register", "--router", router_url, "--invite", key, "--name", name,
                                   "--engine-port", str(DEMO_ENGINE_PORT), "--state-dir", str(state_dir)],
                                  cwd=ROOT, env=platform.env, capture_output=True, text=True)
            if done.returncode != 0:
                raise click.ClickException(f"the {name} could not register: {done.stderr.strip()}")
            click.echo(done.stdout.strip())

        host = demo.enroll_demo_host(state_dir, register, name)
        self.checkpoint()
        model_id = demo.DEMO_EMBEDDING_MODEL if model == "minilm" else DEMO_MODELS[model]
        host = demo.approve_demo_host(host, model_id, engine_dir / "models" / model,
                                      Path(platform.app.config["TOKENIZERS_DIR"]), reference=reference,
                                      trusted=trusted)
        click.echo(f"The {name} is approved (by {demo.DEMO_ADMIN_EMAIL}) at overlay address "
                   f"{host.overlay_address}.")
        platform.supervisor.start(f"{name}'s agent", [
            *hostkit, "agent", "--state-dir", str(state_dir), "--engine", engine, "--data-dir", str(engine_dir),
            "--heartbeat", "2", "--interface", machine.interface,
            "--authorized-keys", str(state_dir / "authorized_keys")], env=platform.env, cwd=ROOT,
            stop_seconds=DEMO_STOP_SECONDS, stop_first=True)
        return host.id

    def pay(self, public: str) -> None:
        """The demo host's owner is paid through the stand-in, so the admin's money page has a payout to show."""
        import stripe
        import urllib3

        from app.money import connect

        try:
            outcome = demo.pay_demo_host(public)
        except (connect.PayoutError, stripe.StripeError, urllib3.exceptions.HTTPError) as exc:
            click.echo(f"The demo payout could not be made ({exc}); payouts still run every hour.")
            return
        if outcome.get("paid"):
            click.echo(f"Paid the demo host's owner {demo.DEMO_HOST_EARNINGS / 1e6:.2f} USD through the Stripe "
                       "stand-in (see Admin > Money).")
