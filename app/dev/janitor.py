"""Whatever a ``make run`` leaves behind when ``serve`` dies, removed: even after a SIGKILL.

``serve`` starts this watcher first, in a session of its own (so Ctrl-C does
not reach it), with a pipe on its standard input. Every process the run
starts inherits the run's marker in its environment (``GPUSHARE_RUN_ID``).
When the pipe closes, because ``serve`` finished its own orderly stop or
because it died, the janitor:

1. sends SIGTERM to every process that carries the marker, the database
   servers aside, and SIGKILL to those still there after the grace period;
2. stops the embedded Redis and PostgreSQL that this run started: those of
   its data directory that started after the janitor did (a server reused
   from another command is older, and is left running);
3. removes the run's engine containers, network namespace, interfaces and firewall tables.

After an orderly stop it finds nothing and says nothing.

While it waits, it notes every few seconds the process groups the run's
processes are in: a process that rewrote its environment (a server that
sets its title does) is still found through its group when its leader died.

    python -m app.dev.janitor --run-id ID --data-dir DIR [--grace 30] [--netns NAME --veth NAME ...]
        [--link NAME ...] [--nft-table NAME ...]
"""
from __future__ import annotations

import argparse
import os
import select
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import psutil

from app import ROOT
from app.config import SERVICES_FILE

from .instance import Instance

RUN_MARKER = "GPUSHARE_RUN_ID"
DATABASE_SERVERS = ("postgres", "redis-server")
FINISH_SECONDS = 120
NOTE_GROUPS_SECONDS = 3


def _say(message: str) -> None:
    print(f"gpushare janitor: {message}", file=sys.stderr, flush=True)


def marked(run_id: str, spare: tuple[int, ...] = ()) -> list[psutil.Process]:
    """Every live process of this run (zombies left aside), this one and ``spare`` excepted."""
    found = []
    for process in psutil.process_iter(["pid", "status"]):
        if process.pid in (os.getpid(), *spare) or process.info["status"] == psutil.STATUS_ZOMBIE:
            continue
        try:
            if process.environ().get(RUN_MARKER) == run_id:
                found.append(process)
        except (psutil.Error, OSError):
            continue
    return found


def _name(process: psutil.Process) -> str:
    try:
        return process.name()
    except psutil.Error:
        return "?"


def _describe(process: psutil.Process) -> str:
    try:
        return f"{process.pid} ({' '.join(process.cmdline())[:120]})"
    except psutil.Error:
        return str(process.pid)


def _end(processes: list[psutil.Process], first: int, grace: float) -> None:
    for process in processes:
        try:
            process.send_signal(first)
        except psutil.Error:
            pass
    _, alive = psutil.wait_procs(processes, timeout=grace)
    for process in alive:
        try:
            process.kill()
        except psutil.Error:
            pass
    psutil.wait_procs(alive, timeout=10)


def groups_of(processes: list[psutil.Process]) -> set[int]:
    groups = set()
    for process in processes:
        try:
            groups.add(os.getpgid(process.pid))
        except OSError:
            continue
    return groups


def in_groups(groups: set[int], spare: tuple[int, ...]) -> list[psutil.Process]:
    """Live processes of the given process groups, this one and ``spare`` excepted."""
    found = []
    for process in psutil.process_iter(["pid", "status"]):
        if process.pid in (os.getpid(), *spare) or process.info["status"] == psutil.STATUS_ZOMBIE:
            continue
        try:
            if os.getpgid(process.pid) in groups:
                found.append(process)
        except OSError:
            continue
    return found


def sweep(run_id: str, data_dir: Path, since: float, grace: float, spare: tuple[int, ...] = (),
          groups: set[int] = frozenset()) -> list[str]:
    """Stop every process of the run but ``spare`` (those it marks and those of the groups seen), then the
    embedded servers it started, gently. Returns what was found."""
    found = {p.pid: p for p in [*marked(run_id, spare), *in_groups(set(groups), spare)]
             if _name(p) not in DATABASE_SERVERS}
    found = list(found.values())
    _end(found, signal.SIGTERM, grace)
    described = [_describe(p) for p in found]
    # Redis saves on SIGTERM; SIGINT to the postmaster is PostgreSQL's fast shutdown (its backends follow).
    for pid_file, first in ((data_dir / "redis" / "redis.pid", signal.SIGTERM),
                            (data_dir / "postgres" / "postmaster.pid", signal.SIGINT)):
        server = _started_since(pid_file, since)
        if server is not None:
            described.append(_describe(server))
            _end([server], first, 60)
    _end(marked(run_id, spare), signal.SIGKILL, 5)  # anything still there
    return described


def _started_since(pid_file: Path, since: float) -> psutil.Process | None:
    """The server whose pid ``pid_file`` holds, if it started at ``since`` or later (this run's own)."""
    try:
        process = psutil.Process(int(pid_file.read_text().split()[0]))
        return process if process.create_time() >= since - 1 else None
    except (OSError, ValueError, IndexError, psutil.Error):
        return None


