"""``hostkit register`` against the real router: identity made on the machine, token kept, clear one-line errors."""
import json

from sqlalchemy import select
from wireguard_tools import WireguardKey

from app.extensions import db
from app.models import Host

from ..hosts.test_host_registration import enrollment_key
from ..support import hostkit


def test_it_registers_this_machine_with_a_key_that_stays_here(client, auth, people, live_server, tmp_path):
    key = enrollment_key(client, auth, people.bob)
    state = tmp_path / "hostkit"
    result = hostkit("register", "--router", live_server, "--invite", key, "--name", "garage rig",
                     "--engine-port", "8001", "--state-dir", str(state))
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("Registered garage rig (peer id Qm") and "it is pending" in result.stdout
    private = (state / "wireguard.key").read_text().strip()
    assert (state / "wireguard.key").stat().st_mode & 0o777 == 0o600
    assert (state / "host.json").stat().st_mode & 0o777 == 0o600
    host = db.session.scalar(select(Host))
    assert host.public_key == str(WireguardKey(private).public_key()) and private not in json.dumps(host.hardware)
    assert host.engine_port == 8001 and host.hardware["checks"][1]["name"] == "gpu"
    saved = json.loads((state / "host.json").read_text())
    assert saved["token"].startswith("gphost_") and saved["host"]["status"] == "pending"

    again = hostkit("register", "--router", live_server, "--invite", key, "--state-dir", str(state))
    assert again.returncode == 1 and again.stderr.count("\n") == 1 and "already registered" in again.stderr


def test_it_says_in_one_line_why_registration_failed(live_server, tmp_path, people):
    bad = hostkit("register", "--router", live_server, "--invite", "gpenr_" + "A" * 38,
                  "--state-dir", str(tmp_path / "a"))
    assert bad.returncode == 1
    assert bad.stderr == "hostkit register: that enrollment key is not valid: make one on the host dashboard\n"
    away = hostkit("register", "--router", "http://127.0.0.1:9", "--invite", "x", "--state-dir", str(tmp_path / "b"))
    assert away.returncode == 1 and away.stderr.startswith("hostkit register: cannot reach the router at")
    assert db.session.scalar(select(db.func.count()).select_from(Host)) == 0
