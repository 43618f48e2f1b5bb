"""``hostkit agent``: the host's long-running daemon (a systemd unit on real hosts).

It waits for the admin's approval, brings up the overlay (WireGuard to the
router's hub, and the firewall that keeps the engine reachable from the hub
alone), runs the engine on the overlay address, and sends heartbeats. Each
heartbeat's answer says what the dashboard and ``hostkit up``/``down``/
``schedule`` ask of this host: when it should not serve (disabled, down,
outside its schedule, suspended, no model chosen) the agent lets the requests
in flight finish, then stops the engine and frees the GPU; when it should,
it starts the engine again.
"""
from __future__ import annotations

import argparse
import ipaddress
import re
import signal
import sys
import threading
import time
from pathlib import Path

from hostkit import diagnostics, wireguard
from hostkit.client import DEFAULT_STATE_DIR, HostkitError, Router
from hostkit.engine_flags import parser_settings
from hostkit.engines import engine_metrics, log, pick_engine
from hostkit.isolation import Limits

DEFAULT_INTERFACE = "gpushare0"
FIREWALL_TABLE = "gpushare_host"
SSH_PORT = 22
# After the router is told to stop sending, its processes may still route for a couple of seconds
# (they reload their routing tables every ROUTING_REFRESH_SECONDS, 2 by default).
ROUTING_GRACE_SECONDS = 3
DRAIN_TIMEOUT_SECONDS = 600
# An engine that exits or fails to start is started again after a backoff that doubles with each failure in a
# row, up to the maximum; one that has run this long since its last start counts as healthy again.
ENGINE_BACKOFF_SECONDS = 5
ENGINE_MAX_BACKOFF_SECONDS = 300
ENGINE_STABLE_SECONDS = 300
# Reasons not to serve clients for which the engine still runs: it must pass a health check, staged hosts are
# checked before any client traffic, and a reference engine checks other hosts.
ENGINE_RUNS_FOR = ("unhealthy", "staged", "reference")
ENGINE_DTYPES = ("float32",)  # what the router may ask an engine to run in (a reference's full precision)


