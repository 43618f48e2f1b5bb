"""The host's dashboard: each GPU machine this account offers, its switches and earnings, and keys to add more."""
from __future__ import annotations

from flask import Blueprint, abort, flash, redirect, render_template, request, url_for
from flask_login import current_user
from sqlalchemy import select
from wtforms import StringField, TextAreaField
from wtforms.validators import Length

from .. import hosts as host_service
from ..extensions import db
from ..hosts import schedule
from ..models import Host, utcnow
from ..money import connect, payouts, stripe
from ..money.units import MICRO
from ..trust import report as trust_report
from .forms import ActionForm, Form
from .helpers import role_required

bp = Blueprint("hosts", __name__, url_prefix="/host")

POLL_SECONDS = 5
STOP_POLLING = 286  # htmx stops a poll that gets this status; a rejected host never changes again


class ScheduleForm(Form):
    schedule = TextAreaField("Serving windows, one per line (empty: always)", validators=[Length(max=2000)],
                             render_kw={"rows": 3, "placeholder": "mon-fri 22:00-08:00\nsat,sun 00:00-24:00"})
    timezone = StringField("Time zone", validators=[Length(max=64)], render_kw={"placeholder": "UTC"})


def schedule_form(host: Host, formdata=None) -> ScheduleForm:
    form = ScheduleForm(formdata=formdata, prefix=f"host-{host.id}")
    if formdata is None:
        form.schedule.data = schedule.format_windows(host.schedule or [])
        form.timezone.data = host.timezone
    return form


