"""Hosts on the WireGuard overlay, end to end, in the network namespaces of the package's world (conftest.py).

Two host machines run the real ``hostkit register`` and ``hostkit agent``, which joins the overlay and serves
tiny-chat on vLLM reached on its overlay address alone: h1 in a podman container, h2 as a process. The tests in
this module run in order and share that world.
"""
from __future__ import annotations

import ipaddress
import sys
import time
from pathlib import Path

import httpx
import pytest

from app import ROOT

from ..support import factories
from ..support.netns import Machine
from .world import ENGINE_PORT, MODEL, ROUTER_PORT, Stream, World, container_running, wait_until

pytestmark = [pytest.mark.vllm, pytest.mark.root, pytest.mark.timeout(900)]

TOO_LARGE = "meta-llama/Llama-3.1-8B-Instruct"






def test_a_host_goes_from_registration_to_serving_over_the_overlay(world):
    h1, h2 = world.lan.hosts
    started = time.monotonic()
    for index, machine in enumerate((h1, h2)):
        done = world.hostkit(machine, "register", "--router", world.url, "--invite", world.enrollment_key(),
                             "--name", f"h{index + 1}", "--engine-port", str(ENGINE_PORT))
        assert "it is pending" in done.stdout
        world.hostkit(machine, "models", "--enable", MODEL)
        world.start_agent(machine)
    status = world.hostkit(h1, "status").stdout
    assert "h1: pending, not serving: waiting for an admin's approval" in status and MODEL in status
    assert world.chat().status_code == 503  # pending hosts get nothing

    world.admin_does("h1", "approve")
    world.admin_does("h2", "approve")
    first = wait_until(lambda: (r := world.chat()).status_code == 200 and r, 240, "a request is served")
    elapsed = time.monotonic() - started
    print(f"\nfrom `hostkit register` to the first request served: {elapsed:.1f}s")
    assert first.json()["usage"]["completion_tokens"] > 0
    wait_until(lambda: world.chat().status_code == 200 and {"h1", "h2"} <= set(world.served_by()), 240,
               "both hosts have served a request")
    for name in ("h1", "h2"):
        host = world.host(name)
        assert host.api_base == f"http://{host.overlay_address}:{ENGINE_PORT}"
        assert ipaddress.ip_address(str(host.overlay_address)) in ipaddress.ip_network(world.lan.overlay)
        assert host.heartbeat["engine"] == "running" and host.heartbeat["overlay"] == "wireguard"
        assert host.heartbeat["engine_kind"] == {"h1": "podman", "h2": "process"}[name]
        assert host.heartbeat["max_model_len"] == 2048
        assert host.wg_endpoint and host.wg_endpoint.startswith(world.lan.prefix)


def test_only_the_router_reaches_a_hosts_engine(world):
    h1, h2 = world.lan.hosts
    router = world.lan.router
    overlay_1 = str(world.host("h1").overlay_address)
    hub = world.lan.overlay.rsplit(".", 1)[0] + ".1"
    assert router.can_connect(overlay_1, ENGINE_PORT), "the router reaches the engine over the overlay"
    # The engine listens on the overlay address only: nothing answers on the underlay address.
    assert not h2.can_connect(h1.address, ENGINE_PORT)
    assert not router.can_connect(h1.address, ENGINE_PORT)
    # A neighbour that routes h1's overlay address to h1's underlay address is dropped by h1's firewall...
    h2.run("ip", "route", "add", f"{overlay_1}/32", "via", h1.address)
    try:
        assert not h2.can_connect(overlay_1, ENGINE_PORT)
        # ...and it is that rule that stops it: without the host's firewall the neighbour gets through.
        h1.run("nft", "delete", "table", "inet", "gpushare_host")
        assert h2.can_connect(overlay_1, ENGINE_PORT)
    finally:
        h2.run("ip", "route", "del", f"{overlay_1}/32", check=False)
    restart = world.agents[h1.netns]
    restart.terminate()
    restart.wait(60)
    world.start_agent(h1)  # the agent re-applies its firewall when it rejoins
    wait_until(lambda: h1.run("nft", "list", "table", "inet", "gpushare_host", check=False).returncode == 0, 120,
               "h1's agent has restored its firewall")

    # Through the overlay a host reaches neither the other host (the hub forwards nothing) nor the
    # router's own services, even when it widens its tunnel to the whole overlay network.
    interface, hub_key = world.interfaces[h2.netns], _hub_key(h2, world.interfaces[h2.netns])
    h2.run("wg", "set", interface, "peer", hub_key, "allowed-ips", world.lan.overlay)
    h2.run("ip", "route", "replace", world.lan.overlay, "dev", interface)
    try:
        assert router.pings(str(world.host("h2").overlay_address)), "the tunnel itself works"
        assert not h2.pings(hub), "hosts cannot even ping the hub"
        assert not h2.can_connect(overlay_1, ENGINE_PORT)
        assert not h2.can_connect(hub, ROUTER_PORT)
    finally:
        h2.run("wg", "set", interface, "peer", hub_key, "allowed-ips", f"{hub}/32")
        h2.run("ip", "route", "del", world.lan.overlay, "dev", interface, check=False)
    assert h2.can_connect(router.address, ROUTER_PORT), "hosts reach the host API on the router's public address"


