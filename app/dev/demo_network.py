"""Other "machines" for ``make run``'s demo hosts: network namespaces joined to this one by veth pairs.

A demo host then joins the overlay exactly as a host on another machine
does: it reaches the router's host API and the hub's WireGuard port on the
first machine's veth address (the others route to it through this
namespace), and the router reaches its engine only through the tunnel.
Made at start (a stale one from a killed run is replaced) and removed at stop;
every name comes from the run's ``Instance``.
"""
from __future__ import annotations

import subprocess

from .instance import DemoMachine

PREFIX = 30


class DemoNetworkError(RuntimeError):
    pass


def _ip(*args: str) -> None:
    done = subprocess.run(["ip", *args], capture_output=True, text=True)
    if done.returncode != 0:
        raise DemoNetworkError(f"ip {' '.join(args)}: {done.stderr.strip()}")


def create(machine: DemoMachine) -> None:
    remove(machine.namespace, machine.veth)
    namespace, veth = machine.namespace, machine.veth
    _ip("netns", "add", namespace)
    try:
        _ip("-n", namespace, "link", "set", "lo", "up")
        _ip("link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", namespace)
        _ip("address", "add", f"{machine.router_address}/{PREFIX}", "dev", veth)
        _ip("link", "set", veth, "up")
        _ip("-n", namespace, "address", "add", f"{machine.host_address}/{PREFIX}", "dev", "eth0")
        _ip("-n", namespace, "link", "set", "eth0", "up")
        # The router's other addresses (the first machine's veth, where the host API and the hub listen).
        _ip("-n", namespace, "route", "add", "default", "via", machine.router_address)
    except DemoNetworkError:
        remove(namespace, veth)
        raise


def remove(namespace: str, veth: str) -> None:
    """Remove the namespace and the router's end of the veth pair; nothing happens for what is not there."""
    # Interfaces first: wireguard-go exits when its interface is deleted, not when its namespace goes.
    links = subprocess.run(["ip", "-n", namespace, "-o", "link", "show"], capture_output=True, text=True).stdout
    for line in links.splitlines():
        name = line.split(":")[1].strip().split("@")[0]
        if name != "lo":
            subprocess.run(["ip", "-n", namespace, "link", "del", name], capture_output=True)
    subprocess.run(["ip", "netns", "del", namespace], capture_output=True)
    subprocess.run(["ip", "link", "del", veth], capture_output=True)


def command(machine: DemoMachine, *args: str) -> list[str]:
    """``args`` run inside a demo machine: in its network namespace, the rest of this machine as it is (``ip
    netns exec`` would mount a /sys of its own, without the cgroup filesystems a container runtime needs)."""
    return ["nsenter", f"--net=/var/run/netns/{machine.namespace}", *args]
