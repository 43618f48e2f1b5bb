"""Process groups: an engine and everything it starts, stopped whole, and stopped by the next owner when its
own owner died without doing so."""
from __future__ import annotations

import json
import os
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path


def record_group(pid_file: str | os.PathLike, pgid: int) -> None:
    """Record a running engine's process group (its leader's id and start time) for ``stop_leftover``."""
    Path(pid_file).write_text(json.dumps({"pgid": pgid, "started": start_time(pgid)}))


def stop_leftover(pid_file: str | os.PathLike, grace: float = 10) -> int | None:
    """Stop the engine group recorded in ``pid_file`` if it is still running, and return its id.

    An agent killed with SIGKILL cannot stop its engine. PDEATHSIG asks the engine to stop, but vLLM's
    graceful shutdown can hang with requests in flight, holding the GPU and memory; the next agent ends it
    here. The recorded start time tells the engine from an unrelated process that got the same id later."""
    path = Path(pid_file)
    try:
        record = json.loads(path.read_text())
        pgid, started = int(record["pgid"]), record["started"]
    except (OSError, ValueError, KeyError, TypeError):
        path.unlink(missing_ok=True)
        return None
    path.unlink(missing_ok=True)
    if started is None or start_time(pgid) != started:
        return None
    signal_group(pgid, signal.SIGTERM)
    end_group(pgid, grace)
    return pgid


def end_group(pgid: int, grace: float, running: Callable[[], bool] | None = None) -> None:
    """Give group ``pgid`` ``grace`` seconds to exit (it has been asked), then SIGKILL it until nothing of it
    runs. ``running`` says whether it still runs (by default: any process of the group is alive)."""
    running = running or (lambda: process_group_alive(pgid))
    deadline = time.monotonic() + grace
    while running() and time.monotonic() < deadline:
        time.sleep(0.1)
    while running():
        signal_group(pgid, signal.SIGKILL)
        time.sleep(0.1)


def _stat(pid: int | str) -> list[str] | None:
    """``/proc/PID/stat``'s fields after the parenthesised command (state, ppid, pgrp, ...), or None."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat[stat.rfind(")") + 2:].split()


def start_time(pid: int) -> int | None:
    """When process ``pid`` started, in clock ticks since boot (None where /proc cannot say)."""
    fields = _stat(pid)
    return int(fields[19]) if fields and len(fields) > 19 else None


def die_with_parent() -> None:
    """In the engine's child before exec: SIGTERM when the thread that started it ends, so an agent killed
    with SIGKILL does not leave an engine holding the GPU."""
    if sys.platform.startswith("linux"):
        import ctypes

        PR_SET_PDEATHSIG = 1
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        pass


def process_group_alive(pgid: int) -> bool:
    """Whether any process of group ``pgid`` is still running (zombies do not count)."""
    proc = Path("/proc")
    if not proc.is_dir():
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return False
        return True
    for entry in proc.iterdir():
        fields = _stat(entry.name) if entry.name.isdigit() else None
        if fields and len(fields) > 2 and int(fields[2]) == pgid and fields[0] not in ("Z", "X"):
            return True
    return False
