"""One check, end to end, and the rules that move a host between trust states.

A check takes an answer's record (``proxy.sampling.record``: a canary's, or a sampled client request's), has a
reference engine score the host's tokens, applies the model's calibrated threshold and keeps the result with its
evidence. Then ``decide`` reads the host's recent checks:

- an outright violation (an answer cut short) quarantines at once;
- two failures among the last three conclusive checks quarantine; one failure brings the next canary forward, so
  a failure is confirmed or cleared within seconds;
- the mean greedy gap over the last ``VERIFY_WINDOW`` greedy checks above the calibrated window threshold
  quarantines (the slow test: it catches copies close to the model, 8-bit weights, that single checks miss);
- a staged host whose last ``VERIFY_STAGED_PASSES`` checks passed, with a passing benchmark, is verified.

Only checks since the host's last change of state count, so a host an admin released starts afresh.
"""
from __future__ import annotations

import logging
from statistics import fmean

from flask import current_app
from sqlalchemy import select, update

from ..extensions import db
from ..models import Calibration, CatalogModel, Host, HostBenchmark, VerificationCheck, utcnow
from ..proxy.gateway import gateway
from . import quarantine, reference, scoring, set_state

log = logging.getLogger(__name__)

CONCLUSIVE = ("passed", "failed")
CONFIRM_OF = 3  # quarantine when 2 of the last 3 conclusive checks failed


def current_calibration(model_id: int) -> Calibration | None:
    return db.session.scalar(select(Calibration).where(Calibration.model_id == model_id)
                             .order_by(Calibration.created_at.desc(), Calibration.id.desc()).limit(1))


def end_tokens(model: CatalogModel) -> set[int]:
    """The ids an answer may end on when the model stops by itself: the tokenizer's special tokens."""
    tokenizer = gateway().meter.for_model(model.hf_id).tokenizer
    if tokenizer is None:
        return set()
    return {token_id for token_id, token in tokenizer.get_added_tokens_decoder().items() if token.special}


def token_texts(model: CatalogModel, ids: list[int]) -> list[str]:
    """Each token as text (a canary's own words: the page shows them beside the chart)."""
    meter = gateway().meter.for_model(model.hf_id)
    return [meter.decode([token_id]) for token_id in ids[:scoring.MAX_EVIDENCE]]


def check(sample: dict, *, kind: str | None = None, calibration: Calibration | None = None) -> VerificationCheck | None:
    """Check one answer and keep the result; then ``decide`` the host's state (not for calibration checks).
    ``calibration`` overrides the model's current one. None when there is nothing to check (the host is a
    reference, or gone)."""
    kind = kind or sample["kind"]
    host = db.session.get(Host, sample["host_id"])
    model = db.session.get(CatalogModel, sample["model_id"])
    if host is None or model is None or (host.reference and kind != "calibration"):
        db.session.rollback()
        return None
    prompt_ids, output_ids = sample["prompt_ids"], sample["output_ids"]
    row = VerificationCheck(host_id=host.id, model_id=model.id, request_id=sample.get("request_id"), kind=kind,
                            outcome="inconclusive", tokens=len(output_ids))
    ref = reference.reference_for(model.id)
    calibration = calibration if calibration is not None else current_calibration(model.id)
    if ref is None:
        row.reason = f"no reference engine serves {model.hf_id}: mark a platform host as its reference"
    elif ref.id == host.id:
        db.session.rollback()
        return None
    else:
        row.reference_host_id = ref.id
        api_base, hf_id = ref.api_base, model.hf_id
        db.session.commit()  # no transaction stays open while the reference works
        try:
            positions = reference.teacher_force(api_base, hf_id, prompt_ids, output_ids)
        except reference.ReferenceError as error:
            row.reason = str(error)
        else:
            _score(row, sample, positions, model, calibration)
    # A canary costs its tokens on the host and the reference's pass; a sampled client answer only the pass.
    reference_pass = len(prompt_ids) + len(output_ids) if row.reference_host_id else 0
    row.cost_tokens = reference_pass + (len(prompt_ids) + len(output_ids) if kind != "traffic" else 0)
    db.session.add(row)
    db.session.commit()
    if kind != "calibration":
        decide(host.id)
    return row


