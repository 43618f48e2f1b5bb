"""Public pages: the home page and the model list with prices and their recent moves."""
from __future__ import annotations

from flask import Blueprint, render_template
from sqlalchemy import text

from .. import catalog
from ..catalog import pricing
from ..extensions import db, redis_client
from ..shared import quietly
from ..trust import report

bp = Blueprint("pages", __name__)


@bp.get("/")
def home():
    return render_template("pages/home.html", models=catalog.public_models())


@bp.get("/models")
def models():
    models = catalog.public_models()
    return render_template("pages/models.html", models=models, capacity=report.verified_capacity(),
                           moves=pricing.recent_moves([m.id for m in models]))


@bp.get("/healthz")
def healthz():
    """Readiness for load balancers and ``make run``: 200 while the database answers (503 otherwise: the page
    handler says so). Redis is reported, not required: requests are served without it."""
    db.session.execute(text("SELECT 1"))
    redis_ok = quietly(redis_client.ping, False, "the health check")
    return {"status": "ok", "redis": "ok" if redis_ok else "unavailable"}
