"""Remote diagnostics against a real sshd: the platform key, the pinned host key, and ``hostkit check`` run over SSH."""
import os
import pwd
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import select

from app import ROOT
from app.extensions import db
from app.hosts import diagnostics
from app.models import AuditEvent, Host
from hostkit import diagnostics as hostkit_diagnostics
from hostkit.local.engine import free_port

from ..support.factories import make_host

pytestmark = pytest.mark.root

SSHD = "/usr/sbin/sshd"
HX = {"HX-Request": "true"}
MISMATCH = "the host's SSH key does not match the key pinned at registration"


def public_line(private_key) -> str:
    return private_key.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                                 serialization.PublicFormat.OpenSSH).decode()


def write_host_key(directory: Path) -> Path:
    key = Ed25519PrivateKey.generate()
    path = directory / "ssh_host_ed25519_key"
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                       serialization.NoEncryption()))
    path.chmod(0o600)
    (directory / "ssh_host_ed25519_key.pub").write_text(public_line(key) + " root@test-host\n")
    return path


def wait_for_banner(port: int, process: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        assert process.poll() is None, f"sshd exited: {log.read_text()}"
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
                if sock.recv(64).startswith(b"SSH-2.0"):
                    return
        except OSError:
            time.sleep(0.1)
    raise AssertionError(f"sshd did not answer on {port}: {log.read_text()}")


@pytest.fixture
def sshd(tmp_path):
    """A real sshd on loopback with its own host key; the platform's key runs a check script that leaves a marker."""
    Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # sshd's privilege separation directory
    host_key = write_host_key(tmp_path)
    port = free_port()
    authorized_keys = tmp_path / "authorized_keys"
    authorized_keys.write_text("")
    config = tmp_path / "sshd_config"
    config.write_text("\n".join([
        f"ListenAddress 127.0.0.1:{port}", f"HostKey {host_key}", f"PidFile {tmp_path / 'sshd.pid'}",
        f"AuthorizedKeysFile {authorized_keys}", "StrictModes no", "PermitRootLogin prohibit-password",
        "PubkeyAuthentication yes", "PasswordAuthentication no", "KbdInteractiveAuthentication no", "UsePAM no",
        "LogLevel VERBOSE", ""]))
    marker = tmp_path / "check-ran"
    script = tmp_path / "hostkit-check"
    script.write_text(f"#!/bin/sh\ntouch {marker}\ncd {ROOT}\nexec {sys.executable} -m hostkit check --json\n")
    script.chmod(0o755)
    log = tmp_path / "sshd.log"
    with log.open("w") as err:
        process = subprocess.Popen([SSHD, "-D", "-e", "-f", str(config)], stdout=err, stderr=subprocess.STDOUT)
    try:
        wait_for_banner(port, process, log)
        pinned = hostkit_diagnostics.host_key_line(tmp_path / "ssh_host_ed25519_key.pub")
        yield SimpleNamespace(port=port, host_key=pinned, authorized_keys=authorized_keys, marker=marker,
                              script=script, log=log)
    finally:
        process.terminate()
        process.wait(timeout=10)


@pytest.fixture
def reach(app, monkeypatch):
    """Point diagnostics at a test port as the user running the tests, with short timeouts."""
    def at(port: int):
        monkeypatch.setitem(app.config, "DIAGNOSTICS_SSH_PORT", port)
        monkeypatch.setitem(app.config, "DIAGNOSTICS_SSH_USER", pwd.getpwuid(os.geteuid()).pw_name)
        monkeypatch.setitem(app.config, "DIAGNOSTICS_CONNECT_TIMEOUT", 5)
        monkeypatch.setitem(app.config, "DIAGNOSTICS_TIMEOUT_SECONDS", 30)
    return at


def approved_host(owner, ssh_host_key) -> Host:
    host = make_host(owner, [], name="rig")
    host.overlay_address, host.ssh_host_key = "127.0.0.1", ssh_host_key
    db.session.commit()
    return host


def authorize_platform(sshd) -> None:
    assert hostkit_diagnostics.install_platform_key(diagnostics.platform_public_key(), "127.0.0.1",
                                                    authorized_keys=sshd.authorized_keys, command=str(sshd.script))


def press_button(client, auth, host) -> str:
    response = client.post(f"/admin/hosts/{host.id}/diagnostics", data={"csrf_token": auth.token("/admin/hosts")},
                           headers=HX)
    assert response.status_code == 200
    return response.get_data(as_text=True)


@pytest.fixture
def admin_auth(auth, people):
    auth.login(people.carol)
    return auth


def last_diagnostics_event() -> AuditEvent:
    return db.session.scalar(select(AuditEvent).where(AuditEvent.action == "host.diagnostics")
                             .order_by(AuditEvent.id.desc()))


def test_it_runs_hostkit_check_over_ssh_from_the_admins_button(client, admin_auth, people, sshd, reach):
    reach(sshd.port)
    host = approved_host(people.bob, sshd.host_key)
    authorize_platform(sshd)
    listing = client.get("/admin/hosts").get_data(as_text=True)
    assert f'hx-post="/admin/hosts/{host.id}/diagnostics"' in listing and f'id="diagnostics-{host.id}"' in listing
    part = press_button(client, admin_auth, host)
    assert sshd.marker.exists(), sshd.log.read_text()
    assert part.lstrip().startswith(f'<div id="diagnostics-{host.id}"') and "Diagnostics failed" not in part
    assert "<strong>os</strong>" in part and "<strong>gpu</strong>" in part and "<strong>disk</strong>" in part
    event = last_diagnostics_event()
    assert event.actor_id == people.carol.id and event.target_id == str(host.id) and "error" not in event.details
    assert event.details["summary"] and event.details["summary"] in part.replace("&#39;", "'")


def test_it_returns_the_report_from_run_check(ctx, people, sshd, reach):
    reach(sshd.port)
    authorize_platform(sshd)
    report = diagnostics.run_check(approved_host(people.bob, sshd.host_key))
    assert set(report) == {"ready", "summary", "checks"}
    assert [c["name"] for c in report["checks"]][:2] == ["os", "gpu"]


@pytest.mark.parametrize("pinned", ["another ed25519 key", "an ecdsa key"])
def test_it_refuses_a_host_whose_key_is_not_the_pinned_one_and_runs_nothing(client, admin_auth, people, sshd, reach,
                                                                           pinned):
    reach(sshd.port)
    other = Ed25519PrivateKey.generate() if pinned.endswith("ed25519 key") else ec.generate_private_key(ec.SECP256R1())
    host = approved_host(people.bob, public_line(other))
    authorize_platform(sshd)
    with pytest.raises(diagnostics.DiagnosticsError, match=MISMATCH):
        diagnostics.run_check(host)
    part = press_button(client, admin_auth, host)
    assert "Diagnostics failed" in part and MISMATCH in part.replace("&#39;", "'")
    assert not sshd.marker.exists()
    assert MISMATCH in last_diagnostics_event().details["error"]


def test_it_says_so_when_no_host_key_was_pinned(client, admin_auth, people, reach):
    reach(free_port())
    host = approved_host(people.bob, None)
    part = press_button(client, admin_auth, host)
    assert "this host sent no SSH host key when it registered" in part
    assert "sent no SSH host key" in last_diagnostics_event().details["error"]


def test_it_says_so_when_the_host_has_not_authorized_the_platform_key(ctx, people, sshd, reach):
    reach(sshd.port)
    with pytest.raises(diagnostics.DiagnosticsError, match="refused the platform's SSH key"):
        diagnostics.run_check(approved_host(people.bob, sshd.host_key))
    assert not sshd.marker.exists()


def test_it_says_so_when_the_host_cannot_be_reached_or_is_not_approved(ctx, people, reach):
    reach(free_port())
    host = approved_host(people.bob, "ssh-ed25519 " + public_line(Ed25519PrivateKey.generate()).split()[1])
    with pytest.raises(diagnostics.DiagnosticsError, match="cannot reach 127.0.0.1"):
        diagnostics.run_check(host)
    host.status = "suspended"
    db.session.commit()
    with pytest.raises(diagnostics.DiagnosticsError, match="this host is suspended"):
        diagnostics.run_check(host)


def test_it_makes_the_platform_key_once_with_mode_0600(ctx, app, monkeypatch, tmp_path):
    monkeypatch.setitem(app.config, "GPUSHARE_DATA_DIR", str(tmp_path))
    line = diagnostics.platform_public_key()
    path = tmp_path / "ssh" / "diagnostics_key"
    assert line.startswith("ssh-ed25519 AAAA") and line.endswith(" gpushare-platform")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert diagnostics.platform_public_key() == line
    assert sorted(p.name for p in path.parent.iterdir()) == ["diagnostics_key"]  # made once, no temporary left


def test_it_reads_a_configured_key_file_and_says_when_it_is_missing(ctx, app, monkeypatch, tmp_path):
    key = Ed25519PrivateKey.generate()
    path = tmp_path / "operator_key"
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                       serialization.NoEncryption()))
    monkeypatch.setitem(app.config, "DIAGNOSTICS_SSH_KEY_FILE", str(path))
    assert diagnostics.platform_public_key().split()[:2] == public_line(key).split()[:2]
    monkeypatch.setitem(app.config, "DIAGNOSTICS_SSH_KEY_FILE", str(tmp_path / "missing"))
    with pytest.raises(diagnostics.DiagnosticsError, match="DIAGNOSTICS_SSH_KEY_FILE .* does not exist"):
        diagnostics.platform_public_key()
    assert not (tmp_path / "missing").exists()


