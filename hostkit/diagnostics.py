"""Remote diagnostics: what the router needs to run ``hostkit check`` on this machine over SSH.

At registration the machine sends its SSH host public key, which the router
pins: it refuses to talk to any other key. Once approved, the agent installs
the platform's public key in root's ``authorized_keys`` as one managed line,
usable only from the hub's overlay address and only to run the check
(``restrict`` turns off forwarding, a terminal and everything else).

Standard library only: hostkit is installed on hosts without the router.
"""
from __future__ import annotations

import base64
import ipaddress
import os
import re
import tempfile
from pathlib import Path

HOST_KEY_PATH = "/etc/ssh/ssh_host_ed25519_key.pub"
AUTHORIZED_KEYS = Path("/root/.ssh/authorized_keys")
MARKER = "gpushare-diagnostics"
CHECK_COMMAND = "hostkit check --json"
_KEY_TYPES = re.compile(r"^(ssh-ed25519|ssh-rsa|ecdsa-sha2-nistp(256|384|521)|sk-ssh-ed25519@openssh\.com|"
                        r"sk-ecdsa-sha2-nistp256@openssh\.com)$")
_SAFE_COMMAND = re.compile(r'^[A-Za-z0-9 _./:=@+-]+$')


class DiagnosticsKeyError(ValueError):
    """A key or address that cannot be written into authorized_keys; the message says which."""


def _key(line: str) -> tuple[str, str] | None:
    """(type, base64 body) of an OpenSSH public key line, or None when it is not one."""
    parts = (line or "").split()
    if len(parts) < 2 or not _KEY_TYPES.match(parts[0]):
        return None
    try:
        blob = base64.b64decode(parts[1], validate=True)
    except ValueError:
        return None
    # The blob starts with the key type as an SSH string: a key pasted under the wrong type is refused.
    name = parts[0].encode()
    if blob[:4] != len(name).to_bytes(4, "big") or blob[4:4 + len(name)] != name:
        return None
    return parts[0], parts[1]


def host_key_line(path: str | os.PathLike = HOST_KEY_PATH) -> str | None:
    """This machine's SSH host public key as ``type base64`` (no comment), or None when there is none."""
    try:
        text = Path(path).read_text()
    except (OSError, UnicodeDecodeError):
        return None
    for line in text.splitlines():
        if (key := _key(line)) is not None:
            return " ".join(key)
    return None


def managed_line(public_key_line: str, hub_address: str, command: str = CHECK_COMMAND) -> str:
    """The one authorized_keys line hostkit manages."""
    key = _key(public_key_line)
    if key is None:
        raise DiagnosticsKeyError("the platform's diagnostics key is not an OpenSSH public key line")
    try:
        hub = ipaddress.ip_address(str(hub_address).strip())
    except ValueError:
        raise DiagnosticsKeyError(f"{hub_address!r} is not an IP address (the hub's overlay address)") from None
    if not _SAFE_COMMAND.match(command):
        raise DiagnosticsKeyError(f"{command!r} cannot be a forced command")
    return f'from="{hub}",restrict,command="{command}" {key[0]} {key[1]} {MARKER}'


def install_platform_key(public_key_line: str, hub_address: str, authorized_keys: str | os.PathLike = AUTHORIZED_KEYS,
                         command: str = CHECK_COMMAND) -> bool:
    """Write the platform's key as the one managed line of ``authorized_keys``, keeping every other line.

    Idempotent: returns whether the file changed. The directory is made 0700 and
    the file 0600, as sshd's StrictModes wants; the file is replaced atomically.
    """
    line = managed_line(public_key_line, hub_address, command)
    path = Path(authorized_keys)
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(path.parent, 0o700)
    try:
        current = path.read_text()
        owner = path.stat()
    except FileNotFoundError:
        current, owner = "", path.parent.stat()
    lines, placed = [], False
    for old in current.splitlines():
        if _is_managed(old):  # the managed line keeps its place; any duplicate goes
            if not placed:
                lines.append(line)
                placed = True
        else:
            lines.append(old)
    wanted = "\n".join(lines if placed else [*lines, line]) + "\n"
    if wanted == current:
        os.chmod(path, 0o600)
        return False
    fd, temporary = tempfile.mkstemp(prefix=".authorized_keys.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(wanted)
        os.chmod(temporary, 0o600)
        if os.geteuid() == 0:  # keep the file its user's, as sshd requires (e.g. /home/x/.ssh)
            os.chown(temporary, owner.st_uid, owner.st_gid)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return True


def _is_managed(line: str) -> bool:
    return line.rstrip().endswith(f" {MARKER}")
