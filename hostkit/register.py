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
import os
import socket
import sys
import urllib.error
import urllib.request
from pathlib import Path

from hostkit import check

DEFAULT_STATE_DIR = Path(os.environ.get("HOSTKIT_STATE_DIR", "/var/lib/hostkit"))


class RegisterError(Exception):
    """Registration failed; the message is the one line the CLI prints."""


def _write_private(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)


def key_pair(state_dir: Path) -> tuple[str, str]:
    """(private, public) in WireGuard's base64 form; made once and kept."""
    from wireguard_tools import WireguardKey

    path = state_dir / "wireguard.key"
    if path.exists():
        private = WireguardKey(path.read_text().strip())
    else:
        private = WireguardKey.generate()
        _write_private(path, f"{private}\n")
    return str(private), str(private.public_key())


def register(router: str, enrollment_key: str, *, state_dir: Path, name: str, engine_port: int) -> dict:
    if (state_dir / "host.json").exists():
        raise RegisterError(f"this machine is already registered ({state_dir / 'host.json'}); remove that file "
                            "and wireguard.key to register it again as a new host")
    _, public = key_pair(state_dir)
    report = check.run_checks(state_dir)
    ready, summary = check.verdict(report)
    body = {"enrollment_key": enrollment_key, "public_key": public, "name": name, "engine_port": engine_port,
            "hardware": {"ready": ready, "summary": summary, "checks": [vars(c) for c in report]}}
    request = urllib.request.Request(f"{router.rstrip('/')}/api/hosts/register", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"}, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            answer = json.load(response)
    except urllib.error.HTTPError as error:
        try:
            message = json.load(error)["error"]
        except (ValueError, KeyError, TypeError):
            message = f"the router answered {error.code}"
        finally:
            error.close()
        raise RegisterError(message) from None
    except (urllib.error.URLError, OSError) as error:
        raise RegisterError(f"cannot reach the router at {router}: {getattr(error, 'reason', error)}") from None
    _write_private(state_dir / "host.json", json.dumps({"router": router.rstrip("/"), "token": answer["token"],
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
    except RegisterError as error:
        print(f"hostkit register: {error}", file=sys.stderr)
        return 1
    print(f"Registered {host['name']} (peer id {host['peer_id']}); it is {host['status']}: "
          "an admin approves it before any request is routed to it.")
    return 0
