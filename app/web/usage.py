"""The client's usage page: balance, totals per key and model, and every request, page by page."""
from __future__ import annotations

from flask import Blueprint, render_template, request
from flask_login import current_user

from ..money import ledger, usage
from .helpers import page_number, role_required

bp = Blueprint("usage", __name__, url_prefix="/usage")


@bp.get("")
@role_required("client")
def index():
    page = page_number()
    rows, more = usage.recent(current_user, page)
    if request.htmx:
        return render_template("usage/_requests.html", rows=rows, page=page, more=more)
    return render_template("usage/index.html", account=ledger.balance(current_user), totals=usage.totals(current_user),
                           groups=usage.by_key_and_model(current_user), rows=rows, page=page, more=more)