class Agent:
    def __init__(self, router: Router, *, interface: str, engine, heartbeat_seconds: float,
                 authorized_keys: Path = diagnostics.AUTHORIZED_KEYS):
        self.router, self.engine, self.authorized_keys = router, engine, authorized_keys
        self.interface_name, self.heartbeat_seconds = interface, heartbeat_seconds
        self.stopping = threading.Event()
        self.overlay: dict | None = None
        self.state = "waiting"  # waiting, starting, running, draining, stopped, failed
        self.error: str | None = None
        self._last_generated: tuple[float, float] | None = None
        self._announced: str | None = None
        self.engine_failures = 0
        self.engine_started_at = 0.0
        self.retry_at = 0.0

    # The overlay ---------------------------------------------------------------------------------------------
    def join_overlay(self) -> dict:
        config = self.router.overlay()
        if config["mode"] == "loopback":
            log(f"overlay: loopback demo mode, engine on {config['address']} (no tunnel)")
            return config
        can, why = wireguard.available()
        if not can:
            raise HostkitError(f"cannot join the overlay: {why}")
        interface = wireguard.Interface(self.interface_name)
        how = interface.create()
        hub = config["hub_address"]
        interface.configure(self.router.private_key(), f"{config['address']}/32",
                            routes=(str(ipaddress.ip_network(hub)),))
        interface.set_peer(config["hub_public_key"], (str(ipaddress.ip_network(hub)),),
                           endpoint=config["hub_endpoint"], keepalive=config.get("keepalive"))
        wireguard.apply_rules(wireguard.host_rules(self.interface_name, config["address"], hub,
                                                   (config["engine_port"], SSH_PORT), FIREWALL_TABLE),
                              FIREWALL_TABLE)
        if config.get("diagnostics_key"):
            diagnostics.install_platform_key(config["diagnostics_key"], hub, self.authorized_keys)
        log(f"overlay: {self.interface_name} ({how}) at {config['address']}, hub {hub} via {config['hub_endpoint']}")
        return config

    # The engine ----------------------------------------------------------------------------------------------
    def wanted_model(self, host: dict) -> str | None:
        """The model to serve now, or None when this host should not serve: the router's answer decides. An engine
        runs while it waits for its first passing health check (to pass it), while staged (verification checks it
        before any client traffic), and on a reference host (it checks the others)."""
        run = host["serving"] or (host.get("reason") or {}).get("code") in ENGINE_RUNS_FOR
        return host["models"][0] if run and host["models"] else None

    def drain_and_stop(self) -> None:
        """Let requests in flight finish (the router has stopped sending new ones), then stop the engine."""
        self.state = "draining"
        self.heartbeat_quietly()
        time.sleep(ROUTING_GRACE_SECONDS)
        deadline, idle = time.monotonic() + DRAIN_TIMEOUT_SECONDS, 0
        while idle < 2 and time.monotonic() < deadline and self.engine.alive():
            metrics = engine_metrics(self.engine.root_url)
            idle = idle + 1 if metrics.get("running", 0) + metrics.get("waiting", 0) == 0 else 0
            if idle < 2:
                time.sleep(0.5)
        log("engine drained; stopping it")
        self.engine.stop()
        self.state = "stopped"

    def follow(self, host: dict) -> None:
        model = self.wanted_model(host)
        dtype = host.get("engine_dtype") if host.get("engine_dtype") in ENGINE_DTYPES else None
        running = self.engine.model if self.engine.alive() else None
        if running is not None and model == running and dtype != self.engine.dtype:
            log(f"stopping {running}: it is to run with dtype {dtype or 'auto'}")
            self.drain_and_stop()
            running = None
        if model == running:
            if model is None and self.state not in ("failed",):
                self.state = "stopped" if host["status"] == "approved" else "waiting"
            return
        if running is not None:
            log(f"stopping {running}: " + ("serving " + model if model else "this host should not serve now"))
            self.drain_and_stop()
        if model is None or self.stopping.is_set():  # a stop asked for meanwhile starts nothing
            return
        if self.overlay is None:
            self.overlay = self.join_overlay()
        self.state = "starting"
        self.heartbeat_quietly()
        log(f"starting the engine: {model} on {self.overlay['address']}:{self.overlay['engine_port']}")
        try:
            self.engine.start(model, self.overlay["address"], self.overlay["engine_port"], dtype=dtype,
                              **parser_settings((host.get("parsers") or {}).get(model)))
        except HostkitError as error:
            self.engine_failed(str(error))
            return
        self.state, self.error = "running", None
        self.engine_started_at = time.monotonic()
        log(f"engine ready: {model}")

    def engine_failed(self, why: str) -> None:
        """The engine exited or would not start: report it, and try again after a backoff."""
        if self.engine_started_at and time.monotonic() - self.engine_started_at >= ENGINE_STABLE_SECONDS:
            self.engine_failures = 0  # it had served well: this failure starts a new count
        self.engine_started_at = 0.0  # failures to start again count on from here
        self.engine_failures += 1
        delay = min(ENGINE_MAX_BACKOFF_SECONDS, ENGINE_BACKOFF_SECONDS * 2 ** (self.engine_failures - 1))
        self.state, self.error = "failed", why
        self.retry_at = time.monotonic() + delay
        headline, _, details = why.partition("\n")
        log(f"{headline.rstrip(':')}; starting it again in {delay:.0f}s" + (f"\n{details}" if details else ""))

    def check_engine(self) -> None:
        """An engine that died is stopped for good (its whole process group, so nothing of it keeps the GPU)
        and reported; ``follow`` starts it again once its backoff has passed."""
        if self.engine.model and not self.engine.alive():
            how = self.engine.exit_reason()
            self.engine.stop()
            self.engine_failed(f"the engine exited{how}")

    # Heartbeats ----------------------------------------------------------------------------------------------
    def report(self) -> dict:
        alive = self.engine.alive()  # asked once: for a container, each ask is a call to its runtime
        report = {"engine": self.state, "engine_kind": self.engine.kind,
                  "models": [self.engine.model] if alive and self.engine.model else [],
                  "overlay": (self.overlay or {}).get("mode")}
        if self.error:
            report["error"] = self.error[-2000:]  # the end of an engine log says most
        if alive:
            metrics = engine_metrics(self.engine.root_url)
            report |= {"queue_depth": int(metrics.get("waiting", 0)), "running": int(metrics.get("running", 0)),
                       "max_model_len": getattr(self.engine, "max_model_len", None)}
            now, generated = time.monotonic(), metrics.get("generated", 0.0)
            if self._last_generated is not None and now > self._last_generated[0]:
                rate = (generated - self._last_generated[1]) / (now - self._last_generated[0])
                report["tokens_per_second"] = round(max(rate, 0.0), 2)
            self._last_generated = (now, generated)
        return report

    def heartbeat_quietly(self) -> dict | None:
        try:
            return self.router.heartbeat(self.report())
        except HostkitError as error:
            log(f"heartbeat failed: {error}")
            return None

    def announce(self, host: dict) -> None:
        status = host["status"]
        if status != self._announced:
            self._announced = status
            messages = {"pending": "waiting for an admin to approve this host",
                        "suspended": "this host is suspended; the engine stays off until an admin reinstates it",
                        "approved": "approved"}
            log(messages.get(status, status))

    def leave_overlay(self) -> None:
        """Take the tunnel and its firewall down (at stop: a userspace tunnel would outlive the agent)."""
        if self.overlay is None or self.overlay.get("mode") == "loopback":
            return
        wireguard.remove_rules(FIREWALL_TABLE)
        wireguard.Interface(self.interface_name).delete()
        self.overlay = None

    def run(self) -> int:
        try:
            return self._run()
        finally:
            self.leave_overlay()

    def _run(self) -> int:
        host = self.router.me()
        while not self.stopping.is_set():
            self.announce(host)
            if host["status"] == "rejected":
                log("an admin rejected this host; register it again with a new enrollment key")
                return 1
            self.check_engine()
            if time.monotonic() >= self.retry_at:
                self.follow(host)
            host = self.heartbeat_quietly() or host
            self.stopping.wait(self.heartbeat_seconds)
        if self.engine.alive():
            self.drain_and_stop()
            self.heartbeat_quietly()
        return 0


