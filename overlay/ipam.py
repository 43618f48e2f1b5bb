"""One overlay address per approved host, from one allocator.

The allocator is seeded from the database (every address a host holds),
runs under a PostgreSQL advisory lock so two router processes never hand out
the same address, and never gives the network address, the broadcast address
or the hub's own address (the first host address).
"""
from __future__ import annotations

import ipaddress
from collections.abc import Iterable

from sqlalchemy import text
from sqlalchemy.orm import Session

ALLOCATOR_LOCK = 0x67707368  # the advisory lock id for the allocator ("gpsh")


class OverlayFull(RuntimeError):
    """Every address of the overlay network is taken."""


def hub_address(network: ipaddress.IPv4Network | ipaddress.IPv6Network):
    return next(network.hosts())


def next_free(network: str, taken: Iterable[str]) -> str:
    """The lowest address of ``network`` that is neither reserved nor in ``taken``."""
    net = ipaddress.ip_network(network)
    used = {ipaddress.ip_address(a) for a in taken} | {hub_address(net)}
    for candidate in net.hosts():  # hosts() leaves out the network and broadcast addresses
        if candidate not in used:
            return str(candidate)
    raise OverlayFull(f"no free address left in {net}")


def allocate(session: Session, network: str) -> str:
    """A free overlay address, reserved until the caller's transaction ends (assign it in the same one)."""
    session.execute(text("SELECT pg_advisory_xact_lock(:lock)"), {"lock": ALLOCATOR_LOCK})
    taken = session.execute(text("SELECT host(overlay_address) FROM hosts WHERE overlay_address IS NOT NULL"))
    return next_free(network, (row[0] for row in taken))
