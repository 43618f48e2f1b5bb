"""What the tests share: factories for rows, fake and real hosts (``fakehost``, ``engines``), a whole platform
(``platforms``), network namespaces, the Stripe stand-in wired to the app, and recorded data (``data/``).

Tests import from here; nothing here imports a test.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from app import ROOT

DATA = Path(__file__).resolve().parent / "data"
# The hardware report of a machine without a GPU (the CPU engines of the tests and benchmarks), as hosts send it.
CPU_REPORT = {"checks": [{"name": "gpu", "status": "warn", "detail": "no NVIDIA GPU", "data": {"gpus": []}}]}


def hostkit(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """``hostkit ARGS`` as an owner runs it (``python -m hostkit`` from the checkout), its output captured."""
    return subprocess.run([sys.executable, "-m", "hostkit", *args], cwd=ROOT, capture_output=True, text=True,
                          env=env or os.environ, timeout=60)


def h100_report() -> dict:
    """What ``hostkit check --json`` printed on a real H100 machine."""
    return json.loads((DATA / "hostkit-check-h100.json").read_text())