def _hub_key(machine: Machine, interface: str) -> str:
    return machine.run("wg", "show", interface, "peers").stdout.split()[0]


def test_a_suspended_host_is_cut_off_at_once_and_back_on_reinstatement(world):
    router = world.lan.router
    overlay_1 = str(world.host("h1").overlay_address)
    wait_until(lambda: router.pings(overlay_1, 0.5), 120, "h1 answers on the overlay")

    assert container_running(world.container(world.lan.hosts[0]))
    world.admin_does("h1", "suspend")
    suspended = time.monotonic()
    wait_until(lambda: not router.pings(overlay_1, 0.2), 5, "h1 no longer answers", interval=0.05)
    cut_off = time.monotonic() - suspended
    assert cut_off < 1.0, f"the suspended host was reachable for {cut_off:.2f}s"
    wait_until(lambda: not container_running(world.container(world.lan.hosts[0])), 60,
               "h1's agent stops its engine container")

    world.admin_does("h1", "reinstate")
    reinstated = time.monotonic()
    wait_until(lambda: router.pings(overlay_1, 0.2), 5, "h1 answers again", interval=0.05)
    back = time.monotonic() - reinstated
    print(f"\nsuspension cut h1 off in {cut_off:.2f}s; reinstatement brought it back in {back:.2f}s")
    assert back < 1.0, "the hub re-adds the peer with its last known endpoint"




def _start_stream(world: World) -> Stream:
    stream = Stream(world)
    stream.start()
    assert stream.started.wait(60) and stream.error is None, stream.error
    return stream


def _engine_state(world: World, name: str) -> str:
    return world.host(name).heartbeat.get("engine")


def test_hostkit_commands_on_the_real_agent(world, tmp_path):
    h1, h2 = world.lan.hosts
    nowhere = h1.run(sys.executable, "-m", "hostkit", "status", "--state-dir", str(tmp_path), check=False,
                     cwd=str(ROOT))
    assert nowhere.returncode == 1 and "this machine is not registered" in nowhere.stderr
    assert len(nowhere.stderr.strip().splitlines()) == 1
    again = world.hostkit(h1, "register", "--router", world.url, "--invite", world.enrollment_key(), check=False)
    assert again.returncode == 1 and "already registered" in again.stderr

    wait_until(lambda: world.host("h1").healthy, 120, "h1's engine runs again and passes a health check")
    status = world.hostkit(h1, "status").stdout
    assert "h1: approved, serving" in status and "engine:     running" in status

    listed = world.hostkit(h1, "models").stdout
    assert f"* {MODEL}" in listed and TOO_LARGE not in listed
    assert f"{TOO_LARGE}  (needs 18432 MiB)" in world.hostkit(h1, "models", "--all").stdout
    too_large = world.hostkit(h1, "models", "--enable", TOO_LARGE, check=False)
    assert too_large.returncode == 1 and "this host has 0 MiB" in too_large.stderr
    unknown = world.hostkit(h1, "models", "--enable", "nobody/nothing", check=False)
    assert unknown.returncode == 1 and "is not in the catalog" in unknown.stderr

    bad_days = world.hostkit(h1, "schedule", "set", "someday 10:00-11:00", check=False)
    assert bad_days.returncode == 1 and "days are mon, tue" in bad_days.stderr
    bad_zone = world.hostkit(h1, "schedule", "set", "mon-fri 22:00-08:00", "--timezone", "Mars/Olympus", check=False)
    assert bad_zone.returncode == 1 and "is not a time zone" in bad_zone.stderr
    assert world.host("h1").schedule == [], "a refused schedule changes nothing"
    shown = world.hostkit(h1, "schedule", "set", "mon-sun 00:00-24:00", "--timezone", "Europe/Berlin").stdout
    assert "mon-sun 00:00-24:00" in shown and "Inside its windows now; serving." in shown
    assert "always" in world.hostkit(h1, "schedule", "clear").stdout

    # Down drains: with h2 down, a long stream runs on h1; `hostkit down` on h1 waits for it to finish.
    assert "is down" in world.hostkit(h2, "down", "--no-wait").stdout
    time.sleep(2)  # routing tables reload every second here
    stream = _start_stream(world)
    down = world.hostkit(h1, "down", timeout=300).stdout
    usage = stream.finished_cleanly()
    assert usage["completion_tokens"] > 0
    assert "Drained; the engine is stopped." in down
    assert not container_running(world.container(h1)), "h1's engine container is gone with its engine"
    assert world.chat().status_code == 503, "both hosts are down"
    for machine in (h1, h2):
        assert "is up" in world.hostkit(machine, "up", "--wait", timeout=300).stdout
    wait_until(lambda: world.chat().status_code == 200, 120, "requests are served again")


