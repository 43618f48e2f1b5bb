"""The admin's Trust pages: every host's verification state and reputation, one host's checks with the evidence,
calibrations, and the actions (release, claw back, suspend, mark as reference), each audited."""
from __future__ import annotations

from flask import Blueprint, abort, flash, redirect, render_template, request, url_for
from flask_login import current_user
from sqlalchemy import select

from .. import hosts as host_service
from .. import trust
from ..extensions import db
from ..models import CatalogModel, Host, HostModel, VerificationCheck
from ..money.units import format_usd
from ..trust import calibration, report, scoring
from .forms import ActionForm
from .helpers import flash_error, role_required

bp = Blueprint("trust", __name__, url_prefix="/admin/trust")


@bp.before_request
@role_required("admin")
def require_admin():
    return None


@bp.get("")
def index():
    hosts, trusts = report.fleet()
    models = calibration.calibrated_models()
    candidates = {model.id: _serving_hosts(model.id) for model, _ in models}
    return render_template("admin/trust.html", hosts=hosts, trusts=trusts, counts=report.state_counts(),
                           cost=report.cost(), models=models, candidates=candidates,
                           min_window=scoring.MIN_WINDOW_SAMPLES, action_form=ActionForm())


def _serving_hosts(model_id: int) -> list[Host]:
    """Approved hosts offering the model, which an admin may vouch for in a calibration."""
    return db.session.scalars(select(Host).join(HostModel, HostModel.host_id == Host.id)
                              .where(HostModel.model_id == model_id, HostModel.enabled, Host.status == "approved",
                                     ~Host.reference).order_by(Host.id)).all()


@bp.get("/hosts/<int:host_id>")
def host_page(host_id: int):
    host = db.get_or_404(Host, host_id)
    found = report.for_hosts([host])[host.id]
    shown = None
    if request.args.get("check"):
        wanted = request.args["check"]
        if not (wanted.isascii() and wanted.isdigit() and len(wanted) <= 18):
            abort(404)
        shown = db.session.scalar(select(VerificationCheck).where(VerificationCheck.id == int(wanted),
                                                                  VerificationCheck.host_id == host.id))
        if shown is None:
            abort(404)
    else:  # the latest failure says most; else the latest check with evidence
        shown = next((c for c in found.checks if c.outcome == "failed" and c.evidence.get("tokens")), None) or \
            next((c for c in found.checks if c.evidence.get("tokens")), None)
    return render_template("admin/trust_host.html", found=found, host=host, shown=shown,
                           evidence=report.evidence_chart(shown) if shown else None,
                           last_passed=trust.last_passed_at(host.id), action_form=ActionForm())


def _done(host_id: int, message: str):
    flash(message, "success")
    return redirect(url_for("trust.host_page", host_id=host_id))


def _refused(host_id: int, error: Exception):
    if getattr(error, "status", None) == 404:
        abort(404)
    flash_error(str(error))
    return redirect(url_for("trust.host_page", host_id=host_id))


@bp.post("/hosts/<int:host_id>/release")
def release(host_id: int):
    try:
        host = trust.release(current_user, host_id)
    except trust.TrustError as error:
        return _refused(host_id, error)
    return _done(host_id, f"{host.name} is released: it serves clients again and its owner's payouts resume.")


@bp.post("/hosts/<int:host_id>/claw-back")
def claw_back(host_id: int):
    try:
        done = trust.claw_back(current_user, host_id)
    except trust.TrustError as error:
        return _refused(host_id, error)
    owed = f"; {format_usd(done.owed_by_owner)} of it is owed by the owner" if done.owed_by_owner else ""
    return _done(host_id, f"Refunded {format_usd(done.refunded)} to {len(done.clients)} clients for "
                          f"{done.requests} requests; {format_usd(done.from_host)} taken back from the host's "
                          f"earnings{owed}.")


@bp.post("/hosts/<int:host_id>/suspend")
def suspend(host_id: int):
    try:
        host = host_service.change_status(current_user, host_id, "suspend")
    except host_service.HostError as error:
        return _refused(host_id, error)
    return _done(host_id, f"{host.name} is suspended: its overlay peer is removed and its engine stops.")


@bp.post("/hosts/<int:host_id>/reference")
def set_reference(host_id: int):
    on = request.form.get("reference") == "on"
    try:
        host = trust.set_reference(current_user, host_id, on)
    except trust.TrustError as error:
        return _refused(host_id, error)
    return _done(host_id, f"{host.name} is {'now' if on else 'no longer'} a reference engine.")


@bp.post("/hosts/<int:host_id>/check")
def check_now(host_id: int):
    from jobs.verification import check_now as bring_forward

    db.get_or_404(Host, host_id)
    bring_forward(host_id)
    return _done(host_id, "A canary goes to this host within seconds.")


@bp.post("/models/<int:model_id>/calibrate")
def calibrate(model_id: int):
    from jobs.queues import VERIFY_QUEUE, enqueue

    model = db.get_or_404(CatalogModel, model_id)
    raw = request.form.get("host_id", "")
    host_id = int(raw) if raw.isascii() and raw.isdigit() and len(raw) <= 9 else None
    if host_id is None or host_id not in {host.id for host in _serving_hosts(model.id)}:
        flash_error("Choose an approved host that serves this model and that you vouch for.")
        return redirect(url_for("trust.index"))
    enqueue("jobs.verification.calibrate", host_id, current_user.id, queue_name=VERIFY_QUEUE, job_timeout=3600,
            result_ttl=3600)
    flash(f"Calibrating {model.display_name} against host {host_id}: its canaries go out now, and the thresholds "
          "appear here when they are all scored (a few minutes).", "success")
    return redirect(url_for("trust.index"))
