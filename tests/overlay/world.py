"""The overlay tests' world: a router, hub and hosts in network namespaces made for the module."""
from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
from sqlalchemy import select

from app import ROOT, hosts, trust
from app.extensions import db
from app.models import Host, UsageRecord, User
from hostkit.container import container_name

from ..support import factories
from ..support.netns import Lan, Machine

MODEL = "gpushare/tiny-chat"


ROUTER_PORT = 8000


ENGINE_PORT = 8000


def wait_until(predicate, timeout: float, what: str, interval: float = 0.2):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    pytest.fail(f"timed out after {timeout:.0f}s waiting until {what}", pytrace=False)


def container_running(name: str) -> bool:
    done = subprocess.run(["podman", "inspect", "--format", "{{.State.Running}}", name], capture_output=True,
                          text=True)
    return done.returncode == 0 and done.stdout.strip() == "true"


class World:
    def __init__(self, app, lan: Lan, tmp: Path, model_dir: Path, engine_root: Path):
        self.app, self.lan, self.tmp, self.model_dir, self.engine_root = app, lan, tmp, model_dir, engine_root
        self.url = f"http://{lan.router.address}:{ROUTER_PORT}"
        self.interfaces: dict[str, str] = {}
        self.agents: dict[str, object] = {}
        with app.app_context():
            factories.seed_catalog()
            self.owner = factories.make_user("bob@example.com", client=False, host=True)
            self.admin = factories.make_user("carol@example.com", client=False, admin=True)
            client = factories.make_user("alice@example.com")
            factories.give_credits(client, "50")
            _, self.api_key = factories.make_key(client)
            self.owner_id, self.admin_id = self.owner.id, self.admin.id

    def hostkit(self, machine: Machine, *args: str, check: bool = True, timeout: float = 120):
        state = self.tmp / machine.netns / "state"
        return machine.run(sys.executable, "-m", "hostkit", *args, "--state-dir", str(state), check=check,
                           timeout=timeout, cwd=str(ROOT))

    def enrollment_key(self) -> str:
        with self.app.app_context():
            return hosts.create_enrollment_key(db.session.get(User, self.owner_id))[1]

    def host(self, name: str) -> Host:
        with self.app.app_context():
            host = db.session.scalar(select(Host).where(Host.name == name))
            db.session.expunge(host)
            return host

    def admin_does(self, name: str, change: str) -> None:
        """An admin's change; an approved host is taken as verified at once (verification has tests of its own,
        tests/trust: here it would only add a reference engine and minutes)."""
        with self.app.app_context():
            host_id = db.session.scalar(select(Host.id).where(Host.name == name))
            hosts.change_status(db.session.get(User, self.admin_id), host_id, change)
            if change == "approve":
                trust.set_state(host_id, "verified", "taken as verified by the overlay tests", old=("staged",))

    def engine_kind(self, machine: Machine) -> str:
        """h1 runs its engine in a podman container, h2 as a plain process."""
        return "podman" if machine is self.lan.hosts[0] else "process"

    def engine_dir(self, machine: Machine) -> Path:
        return self.tmp / machine.netns / "engine"

    def container(self, machine: Machine) -> str:
        """The name of ``machine``'s engine container (podman's)."""
        return container_name(self.engine_dir(machine))

    def start_agent(self, machine: Machine, *options: str) -> None:
        data = self.engine_dir(machine)
        (data / "models").mkdir(parents=True, exist_ok=True)
        # The container's own preparing step builds the model (with no network); the process is given it.
        if self.engine_kind(machine) == "process" and not (data / "models" / "tiny-chat").exists():
            (data / "models" / "tiny-chat").symlink_to(self.model_dir, target_is_directory=True)
        interface = self.interfaces.setdefault(machine.netns, self.lan.interface(f"h{len(self.interfaces)}"))
        self.agents[machine.netns] = machine.spawn(
            sys.executable, "-m", "hostkit", "agent", "--state-dir", str(self.tmp / machine.netns / "state"),
            "--interface", interface, "--heartbeat", "1", "--engine", self.engine_kind(machine),
            "--data-dir", str(data), "--authorized-keys", str(self.tmp / machine.netns / "authorized_keys"),
            *options, log=self.tmp / f"agent-{machine.netns}.log", cwd=str(ROOT), network_only=True)

    def serve_both(self) -> None:
        """h1 and h2 registered, approved and running their agents (test_overlay.py's first test does it step by
        step; a module run alone gets it here)."""
        for index, machine in enumerate(self.lan.hosts):
            name = f"h{index + 1}"
            with self.app.app_context():
                known = db.session.scalar(select(Host.id).where(Host.name == name)) is not None
            if not known:
                self.hostkit(machine, "register", "--router", self.url, "--invite", self.enrollment_key(),
                             "--name", name, "--engine-port", str(ENGINE_PORT))
                self.hostkit(machine, "models", "--enable", MODEL)
            if machine.netns not in self.agents or self.agents[machine.netns].poll() is not None:
                self.start_agent(machine)
            if self.host(name).status == "pending":
                self.admin_does(name, "approve")

    def chat(self, max_tokens: int = 8, stream: bool = False, timeout: float = 60) -> httpx.Response:
        return httpx.post(f"{self.url}/v1/chat/completions", timeout=timeout,
                          headers={"Authorization": f"Bearer {self.api_key}"},
                          json={"model": MODEL, "max_tokens": max_tokens, "stream": stream,
                                "messages": [{"role": "user", "content": "hello"}]})

    def served_by(self) -> list[str]:
        with self.app.app_context():
            rows = db.session.execute(select(Host.name).join(UsageRecord, UsageRecord.host_id == Host.id)
                                      .where(UsageRecord.status == "ok").order_by(UsageRecord.created_at))
            return [name for (name,) in rows]

    def logs(self) -> str:
        return "\n".join(f"--- {path.name}\n{path.read_text()[-3000:]}" for path in sorted(self.tmp.glob("*.log")))


class Stream(threading.Thread):
    """A long streamed completion, read to its end in the background."""

    def __init__(self, world: World):
        super().__init__(daemon=True)
        self.world, self.started, self.events, self.error = world, threading.Event(), [], None

    def run(self):
        try:
            with httpx.stream("POST", f"{self.world.url}/v1/chat/completions", timeout=120,
                              headers={"Authorization": f"Bearer {self.world.api_key}"},
                              json={"model": MODEL, "max_tokens": 1200, "stream": True,
                                    "stream_options": {"include_usage": True},
                                    "messages": [{"role": "user", "content": "tell me a long story"}]}) as response:
                assert response.status_code == 200, response.read()
                for line in response.iter_lines():
                    if line.startswith("data: "):
                        self.events.append(line[6:])
                        self.started.set()
        except Exception as error:  # reported by the test
            self.error = error
        finally:
            self.started.set()

    def finished_cleanly(self) -> dict:
        self.join(120)
        assert self.error is None, self.error
        assert self.events[-1] == "[DONE]", self.events[-3:]
        chunks = [json.loads(event) for event in self.events[:-1]]
        assert not any("error" in chunk for chunk in chunks), chunks[-3:]
        assert any(choice.get("finish_reason") for chunk in chunks for choice in chunk.get("choices", []))
        return chunks[-1]["usage"]
