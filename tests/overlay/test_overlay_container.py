"""h1's engine in its podman container, on the overlay world's real host (conftest.py): what the engine may not
reach or do, and how the agent keeps the container on a leash.

Each refusal is checked twice: from inside the running engine container, where it must fail, and from h1
itself (or, for another host's engine, from the router), where it must succeed, so that it is the container
that stops it and not an empty target.
"""
from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
from urllib.parse import unquote, urlsplit

import pytest

from hostkit.local.image import PYTHON_IN_ROOT

from ..support.netns import Machine, sh, stop_process
from .world import ENGINE_PORT, ROUTER_PORT, World, container_running, wait_until

pytestmark = [pytest.mark.vllm, pytest.mark.root, pytest.mark.timeout(900)]

LISTEN_PORT = 4455  # a service on h1 and on the owner's LAN (a NAS, say)

CONNECT = """
import errno, json, socket, sys
found = {}
for target in sys.argv[1:]:
    try:
        if target.startswith("unix:"):
            with socket.socket(socket.AF_UNIX) as unix:
                unix.settimeout(3)
                unix.connect(target[5:])
        else:
            address, port = target.rsplit(":", 1)
            socket.create_connection((address, int(port)), timeout=3).close()
        found[target] = "connected"
    except OSError as error:
        found[target] = errno.errorcode.get(error.errno, str(error))
print(json.dumps(found))
"""


def endpoint(url: str) -> str:
    """Where a PostgreSQL or Redis URL connects: "host:port", or "unix:PATH" for a Unix socket."""
    parts = urlsplit(url)
    if parts.scheme == "unix":
        return f"unix:{parts.path}"
    if parts.hostname:
        return f"{parts.hostname}:{parts.port or (6379 if parts.scheme.startswith('redis') else 5432)}"
    folder = dict(pair.split("=", 1) for pair in parts.query.split("&") if "=" in pair)["host"]
    return f"unix:{unquote(folder)}/.s.PGSQL.{parts.port or 5432}"


def reachable_from(machine: Machine, target: str) -> bool:
    if target.startswith("unix:"):  # a socket file: what matters is who can see it
        with socket.socket(socket.AF_UNIX) as unix:
            return unix.connect_ex(target[5:]) == 0
    address, port = target.rsplit(":", 1)
    return machine.can_connect(address, int(port))


