"""The host playbook (ansible/): lint, and real runs over SSH through a WireGuard overlay into Ubuntu 24.04.

The host is a debootstrapped noble root (tests/support/ubuntu_root.py) with its own
sshd, in a network namespace that has no route anywhere but a veth to this
one. WireGuard (wireguard-go, in user space on both sides) runs over that
veth, and Ansible reaches the host only at its overlay address, as the router
reaches hosts in production. The namespace cannot download anything, so the
playbook must find its packages installed and install hostkit from wheels
fetched beforehand.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import threading
import time

import pytest
import yaml
from sqlalchemy import select
from werkzeug.serving import make_server
from wireguard_tools import WireguardKey

from app import ROOT
from app.extensions import db
from app.models import Host

from ..hosts.test_host_registration import enrollment_key
from .ubuntu_host import (
    BIN,
    SETUP_HOST,
    WHEELS,
    UbuntuHost,
    run,
    say,
    setup_host_ansible_core,
    tool_env,
)

pytestmark = [pytest.mark.root, pytest.mark.slow]









def test_it_passes_ansible_lint_in_the_production_profile():
    result = run([BIN / "ansible-lint", "--offline", "--profile", "production", "--nocolor", "ansible/"], check=False,
                 timeout=240, cwd=ROOT, env=tool_env())
    assert result.returncode == 0, result.stdout + result.stderr


def test_it_pulls_the_engine_image_the_agent_runs():
    from hostkit.engines import VLLM_IMAGE

    defaults = yaml.safe_load((ROOT / "ansible/roles/engine/defaults/main.yml").read_text())
    assert defaults["engine_vllm_image"] == VLLM_IMAGE


# -- scripts/setup-host.sh ---------------------------------------------------------------------------------------



def setup_host(*args):
    return run(["sh", SETUP_HOST, *args], check=False, timeout=30)


def test_it_has_a_setup_script_that_parses():
    assert run(["sh", "-n", SETUP_HOST], check=False).returncode == 0


@pytest.mark.parametrize("args, error", [
    ((), "--router is required"),
    (("--invite", "gpenr_x"), "--router is required"),
    (("--router", "https://gpushare.example"), "--invite is required"),
    (("--router",), "--router needs a value"),
    (("--router", "https://gpushare.example", "--invite", "k", "--gpu-please"), "unknown option: --gpu-please"),
])
def test_it_refuses_setup_without_what_it_needs(args, error):
    result = setup_host(*args)
    lines = result.stderr.splitlines()
    assert result.returncode == 2 and result.stdout == ""
    assert len(lines) == 2 and lines[0] == f"setup-host.sh: {error}", result.stderr
    assert lines[1].startswith("usage: setup-host.sh --router URL --invite KEY")


def test_it_explains_itself():
    result = setup_host("--help")
    assert result.returncode == 0 and result.stdout.startswith("usage: setup-host.sh --router URL --invite KEY")
    assert "--no-gpu" in result.stdout


def test_it_installs_the_ansible_core_the_tests_use():
    assert f"ansible-core=={setup_host_ansible_core()}\n" in (ROOT / "requirements-dev.txt").read_text()


# -- the Ubuntu host behind a WireGuard overlay -----------------------------------------------------------------







@pytest.fixture(scope="module")
def host(tmp_path_factory):
    if os.geteuid() != 0:
        pytest.fail("the playbook test needs root (network namespaces, mounts, chroot); make test runs as root")
    ubuntu = UbuntuHost(tmp_path_factory.mktemp("ansible-host"))
    try:
        ubuntu.start()
        yield ubuntu
    finally:
        ubuntu.stop()


@pytest.fixture(scope="module")
def provisioned(host):
    """The first run of the playbook; the tests below look at what it left."""
    result, recap = host.playbook()
    return host, result, recap


@pytest.mark.timeout(1800)
def test_it_provisions_an_ubuntu_host_over_the_overlay(provisioned):
    host, result, recap = provisioned
    assert recap["failed"] == 0 and recap["unreachable"] == 0, result.stdout[-6000:]
    assert result.returncode == 0 and recap["changed"] > 0

    check = host.ssh("hostkit check --json")
    report = json.loads(check.stdout)
    assert check.returncode == (0 if report["ready"] else 1), check.stderr
    assert {c["name"] for c in report["checks"]} >= {"gpu"} and report["summary"]
    container = next(c for c in report["checks"] if c["name"] == "container")
    assert "podman" in container["data"]["installed"], "a host without a GPU gets podman for its engine"

    root = host.root
    unit = root / "etc/systemd/system/hostkit-agent.service"
    assert "ExecStart=/usr/local/bin/hostkit agent" in unit.read_text()
    wants = root / "etc/systemd/system/multi-user.target.wants/hostkit-agent.service"
    assert wants.is_symlink() and os.readlink(wants) == "/etc/systemd/system/hostkit-agent.service"
    assert os.readlink(root / "usr/local/bin/hostkit") == "/opt/hostkit/venv/bin/hostkit"
    assert (root / "var/lib/hostkit").stat().st_mode & 0o777 == 0o700
    assert (root / "etc/wireguard").stat().st_mode & 0o777 == 0o700
    assert not (root / "var/lib/hostkit/host.json").exists()


@pytest.mark.timeout(600)
def test_it_changes_nothing_the_second_time(provisioned):
    host = provisioned[0]
    result, recap = host.playbook()
    assert recap == {"ok": recap["ok"], "changed": 0, "unreachable": 0, "failed": 0}, result.stdout[-6000:]


@pytest.fixture
def router(app, host):
    """The real router (the session's app) on the test side's overlay address, where the host can reach it."""
    server = make_server(host.overlay_here, 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://{host.overlay_here}:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


@pytest.mark.timeout(600)
def test_it_registers_the_host_once_with_the_enrollment_key_kept_out_of_the_log(provisioned, router, client, auth,
                                                                                people):
    host = provisioned[0]
    key = enrollment_key(client, auth, people.bob)
    extra = {"gpushare_router": router, "gpushare_enrollment_key": key, "gpushare_host_name": "noble-rig"}

    result, recap = host.playbook(extra)
    assert recap["failed"] == 0 and recap["changed"] == 1, result.stdout[-6000:]
    assert key not in result.stdout + result.stderr
    state = host.root / "var/lib/hostkit"
    assert (state / "host.json").stat().st_mode & 0o777 == 0o600
    assert json.loads((state / "host.json").read_text())["host"]["status"] == "pending"
    registered = db.session.scalar(select(Host))
    private = WireguardKey((state / "wireguard.key").read_text().strip())
    assert registered.name == "noble-rig" and registered.public_key == str(private.public_key())

    again, recap = host.playbook(extra)
    assert recap["changed"] == 0 and recap["failed"] == 0, again.stdout[-6000:]
    assert db.session.scalar(select(db.func.count()).select_from(Host)) == 1


@pytest.mark.timeout(900)
def test_it_sets_up_a_host_with_the_one_line_script(provisioned, router, client, auth, people):
    """scripts/setup-host.sh on the Ubuntu machine itself: its own ansible-core, connection local, registration."""
    host = provisioned[0]
    checkout = host.root / "opt/gpushare"
    shutil.copytree(ROOT / "ansible", checkout / "ansible")
    shutil.copytree(host.hostkit_source, checkout / "hostkit")
    (checkout / "scripts").mkdir()
    shutil.copy2(SETUP_HOST, checkout / "scripts/setup-host.sh")
    state = host.root / "var/lib/hostkit"
    for name in ("host.json", "wireguard.key"):  # a machine that was provisioned but never registered
        (state / name).unlink(missing_ok=True)
    key = enrollment_key(client, auth, people.bob)

    started = time.monotonic()
    offline = f"--no-index --find-links {WHEELS}"
    result = host.chroot(["/opt/gpushare/scripts/setup-host.sh", "--router", router, "--invite", key,
                          "--name", "scripted-rig", "--no-gpu", "--pip-args", offline],
                         {"PIP_NO_INDEX": "1", "PIP_FIND_LINKS": WHEELS})
    say(f"setup-host.sh exited {result.returncode} after {time.monotonic() - started:.0f}s")
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-6000:]
    assert "installing ansible-core" in result.stdout and key not in output
    assert re.search(r"localhost\s*: ok=\d+\s+changed=1\s+unreachable=0\s+failed=0", result.stdout), output[-6000:]
    assert result.stdout.rstrip().endswith("an admin approves it before it gets requests.")
    registered = db.session.scalar(select(Host))
    assert registered.name == "scripted-rig" and registered.status == "pending"
    assert not any(p.name.startswith("gpushare-setup.") for p in (host.root / "tmp").iterdir())
