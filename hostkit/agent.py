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
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

from hostkit import diagnostics, wireguard
from hostkit.client import DEFAULT_STATE_DIR, HostkitError, Router
from hostkit.engine_flags import parser_args, parser_settings

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
VLLM_IMAGE = "vllm/vllm-openai:v0.32.0"  # the vLLM of hostkit/requirements-engine.txt


def log(message: str) -> None:
    print(f"hostkit agent: {message}", file=sys.stderr, flush=True)


def engine_metrics(root_url: str) -> dict[str, float]:
    """vLLM's Prometheus gauges and counters that the agent reports and drains on."""
    try:
        with urllib.request.urlopen(f"{root_url}/metrics", timeout=5) as response:
            text = response.read().decode()
    except (urllib.error.URLError, OSError):
        return {}
    wanted = {"vllm:num_requests_running": "running", "vllm:num_requests_waiting": "waiting",
              "vllm:generation_tokens_total": "generated"}
    values: dict[str, float] = {}
    for line in text.splitlines():
        name = line.split("{", 1)[0].split(" ", 1)[0]
        if name in wanted:
            values[wanted[name]] = values.get(wanted[name], 0.0) + float(line.rsplit(" ", 1)[1])
    return values


class ProcessEngine:
    """vLLM as a process on this machine (no Docker): the CPU build for the models hostkit can build locally."""

    kind = "process"

    def __init__(self, data_dir: Path, venv: str | None):
        self.data_dir, self.venv = data_dir, venv
        self.engine = None
        self.model: str | None = None

    def start(self, model: str, host: str, port: int, **parsers):
        """``parsers``: ``tool_call_parser`` and ``reasoning_parser`` (``engine_flags.parser_settings``)."""
        from hostkit.local.engine import EngineError, serve
        from hostkit.local.groups import stop_leftover
        from hostkit.local.models import SERVED_NAMES

        local = {served: name for name, served in SERVED_NAMES.items()}
        if model not in local:
            raise HostkitError(f"{model} needs a GPU engine (Docker with the NVIDIA runtime); without Docker this "
                               f"machine serves {', '.join(local)} only")
        pid_file = self.data_dir / "engine.pid"
        if (leftover := stop_leftover(pid_file)) is not None:
            log(f"stopped the engine a previous agent left running (process group {leftover})")
        try:
            self.engine = serve(local[model], self.data_dir, host=host, port=port, venv=self.venv,
                                die_with_parent=True, pid_file=pid_file, **parsers)
        except EngineError as error:
            raise HostkitError(f"the engine did not start: {error}") from None
        self.model = model

    @property
    def root_url(self) -> str:
        return self.engine.root_url

    @property
    def max_model_len(self) -> int | None:
        return self.engine.max_model_len if self.engine else None

    def alive(self) -> bool:
        return self.engine is not None and self.engine.alive()

    def exit_status(self) -> int | None:
        process = self.engine.process if self.engine else None
        return process.poll() if process else None

    def stop(self) -> None:
        if self.engine is not None:
            self.engine.stop()
        self.engine, self.model = None, None


class DockerEngine:
    """vLLM's own image on a GPU host, with the NVIDIA runtime, listening on the overlay address only."""

    kind = "docker"
    container = "gpushare-engine"

    def __init__(self, image: str, ready_timeout: float = 1800):
        self.image, self.ready_timeout = image, ready_timeout
        self.model: str | None = None
        self.host = self.port = None
        self.max_model_len = None

    def start(self, model: str, host: str, port: int, **parsers):
        subprocess.run(["docker", "rm", "-f", self.container], capture_output=True)
        command = ["docker", "run", "--detach", "--name", self.container, "--gpus", "all", "--ipc", "host",
                   "--network", "host", "--volume", "/var/lib/hostkit/hf-cache:/root/.cache/huggingface",
                   self.image, "--model", model, "--served-model-name", model, "--host", host, "--port", str(port),
                   *parser_args(**parsers)]
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode != 0:
            raise HostkitError(f"docker run {self.image}: {done.stderr.strip()}")
        self.model, self.host, self.port = model, host, port
        try:
            self._wait_ready()
        except BaseException:  # not ready, or the agent is stopping: the container goes
            self.stop()
            raise

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.ready_timeout
        while time.monotonic() < deadline:
            if not self.alive():
                raise HostkitError(f"the engine container exited; see `docker logs {self.container}`")
            try:
                with urllib.request.urlopen(f"{self.root_url}/v1/models", timeout=5):
                    return
            except (urllib.error.URLError, OSError):
                time.sleep(2)
        raise HostkitError(f"the engine was not ready after {self.ready_timeout:.0f}s")

    @property
    def root_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def alive(self) -> bool:
        done = subprocess.run(["docker", "inspect", "-f", "{{.State.Running}}", self.container],
                              capture_output=True, text=True)
        return done.returncode == 0 and done.stdout.strip() == "true"

    def exit_status(self) -> int | None:
        done = subprocess.run(["docker", "inspect", "-f", "{{.State.ExitCode}}", self.container],
                              capture_output=True, text=True)
        return int(done.stdout) if done.returncode == 0 and done.stdout.strip().lstrip("-").isdigit() else None

    def stop(self) -> None:
        subprocess.run(["docker", "stop", "--time", "30", self.container], capture_output=True)
        subprocess.run(["docker", "rm", "-f", self.container], capture_output=True)
        self.model = None


