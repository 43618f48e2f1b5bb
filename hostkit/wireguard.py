"""WireGuard interfaces and the overlay's firewall rules, through ``ip``, ``wg``, ``wireguard-go`` and ``nft``.

Both ends of the overlay use this module: ``hostkit agent`` for a host's one
peer (the hub), and the router's hub (``overlay/hub.py``) for every approved
host. Kernel WireGuard is used where the kernel has it; elsewhere
``wireguard-go`` makes the interface (its control socket is
``/var/run/wireguard/<name>.sock``, so names must be unique on the machine).

Peers are changed one at a time with ``wg set``, never by replacing the
whole configuration, so adding or removing one host never disturbs another.

The firewall rules are code (``hub_rules``, ``host_rules``) and are applied
as one nftables table, replaced atomically.
"""
from __future__ import annotations

import ipaddress
import os
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass

USERSPACE_SOCKET_DIR = "/var/run/wireguard"
KEEPALIVE_SECONDS = 25
MAX_NAME = 15  # Linux interface names


class WireGuardError(RuntimeError):
    """An interface or firewall change failed; the message names the command and what it printed."""


def _run(*command: str, stdin: str | None = None) -> str:
    if shutil.which(command[0]) is None:
        raise WireGuardError(f"{command[0]} is not installed (Debian/Ubuntu: apt install wireguard-tools "
                             "nftables, and wireguard-go where the kernel has no WireGuard module)")
    done = subprocess.run(command, input=stdin, capture_output=True, text=True, timeout=30)
    if done.returncode != 0:
        raise WireGuardError(f"{' '.join(command)}: {(done.stderr or done.stdout).strip()}")
    return done.stdout


def generate_private_key() -> str:
    return _run("wg", "genkey").strip()


def public_key(private_key: str) -> str:
    return _run("wg", "pubkey", stdin=private_key + "\n").strip()


def available() -> tuple[bool, str]:
    """Whether this machine can make WireGuard interfaces, and why not."""
    if os.geteuid() != 0:
        return False, "making network interfaces needs root (or CAP_NET_ADMIN)"
    if shutil.which("wg") is None or shutil.which("ip") is None:
        return False, "wg or ip is missing (apt install wireguard-tools iproute2)"
    if not os.path.exists("/sys/module/wireguard") and shutil.which("wireguard-go") is None:
        return False, "the kernel has no WireGuard module and wireguard-go is not installed"
    return True, "ok"


@dataclass(frozen=True)
class Peer:
    public_key: str
    endpoint: str | None
    allowed_ips: tuple[str, ...]
    latest_handshake: int