def run_containers(data_dir: Path) -> list[str]:
    """The engine containers of the run's demo hosts that podman still lists (running or not)."""
    from hostkit.container import container_name

    if shutil.which("podman") is None:
        return []
    names = [container_name(folder) for folder in sorted(data_dir.glob("engine*"))]
    return [name for name in names
            if subprocess.run(["podman", "container", "exists", name], capture_output=True).returncode == 0]


def remove_containers(data_dir: Path) -> list[str]:
    """Remove the engine containers of the run's demo hosts (one whose agent died stopped by itself, and stays
    listed until removed). Returns what was there."""
    found = run_containers(data_dir)
    for name in found:
        subprocess.run(["podman", "rm", "--force", "--time", "10", name], capture_output=True)
    return [f"engine container {name}" for name in found]


def remove_network(netns: list[str], veths: list[str], links: list[str], tables: list[str]) -> list[str]:
    """Remove the run's namespaces (with their veth pairs), interfaces and firewall tables. Returns what was
    there."""
    from .demo_network import remove

    removed = []
    for namespace, veth in zip(netns, veths):
        if namespace in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout.split():
            removed.append(f"network namespace {namespace}")
        remove(namespace, veth)
    for link in links:
        if subprocess.run(["ip", "link", "show", "dev", link], capture_output=True).returncode == 0:
            removed.append(f"interface {link}")
            subprocess.run(["ip", "link", "del", link], capture_output=True)
    for table in tables:
        if subprocess.run(["nft", "list", "table", "inet", table], capture_output=True).returncode == 0:
            removed.append(f"firewall table {table}")
            subprocess.run(["nft", "delete", "table", "inet", table], capture_output=True)
    return removed


class Janitor:
    """``serve``'s side: the watcher, started in its own session, that cleans up after the run whatever way it
    ends."""

    def __init__(self, run_id: str, data_dir: Path, instance: Instance, wireguard: bool):
        args = ["--run-id", run_id, "--data-dir", str(data_dir)]
        if wireguard:
            from overlay.hub import firewall_table

            hub = os.environ["OVERLAY_INTERFACE"]
            for machine in instance.demo_machines:
                args += ["--netns", machine.namespace, "--veth", machine.veth]
            args += ["--link", hub, "--nft-table", firewall_table(hub)]
        self.process = subprocess.Popen([sys.executable, "-m", "app.dev.janitor", *args], stdin=subprocess.PIPE,
                                        cwd=ROOT, start_new_session=True)

    def finish(self) -> None:
        """Let it check that nothing is left (after our own orderly stop it finds nothing), and wait for it."""
        self.process.stdin.close()
        try:
            self.process.wait(timeout=FINISH_SECONDS)
        except subprocess.TimeoutExpired:
            _say("did not finish in time; some processes may be left")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m app.dev.janitor", description=__doc__.splitlines()[0])
    parser.add_argument("--run-id", required=True)
    parser.add_argument("--data-dir", type=Path, required=True, help="where the embedded servers keep their pid")
    parser.add_argument("--grace", type=float, default=30, help="seconds between SIGTERM and SIGKILL")
    parser.add_argument("--netns", action="append", default=[], help="a demo host's namespace")
    parser.add_argument("--veth", action="append", default=[],
                        help="the router's end of the veth pair to that namespace (one per --netns)")
    parser.add_argument("--link", action="append", default=[])
    parser.add_argument("--nft-table", action="append", default=[])
    args = parser.parse_args(argv)
    for sig in (signal.SIGINT, signal.SIGHUP, signal.SIGTERM):
        signal.signal(sig, signal.SIG_IGN)  # only the pipe's end ends the watch
    serve = os.getppid()  # it may carry the marker itself; alive at the end, it is finishing its own stop
    since = psutil.Process().create_time()
    # Groups never to sweep: this one's, and serve's (a terminal's foreground group, with make in it).
    ours = {os.getpgid(0), os.getpgid(serve)}
    groups: set[int] = set()
    while True:
        readable, _, _ = select.select([sys.stdin], [], [], NOTE_GROUPS_SECONDS)
        if readable and not os.read(sys.stdin.fileno(), 4096):
            break
        groups |= groups_of(marked(args.run_id, (serve,))) - ours
    left = sweep(args.run_id, args.data_dir.resolve(), since, args.grace, spare=(serve,), groups=groups)
    (args.data_dir / SERVICES_FILE).unlink(missing_ok=True)
    left += remove_containers(args.data_dir.resolve())
    left += remove_network(args.netns, args.veth, args.link, args.nft_table)
    if left:
        _say("removed what the platform left behind: " + "; ".join(left))
    return 0


if __name__ == "__main__":
    sys.exit(main())
