"""Admin pages: the model catalog, hosts and their diagnostics, host invites, people and the audit log."""
from __future__ import annotations

import uuid

from flask import Blueprint, abort, current_app, flash, redirect, render_template, request, url_for
from flask_login import current_user
from sqlalchemy import case, func, select

from .. import accounts, catalog
from .. import hosts as host_service
from ..extensions import db
from ..hosts import diagnostics
from ..models import AuditEvent, Host, Invite, LedgerAccount, LedgerTransfer, Payout, User
from ..money import ledger, payouts, reports, stripe, units
from .forms import ActionForm, CatalogModelForm, GrantForm, InviteForm
from .helpers import flash_error, page_number, role_required

bp = Blueprint("admin", __name__, url_prefix="/admin")

AUDIT_PAGE_SIZE = 50


@bp.before_request
@role_required("admin")
def require_admin():
    return None


@bp.get("")
def index():
    counts = {
        "people": db.session.scalar(select(func.count()).select_from(User)),
        "hosts pending approval": db.session.scalar(select(func.count()).select_from(Host)
                                                    .where(Host.status == "pending")),
        "hosts approved": db.session.scalar(select(func.count()).select_from(Host).where(Host.status == "approved")),
        "open invites": db.session.scalar(select(func.count()).select_from(Invite).where(
            Invite.used_at.is_(None), Invite.expires_at > func.now())),
    }
    return render_template("admin/index.html", counts=counts)


@bp.get("/models")
def models():
    return render_template("admin/models.html", models=catalog.all_models())


def _form_values(form: CatalogModelForm) -> dict:
    values = {field: getattr(form, field).data for field in ("hf_id", *catalog.EDITABLE_FIELDS)}
    values["attribution"] = values["attribution"] or ""
    for field in ("tool_call_parser", "reasoning_parser"):
        values[field] = (values[field] or "").strip() or None
    for field in form.PRICE_FIELDS:
        values[field] = units.usd(values[field])
    return values


def _save(model, form: CatalogModelForm):
    if form.validate_on_submit():
        try:
            saved = catalog.save_model(current_user, model, _form_values(form))
        except (catalog.CatalogError, units.AmountError) as exc:
            flash_error(str(exc))
        else:
            flash(f"{saved.display_name} saved.", "success")
            return redirect(url_for("admin.models"))
    return render_template("admin/model_form.html", form=form, model=model), 400 if form.is_submitted() else 200


@bp.route("/models/new", methods=["GET", "POST"])
def new_model():
    return _save(None, CatalogModelForm())


@bp.route("/models/<int:model_id>", methods=["GET", "POST"])
def edit_model(model_id: int):
    model = catalog.get_model(model_id)
    form = CatalogModelForm(obj=model) if request.method == "GET" else CatalogModelForm()
    if request.method == "GET":
        for field in form.PRICE_FIELDS:
            getattr(form, field).data = units.format_usd(getattr(model, field)).lstrip("$")
    form.hf_id.data = model.hf_id  # the id is fixed once hosts serve it
    return _save(model, form)


@bp.route("/invites", methods=["GET", "POST"])
def invites():
    form = InviteForm()
    created = None
    if request.method == "GET":
        form.ttl_hours.data = current_app.config["INVITE_TTL_HOURS"]
    elif form.validate_on_submit():
        created = accounts.create_invite(current_user, form.note.data or "", form.ttl_hours.data)
    rows = db.session.scalars(select(Invite).order_by(Invite.id.desc()).limit(100)).all()
    template = "admin/_invites_panel.html" if request.htmx else "admin/invites.html"
    status = 400 if form.is_submitted() and not created else 200
    return render_template(template, form=form, invites=rows, created=created), status


@bp.get("/people")
def people():
    users = db.session.scalars(select(User).order_by(User.id)).all()
    balances = dict(db.session.execute(select(LedgerAccount.user_id, LedgerAccount.balance)
                                       .where(LedgerAccount.kind == "client")).all())
    return render_template("admin/people.html", users=users, balances=balances)


@bp.route("/credits", methods=["GET", "POST"])
def credits():
    """Give a client credits from the platform: promotions, support, trials."""
    form = GrantForm()
    if form.validate_on_submit():
        user = accounts.find_user(form.email.data)
        try:
            if user is None or not user.is_client:
                raise ledger.LedgerError("No client account has that e-mail address.")
            ledger.grant(current_user, user, units.usd(form.amount.data), memo=form.memo.data,
                         transfer_id=f"grant:{form.idempotency_key.data}")
        except (ledger.LedgerError, units.AmountError) as exc:
            flash_error(str(exc))
        else:
            flash(f"Granted {units.format_usd(units.usd(form.amount.data))} to {user.email}.", "success")
            return redirect(url_for("admin.credits"))
    if not form.is_submitted():
        form.idempotency_key.data = uuid.uuid4().hex
    grants = db.session.scalars(select(LedgerTransfer).where(LedgerTransfer.kind == "grant")
                                .order_by(LedgerTransfer.created_at.desc()).limit(50)).all()
    return render_template("admin/credits.html", form=form, grants=grants), 400 if form.is_submitted() else 200


