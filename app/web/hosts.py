"""The host's dashboard: the GPU machines this account offers, and keys to register new ones."""
from __future__ import annotations

from flask import Blueprint, render_template, request
from flask_login import current_user
from sqlalchemy import select

from .. import hosts as host_service
from ..extensions import db
from ..models import Host
from . import role_required
from .forms import ActionForm

bp = Blueprint("hosts", __name__, url_prefix="/host")


def _page(**context):
    machines = db.session.scalars(select(Host).where(Host.owner_id == current_user.id).order_by(Host.id)).all()
    return render_template("hosts/dashboard.html", hosts=machines, action_form=ActionForm(), **context)


@bp.get("")
@role_required("host")
def dashboard():
    return _page()


@bp.post("/enrollment-keys")
@role_required("host")
def new_enrollment_key():
    key, secret = host_service.create_enrollment_key(current_user)
    if request.htmx:
        return render_template("hosts/_enrollment.html", key=key, secret=secret)
    return _page(key=key, secret=secret)
