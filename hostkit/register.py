"""``hostkit register``: give this machine an identity and register it with a gpushare router.

The machine's WireGuard key pair is made here and the private key never
leaves it (``STATE_DIR/wireguard.key``, mode 0600). The router receives the
public key, the engine port and the ``hostkit check`` report, and answers
with a host token, kept in ``STATE_DIR/host.json`` (mode 0600). The host then
waits for an admin's approval.
"""
from __future__ import annotations

import argparse
import json
import socket
import sys
from pathlib import Path

from hostkit import check, diagnostics
from hostkit.client import DEFAULT_STATE_DIR, HostkitError, request, write_private


def key_pair(state_dir: Path) -> tuple[str, str]:
    """(private, public) in WireGuard's base64 form; made once and kept."""
    from wireguard_tools import WireguardKey

    path = state_dir / "wireguard.key"
    if path.exists():
        private = WireguardKey(path.read_text().strip())
    else:
        private = WireguardKey.generate()
        write_private(path, f"{private}\n")
    return str(private), str(private.public_key())


def register(router: str, enrollment_key: str, *, state_dir: Path, name: str, engine_port: int) -> dict:
    if (state_dir / "host.json").exists():
        raise HostkitError(f"this machine is already registered ({state_dir / 'host.json'}); remove that file "
                            "and wireguard.key to register it again as a new host")
    _, public = key_pair(state_dir)
    report = check.run_checks(state_dir)
    ready, summary = check.verdict(report)
    body = {"enrollment_key": enrollment_key, "public_key": public, "name": name, "engine_port": engine_port,
            "hardware": {"ready": ready, "summary": summary, "checks": [vars(c) for c in report]}}
    if (host_key := diagnostics.host_key_line()) is not None:
        body["ssh_host_key"] = host_key  # pinned by the router for diagnostics over SSH
    answer = request("POST", f"{router.rstrip('/')}/api/hosts/register", body)
    write_private(state_dir / "host.json", json.dumps({"router": router.rstrip("/"), "token": answer["token"],
                                                        "host": answer["host"]}, indent=2) + "\n")
    return answer["host"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="hostkit register", description=__doc__.splitlines()[0])
    parser.add_argument("--router", required=True, help="the gpushare router's URL")
    parser.add_argument("--invite", required=True, help="the enrollment key from the host dashboard")
    parser.add_argument("--name", default=socket.gethostname(), help="what the dashboards call this machine")
    parser.add_argument("--engine-port", type=int, default=8000, help="the port the engine listens on")
    parser.add_argument("--state-dir", type=Path, default=DEFAULT_STATE_DIR)
    args = parser.parse_args(argv)
    try:
        host = register(args.router, args.invite, state_dir=args.state_dir, name=args.name,
                        engine_port=args.engine_port)
    except HostkitError as error:
        print(f"hostkit register: {error}", file=sys.stderr)
        return 1
    print(f"Registered {host['name']} (peer id {host['peer_id']}); it is {host['status']}: "
          "an admin approves it before any request is routed to it.")
    return 0
