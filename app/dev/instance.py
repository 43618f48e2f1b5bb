"""One ``make run`` among others on the same machine: its slot, and every name, network and port made from it.

Two runs with different data directories must not touch each other: each takes a slot (0 to
``SLOTS - 1``) under an exclusive lock held for its whole life, and keeps it in its data directory so
its hosts' overlay addresses stay the same from run to run. Everything machine-wide that a run makes
(the hub's interface, UDP port and firewall table, the demo hosts' namespaces, veth pairs and WireGuard
interfaces, the overlay networks) is named from the slot.
"""
from __future__ import annotations

import fcntl
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

SLOTS = 200
BASE_LISTEN_PORT = 51820


class InstanceError(RuntimeError):
    """No slot could be taken; the message says why in one line."""


@dataclass(frozen=True)
class Instance:
    slot: int

    @property
    def wireguard_network(self) -> str:
        return f"10.77.{self.slot}.0/24"

    @property
    def loopback_network(self) -> str:
        return f"127.77.{self.slot}.0/24"

    @property
    def hub_interface(self) -> str:
        return f"gs{self.slot}-hub"

    @property
    def hub_listen_port(self) -> int:
        return BASE_LISTEN_PORT + self.slot

    @property
    def demo_machines(self) -> list[DemoMachine]:
        """The demo's host machines, each a namespace of its own: the chat model's, the embedding model's and the
        chat model's reference engine's (WireGuard tunnels to one hub need a routing table each, as machines
        have)."""
        return [DemoMachine(self.slot, 0, "host"), DemoMachine(self.slot, 1, "embed"), DemoMachine(self.slot, 2, "ref")]

    def links(self) -> list[str]:
        """Every interface a run of this slot may make in the router's namespace."""
        return [self.hub_interface, *(machine.veth for machine in self.demo_machines)]


@dataclass(frozen=True)
class DemoMachine:
    """One demo host's "machine": a namespace joined to the router's by a veth pair (a /30 of 10.78.<slot>.0/24)."""

    slot: int
    index: int
    role: str  # names its WireGuard interface

    @property
    def namespace(self) -> str:
        return f"gs{self.slot}-demo" + (str(self.index) if self.index else "")

    @property
    def veth(self) -> str:
        """The router's end of the veth pair to the namespace."""
        return f"gs{self.slot}-demo{self.index}"

    @property
    def interface(self) -> str:
        """The host's WireGuard interface: inside its namespace, but wireguard-go's control socket is machine-wide,
        so the name must be unique too."""
        return f"gs{self.slot}-{self.role}"

    @property
    def router_address(self) -> str:
        return f"10.78.{self.slot}.{4 * self.index + 1}"

    @property
    def host_address(self) -> str:
        return f"10.78.{self.slot}.{4 * self.index + 2}"


def _lock_path(slot: int) -> Path:
    return Path(tempfile.gettempdir()) / f"gpushare-slot-{slot}.lock"


def _try_lock(slot: int) -> int | None:
    fd = os.open(_lock_path(slot), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


def claim(data_dir: Path) -> tuple[Instance, list[int]]:
    """The data directory and its slot, both locked until the returned descriptors are closed (or the process
    ends). One run per data directory: a second one is refused.

    The slot kept in ``data_dir/instance.json`` is taken again when it is free; otherwise the lowest free
    slot, which is then kept."""
    data_dir.mkdir(parents=True, exist_ok=True)
    own = os.open(data_dir / "serve.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(own, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(own)
        raise InstanceError(f"another platform is running on {data_dir}: stop it, or set GPUSHARE_DATA_DIR "
                            "(and PORT) for a second one") from None
    record = data_dir / "instance.json"
    try:
        kept = json.loads(record.read_text()).get("slot")
    except (OSError, ValueError, AttributeError):
        kept = None
    order = ([kept] if isinstance(kept, int) and 0 <= kept < SLOTS else []) + list(range(SLOTS))
    for slot in order:
        fd = _try_lock(slot)
        if fd is not None:
            if slot != kept:
                record.write_text(json.dumps({"slot": slot}) + "\n")
            return Instance(slot), [own, fd]
    os.close(own)
    raise InstanceError(f"all {SLOTS} slots for a local platform are in use on this machine")