def test_it_installs_the_platform_key_as_one_managed_line_idempotently(tmp_path):
    first = public_line(Ed25519PrivateKey.generate()) + " platform"
    second = public_line(Ed25519PrivateKey.generate())
    path = tmp_path / "root" / ".ssh" / "authorized_keys"
    assert hostkit_diagnostics.install_platform_key(first, "10.77.0.1", authorized_keys=path) is True
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    managed = f'from="10.77.0.1",restrict,command="hostkit check --json" {" ".join(first.split()[:2])} ' \
              "gpushare-diagnostics"
    assert path.read_text() == managed + "\n"
    path.write_text(f"ssh-ed25519 AAAAmine me@laptop\n{managed}\n# a comment\n")  # the owner's own lines
    path.chmod(0o644)
    before = path.stat().st_ino
    assert hostkit_diagnostics.install_platform_key(first, "10.77.0.1", authorized_keys=path) is False
    assert path.stat().st_ino == before and stat.S_IMODE(path.stat().st_mode) == 0o600
    assert hostkit_diagnostics.install_platform_key(second, "fd00::1", authorized_keys=path) is True
    assert path.read_text().splitlines() == [
        "ssh-ed25519 AAAAmine me@laptop",
        f'from="fd00::1",restrict,command="hostkit check --json" {second} gpushare-diagnostics',
        "# a comment"]
    assert hostkit_diagnostics.install_platform_key(second, "fd00::1", authorized_keys=path) is False
    assert sorted(p.name for p in path.parent.iterdir()) == ["authorized_keys"]  # no temporary file left behind


