"""A second "machine" for ``make run``'s demo host: a network namespace joined to this one by a veth pair.

The demo host then joins the overlay exactly as a host on another machine
does: it reaches the router's host API and the hub's WireGuard port on the
veth address, and the router reaches its engine only through the tunnel.
Made at start (a stale one from a killed run is replaced) and removed at stop.
"""
from __future__ import annotations

import subprocess

NAMESPACE = "gpushare-demo"
ROUTER_SIDE = "gpushare-demo0"
ROUTER_ADDRESS = "10.78.0.1"
HOST_ADDRESS = "10.78.0.2"
PREFIX = 30


class DemoNetworkError(RuntimeError):
    pass


def _ip(*args: str) -> None:
    done = subprocess.run(["ip", *args], capture_output=True, text=True)
    if done.returncode != 0:
        raise DemoNetworkError(f"ip {' '.join(args)}: {done.stderr.strip()}")


def create() -> None:
    remove()
    _ip("netns", "add", NAMESPACE)
    try:
        _ip("-n", NAMESPACE, "link", "set", "lo", "up")
        _ip("link", "add", ROUTER_SIDE, "type", "veth", "peer", "name", "eth0", "netns", NAMESPACE)
        _ip("address", "add", f"{ROUTER_ADDRESS}/{PREFIX}", "dev", ROUTER_SIDE)
        _ip("link", "set", ROUTER_SIDE, "up")
        _ip("-n", NAMESPACE, "address", "add", f"{HOST_ADDRESS}/{PREFIX}", "dev", "eth0")
        _ip("-n", NAMESPACE, "link", "set", "eth0", "up")
    except DemoNetworkError:
        remove()
        raise


def remove() -> None:
    # Interfaces first: wireguard-go exits when its interface is deleted, not when its namespace goes.
    links = subprocess.run(["ip", "-n", NAMESPACE, "-o", "link", "show"], capture_output=True, text=True).stdout
    for line in links.splitlines():
        name = line.split(":")[1].strip().split("@")[0]
        if name != "lo":
            subprocess.run(["ip", "-n", NAMESPACE, "link", "del", name], capture_output=True)
    subprocess.run(["ip", "netns", "del", NAMESPACE], capture_output=True)
    subprocess.run(["ip", "link", "del", ROUTER_SIDE], capture_output=True)


def command(*args: str) -> list[str]:
    """``args`` run inside the demo machine."""
    return ["ip", "netns", "exec", NAMESPACE, *args]
