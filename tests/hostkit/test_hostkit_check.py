"""``hostkit check``: plain verdicts on this GPU-less machine, and the GPU path through ``nvidia-smi``.

This machine has no GPU, so the GPU path runs against a stand-in ``nvidia-smi``
that prints what the real one printed on an H100 host; the report it produced
there through NVML is kept in tests/data/hostkit-check-h100.json and the two
must agree.
"""
import json
import os
from pathlib import Path

import pytest

from hostkit import check

from ..support import h100_report, hostkit

H100 = h100_report()


def test_it_says_plainly_that_there_is_no_gpu():
    result = hostkit("check")
    assert result.returncode == 1
    assert "[FAIL] gpu       No NVIDIA GPU found. This machine cannot serve GPU models" in result.stdout
    assert result.stdout.strip().splitlines()[-1].startswith("This machine cannot serve GPU models yet: fix gpu")


def test_it_reports_json():
    report = json.loads(hostkit("check", "--json").stdout)
    by_name = {c["name"]: c for c in report["checks"]}
    assert report["ready"] is False and set(by_name) == {"os", "gpu", "driver", "container", "disk", "wireguard"}
    assert by_name["gpu"]["status"] == "fail" and by_name["disk"]["data"]["free_gib"] > 0


def test_it_refuses_an_unknown_command():
    result = hostkit("fly")
    assert result.returncode == 2 and "usage: hostkit" in result.stderr


def fake_smi(directory: Path, driver: str) -> dict:
    """An nvidia-smi that prints the H100 host's GPU, with ``driver``; returns PATH for it."""
    gpu = H100["checks"][1]["data"]["gpus"][0]
    script = directory / "nvidia-smi"
    script.write_text("#!/bin/sh\necho '%s, %s, %s, %s, %s, %s'\n" % (
        gpu["index"], gpu["name"], gpu["uuid"], gpu["memory_total_mib"], gpu["memory_free_mib"], driver))
    script.chmod(0o755)
    return {**os.environ, "PATH": f"{directory}:{os.environ['PATH']}"}


def test_it_reads_the_gpu_as_the_real_host_reported_it(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", fake_smi(tmp_path, "580.159.04")["PATH"])
    gpu, driver = check.check_gpu()
    assert gpu.status == "ok" and gpu.data == H100["checks"][1]["data"]
    assert gpu.detail == "1 GPU: NVIDIA H100 80GB HBM3 (80 GiB); 80 GiB in all"
    assert driver.status == "ok" and driver.data["version"] == H100["checks"][2]["data"]["version"]


@pytest.mark.parametrize("driver, status", [("470.256.02", "fail"), ("535.54.03", "ok")])
def test_it_judges_the_driver_version(tmp_path, monkeypatch, driver, status):
    monkeypatch.setenv("PATH", fake_smi(tmp_path, driver)["PATH"])
    _, verdict = check.check_gpu()
    assert verdict.status == status
    if status == "fail":
        assert verdict.detail == f"NVIDIA driver {driver} is too old: install 535 or newer"


def test_it_needs_wireguard_tools(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    result = check.check_wireguard()
    assert result.status == "fail" and "install wireguard-tools" in result.detail
    (tmp_path / "wg").write_text("#!/bin/sh\n")
    (tmp_path / "wg").chmod(0o755)
    (tmp_path / "wireguard-go").write_text("#!/bin/sh\n")
    (tmp_path / "wireguard-go").chmod(0o755)
    assert check.check_wireguard().status == "ok"