class Interface:
    def __init__(self, name: str):
        if not 0 < len(name) <= MAX_NAME or "/" in name or " " in name:
            raise WireGuardError(f"{name!r} is not a usable interface name (1 to {MAX_NAME} characters)")
        self.name = name

    def exists(self) -> bool:
        return subprocess.run(["ip", "link", "show", "dev", self.name], capture_output=True).returncode == 0

    def create(self) -> str:
        """Make the interface if it is missing; returns how ("kernel" or "wireguard-go")."""
        if self.exists():
            return "existing"
        kernel = subprocess.run(["ip", "link", "add", "dev", self.name, "type", "wireguard"], capture_output=True)
        if kernel.returncode == 0:
            return "kernel"
        if shutil.which("wireguard-go") is None:
            raise WireGuardError(f"cannot make {self.name}: the kernel has no WireGuard module "
                                 f"({kernel.stderr.decode().strip()}) and wireguard-go is not installed")
        socket_path = os.path.join(USERSPACE_SOCKET_DIR, f"{self.name}.sock")
        if os.path.exists(socket_path):
            if self._answers():
                raise WireGuardError(f"{self.name} is already in use by another network namespace on this machine; "
                                     "choose another interface name")
            os.unlink(socket_path)  # left by a wireguard-go that died with its namespace
        env = dict(os.environ, WG_I_PREFER_BUGGY_USERSPACE_TO_POLISHED_KMOD="1")
        done = subprocess.run(["wireguard-go", self.name], capture_output=True, text=True, env=env, timeout=30)
        if done.returncode != 0:
            raise WireGuardError(f"wireguard-go {self.name}: {done.stderr.strip()}")
        deadline = time.monotonic() + 10
        while not (os.path.exists(socket_path) and self._answers()):
            if time.monotonic() > deadline:
                raise WireGuardError(f"wireguard-go started but {socket_path} does not answer")
            time.sleep(0.05)
        return "wireguard-go"

    def _answers(self) -> bool:
        return subprocess.run(["wg", "show", self.name], capture_output=True).returncode == 0

    def configure(self, private_key: str, address: str, *, listen_port: int | None = None,
                  routes: tuple[str, ...] = ()) -> None:
        """Key, listening port, the interface's address, up, and routes through it; safe to repeat."""
        with tempfile.NamedTemporaryFile("w", prefix="wg-key-") as key_file:
            os.chmod(key_file.name, 0o600)
            key_file.write(private_key + "\n")
            key_file.flush()
            command = ["wg", "set", self.name, "private-key", key_file.name]
            if listen_port is not None:
                command += ["listen-port", str(listen_port)]
            _run(*command)
        _run("ip", "address", "replace", address, "dev", self.name)
        _run("ip", "link", "set", "dev", self.name, "up")
        for route in routes:
            _run("ip", "route", "replace", route, "dev", self.name)

    def set_peer(self, public_key: str, allowed_ips: tuple[str, ...], *, endpoint: str | None = None,
                 keepalive: int | None = None) -> None:
        command = ["wg", "set", self.name, "peer", public_key, "allowed-ips", ",".join(allowed_ips)]
        if endpoint:
            command += ["endpoint", endpoint]
        if keepalive:
            command += ["persistent-keepalive", str(keepalive)]
        _run(*command)

    def remove_peer(self, public_key: str) -> None:
        _run("wg", "set", self.name, "peer", public_key, "remove")

    def peers(self) -> dict[str, Peer]:
        """The interface's peers by public key, from ``wg show NAME dump``."""
        lines = _run("wg", "show", self.name, "dump").splitlines()[1:]  # the first line is the interface
        peers = {}
        for line in lines:
            key, _psk, endpoint, allowed, handshake, *_ = line.split("\t")
            allowed_ips = tuple(sorted(ip for ip in allowed.split(",") if ip and ip != "(none)"))
            peers[key] = Peer(key, None if endpoint == "(none)" else endpoint, allowed_ips, int(handshake))
        return peers

    def delete(self) -> None:
        if self.exists():
            _run("ip", "link", "delete", "dev", self.name)


def _family(address: str) -> str:
    return "ip6" if ipaddress.ip_address(address).version == 6 else "ip"


def hub_rules(interface: str, table: str = "gpushare_hub") -> str:
    """The hub: hosts may answer the router, and nothing else. They reach none of the router's services
    (web and admin pages, PostgreSQL, Redis) and, since nothing is forwarded, not each other."""
    return f"""table inet {table} {{
    chain input {{
        type filter hook input priority 0; policy accept;
        iifname "{interface}" ct state established,related accept
        iifname "{interface}" icmp type echo-reply accept
        iifname "{interface}" counter drop
    }}
    chain forward {{
        type filter hook forward priority 0; policy accept;
        iifname "{interface}" counter drop
        oifname "{interface}" counter drop
    }}
}}
"""


def host_rules(interface: str, address: str, hub: str, ports: tuple[int, ...], table: str = "gpushare_host") -> str:
    """A host: its overlay address answers only the hub, on the engine's port (and SSH for diagnostics).
    Packets for the overlay address that arrive on any other interface (the underlay) are dropped: binding
    the engine to the overlay address alone does not stop a neighbour who routes that address to us."""
    family, port_set = _family(address), ", ".join(str(port) for port in ports)
    return f"""table inet {table} {{
    chain input {{
        type filter hook input priority 0; policy accept;
        iifname "lo" accept
        {family} daddr {address} iifname != "{interface}" counter drop
        iifname "{interface}" ct state established,related accept
        iifname "{interface}" {family} saddr {hub} tcp dport {{ {port_set} }} accept
        iifname "{interface}" {family} saddr {hub} icmp type echo-request accept
        iifname "{interface}" counter drop
    }}
}}
"""


def apply_rules(ruleset: str, table: str) -> None:
    """Replace one nftables table with ``ruleset`` in a single transaction."""
    _run("nft", "-f", "-", stdin=f"table inet {table}\ndelete table inet {table}\n{ruleset}")


def remove_rules(table: str) -> None:
    subprocess.run(["nft", "delete", "table", "inet", table], capture_output=True)
