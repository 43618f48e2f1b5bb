"""The host's dashboard: the GPU machines this account offers."""
from __future__ import annotations

from flask import Blueprint, render_template
from flask_login import current_user
from sqlalchemy import select

from ..extensions import db
from ..models import Host
from . import role_required

bp = Blueprint("hosts", __name__, url_prefix="/host")


@bp.get("")
@role_required("host")
def dashboard():
    hosts = db.session.scalars(select(Host).where(Host.owner_id == current_user.id).order_by(Host.id)).all()
    return render_template("hosts/dashboard.html", hosts=hosts)
