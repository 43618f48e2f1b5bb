"""make run's supervisor restarts what dies, with backoff, and stops whole process groups; its janitor removes
what a run left, and only that."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid

import psutil

from app import ROOT
from app.dev import supervisor as supervision
from app.dev.janitor import RUN_MARKER
from app.dev.supervisor import Supervisor

# Each start of this child appends a line to a file, then the child exits with status 3.
CRASHING = "import sys, time; open(sys.argv[1], 'a').write(f'{time.monotonic()}\\n'); sys.exit(3)"
# A child that ignores SIGTERM and has a grandchild in its group.
STUBBORN = ("import signal, subprocess, sys, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
            "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(300)']); time.sleep(300)")


def test_it_restarts_a_child_that_dies_with_a_doubling_backoff(tmp_path, monkeypatch):
    monkeypatch.setattr(supervision, "FIRST_BACKOFF_SECONDS", 0.2)
    said: list[str] = []
    starts = tmp_path / "starts"
    platform = Supervisor(said.append)
    platform.start("crasher", [sys.executable, "-c", CRASHING, str(starts)], env=dict(os.environ), cwd=ROOT)
    try:
        platform.sleep(3.5)
    finally:
        platform.stop()
    times = [float(line) for line in starts.read_text().split()]
    gaps = [later - earlier for earlier, later in zip(times, times[1:])]
    assert len(times) >= 4, said
    assert all(gap >= 0.19 for gap in gaps) and gaps[2] > 1.5 * gaps[0], gaps  # 0.2 s, 0.4 s, 0.8 s ...
    assert "The crasher exited (status 3) after 0s; restarting it in 0s." in said
    assert "Restarting the crasher (restart 1)." in said


def test_a_child_that_stays_up_starts_over_at_the_first_backoff(monkeypatch):
    monkeypatch.setattr(supervision, "STABLE_SECONDS", 0.5)
    monkeypatch.setattr(supervision, "FIRST_BACKOFF_SECONDS", 0.1)
    platform = Supervisor(lambda line: None)
    child = platform.start("sleeper", [sys.executable, "-c", "import time; time.sleep(1)"], env=dict(os.environ),
                           cwd=ROOT)
    child.quick_failures = 4  # as after four quick deaths
    try:
        platform.sleep(3)  # it ran a second (longer than "stable"), exited, and was started again
    finally:
        platform.stop()
    assert child.quick_failures == 0 and child.restarts >= 1


def test_stopping_kills_a_child_that_ignores_sigterm_and_its_whole_group(monkeypatch):
    platform = Supervisor(lambda line: None)
    child = platform.start("stubborn", [sys.executable, "-c", STUBBORN], env=dict(os.environ), cwd=ROOT,
                           stop_seconds=1)
    time.sleep(1)
    group = [p for p in psutil.process_iter() if _pgid(p.pid) == child.process.pid]
    assert len(group) == 2, "the child and its grandchild"
    started = time.monotonic()
    platform.stop()
    assert time.monotonic() - started < 5
    assert not any(p.is_running() and p.status() != psutil.STATUS_ZOMBIE for p in group)
    assert child.process.returncode == -signal.SIGKILL


def test_a_child_gets_sigterm_when_the_supervisor_dies(tmp_path):
    """The supervisor itself killed: its children do not live on."""
    script = ("import os, sys, time; sys.path.insert(0, os.getcwd()); from app.dev.supervisor import Supervisor; "
              "s = Supervisor(print); c = s.start('sleeper', [sys.executable, '-c', 'import time; time.sleep(300)'], "
              "env=dict(os.environ), cwd=os.getcwd()); print(c.process.pid, flush=True); time.sleep(300)")
    with subprocess.Popen([sys.executable, "-c", script], cwd=ROOT, stdout=subprocess.PIPE, text=True) as parent:
        child = psutil.Process(int(parent.stdout.readline()))
        parent.kill()
    child.wait(timeout=10)  # raises if it outlives its parent


def _pgid(pid: int) -> int | None:
    try:
        return os.getpgid(pid)
    except ProcessLookupError:
        return None


def test_the_janitor_removes_the_runs_processes_and_only_them(tmp_path):
    run_id = uuid.uuid4().hex
    sleep = [sys.executable, "-c", "import time; time.sleep(300)"]
    ours = subprocess.Popen(sleep, env={**os.environ, RUN_MARKER: run_id}, start_new_session=True)
    someone_elses = subprocess.Popen(sleep, env={**os.environ, RUN_MARKER: "another-run"})
    janitor = subprocess.Popen([sys.executable, "-m", "app.dev.janitor", "--run-id", run_id, "--data-dir",
                                str(tmp_path), "--grace", "2"], cwd=ROOT, stdin=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        time.sleep(1)
        assert ours.poll() is None, "nothing happens while the pipe is open"
        janitor.stdin.close()  # as when serve dies
        assert janitor.wait(timeout=30) == 0
        assert ours.wait(timeout=5) == -signal.SIGTERM
        assert someone_elses.poll() is None
        said = janitor.stderr.read()
        janitor.stderr.close()
        assert said.startswith("gpushare janitor: removed what the platform left behind: ") and str(ours.pid) in said
    finally:
        for process in (ours, someone_elses, janitor):
            if process.poll() is None:
                process.kill()
                process.wait()
        if not janitor.stderr.closed:
            janitor.stderr.close()