@bp.get("/audit")
def audit_log():
    page = page_number()
    events = db.session.scalars(select(AuditEvent).order_by(AuditEvent.id.desc())
                                .offset((page - 1) * AUDIT_PAGE_SIZE).limit(AUDIT_PAGE_SIZE + 1)).all()
    return render_template("admin/audit.html", events=events[:AUDIT_PAGE_SIZE], page=page,
                           more=len(events) > AUDIT_PAGE_SIZE)


FLEET_ORDER = ("pending", "approved", "suspended", "rejected")


def _fleet_counts() -> dict[str, int]:
    counts = host_service.fleet_counts()
    return {label: counts.get(key, 0) for key, label in (
        ("pending", "Pending"), ("approved", "Approved"), ("healthy", "Healthy"), ("suspended", "Suspended"),
        ("rejected", "Rejected"))}


def _hosts_page(diagnostics: dict | None = None, status: int = 200):
    order = case({s: i for i, s in enumerate(FLEET_ORDER)}, value=Host.status, else_=len(FLEET_ORDER))
    rows = db.session.scalars(select(Host).order_by(order, Host.id)).all()
    groups = [(status_name, [h for h in rows if h.status == status_name]) for status_name in FLEET_ORDER]
    return render_template("admin/hosts.html", groups=groups, counts=_fleet_counts(), diagnostics=diagnostics or {},
                           action_form=ActionForm()), status


@bp.get("/payouts")
def payouts_page():
    """Host payouts that are open, failed, or need a person."""
    return render_template("admin/payouts.html", groups=payouts.needing_attention(),
                           bank_failures=payouts.bank_failures(), on_hold=payouts.owners_on_hold(),
                           action_form=ActionForm())


@bp.post("/payouts/owners/<int:user_id>/resume")
def resume_payouts(user_id: int):
    if not payouts.resume_owner(current_user, user_id):
        abort(404)
    flash(f"Payouts to {db.session.get(User, user_id).email} will be tried again at the next run.", "success")
    return redirect(url_for("admin.payouts_page"))


@bp.get("/money")
def money_page():
    """The platform's money from the database; reconciling with Stripe waits for the admin's button."""
    return render_template("admin/money.html", overview=reports.overview(), result=None,
                           stripe_enabled=stripe.enabled())


@bp.post("/money/reconcile")
def reconcile_money():
    """Compare the ledger with Stripe now (it lists from Stripe: a button, not on every page load)."""
    result = reports.reconcile()
    if request.htmx:
        return render_template("admin/_reconcile.html", result=result, stripe_enabled=stripe.enabled())
    return render_template("admin/money.html", overview=reports.overview(), result=result,
                           stripe_enabled=stripe.enabled())


@bp.post("/payouts/<int:payout_id>/retry")
def retry_payout(payout_id: int):
    payout = db.session.get(Payout, payout_id) or abort(404)
    payouts.admin_reset(payout)
    flash(f"Payout {payout_id} will be sent again with its same idempotency key.", "success")
    return redirect(url_for("admin.payouts_page"))


@bp.get("/hosts")
def hosts_page():
    return _hosts_page()


@bp.get("/hosts/counts")
def fleet_counts():
    return render_template("admin/_fleet_counts.html", counts=_fleet_counts())


FLEET_CHANGED = {"HX-Trigger": "fleet-changed"}  # the counts at the top of the page reload themselves


@bp.post("/hosts/<int:host_id>/<any(approve, reject, suspend, reinstate):change>")
def change_host(host_id: int, change: str):
    try:
        host = host_service.change_status(current_user, host_id, change)
    except host_service.HostError as exc:
        if exc.status == 404:
            abort(404)
        host = db.get_or_404(Host, host_id)
        if not request.htmx:
            flash_error(str(exc))
            return redirect(url_for("admin.hosts_page"))
        return render_template("admin/_host_row.html", host=host, error=str(exc), action_form=ActionForm()), 409, \
            FLEET_CHANGED
    if not request.htmx:
        flash(f"{host.name} is {host.status}.", "success")
        return redirect(url_for("admin.hosts_page"))
    return render_template("admin/_host_row.html", host=host, action_form=ActionForm()), 200, FLEET_CHANGED


@bp.post("/hosts/<int:host_id>/diagnostics")
def run_diagnostics(host_id: int):
    """Run ``hostkit check`` on the host over SSH now and show its report in place (audited either way)."""
    try:
        result = diagnostics.diagnose(current_user, host_id)
    except LookupError:
        abort(404)
    if request.htmx:
        return render_template("admin/_diagnostics.html", host=result["host"], result=result)
    return _hosts_page({host_id: result})
