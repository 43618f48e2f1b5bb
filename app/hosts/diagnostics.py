"""Remote diagnostics: an admin runs ``hostkit check --json`` on an approved host over SSH.

The platform has one SSH client key (ed25519), made on first use under the
data directory or read from ``DIAGNOSTICS_SSH_KEY_FILE``; hosts authorize its
public key for that one command, from the hub's address only (see
``hostkit/diagnostics.py``). The router dials the host's overlay address and
trusts only the SSH host key pinned when the machine registered: any other key
is refused before anything runs on it.
"""
from __future__ import annotations

import base64
import json
import os
import socket
import tempfile
import time
from pathlib import Path

import paramiko
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from flask import current_app

from ..accounts import audit
from ..extensions import db
from ..models import Host, User

CHECK_COMMAND = "hostkit check --json"
KEY_COMMENT = "gpushare-platform"
MAX_OUTPUT_BYTES = 256 * 1024


class DiagnosticsError(Exception):
    """Diagnostics could not run; the message says why, in one line, for the admin."""


def key_path() -> Path:
    configured = current_app.config.get("DIAGNOSTICS_SSH_KEY_FILE")
    if configured:
        return Path(configured)
    return Path(current_app.config["GPUSHARE_DATA_DIR"]) / "ssh" / "diagnostics_key"


def _create_key(path: Path) -> None:
    """Write a new private key at ``path``, mode 0600; if another process got there first, keep theirs."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    pem = Ed25519PrivateKey.generate().private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                                     serialization.NoEncryption())
    fd, temporary = tempfile.mkstemp(prefix=".diagnostics_key.", dir=path.parent)  # mkstemp makes it 0600
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(pem)
        try:
            os.link(temporary, path)  # never replaces a key that already exists
        except FileExistsError:
            pass
    finally:
        os.unlink(temporary)


def client_key() -> paramiko.Ed25519Key:
    """The platform's SSH client key, made on first use unless the operator configured a file."""
    path = key_path()
    if not path.exists():
        if current_app.config.get("DIAGNOSTICS_SSH_KEY_FILE"):
            raise DiagnosticsError(f"DIAGNOSTICS_SSH_KEY_FILE {str(path)!r} does not exist")
        _create_key(path)
    try:
        return paramiko.Ed25519Key.from_private_key_file(str(path))
    except (OSError, paramiko.SSHException, ValueError) as exc:
        raise DiagnosticsError(f"the platform's SSH key {str(path)!r} cannot be read (an unencrypted ed25519 "
                               f"key in OpenSSH format is needed): {exc}") from None


def platform_public_key() -> str:
    """The platform's public key as an OpenSSH line, for hosts' authorized_keys."""
    key = client_key()
    return f"{key.get_name()} {key.get_base64()} {KEY_COMMENT}"


def _pinned_key(host: Host) -> paramiko.PKey:
    line = (host.ssh_host_key or "").split()
    if len(line) < 2:
        raise DiagnosticsError("this host sent no SSH host key when it registered, so its identity cannot be "
                               "checked: re-register it with a current hostkit")
    try:
        return paramiko.PKey.from_type_string(line[0], base64.b64decode(line[1], validate=True))
    except (paramiko.SSHException, paramiko.pkey.UnknownKeyType, ValueError, TypeError) as exc:
        raise DiagnosticsError(f"the SSH host key pinned at registration cannot be read: {exc}") from None


class _UnpinnedKey(paramiko.SSHException):
    """The host offered a key of a type other than the pinned one."""


class _RejectUnpinned(paramiko.RejectPolicy):
    def missing_host_key(self, client, hostname, key):
        raise _UnpinnedKey(hostname)