def test_a_host_toggled_off_in_the_dashboard_finishes_what_it_has(world):
    from ..conftest import Auth, Client

    h1, h2 = world.lan.hosts
    world.app.test_client_class = Client
    browser = world.app.test_client()
    with world.app.app_context():
        Auth(browser).login("bob@example.com")
    host_1 = world.host("h1")
    world.hostkit(h2, "down", "--no-wait")
    time.sleep(2)
    stream = _start_stream(world)  # on h1, the only host up
    token = Auth(browser).token("/host")
    answer = browser.post(f"/host/{host_1.id}/enabled", data={"enabled": "off", "csrf_token": token})
    assert answer.status_code in (200, 302)
    assert not world.host("h1").enabled
    stream.finished_cleanly()
    time.sleep(2)
    assert world.chat().status_code == 503, "the disabled host gets no new request"
    wait_until(lambda: _engine_state(world, "h1") == "stopped", 60, "h1's agent stops its engine")
    page = browser.get("/host").get_data(as_text=True)
    assert "h1" in page and host_1.peer_id in page

    browser.post(f"/host/{host_1.id}/enabled", data={"enabled": "on", "csrf_token": token})
    world.hostkit(h2, "up")
    wait_until(lambda: world.chat().status_code == 200, 180, "requests are served again")


def test_an_admin_runs_diagnostics_on_a_host_over_the_overlay(world):
    """The admin's button: the router runs `hostkit check --json` over SSH through the tunnel, trusting only
    the SSH host key the machine sent at registration, with a key the host lets run that one command."""
    h1 = world.lan.hosts[0]
    host = world.host("h1")
    overlay_1, hub = str(host.overlay_address), world.lan.overlay.rsplit(".", 1)[0] + ".1"
    assert host.ssh_host_key and host.ssh_host_key.split()[:2] == \
        Path("/etc/ssh/ssh_host_ed25519_key.pub").read_text().split()[:2], "pinned at registration"
    authorized = (world.tmp / h1.netns / "authorized_keys").read_text()
    assert f'from="{hub}",restrict,command="hostkit check --json"' in authorized, "the agent installed the key"

    bin_dir = world.tmp / "h1-bin"
    bin_dir.mkdir(exist_ok=True)
    (bin_dir / "hostkit").write_text(f'#!/bin/sh\ncd {ROOT} && exec {sys.executable} -m hostkit "$@"\n')
    (bin_dir / "hostkit").chmod(0o755)
    config = world.tmp / "h1-sshd_config"
    config.write_text(f"""ListenAddress {overlay_1}
Port 22
HostKey /etc/ssh/ssh_host_ed25519_key
AuthorizedKeysFile {world.tmp / h1.netns / "authorized_keys"}
PidFile {world.tmp / "h1-sshd.pid"}
StrictModes no
UsePAM no
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin prohibit-password
SetEnv PATH={bin_dir}:/usr/sbin:/usr/bin:/sbin:/bin
""")
    Path("/run/sshd").mkdir(exist_ok=True)
    h1.spawn("/usr/sbin/sshd", "-D", "-e", "-f", str(config), log=world.tmp / "sshd-h1.log")
    wait_until(lambda: world.lan.router.can_connect(overlay_1, 22), 30, "h1's sshd answers on the overlay")

    from ..conftest import CSRF_RE

    with httpx.Client(base_url=world.url, timeout=120) as admin:
        token = CSRF_RE.search(admin.get("/login").text)
        admin.post("/login", data={"email": "carol@example.com", "password": factories.PASSWORD,
                                   "csrf_token": token.group(1) or token.group(2)})
        token = CSRF_RE.search(admin.get("/admin/hosts").text)
        page = admin.post(f"/admin/hosts/{host.id}/diagnostics",
                          data={"csrf_token": token.group(1) or token.group(2)}).text
    assert "Diagnostics over SSH, just now" in page, page
    assert "wireguard-go (userspace) available" in page, "the report is the host's own `hostkit check`"
