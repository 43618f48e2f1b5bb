"""Calibration: a model's honest noise, measured, so that thresholds sit just above it.

An honest host differs from the reference numerically (another GPU, dtype, batch). An admin names a host whose
engine they vouch for (the platform's own, say); the calibration sends it ``VERIFY_CALIBRATION_CHECKS`` canaries,
half greedy and half sampled, on the ordinary path, has the reference score each, and stores every statistic and
the thresholds ``scoring.thresholds`` derives from them. Checks of that model use the newest calibration.
"""
from __future__ import annotations

import random
from concurrent.futures import ThreadPoolExecutor

from flask import current_app

from ..accounts import audit
from ..extensions import db
from ..models import Calibration, CatalogModel, Host, User
from ..proxy.errors import ApiError
from . import TrustError, canaries, checks, reference, scoring, verifier

PARALLEL = 4  # canaries in flight at once: an engine batches them, as it would clients' requests


def calibrate(host_id: int, *, admin: User | None = None, count: int | None = None,
              progress=None) -> Calibration:
    """Measure the honest noise of the chat model ``host_id`` serves, against its reference, and store the
    thresholds. ``progress(done, total)`` is told after each canary. Raises TrustError when it cannot run."""
    host = db.session.get(Host, host_id)
    if host is None or host.status != "approved" or not host.api_base:
        raise TrustError("calibrate against an approved host that is serving", status=409)
    model = verifier.chat_model(host)
    if model is None:
        raise TrustError("this host offers no chat model to calibrate", status=409)
    ref = reference.reference_for(model.id)
    if ref is None:
        raise TrustError(f"no reference engine serves {model.hf_id}: mark a platform host as its reference first",
                         status=409)
    count = count or current_app.config["VERIFY_CALIBRATION_CHECKS"]
    verifier.key()  # made once, before the canaries go out side by side
    app = current_app._get_current_object()
    rng = random.Random()
    bodies = [canaries.request(model.hf_id, rng, greedy=i % 2 == 0) for i in range(count)]
    done = []

    def one(body: dict) -> tuple[str, float] | None:
        with app.app_context():
            try:
                call = verifier.send(db.session.get(Host, host_id), body)
            except ApiError:
                return None
            if call.sample is None:
                return None
            row = checks.check(call.sample, kind="calibration")
            done.append(1)
            if progress is not None:
                progress(len(done), count)
            if row is None or row.outcome != "passed" or row.test not in ("greedy", "sampled"):
                return None
            return row.test, row.statistic

    with ThreadPoolExecutor(PARALLEL) as pool:
        results = [found for found in pool.map(one, bodies) if found is not None]
    greedy = [value for test, value in results if test == "greedy"]
    sampled = [value for test, value in results if test == "sampled"]
    if len(greedy) < count // 4 or len(sampled) < count // 4:
        raise TrustError(f"only {len(results)} of {count} calibration canaries could be scored: is the host serving "
                         "and the reference up?", status=409)
    found = scoring.thresholds(greedy, sampled, current_app.config["VERIFY_WINDOW"])
    calibration = Calibration(model_id=model.id, host_id=host.id, reference_host_id=ref.id,
                              created_by_id=admin.id if admin else None,
                              thresholds={test: t.as_dict() for test, t in found.items()},
                              statistics={"greedy": greedy, "sampled": sampled})
    db.session.add(calibration)
    db.session.flush()
    audit.record(admin, "model.calibrate", "model", model.id, host=host.id, reference=ref.id,
                 thresholds={test: round(t.threshold, 6) for test, t in found.items()})
    db.session.commit()
    return calibration


def calibrated_models() -> list[tuple[CatalogModel, Calibration | None]]:
    """Every enabled chat model with its newest calibration (None: not calibrated)."""
    from sqlalchemy import select

    models = db.session.scalars(select(CatalogModel).where(CatalogModel.enabled, CatalogModel.kind == "chat")
                                .order_by(CatalogModel.id)).all()
    return [(model, checks.current_calibration(model.id)) for model in models]
