"""What the tests share: factories for rows, fake and real hosts (``fakehost``, ``engines``), a whole platform
(``platforms``), network namespaces, the Stripe stand-in wired to the app, and recorded data (``data/``).

Tests import from here; nothing here imports a test.
"""
from __future__ import annotations

import json
from pathlib import Path

DATA = Path(__file__).resolve().parent / "data"

def h100_report() -> dict:
    """What ``hostkit check --json`` printed on a real H100 machine."""
    return json.loads((DATA / "hostkit-check-h100.json").read_text())