def pick_engine(kind: str, data_dir: Path, venv: str | None):
    if kind == "auto":
        docker = shutil.which("docker") is not None and subprocess.run(
            ["docker", "info", "--format", "{{json .Runtimes}}"], capture_output=True, text=True
        ).stdout.find("nvidia") >= 0
        kind = "docker" if docker else "process"
    return DockerEngine(VLLM_IMAGE) if kind == "docker" else ProcessEngine(data_dir, venv)


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
        waiting for its first passing health check runs, to pass it."""
        run = host["serving"] or (host.get("reason") or {}).get("code") == "unhealthy"
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
        running = self.engine.model if self.engine.alive() else None
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
            self.engine.start(model, self.overlay["address"], self.overlay["engine_port"],
                              **parser_settings((host.get("parsers") or {}).get(model)))
        except HostkitError as error:
            self.engine_failed(str(error))
            return
        self.state, self.error = "running", None
        self.engine_started_at = time.monotonic()
        log(f"engine ready: {model}")

    def engine_failed(self, why: str) -> None:
        """The engine exited or would not start: report it, and try again after a backoff."""
        if time.monotonic() - self.engine_started_at >= ENGINE_STABLE_SECONDS:
            self.engine_failures = 0
        self.engine_failures += 1
        delay = min(ENGINE_MAX_BACKOFF_SECONDS, ENGINE_BACKOFF_SECONDS * 2 ** (self.engine_failures - 1))
        self.state, self.error = "failed", why
        self.retry_at = time.monotonic() + delay
        log(f"{why}; starting it again in {delay:.0f}s")

    def check_engine(self) -> None:
        """An engine that died is stopped for good (its whole process group, so nothing of it keeps the GPU)
        and reported; ``follow`` starts it again once its backoff has passed."""
        if self.engine.model and not self.engine.alive():
            code = self.engine.exit_status()
            self.engine.stop()
            how = "" if code is None else (f" (killed by {signal.Signals(-code).name})" if code < 0
                                           else f" with status {code}")
            self.engine_failed(f"the engine exited{how}")

    # Heartbeats ----------------------------------------------------------------------------------------------
    def report(self) -> dict:
        report = {"engine": self.state, "engine_kind": self.engine.kind,
                  "models": [self.engine.model] if self.engine.alive() and self.engine.model else [],
                  "overlay": (self.overlay or {}).get("mode")}
        if self.error:
            report["error"] = self.error[-2000:]  # the end of an engine log says most
        if self.engine.alive():
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
    parser.add_argument("--engine", choices=("auto", "docker", "process"), default="auto",
                        help="docker: vLLM's image with the NVIDIA runtime; process: vLLM from a virtualenv")
    parser.add_argument("--engine-venv", default=None, help="the process engine's virtualenv")
    parser.add_argument("--data-dir", type=Path, default=None,
                        help="models, caches and logs (default STATE_DIR/engine)")
    parser.add_argument("--authorized-keys", type=Path, default=Path(diagnostics.AUTHORIZED_KEYS),
                        help="where the platform's diagnostics key is allowed to run `hostkit check --json`")
    args = parser.parse_args(argv)
    try:
        router = Router(args.state_dir)
        engine = pick_engine(args.engine, args.data_dir or args.state_dir / "engine", args.engine_venv)
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
