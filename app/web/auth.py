"""Sign up, log in (throttled), log out, the account page: password, sessions, and redeeming a host invite."""
from __future__ import annotations

from urllib.parse import urlsplit

from flask import Blueprint, flash, redirect, render_template, request, session, url_for
from flask_login import current_user, login_required, login_user, logout_user

from .. import accounts
from ..accounts import throttle, tokens
from .forms import ActionForm, ChangePasswordForm, LoginForm, RedeemInviteForm, SignupForm
from .helpers import flash_error

bp = Blueprint("auth", __name__)

TOO_MANY = 429


def _start_session(user) -> None:
    # A fresh session at login: nothing set before it (CSRF token included) carries over.
    session.clear()
    accounts.start_session(user, user_agent=request.user_agent.string, address=request.remote_addr)
    login_user(user)


def _end_session() -> None:
    accounts.end_session(current_user.session_token)
    logout_user()
    session.clear()


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
    status = 200
    if form.validate_on_submit():
        email, address = form.email.data, request.remote_addr
        wait = throttle.wait_seconds(email, address)
        if wait:
            flash_error(f"Too many failed logins for this account or from this address. Try again in "
                        f"{throttle.in_words(wait)}.")
            return render_template("auth/login.html", form=form), TOO_MANY, {"Retry-After": str(wait)}
        user = accounts.authenticate(email, form.password.data)
        if user is None:
            throttle.failed(email, address)
            flash_error("That e-mail and password do not match an account.")
        else:
            throttle.succeeded(email)
            target = _safe_next(request.args.get("next"))
            _start_session(user)
            return redirect(target)
    if form.is_submitted():
        status = 400
    return render_template("auth/login.html", form=form), status


@bp.post("/logout")
@login_required
def logout():
    _end_session()
    flash("You are logged out.", "info")
    return redirect(url_for("pages.home"))


@bp.post("/logout-everywhere")
@login_required
def logout_everywhere():
    ended = accounts.log_out_everywhere(current_user)
    logout_user()
    session.clear()
    flash(f"Logged out everywhere ({ended} session{'s' if ended != 1 else ''} ended).", "info")
    return redirect(url_for("auth.login"))


def _account_page(*, invite_form=None, password_form=None, status=200):
    return render_template("auth/account.html", form=invite_form or RedeemInviteForm(formdata=None),
                           password_form=password_form or ChangePasswordForm(formdata=None),
                           action_form=ActionForm(), sessions=accounts.live_sessions(current_user),
                           this_session_hash=tokens.hash_secret(current_user.session_token or "")), status


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
    return _account_page(invite_form=form, status=400 if form.is_submitted() else 200)


@bp.post("/account/password")
@login_required
def change_password():
    form = ChangePasswordForm()
    if form.validate_on_submit():
        try:
            accounts.change_password(current_user, form.current.data, form.password.data,
                                     keep=current_user.session_token)
        except accounts.AccountError as exc:
            form.password.errors = [*form.password.errors, str(exc)]
        else:
            flash("Your password is changed. Every other session of yours has ended.", "success")
            return redirect(url_for("auth.account"))
    return _account_page(password_form=form, status=400)
