"""The production units in deploy/: valid for systemd, restarting whatever dies, running what make run runs."""
from __future__ import annotations

import configparser
import subprocess
from pathlib import Path

import pytest

from app import ROOT

UNITS = sorted((ROOT / "deploy").glob("*.service"))


def test_the_units_are_the_five_services():
    assert [unit.name for unit in UNITS] == ["gpushare-hub.service", "gpushare-scheduler.service",
                                             "gpushare-verifier.service", "gpushare-web.service",
                                             "gpushare-worker.service"]


def test_systemd_verifies_every_unit(tmp_path):
    """``systemd-analyze verify`` with the units pointed at this checkout (so their commands exist)."""
    for unit in UNITS:
        (tmp_path / unit.name).write_text(unit.read_text().replace("/opt/gpushare", str(ROOT)))
    done = subprocess.run(["systemd-analyze", "verify", *sorted(str(p) for p in tmp_path.glob("*.service"))],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stderr.strip() == "", done.stderr


@pytest.mark.parametrize("unit", UNITS, ids=lambda unit: unit.name)
def test_a_unit_restarts_its_service_whenever_it_dies_and_never_gives_up(unit: Path):
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str
    parser.read_string(unit.read_text())
    assert parser["Service"]["Restart"] == "always"
    assert parser["Unit"]["StartLimitIntervalSec"] == "0"
    command = parser["Service"]["ExecStart"].replace("\\\n", " ")
    expected = {"gpushare-web.service": "gunicorn --worker-class gevent",
                "gpushare-worker.service": "wsgi worker --queue default",
                "gpushare-verifier.service": "wsgi worker --queue verification",
                "gpushare-scheduler.service": "wsgi scheduler", "gpushare-hub.service": "wsgi overlay-hub"}
    assert expected[unit.name] in " ".join(command.split())
