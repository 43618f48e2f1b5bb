"""The router's side of the overlay: a WireGuard hub with one peer per approved host.

The hub's peer set follows the database: ``reconcile`` adds the approved
hosts that are missing (each allowed exactly its own /32), removes every peer
that is not an approved host, and reports the endpoints it has seen so a peer
re-added later is reachable at once, before the host sends a packet.
"""
from __future__ import annotations

import ipaddress
import os
import re
from dataclasses import dataclass
from pathlib import Path

from hostkit import wireguard

CHANNEL = "gpushare:overlay"  # Redis pub/sub: "the approved hosts changed, reconcile now"


def firewall_table(interface: str) -> str:
    """The hub's nftables table, named after its interface so that two hubs on one machine keep apart
    (``gpushare-hub`` has ``gpushare_hub``)."""
    return re.sub(r"\W", "_", interface)


@dataclass(frozen=True)
class Wanted:
    """An approved host as the hub should know it."""

    public_key: str
    address: str
    endpoint: str | None = None


@dataclass(frozen=True)
class Changes:
    added: tuple[str, ...] = ()
    removed: tuple[str, ...] = ()
    endpoints: dict | None = None  # public key -> endpoint seen now


def load_private_key(path: Path) -> str:
    """The hub's private key from ``path``, made there (mode 0600) the first time."""
    if path.exists():
        return path.read_text().strip()
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    key = wireguard.generate_private_key()
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # another process made it first
        return path.read_text().strip()
    with os.fdopen(fd, "w") as fh:
        fh.write(key + "\n")
    return key


def remove(interface: str) -> None:
    """The hub's firewall and interface, gone; nothing happens for what is not there."""
    wireguard.remove_rules(firewall_table(interface))
    wireguard.Interface(interface).delete()


def host_route(address: str) -> str:
    return str(ipaddress.ip_network(address))  # a /32 (or /128)


class Hub:
    def __init__(self, interface: str, network: str, private_key: str, listen_port: int):
        self.interface = wireguard.Interface(interface)
        self.network = ipaddress.ip_network(network)
        self.address = next(self.network.hosts())
        self.private_key, self.listen_port = private_key, listen_port

    def up(self) -> str:
        """Make and configure the interface and its firewall; safe to repeat. Returns how it was made."""
        how = self.interface.create()
        self.interface.configure(self.private_key, f"{self.address}/{self.network.prefixlen}",
                                 listen_port=self.listen_port)
        table = firewall_table(self.interface.name)
        wireguard.apply_rules(wireguard.hub_rules(self.interface.name, table), table)
        return how

    def down(self) -> None:
        remove(self.interface.name)

    def reconcile(self, wanted: list[Wanted]) -> Changes:
        current = self.interface.peers()
        want = {w.public_key: w for w in wanted}
        removed = [key for key in current if key not in want]
        for key in removed:
            self.interface.remove_peer(key)
        added = []
        for key, host in want.items():
            allowed = (host_route(host.address),)
            peer = current.get(key)
            if peer is None or peer.allowed_ips != allowed:
                self.interface.set_peer(key, allowed, endpoint=host.endpoint)
                added.append(key)
        endpoints = {key: peer.endpoint for key, peer in current.items() if key in want and peer.endpoint}
        return Changes(tuple(added), tuple(removed), endpoints)


def notify(redis_client) -> None:
    """Tell the hub to reconcile now (after a commit that approved, suspended or rejected a host)."""
    redis_client.publish(CHANNEL, b"reconcile")