def podman(*args: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess:
    done = subprocess.run(["podman", *args], capture_output=True, text=True, timeout=timeout)
    if check and done.returncode != 0:
        pytest.fail(f"podman {' '.join(args)} failed: {done.stderr.strip()}", pytrace=False)
    return done


def inside(name: str, code: str, *args: str) -> subprocess.CompletedProcess:
    """Python run in the engine container as its engine runs (the same user, capabilities and filters)."""
    return podman("exec", name, PYTHON_IN_ROOT, "-c", code, *args, check=False)


@pytest.fixture(scope="module")
def engine(world: World) -> str:
    """h1 registered, approved and serving from its container; the container's name."""
    world.serve_both()
    h1 = world.lan.hosts[0]
    name = world.container(h1)
    wait_until(lambda: container_running(name) and world.host("h1").healthy, 300, "h1's engine container serves")
    return name


@pytest.fixture(scope="module")
def owners_lan(world: World):
    """A device on h1's home LAN, as an owner's NAS or router would be: a namespace plugged into h1 alone,
    listening on LISTEN_PORT."""
    h1, tag = world.lan.hosts[0], world.lan.tag
    device = Machine(world.lan, f"gsn{tag}", f"10.243.{world.lan.subnet}.2")
    sh("ip", "netns", "add", device.netns)
    try:
        sh("ip", "-n", device.netns, "link", "set", "lo", "up")
        sh("ip", "-n", h1.netns, "link", "add", "home0", "type", "veth", "peer", "name", "eth0", "netns", device.netns)
        sh("ip", "-n", h1.netns, "address", "add", f"10.243.{world.lan.subnet}.1/24", "dev", "home0")
        sh("ip", "-n", h1.netns, "link", "set", "home0", "up")
        sh("ip", "-n", device.netns, "address", "add", f"{device.address}/24", "dev", "eth0")
        sh("ip", "-n", device.netns, "link", "set", "eth0", "up")
        for machine in (device, h1):  # the NAS, and another port on the host itself
            machine.spawn(sys.executable, "-m", "http.server", str(LISTEN_PORT), "--bind", "0.0.0.0",
                          log=world.tmp / f"listener-{machine.netns}.log")
        wait_until(lambda: h1.can_connect(device.address, LISTEN_PORT), 30, "the LAN device listens")
        yield device
    finally:
        for process in device.processes:
            stop_process(process)
        for process in h1.processes:
            if "http.server" in " ".join(map(str, process.args)):
                stop_process(process)
        subprocess.run(["ip", "netns", "del", device.netns], capture_output=True)


def test_from_inside_the_engine_container_nothing_is_reachable(world, engine, owners_lan, servers):
    h1, router = world.lan.hosts[0], world.lan.router
    overlay_1, overlay_2 = str(world.host("h1").overlay_address), str(world.host("h2").overlay_address)
    from_h1 = {
        "the host's underlay address, another port": f"{h1.address}:{LISTEN_PORT}",
        "the host's own engine port, on the overlay": f"{overlay_1}:{ENGINE_PORT}",
        "the router's web port": f"{router.address}:{ROUTER_PORT}",
        "the router's PostgreSQL": endpoint(servers["database"]),
        "the router's Redis": endpoint(servers["redis"]),
        "a device on the owner's LAN": f"{owners_lan.address}:{LISTEN_PORT}",
    }
    from_router = {"another host's engine, on the overlay": f"{overlay_2}:{ENGINE_PORT}"}
    for what, target in from_h1.items():
        assert reachable_from(h1, target), f"h1 itself reaches {what} ({target})"
    for what, target in from_router.items():
        assert reachable_from(router, target), f"the router reaches {what} ({target})"

    targets = {**from_h1, **from_router}
    done = inside(engine, CONNECT, *targets.values())
    assert done.returncode == 0, done.stderr
    found = json.loads(done.stdout)
    reached = {what: found[target] for what, target in targets.items() if found[target] == "connected"}
    assert not reached, f"the engine container reached {reached}"
    # It has no network to try with, and the services' socket files are not in its world.
    assert {found[t] for t in targets.values() if not t.startswith("unix:")} == {"ENETUNREACH"}, found
    assert {found[t] for t in targets.values() if t.startswith("unix:")} <= {"ENOENT"}, found
    interfaces = inside(engine, "import os; print(sorted(os.listdir('/sys/class/net')))")
    assert interfaces.stdout.strip() == "['lo']"


def test_the_engine_container_writes_only_to_its_tmpfs(engine):
    code = """
import json, os, sys
mounts = [line.split() for line in open("/proc/self/mounts")]

def mount_of(path):
    path = os.path.realpath(os.path.dirname(path))
    best = max((m for m in mounts if path == m[1] or path.startswith(m[1].rstrip("/") + "/")), key=lambda m: len(m[1]))
    return best[1], best[2], best[3]

found = {}
for path in sys.argv[1:]:
    try:
        with open(path, "w") as handle:
            handle.write("x")
        found[path] = ["written", *mount_of(path)]
    except OSError as error:
        found[path] = [error.strerror]
print(json.dumps(found))
"""
    tries = ["/tmp/probe", "/etc/probe", "/usr/lib/probe", "/opt/vllm/probe", "/model/config.json", "/model/probe",
             "/probe", "/var/tmp/probe", "/run/probe", "/var/log/probe", "/dev/probe", "/root/probe",
             "/sys/fs/cgroup/probe", "/proc/sys/kernel/hostname", "/dev/shm/probe", "/run/engine/probe"]
    done = inside(engine, code, *tries)
    assert done.returncode == 0, done.stderr
    found = json.loads(done.stdout)
    written = {path: outcome for path, outcome in found.items() if outcome[0] == "written"}
    assert "/tmp/probe" in written, found
    # Whatever it could write is memory: a tmpfs (its scratch, shared memory, its socket's folder on the host's
    # shared-memory tmpfs), never a disk; everything else is read-only or not its own.
    assert {path: outcome[2] for path, outcome in written.items()} == \
        {path: "tmpfs" for path in written}, written
    assert set(written) <= {"/tmp/probe", "/dev/shm/probe", "/run/engine/probe"}, written
    refused = {path: outcome[0] for path, outcome in found.items() if path not in written}
    assert set(refused.values()) <= {"Read-only file system", "Permission denied"}, refused
    scratch = next(line.split() for line in inside(engine, "print(open('/proc/self/mounts').read())").stdout
                   .splitlines() if line.split()[1] == "/tmp")
    assert scratch[2] == "tmpfs" and "size=" in scratch[3], scratch


def test_the_engine_container_cannot_raise_a_capability_or_become_root(engine):
    code = """
import ctypes, json, os, socket
libc = ctypes.CDLL(None, use_errno=True)

def unshare(flags):
    if libc.unshare(flags) != 0:
        error = ctypes.get_errno()
        raise OSError(error, os.strerror(error))

status = dict(line.split(":\\t", 1) for line in open("/proc/self/status").read().splitlines() if ":\\t" in line)
found = {name: status[name].strip() for name in ("Uid", "CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb",
                                                "NoNewPrivs", "Seccomp")}
attempts = {
    "setuid(0)": lambda: os.setuid(0),
    "setgid(0)": lambda: os.setgid(0),
    "raw socket (CAP_NET_RAW)": lambda: socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP),
    "chown to root (CAP_CHOWN)": lambda: os.chown("/tmp/owned", 0, 0),
    "bind port 80 (CAP_NET_BIND_SERVICE)": lambda: socket.socket().bind(("127.0.0.1", 80)),
    "a new user namespace (root inside it)": lambda: unshare(0x10000000),  # CLONE_NEWUSER
    "a new mount namespace (CAP_SYS_ADMIN)": lambda: unshare(0x00020000),  # CLONE_NEWNS
}
open("/tmp/owned", "w").close()
for what, attempt in attempts.items():
    try:
        attempt()
        found[what] = "allowed"
    except OSError as error:
        found[what] = error.strerror
print(json.dumps(found))
"""
    done = inside(engine, code)
    assert done.returncode == 0, done.stderr
    found = json.loads(done.stdout)
    assert found["Uid"].split() == ["65534"] * 4, "the engine runs as nobody"
    for caps in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"):
        assert int(found[caps], 16) == 0, f"{caps} is {found[caps]}: no capability, and none to gain"
    assert found["NoNewPrivs"] == "1", "no setuid program can raise it"
    assert found["Seccomp"] == "2", "the runtime's seccomp filter is on"
    allowed = [what for what, outcome in found.items() if outcome == "allowed"]
    assert not allowed, f"the engine container could: {allowed}"


def test_an_engine_over_its_memory_limit_is_killed_and_restarted_with_backoff(world, engine):
    h1 = world.lan.hosts[0]
    log = world.tmp / f"agent-{h1.netns}.log"
    stop_process(world.agents[h1.netns])
    wait_until(lambda: not container_running(engine), 60, "the old agent's container stops")
    written = log.stat().st_size
    world.start_agent(h1, "--engine-memory", "200m")  # vLLM needs more than that to load even tiny-chat

    def failures() -> list[str]:
        return [line for line in log.read_text()[written:].splitlines() if "starting it again in" in line]

    wait_until(lambda: len(failures()) >= 2, 240, "the engine has been killed twice")
    first, second = failures()[:2]
    assert "out of memory: over its 200m limit" in first, first
    assert "starting it again in 5s" in first and "starting it again in 10s" in second, (first, second)
    error = wait_until(lambda: (world.host("h1").heartbeat or {}).get("error"), 30, "the agent reports it")
    assert "out of memory" in error
    assert world.agents[h1.netns].poll() is None, "the agent lives on"
    assert world.chat().status_code == 200, "the platform serves on (from h2)"

    stop_process(world.agents[h1.netns])
    world.start_agent(h1)
    wait_until(lambda: container_running(engine) and world.host("h1").healthy, 300,
               "h1 serves again with its usual limits")


def test_the_agents_death_takes_the_engine_container_with_it(world, engine):
    h1 = world.lan.hosts[0]
    agent = world.agents[h1.netns]
    assert container_running(engine)
    agent.send_signal(signal.SIGKILL)  # nsenter execs the agent: this is the agent itself
    agent.wait(30)
    started = time.monotonic()
    wait_until(lambda: not container_running(engine), 60, "the engine container stops without its agent")
    print(f"\nthe container stopped {time.monotonic() - started:.1f}s after its agent was killed")
    world.start_agent(h1)  # the next agent removes what is left and starts afresh
    wait_until(lambda: container_running(engine) and world.host("h1").healthy, 300, "h1 serves again")
