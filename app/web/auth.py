"""Sign up, log in, log out, and redeeming a host invite."""
from __future__ import annotations

from urllib.parse import urlsplit

from flask import Blueprint, flash, redirect, render_template, request, session, url_for
from flask_login import current_user, login_required, login_user, logout_user

from .. import accounts
from . import flash_error
from .forms import ActionForm, LoginForm, RedeemInviteForm, SignupForm

bp = Blueprint("auth", __name__)


def _start_session(user) -> None:
    # A fresh session at login: nothing set before it (CSRF token included) carries over.
    session.clear()
    login_user(user)


def _safe_next(target: str | None) -> str:
    if target and target.startswith("/") and not target.startswith("//") and not urlsplit(target).netloc:
        return target
    return url_for("pages.home")


@bp.route("/signup", methods=["GET", "POST"])
def signup():
    if current_user.is_authenticated:
        return redirect(url_for("pages.home"))
    form = SignupForm()
    if form.validate_on_submit():
        try:
            user = accounts.create_user(form.email.data, form.password.data, invite_code=form.invite_code.data)
        except accounts.AccountError as exc:
            flash_error(str(exc))
        else:
            _start_session(user)
            flash("Welcome to gpushare. " + ("You can now register a GPU host." if user.is_host
                                             else "Create an API key to start."), "success")
            return redirect(url_for("hosts.dashboard" if user.is_host else "keys.index"))
    status = 400 if form.is_submitted() else 200
    return render_template("auth/signup.html", form=form), status


@bp.route("/login", methods=["GET", "POST"])
def login():
    if current_user.is_authenticated:
        return redirect(url_for("pages.home"))
    form = LoginForm()
    if form.validate_on_submit():
        user = accounts.authenticate(form.email.data, form.password.data)
        if user is None:
            flash_error("That e-mail and password do not match an account.")
        else:
            target = _safe_next(request.args.get("next"))
            _start_session(user)
            return redirect(target)
    status = 400 if form.is_submitted() else 200
    return render_template("auth/login.html", form=form), status


@bp.post("/logout")
@login_required
def logout():
    logout_user()
    session.clear()
    flash("You are logged out.", "info")
    return redirect(url_for("pages.home"))


@bp.route("/account", methods=["GET", "POST"])
@login_required
def account():
    form = RedeemInviteForm()
    if form.validate_on_submit():
        try:
            accounts.redeem_invite(current_user, form.code.data)
        except accounts.AccountError as exc:
            flash_error(str(exc))
        else:
            flash("Your account is now a host account too.", "success")
            return redirect(url_for("hosts.dashboard"))
    status = 400 if form.is_submitted() else 200
    return render_template("auth/account.html", form=form, logout_form=ActionForm()), status
