"""The platform's processes under ``make run``: started in sessions of their own, restarted when they die.

A child that exits is started again after a backoff that doubles with each
quick failure (1 s, 2 s, 4 s ... at most ``MAX_BACKOFF_SECONDS``) and starts
over once it has stayed up ``STABLE_SECONDS``. Nothing but ``stop()`` (Ctrl-C)
ends the platform. Each child gets SIGTERM when the supervisor dies, however
it dies, and ``stop()`` ends them in the reverse order of their start.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from hostkit.local.groups import process_group_alive, signal_group

FIRST_BACKOFF_SECONDS = 1.0
MAX_BACKOFF_SECONDS = 30.0
STABLE_SECONDS = 60.0
TICK_SECONDS = 0.2


def detach() -> None:
    """In the child before exec: a session of its own, so Ctrl-C reaches only the supervisor (which then
    stops the child in order), and SIGTERM when the supervisor dies."""
    os.setsid()
    if sys.platform.startswith("linux"):
        import ctypes

        PR_SET_PDEATHSIG = 1
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


@dataclass
class Child:
    name: str
    argv: list[str]
    env: dict
    cwd: Path
    stop_seconds: float
    stop_first: bool = False
    process: subprocess.Popen | None = None
    started_at: float = 0.0
    quick_failures: int = 0
    restart_at: float | None = None
    restarts: int = 0

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None


@dataclass
class Supervisor:
    echo: Callable[[str], None]
    checkpoint: Callable[[], None] = lambda: None  # raises when the platform is to stop
    children: list[Child] = field(default_factory=list)

    def start(self, name: str, argv: list[str], *, env: dict, cwd: Path, stop_seconds: float = 30,
              stop_first: bool = False) -> Child:
        """Start a child; ``stop_first`` ones are stopped before the others (a host's agent, which needs the web
        app until its engine has drained)."""
        child = Child(name, argv, env, cwd, stop_seconds, stop_first)
        self.children.append(child)  # known before it exists: an interrupt from here on stops it
        self._spawn(child)
        return child

    def _spawn(self, child: Child) -> None:
        child.started_at = time.monotonic()
        child.restart_at = None
        child.process = subprocess.Popen(child.argv, env=child.env, cwd=child.cwd, preexec_fn=detach)

    def tick(self) -> None:
        """Notice children that exited and start those whose backoff has passed."""
        self.checkpoint()
        now = time.monotonic()
        for child in self.children:
            if child.restart_at is not None:
                if now >= child.restart_at:
                    child.restarts += 1
                    self.echo(f"Restarting the {child.name} (restart {child.restarts}).")
                    self._spawn(child)
                continue
            code = child.process.poll()
            if code is None:
                continue
            ran = now - child.started_at
            child.quick_failures = 0 if ran >= STABLE_SECONDS else child.quick_failures + 1
            delay = min(MAX_BACKOFF_SECONDS, FIRST_BACKOFF_SECONDS * 2 ** max(child.quick_failures - 1, 0))
            self.echo(f"The {child.name} exited ({_status(code)}) after {ran:.0f}s; restarting it in {delay:.0f}s.")
            child.restart_at = now + delay

    def sleep(self, seconds: float) -> None:
        """Wait, keeping the children up meanwhile."""
        deadline = time.monotonic() + seconds
        while True:
            self.tick()
            left = deadline - time.monotonic()
            if left <= 0:
                return
            time.sleep(min(TICK_SECONDS, left))

    def stop(self) -> None:
        """SIGTERM to the ``stop_first`` children, then to all the others at once; SIGKILL to the whole group
        of any that outlives its grace period."""
        for child in self.children:
            child.restart_at = None
        for wave in ([c for c in self.children if c.stop_first], [c for c in self.children if not c.stop_first]):
            started = time.monotonic()
            if wave:
                self.echo(f"Stopping the {', '.join(child.name for child in wave)}...")
            stop([(child.process, child.stop_seconds) for child in wave])
            if wave and time.monotonic() - started > 5:
                self.echo(f"  stopped in {time.monotonic() - started:.0f}s")


def stop(processes: list[tuple[subprocess.Popen | None, float]]) -> None:
    """SIGTERM to each session leader, then SIGKILL to the group of each that (or any of whose group) outlives
    its grace period."""
    started = time.monotonic()
    live = [(p, started + grace) for p, grace in processes if p is not None]
    for process, _ in live:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
    while live:
        now = time.monotonic()
        for process, deadline in live:
            if now >= deadline:
                signal_group(process.pid, signal.SIGKILL)
        live = [(p, d) for p, d in live if p.poll() is None or process_group_alive(p.pid)]
        time.sleep(0.1)


def _status(code: int) -> str:
    return f"killed by {signal.Signals(-code).name}" if code < 0 else f"status {code}"
