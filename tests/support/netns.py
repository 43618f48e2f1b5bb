"""Network namespaces for tests: a small LAN of machines on one box, removed afterwards.

``Lan`` makes a bridge in a "router" namespace, plugs the test's own (root)
namespace and each host namespace into it with veth pairs, and gives every
machine an address on a private /24 chosen so it collides with nothing on
this box. Processes run in a namespace with ``ip netns exec``. Everything is
torn down by ``close()``: processes started through ``spawn``, the
namespaces (which takes their interfaces with them), the root's veth end,
and any wireguard-go left running for the namespaces' interfaces.
"""
from __future__ import annotations

import os
import random
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest


def sh(*command: str, check: bool = True, timeout: float = 30) -> subprocess.CompletedProcess:
    done = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    if check and done.returncode != 0:
        pytest.fail(f"{' '.join(command)} failed: {done.stderr.strip() or done.stdout.strip()}", pytrace=False)
    return done


def _free_subnet() -> int:
    used = sh("ip", "-4", "route", "show", "table", "all").stdout + sh("ip", "-4", "addr").stdout
    for third in random.sample(range(16, 250), 234):
        if f"10.241.{third}." not in used and f"10.242.{third}." not in used:
            return third
    pytest.fail("no free 10.241.x.0/24 subnet for the test LAN", pytrace=False)


@dataclass
class Machine:
    lan: "Lan"
    netns: str
    address: str
    processes: list[subprocess.Popen] = field(default_factory=list)

    def run(self, *command: str, check: bool = True, timeout: float = 30, env: dict | None = None,
            cwd: str | None = None) -> subprocess.CompletedProcess:
        done = subprocess.run(["ip", "netns", "exec", self.netns, *command], capture_output=True, text=True,
                              timeout=timeout, env=env, cwd=cwd)
        if check and done.returncode != 0:
            pytest.fail(f"[{self.netns}] {' '.join(command)} failed ({done.returncode}):\n{done.stderr}{done.stdout}",
                        pytrace=False)
        return done

    def spawn(self, *command: str, log: Path, env: dict | None = None, cwd: str | None = None,
              network_only: bool = False) -> subprocess.Popen:
        """``command`` in the background on this machine. ``network_only``: in its network namespace alone, with
        the rest of this box as it is (``ip netns exec`` mounts a /sys of its own, without the cgroup filesystems
        a container runtime needs)."""
        handle = open(log, "ab")
        enter = (["nsenter", f"--net=/var/run/netns/{self.netns}"] if network_only
                 else ["ip", "netns", "exec", self.netns])
        process = subprocess.Popen([*enter, *command], stdout=handle,
                                   stderr=subprocess.STDOUT, env=env, cwd=cwd, start_new_session=True)
        handle.close()
        self.processes.append(process)
        return process

    def can_connect(self, address: str, port: int, timeout: float = 1.0) -> bool:
        """Whether a TCP connection from this machine to address:port succeeds within ``timeout``."""
        probe = ("import socket,sys\ntry:\n socket.create_connection((sys.argv[1], int(sys.argv[2])), "
                 f"timeout={timeout})\nexcept OSError:\n sys.exit(1)")
        return self.run("python3", "-c", probe, address, str(port), check=False,
                        timeout=timeout + 10).returncode == 0

    def pings(self, address: str, wait: float = 1.0) -> bool:
        return self.run("ping", "-c", "1", "-W", str(wait), address, check=False).returncode == 0


def stop_process(process: subprocess.Popen, timeout: float = 60) -> None:
    if process.poll() is None:
        try:
            os.killpg(process.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


class Lan:
    """A bridge in the router's namespace with the root namespace and ``hosts`` host namespaces on it."""

    def __init__(self, hosts: int):
        self.tag = f"{os.getpid() % 10000}{random.randint(0, 9)}"
        self.subnet = _free_subnet()
        self.prefix = f"10.241.{self.subnet}"
        self.overlay = f"10.242.{self.subnet}.0/24"
        self.router = Machine(self, f"gsr{self.tag}", f"{self.prefix}.1")
        self.hosts = [Machine(self, f"gsh{self.tag}{i}", f"{self.prefix}.{11 + i}") for i in range(hosts)]
        self.root_address = f"{self.prefix}.2"
        self.root_veth = f"gsl{self.tag}"
        self.interfaces: list[str] = []  # WireGuard interfaces made in the namespaces, for cleanup
        try:
            self._build()
        except BaseException:
            self.close()
            raise

    def _build(self) -> None:
        router = self.router.netns
        for machine in (self.router, *self.hosts):
            sh("ip", "netns", "add", machine.netns)
            sh("ip", "-n", machine.netns, "link", "set", "lo", "up")
        sh("ip", "-n", router, "link", "add", "br0", "type", "bridge")
        sh("ip", "-n", router, "address", "add", f"{self.router.address}/24", "dev", "br0")
        sh("ip", "-n", router, "link", "set", "br0", "up")
        # The test's own namespace joins the LAN: it is where clients and the admin's browser sit.
        sh("ip", "link", "add", self.root_veth, "type", "veth", "peer", "name", "lan0", "netns", router)
        sh("ip", "-n", router, "link", "set", "lan0", "master", "br0", "up")
        sh("ip", "address", "add", f"{self.root_address}/24", "dev", self.root_veth)
        sh("ip", "link", "set", self.root_veth, "up")
        for index, host in enumerate(self.hosts):
            port = f"lan{index + 1}"
            sh("ip", "-n", router, "link", "add", port, "type", "veth", "peer", "name", "eth0", "netns", host.netns)
            sh("ip", "-n", router, "link", "set", port, "master", "br0", "up")
            sh("ip", "-n", host.netns, "address", "add", f"{host.address}/24", "dev", "eth0")
            sh("ip", "-n", host.netns, "link", "set", "eth0", "up")

    def interface(self, role: str) -> str:
        """A WireGuard interface name unique on this machine (wireguard-go's sockets share /var/run)."""
        name = f"gw{self.tag}{role}"[:15]
        self.interfaces.append(name)
        return name

    def close(self) -> None:
        for machine in (*self.hosts, self.router):  # hosts first: their agents say goodbye to the router
            for process in reversed(machine.processes):
                stop_process(process)
        for machine in (*self.hosts, self.router):
            for name in self.interfaces:  # wireguard-go exits when its interface goes, not with the namespace
                subprocess.run(["ip", "-n", machine.netns, "link", "del", name], capture_output=True)
            subprocess.run(["ip", "netns", "del", machine.netns], capture_output=True)
        subprocess.run(["ip", "link", "del", self.root_veth], capture_output=True)
        for name in self.interfaces:  # wireguard-go exits with its interface; make sure of it
            subprocess.run(["pkill", "-f", f"wireguard-go {name}$"], capture_output=True)
            try:
                os.unlink(f"/var/run/wireguard/{name}.sock")
            except FileNotFoundError:
                pass
        time.sleep(0.1)
