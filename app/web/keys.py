"""The client's API keys page: create (secret shown once), rename, revoke, without a page reload."""
from __future__ import annotations

from flask import Blueprint, flash, redirect, render_template, request, url_for
from flask_login import current_user

from .. import catalog
from ..accounts import api_keys
from ..money import units
from .forms import ActionForm, KeyForm, RenameKeyForm
from .helpers import flash_error, role_required

bp = Blueprint("keys", __name__, url_prefix="/keys")


def _key_form(**kwargs) -> KeyForm:
    form = KeyForm(**kwargs)
    form.models.choices = [(m.hf_id, m.display_name) for m in catalog.public_models()]
    return form


def _panel(form: KeyForm, *, created=None, secret=None, status=200):
    template = "keys/_panel.html" if request.htmx else "keys/index.html"
    return render_template(template, form=form, keys=api_keys.list_keys(current_user), created=created,
                           secret=secret, action_form=ActionForm()), status


def _row(key, *, editing=False, form=None, status=200):
    if request.htmx:
        return render_template("keys/_row.html", key=key, editing=editing, rename_form=form or RenameKeyForm(),
                               action_form=ActionForm()), status
    return redirect(url_for("keys.index"))


@bp.get("")
@role_required("client")
def index():
    return _panel(_key_form())


@bp.post("")
@role_required("client")
def create():
    form = _key_form()
    if not form.validate_on_submit():
        return _panel(form, status=400)
    try:
        limit = units.usd(form.spend_limit.data) if form.spend_limit.data else None
        key, secret = api_keys.create_key(current_user, form.name.data, spend_limit=limit,
                                          allowed_models=form.models.data)
    except (api_keys.ApiKeyError, units.AmountError) as exc:
        form.name.errors = [*form.name.errors, str(exc)]
        return _panel(form, status=400)
    return _panel(_key_form(formdata=None), created=key, secret=secret)  # an empty form for the next key


@bp.get("/<int:key_id>")
@role_required("client")
def show(key_id: int):
    return _row(api_keys.get_user_key(current_user, key_id))


@bp.get("/<int:key_id>/edit")
@role_required("client")
def edit(key_id: int):
    key = api_keys.get_user_key(current_user, key_id)
    return _row(key, editing=True, form=RenameKeyForm(name=key.name))


@bp.post("/<int:key_id>/rename")
@role_required("client")
def rename(key_id: int):
    key = api_keys.get_user_key(current_user, key_id)
    form = RenameKeyForm()
    if form.validate_on_submit():
        try:
            api_keys.rename_key(current_user, key, form.name.data)
        except api_keys.ApiKeyError as exc:
            form.name.errors = [str(exc)]
        else:
            if not request.htmx:
                flash("Key renamed.", "success")
            return _row(key)
    if not request.htmx:
        flash_error("; ".join(form.name.errors) or "Give the key a name.")
    return _row(key, editing=True, form=form, status=400)


@bp.post("/<int:key_id>/revoke")
@role_required("client")
def revoke(key_id: int):
    key = api_keys.get_user_key(current_user, key_id)
    api_keys.revoke_key(current_user, key)
    if not request.htmx:
        flash(f"Key {key.prefix}… revoked. It stopped working at once.", "success")
    return _row(key)