def _size(value: str) -> str:
    """A memory size as the container runtimes take it: digits and a unit, "16g", "512m"."""
    if not re.fullmatch(r"[1-9][0-9]*[bkmg]", value.lower()):
        raise argparse.ArgumentTypeError(f"{value!r} is not a size such as 16g or 512m")
    return value.lower()


class Stopping(BaseException):
    """SIGINT or SIGTERM while the engine starts: the start is broken off (and what it began stopped), not
    waited for."""


def _stop_handler(agent: Agent):
    def handler(signum, frame):
        agent.stopping.set()
        if agent.state == "starting":
            raise Stopping()
    return handler


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="hostkit agent", description=__doc__.splitlines()[0])
    parser.add_argument("--state-dir", type=Path, default=DEFAULT_STATE_DIR)
    parser.add_argument("--interface", default=DEFAULT_INTERFACE, help="the WireGuard interface's name")
    parser.add_argument("--heartbeat", type=float, default=15, help="seconds between heartbeats")
    parser.add_argument("--engine", choices=("auto", "docker", "podman", "process"), default="auto",
                        help="docker, podman: vLLM in an isolated container; process: vLLM from a virtualenv, "
                             "not isolated; auto: the first of these this machine can run")
    parser.add_argument("--engine-venv", default=None,
                        help="the engine virtualenv (the process engine's, and what podman's local image holds)")
    parser.add_argument("--engine-image", default=None,
                        help="the container's image (default: vLLM's own; podman without a GPU: a local one)")
    limits = parser.add_argument_group("the engine container's limits")
    limits.add_argument("--engine-memory", default=Limits.memory, type=_size,
                        help=f"memory, no swap (default {Limits.memory})")
    limits.add_argument("--engine-pids", default=Limits.pids, type=int, help=f"processes (default {Limits.pids})")
    limits.add_argument("--engine-cpus", default=None, type=float, help="CPUs (default all)")
    limits.add_argument("--gpus", default="all", help='the GPUs it may use: "all" or indices, "0,2"')
    parser.add_argument("--data-dir", type=Path, default=None,
                        help="models, caches and logs (default STATE_DIR/engine)")
    parser.add_argument("--authorized-keys", type=Path, default=Path(diagnostics.AUTHORIZED_KEYS),
                        help="where the platform's diagnostics key is allowed to run `hostkit check --json`")
    args = parser.parse_args(argv)
    try:
        router = Router(args.state_dir)
        engine = pick_engine(args.engine, args.data_dir or args.state_dir / "engine", args.engine_venv,
                             image=args.engine_image, gpus=args.gpus,
                             limits=Limits(memory=args.engine_memory, pids=args.engine_pids, cpus=args.engine_cpus))
        agent = Agent(router, interface=args.interface, engine=engine, heartbeat_seconds=args.heartbeat,
                      authorized_keys=args.authorized_keys)
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, _stop_handler(agent))
        return agent.run()
    except Stopping:
        log("stopped while the engine was starting")
        return 0
    except (HostkitError, wireguard.WireGuardError) as error:
        print(f"hostkit agent: {error}", file=sys.stderr)
        return 1
