"""``python -m app.dev.serve`` (what ``make run`` runs) as a test starts it: in its own process group with its
own data directory, port and run marker, and what it leaves behind."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

import psutil

from app import ROOT
from app.dev.instance import Instance
from app.dev.janitor import RUN_MARKER, run_containers

PAGES_TIMEOUT = 60  # the promise: pages within 60 s of a warm .venv
BANNER_TIMEOUT = 420  # then the demo hosts' engines (the model is built on the first run) and verification
STOP_TIMEOUT = 90


def get(url: str, headers: dict | None = None) -> tuple[int, str]:
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def _terminal_signals() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)  # as in a terminal, whatever pytest was started with


class Platform:
    """One ``python -m app.dev.serve`` in its own process group, as a terminal would run it."""

    def __init__(self, data_dir: Path, port: int, **env_overrides: str):
        self.data_dir, self.port, self.run_id = data_dir, port, uuid.uuid4().hex
        env = {k: v for k, v in os.environ.items()
               if k not in ("DATABASE_URL", "REDIS_URL", "SECRET_KEY", "GPUSHARE_ENV", RUN_MARKER)}
        env.update({"GPUSHARE_DATA_DIR": str(data_dir), "PORT": str(port), "WEB_CONCURRENCY": "1",
                    "PYTHONUNBUFFERED": "1", RUN_MARKER: self.run_id,
                    "GPUSHARE_DEMO_MODEL": "tiny-chat",  # the demo host, with the small model the tests build
                    # No reference engine verifying the demo host, but where a test asks: fewer engines, sooner up.
                    "GPUSHARE_DEMO_REFERENCE": "0",
                    **env_overrides})
        data_dir.parent.mkdir(parents=True, exist_ok=True)
        self.log = (data_dir.parent / f"serve-{port}-{time.monotonic_ns()}.log").open("w+")
        self.process = subprocess.Popen([sys.executable, "-m", "app.dev.serve"], cwd=ROOT, env=env,
                                        stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True,
                                        preexec_fn=_terminal_signals)
        self.final = ""

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def output(self) -> str:
        if self.log.closed:
            return self.final
        self.log.seek(0)
        return self.log.read()

    def wait_for(self, text: str, seconds: float) -> str:
        deadline = time.monotonic() + seconds
        while text not in self.output():
            assert self.process.poll() is None, f"serve exited early:\n{self.output()}"
            assert time.monotonic() < deadline, f"no {text!r} within {seconds}s:\n{self.output()}"
            time.sleep(0.2)
        return self.output()

    def wait_for_banner(self) -> str:
        return self.wait_for("Press Ctrl-C to stop.", BANNER_TIMEOUT)

    def _closed(self) -> None:
        self.final = self.output()
        self.log.close()

    def ctrl_c(self) -> int:
        os.killpg(self.process.pid, signal.SIGINT)  # what a terminal sends to the foreground group
        try:
            return self.process.wait(timeout=STOP_TIMEOUT)
        finally:
            self._closed()

    def kill(self) -> None:
        """SIGKILL to serve alone: no chance to stop anything itself."""
        self.process.kill()
        self.process.wait()

    def instance(self) -> Instance:
        return Instance(json.loads((self.data_dir / "instance.json").read_text())["slot"])

    def leftovers(self) -> list[str]:
        return leftovers(self.data_dir, self.run_id, self.instance())


def _live() -> list[tuple[psutil.Process, str, str | None]]:
    """Every live process, its command line, and the run marker in its environment (None: none or unreadable)."""
    found = []
    for process in psutil.process_iter(["pid", "cmdline", "status"]):
        if process.info["status"] == psutil.STATUS_ZOMBIE:
            continue
        try:
            marker = process.environ().get(RUN_MARKER)
        except (psutil.Error, OSError):
            marker = None
        found.append((process, " ".join(process.info["cmdline"] or []), marker))
    return found


def leftovers(data_dir: Path, run_id: str, instance: Instance) -> list[str]:
    """Processes of the run (its marker, or its data directory on their command line), its network namespace
    and its interfaces."""
    found = [f"{process.pid}: {cmdline[:200]}" for process, cmdline, marker in _live()
             if marker == run_id or str(data_dir) in cmdline]
    namespaces = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout.split()
    found += [f"network namespace {m.namespace}" for m in instance.demo_machines if m.namespace in namespaces]
    for link in instance.links():
        if subprocess.run(["ip", "link", "show", link], capture_output=True).returncode == 0:
            found.append(f"interface {link}")
    return found + [f"engine container {name}" for name in run_containers(data_dir)]


def wait_for_nothing_left(platform: Platform, seconds: float) -> list[str]:
    deadline = time.monotonic() + seconds
    while (left := platform.leftovers()) and time.monotonic() < deadline:
        time.sleep(0.5)
    return left


def run_processes(run_id: str, *words: str) -> list[psutil.Process]:
    """The run's live processes whose command line holds every one of ``words``."""
    return [process for process, cmdline, marker in _live()
            if marker == run_id and all(word in cmdline for word in words)]
