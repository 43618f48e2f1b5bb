"""Public pages: the home page and the model list with prices and their recent moves."""
from __future__ import annotations

from flask import Blueprint, render_template
from sqlalchemy import text

from .. import catalog, pricing
from ..extensions import db, redis_client

bp = Blueprint("pages", __name__)


@bp.get("/")
def home():
    return render_template("pages/home.html", models=catalog.public_models())


@bp.get("/models")
def models():
    models = catalog.public_models()
    return render_template("pages/models.html", models=models,
                           moves=pricing.recent_moves([m.id for m in models]))


@bp.get("/healthz")
def healthz():
    """Liveness for load balancers and ``make run``: the database and Redis both answer."""
    db.session.execute(text("SELECT 1"))
    redis_client.ping()
    return {"status": "ok"}