def _connect(client: paramiko.SSHClient, address: str, pinned: paramiko.PKey) -> None:
    config = current_app.config
    port, timeout = config["DIAGNOSTICS_SSH_PORT"], config["DIAGNOSTICS_CONNECT_TIMEOUT"]
    # The pinned key is the only one trusted: no system or user known_hosts, and any other key is refused.
    client.get_host_keys().add(address if port == 22 else f"[{address}]:{port}", pinned.get_name(), pinned)
    client.set_missing_host_key_policy(_RejectUnpinned())
    try:
        client.connect(address, port=port, username=config["DIAGNOSTICS_SSH_USER"], pkey=client_key(),
                       timeout=timeout, banner_timeout=timeout, auth_timeout=timeout, channel_timeout=timeout,
                       allow_agent=False, look_for_keys=False)
    except (paramiko.BadHostKeyException, _UnpinnedKey):
        raise DiagnosticsError("the host's SSH key does not match the key pinned at registration: "
                               "nothing was run on it") from None
    except paramiko.AuthenticationException:
        raise DiagnosticsError("the host refused the platform's SSH key: its agent has not installed it yet "
                               "(it does once it joins the overlay)") from None
    except paramiko.SSHException as exc:
        raise DiagnosticsError(f"SSH to {address}:{port} failed: {exc}") from None
    except (socket.timeout, TimeoutError):
        raise DiagnosticsError(f"no answer from {address}:{port} within {timeout} s: is the host on the overlay?") \
            from None
    except paramiko.ssh_exception.NoValidConnectionsError:
        raise DiagnosticsError(f"cannot reach {address}:{port}: nothing answers SSH there (is the host's sshd "
                               "running and the host on the overlay?)") from None
    except OSError as exc:
        raise DiagnosticsError(f"cannot reach {address}:{port}: {exc.strerror or exc}") from None


def _run(client: paramiko.SSHClient, address: str) -> tuple[int, bytes, bytes]:
    """Run the check, reading its output within the configured time; (exit status, stdout, stderr)."""
    limit = current_app.config["DIAGNOSTICS_TIMEOUT_SECONDS"]
    deadline = time.monotonic() + limit
    channel = client.get_transport().open_session(timeout=current_app.config["DIAGNOSTICS_CONNECT_TIMEOUT"])
    channel.exec_command(CHECK_COMMAND)  # the host's authorized_keys forces this command whatever is asked
    out, err = bytearray(), bytearray()
    while True:
        if channel.recv_ready():
            out += channel.recv(65536)
        elif channel.recv_stderr_ready():
            err += channel.recv_stderr(65536)
        elif channel.exit_status_ready() and (channel.eof_received or channel.closed):
            return channel.recv_exit_status(), bytes(out), bytes(err)
        elif time.monotonic() > deadline:
            raise DiagnosticsError(f"`{CHECK_COMMAND}` on {address} did not finish within {limit} s")
        else:
            time.sleep(0.05)
        if len(out) + len(err) > MAX_OUTPUT_BYTES:
            raise DiagnosticsError(f"`{CHECK_COMMAND}` on {address} wrote more than {MAX_OUTPUT_BYTES // 1024} KiB")


def _report(status: int, out: bytes, err: bytes) -> dict:
    try:
        report = json.loads(out)
    except ValueError:
        said = (err or out).decode(errors="replace").strip().splitlines()
        detail = said[-1][:300] if said else "no output"
        raise DiagnosticsError(f"`{CHECK_COMMAND}` did not print a report (exit status {status}): {detail}") from None
    if not isinstance(report, dict) or not isinstance(report.get("checks"), list):
        raise DiagnosticsError(f"`{CHECK_COMMAND}` printed JSON that is not a hostkit report")
    return report


def run_check(host: Host) -> dict:
    """Run ``hostkit check --json`` on ``host`` over SSH and return its report (ready, summary, checks)."""
    if host.status != "approved":
        raise DiagnosticsError(f"this host is {host.status}: diagnostics run on approved hosts only")
    if not host.overlay_address:
        raise DiagnosticsError("this host has no overlay address, so the router cannot reach it")
    pinned, address = _pinned_key(host), str(host.overlay_address)
    client = paramiko.SSHClient()
    try:
        _connect(client, address, pinned)
        status, out, err = _run(client, address)
    except (paramiko.SSHException, OSError) as exc:
        raise DiagnosticsError(f"the SSH session with {address} broke: {exc}") from None
    finally:
        client.close()
    return _report(status, out, err)


def diagnose(admin: User, host_id: int) -> dict:
    """Run the check on a host for an admin and audit it, whatever the outcome.

    Returns ``{"host": Host, "report": dict | None, "error": str | None}``.
    """
    host = db.session.get(Host, host_id)
    if host is None:
        raise LookupError(host_id)
    # Hold no database connection while SSH runs (up to DIAGNOSTICS_TIMEOUT_SECONDS): keep the row as read.
    db.session.expunge(host)
    db.session.commit()
    started = time.monotonic()
    try:
        report, error = run_check(host), None
    except DiagnosticsError as exc:
        report, error = None, str(exc)
    details = {"seconds": round(time.monotonic() - started, 2)}
    details |= {"ready": bool(report.get("ready")), "summary": str(report.get("summary", ""))[:300]} if report \
        else {"error": error}
    audit.record(admin, "host.diagnostics", "host", host_id, **details)
    db.session.commit()
    return {"host": db.session.get(Host, host_id), "report": report, "error": error}