def _score(row: VerificationCheck, sample: dict, positions: list[scoring.Position], model: CatalogModel,
           calibration: Calibration | None) -> None:
    sampling = sample["sampling"]
    greedy = sampling["temperature"] < 1e-5 or sampling.get("top_k") == 1
    result = scoring.score(positions, temperature=sampling["temperature"], greedy=greedy,
                           finish_reason=sample.get("finish_reason"), stop_reason=sample.get("stop_reason"),
                           max_tokens=sample.get("max_tokens") or len(positions), end_tokens=end_tokens(model))
    texts = token_texts(model, sample["output_ids"]) if row.kind != "traffic" else None
    row.test, row.reason = result.test, result.reason
    row.statistic = result.statistic if result.test != "violation" else None
    row.evidence = {"temperature": sampling["temperature"], "tokens": scoring.evidence(positions, texts)}
    if result.test == "violation":
        row.outcome = "failed"
        return
    threshold = (calibration.thresholds or {}).get(result.test) if calibration is not None else None
    if row.kind == "calibration":
        row.outcome = "passed"  # measured, not judged
        return
    if threshold is None:
        row.reason = f"{model.hf_id} is not calibrated for the {result.test} test yet"
        return
    row.threshold = threshold["threshold"]
    row.outcome = "failed" if result.statistic > row.threshold else "passed"
    if row.outcome == "failed":
        unit = "nats per token behind the reference's choice" if result.test == "greedy" else "z"
        row.reason = f"{result.statistic:.4g} {unit}, above the honest threshold {row.threshold:.4g}"


def _since_state_change(host: Host):
    query = select(VerificationCheck).where(VerificationCheck.host_id == host.id,
                                            VerificationCheck.kind.in_(("canary", "traffic")),
                                            VerificationCheck.outcome.in_(CONCLUSIVE))
    if host.trust_changed_at is not None:
        query = query.where(VerificationCheck.created_at >= host.trust_changed_at)
    return query.order_by(VerificationCheck.created_at.desc(), VerificationCheck.id.desc())


def decide(host_id: int) -> str:
    """Apply the rules to the host's checks since its last change of state; returns its state after."""
    host = db.session.get(Host, host_id, populate_existing=True)
    if host is None or host.trust_state == "quarantined" or host.reference:
        db.session.rollback()
        return host.trust_state if host else "gone"
    config = current_app.config
    recent = db.session.scalars(_since_state_change(host).limit(max(CONFIRM_OF, config["VERIFY_STAGED_PASSES"]))).all()
    latest = recent[0] if recent else None
    if latest is not None and latest.outcome == "failed" and latest.test == "violation":
        quarantine(host.id, f"check {latest.id}: {latest.reason}", check=latest.id)
        return "quarantined"
    failures = [c for c in recent[:CONFIRM_OF] if c.outcome == "failed"]
    if len(failures) >= 2:
        quarantine(host.id, f"{len(failures)} of its last {min(len(recent), CONFIRM_OF)} checks failed "
                            f"(latest: {failures[0].reason})", checks=[c.id for c in failures])
        return "quarantined"
    window = _window_mean(host, config["VERIFY_WINDOW"])
    if window is not None:
        mean, threshold = window
        if mean > threshold:
            quarantine(host.id, f"over its last {config['VERIFY_WINDOW']} greedy checks its tokens trail the "
                                f"reference's by {mean:.4g} nats on average, above honest noise ({threshold:.4g})")
            return "quarantined"
    if failures:  # one failure: confirm or clear it now rather than at the next scheduled canary
        db.session.execute(update(Host).where(Host.id == host.id).values(next_canary_at=utcnow()))
        db.session.commit()
        return host.trust_state
    passes = config["VERIFY_STAGED_PASSES"]
    if host.trust_state == "staged" and len(recent) >= passes and all(c.outcome == "passed" for c in recent[:passes]):
        benchmark = latest_benchmark(host.id)
        if benchmark is not None and benchmark.passed:
            set_state(host.id, "verified", f"passed {passes} checks in a row and its hardware benchmark",
                      old=("staged",))
            return "verified"
    db.session.rollback()
    return host.trust_state


def _window_mean(host: Host, window: int) -> tuple[float, float] | None:
    """The mean statistic of the host's last ``window`` conclusive greedy checks, and the threshold it is held
    to; None until it has that many, or while its model has no window threshold."""
    rows = db.session.execute(_since_state_change(host).where(VerificationCheck.test == "greedy")
                              .with_only_columns(VerificationCheck.statistic, VerificationCheck.model_id)
                              .limit(window)).all()
    if len(rows) < window:
        return None
    calibration = current_calibration(rows[0].model_id)
    threshold = (calibration.thresholds or {}).get("window") if calibration is not None else None
    if threshold is None:
        return None
    return fmean(row.statistic for row in rows), threshold["threshold"]


def latest_benchmark(host_id: int) -> HostBenchmark | None:
    return db.session.scalar(select(HostBenchmark).where(HostBenchmark.host_id == host_id)
                             .order_by(HostBenchmark.created_at.desc(), HostBenchmark.id.desc()).limit(1))