@pytest.mark.parametrize("key, hub, message", [
    ("ssh-ed25519 not-base64!", "10.77.0.1", "not an OpenSSH public key line"),
    ("ssh-rsa " + public_line(Ed25519PrivateKey.generate()).split()[1], "10.77.0.1", "not an OpenSSH public key line"),
    (None, '10.77.0.1" ,command="sh', "is not an IP address"),
])
def test_it_refuses_a_key_or_hub_address_it_cannot_write_safely(tmp_path, key, hub, message):
    key = key or public_line(Ed25519PrivateKey.generate())
    path = tmp_path / "authorized_keys"
    with pytest.raises(hostkit_diagnostics.DiagnosticsKeyError, match=message):
        hostkit_diagnostics.install_platform_key(key, hub, authorized_keys=path)
    assert not path.exists()


def test_it_reads_the_machines_ssh_host_key_for_registration(tmp_path):
    write_host_key(tmp_path)
    line = hostkit_diagnostics.host_key_line(tmp_path / "ssh_host_ed25519_key.pub")
    assert line.startswith("ssh-ed25519 AAAA") and len(line.split()) == 2  # the comment (root@host) is left out
    assert hostkit_diagnostics.host_key_line(tmp_path / "missing.pub") is None
    (tmp_path / "garbage.pub").write_text("not a key\n")
    assert hostkit_diagnostics.host_key_line(tmp_path / "garbage.pub") is None