def ago(moment) -> str:
    """'12 s ago', '3 min ago', '5 h ago', '2 days ago', or 'never'."""
    if moment is None:
        return "never"
    seconds = max(int((utcnow() - moment).total_seconds()), 0)
    for unit, size in (("day", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            n = seconds // size
            return f"{n} {unit}{'s' if unit == 'day' and n != 1 else ''} ago"
    return f"{seconds} s ago"


def serving_state(host: Host) -> str:
    """Whether a host takes new requests now and, if not, why, in a few words."""
    ok, code, why = host_service.serving(host)
    if ok:
        return "yes" if code == "serving" else f"yes, {why}"
    return f"{'not yet' if code in ('pending', 'unhealthy', 'staged') else 'no'}: {why}"


@bp.context_processor
def helpers():
    return {"ago": ago, "serving_state": serving_state, "poll_seconds": POLL_SECONDS}


def _owned(host_id: int) -> Host:
    try:
        return host_service.owned_host(current_user, host_id)
    except host_service.HostError:
        abort(404)


def _page(*, forms: dict | None = None, model_errors: dict | None = None, **context):
    machines = db.session.scalars(select(Host).where(Host.owner_id == current_user.id).order_by(Host.id)).all()
    return render_template(
        "hosts/dashboard.html", hosts=machines, action_form=ActionForm(),
        earnings=host_service.earnings(current_user, [host.id for host in machines]),
        no_earnings=host_service.Earnings(),
        forms={host.id: schedule_form(host) for host in machines} | (forms or {}),
        model_rows={host.id: host_service.models_for(host) for host in machines},
        vram_by_host={host.id: host_service.gpu_memory_mib(host) for host in machines},
        model_errors=model_errors or {}, payout=payouts.summary(current_user),
        trusts=trust_report.for_hosts(list(machines), recent=0),
        earned_per_day=host_service.earnings_per_day(current_user), markets=host_service.markets(current_user),
        payouts_enabled=stripe.enabled(), **context)


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


@bp.get("/<int:host_id>/status")
@role_required("host")
def status(host_id: int):
    """The polled status line: state, health, heartbeat and engine figures."""
    host = _owned(host_id)
    return render_template("hosts/_status.html", host=host), STOP_POLLING if host.status == "rejected" else 200


@bp.post("/<int:host_id>/enabled")
@role_required("host")
def set_enabled(host_id: int):
    host = _owned(host_id)
    host_service.set_enabled(current_user, host, request.form.get("enabled") == "on")
    if request.htmx:
        return render_template("hosts/_enabled.html", host=host), 200, {"HX-Trigger": f"host-{host.id}-changed"}
    flash(f"{host.name} is {'enabled' if host.enabled else 'disabled'}.", "success")
    return redirect(url_for("hosts.dashboard"))


@bp.post("/<int:host_id>/schedule")
@role_required("host")
def set_schedule(host_id: int):
    host = _owned(host_id)
    form = schedule_form(host, request.form)
    saved = False
    if form.validate():
        # Each part is read here first, so that its error shows next to its own field; nothing is saved on error.
        for field, read in ((form.schedule, schedule.parse), (form.timezone, schedule.timezone)):
            try:
                read(field.data or "")
            except schedule.ScheduleError as exc:
                field.errors.append(str(exc))
        if not (form.schedule.errors or form.timezone.errors):
            try:
                host_service.set_schedule(current_user, host, form.schedule.data or "", form.timezone.data or "UTC")
            except host_service.HostError as exc:
                form.schedule.errors.append(str(exc))
            else:
                saved = True
                form = schedule_form(host)  # the windows as the platform reads them
    code = 200 if saved else 400
    headers = {"HX-Trigger": f"host-{host.id}-changed"} if saved else {}
    if request.htmx:
        return render_template("hosts/_schedule.html", host=host, form=form, saved=saved), code, headers
    if saved:
        flash(f"The schedule of {host.name} is saved.", "success")
        return redirect(url_for("hosts.dashboard"))
    return _page(forms={host.id: form}), code


@bp.post("/<int:host_id>/models")
@role_required("host")
def set_model(host_id: int):
    host = _owned(host_id)
    hf_id, error = request.form.get("model", ""), None
    try:
        host_service.set_model(current_user, host, hf_id, request.form.get("enabled") == "on")
    except host_service.HostError as exc:
        error = str(exc)
    context = {"host": host, "models": host_service.models_for(host), "vram": host_service.gpu_memory_mib(host),
               "error": error}
    if request.htmx:
        return render_template("hosts/_models.html", **context), 400 if error else 200
    if error:
        return _page(model_errors={host.id: error}), 400
    return redirect(url_for("hosts.dashboard"))


def _onboarding_redirect():
    try:
        url = connect.onboarding_link(current_user, refresh_url=url_for("hosts.payouts_refresh", _external=True),
                                      return_url=url_for("hosts.payouts_return", _external=True))
    except connect.PayoutError as exc:
        flash(str(exc), "error")
        return redirect(url_for("hosts.dashboard"))
    return redirect(url, 303)


@bp.post("/payouts/setup")
@role_required("host")
def payouts_setup():
    """Send the host to Stripe's onboarding for their Express account (made on first use)."""
    return _onboarding_redirect()


@bp.post("/payouts/threshold")
@role_required("host")
def payouts_threshold():
    """The owner's own payout threshold (empty: the server's default)."""
    raw = request.form.get("threshold", "").strip().lstrip("$").replace(",", "")
    try:
        if raw and not raw.isdigit():
            raise connect.PayoutError("The threshold is a whole number of dollars.")
        account = connect.set_threshold(current_user, int(raw) if raw else None)
    except connect.PayoutError as exc:
        flash(str(exc), "error")
        return _page(), 400
    flash(f"Payouts now start once ${account.threshold // MICRO:,} is available." if account.threshold
          else "Payouts now use the default threshold.", "success")
    return redirect(url_for("hosts.dashboard"))


@bp.get("/payouts/refresh")
@role_required("host")
def payouts_refresh():
    """Stripe's link expired or was used (Stripe sends the browser here with a GET): a button to go on, since a
    GET never makes anything."""
    return render_template("hosts/payouts_refresh.html", action_form=ActionForm())


@bp.get("/payouts/return")
@role_required("host")
def payouts_return():
    """Back from Stripe's onboarding (a GET, which changes nothing): the page asks for the account's state with
    a POST, by itself with htmx or with its button."""
    return render_template("hosts/payouts_return.html", action_form=ActionForm())


@bp.post("/payouts/check")
@role_required("host")
def payouts_check():
    """Read the payout account's state back from Stripe (the redirect from Stripe proves nothing)."""
    account = connect.refresh_account(current_user)
    if request.htmx:
        return render_template("hosts/_payout_check.html", account=account)
    if account is not None and account.payouts_enabled:
        flash("Payouts are set up.", "success")
    elif account is not None:
        flash("Stripe still needs some details before it can pay you.", "error")
    return redirect(url_for("hosts.dashboard"))
