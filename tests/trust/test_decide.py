"""The rules that move a host between trust states, from its checks (``checks.decide``), and the admin's actions."""
from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import select

from app import trust
from app.dev.demo import TINY_TEST_MODEL
from app.extensions import db
from app.models import AuditEvent, Calibration, Host, HostBenchmark, VerificationCheck, utcnow
from app.trust import checks

from ..support.factories import make_host

WINDOW = 16


@pytest.fixture
def host(people):
    found = make_host(people.bob, [TINY_TEST_MODEL], trust_state="staged")
    found.trust_changed_at = utcnow() - timedelta(hours=1)
    db.session.add(Calibration(model_id=found.offers[0].model_id, thresholds={
        "greedy": {"threshold": 0.01}, "sampled": {"threshold": 3.0}, "window": {"threshold": 0.002}}))
    db.session.commit()
    return found


def add(host: Host, *outcomes: str, test: str = "greedy", statistic: float = 0.0) -> None:
    """Checks in the order they ran, one second apart, after the host's last change of state."""
    start = utcnow() - timedelta(minutes=30)
    already = db.session.scalar(select(db.func.count()).select_from(VerificationCheck)
                                .where(VerificationCheck.host_id == host.id)) or 0
    for i, outcome in enumerate(outcomes):
        db.session.add(VerificationCheck(host_id=host.id, model_id=host.offers[0].model_id, kind="canary",
                                         outcome=outcome, test=test, statistic=statistic, threshold=0.01,
                                         created_at=start + timedelta(seconds=already + i),
                                         reason="" if outcome == "passed" else "too far behind the reference"))
    db.session.commit()


def benchmark(host: Host, passed: bool = True) -> None:
    db.session.add(HostBenchmark(host_id=host.id, model_id=host.offers[0].model_id, gpu="no GPU", passed=passed))
    db.session.commit()


def state(host: Host) -> str:
    return db.session.get(Host, host.id, populate_existing=True).trust_state


def test_a_staged_host_is_verified_after_three_passes_and_a_passing_benchmark(host):
    add(host, "passed", "passed", "passed")
    assert checks.decide(host.id) == "staged"  # no benchmark yet
    benchmark(host)
    assert checks.decide(host.id) == "verified"
    assert db.session.scalar(select(AuditEvent.action).where(AuditEvent.target_id == str(host.id))) == \
        "host.trust.verified"


def test_one_failure_brings_the_next_canary_forward(host):
    host.next_canary_at = utcnow() + timedelta(minutes=5)
    db.session.commit()
    add(host, "passed", "failed")
    assert checks.decide(host.id) == "staged"
    assert db.session.get(Host, host.id, populate_existing=True).next_canary_at <= utcnow()


@pytest.mark.parametrize("outcomes, quarantined", [
    (("failed", "passed", "failed"), True),
    (("failed", "failed"), True),
    (("failed", "passed", "passed", "failed"), False),
    (("passed", "passed", "passed"), False),
    (("failed", "inconclusive", "failed"), True),  # inconclusive checks do not count either way
])
def test_two_failures_among_the_last_three_checks_quarantine(host, outcomes, quarantined):
    host.trust_state = "verified"
    db.session.commit()
    add(host, *outcomes)
    assert (checks.decide(host.id) == "quarantined") == quarantined
    if quarantined:
        assert "checks failed" in db.session.get(Host, host.id, populate_existing=True).trust_reason


def test_a_violation_quarantines_at_once(host):
    add(host, "passed", "passed")
    add(host, "failed", test="violation")
    assert checks.decide(host.id) == "quarantined"


def test_the_slow_test_quarantines_a_host_whose_greedy_checks_trail_on_average(host):
    host.trust_state = "verified"
    db.session.commit()
    add(host, *["passed"] * (WINDOW - 1), statistic=0.004)
    assert checks.decide(host.id) == "verified"  # not a full window yet
    add(host, "passed", statistic=0.004)
    assert checks.decide(host.id) == "quarantined"
    assert f"last {WINDOW} greedy checks" in db.session.get(Host, host.id, populate_existing=True).trust_reason


def test_checks_before_a_release_no_longer_count(host, people):
    host.trust_state = "verified"
    db.session.commit()
    add(host, "failed", "failed")
    assert checks.decide(host.id) == "quarantined"
    trust.release(people.carol, host.id)
    assert state(host) == "verified"
    add(host, "passed")
    assert checks.decide(host.id) == "verified"


def test_only_a_quarantined_host_can_be_released_or_clawed_back(host, people):
    with pytest.raises(trust.TrustError, match="not quarantined"):
        trust.release(people.carol, host.id)
    with pytest.raises(trust.TrustError, match="not quarantined"):
        trust.claw_back(people.carol, host.id)
    with pytest.raises(trust.TrustError, match="no such host"):
        trust.release(people.carol, 999_999)


def test_a_reference_host_is_never_judged_and_a_host_leaving_that_role_is_staged(host, people):
    trust.set_reference(people.carol, host.id, True)
    assert state(host) == "verified"
    add(host, "failed", "failed")
    assert checks.decide(host.id) == "verified"
    trust.set_reference(people.carol, host.id, False)
    assert state(host) == "staged"


def test_two_decisions_at_once_quarantine_once(host):
    """Compare-and-set: the second finds the host already quarantined and records nothing."""
    host.trust_state = "verified"
    db.session.commit()
    assert trust.quarantine(host.id, "first")
    assert not trust.quarantine(host.id, "second")
    reasons = db.session.scalars(select(AuditEvent.details).where(AuditEvent.action == "host.trust.quarantined"))
    assert [r["reason"] for r in reasons] == ["first"]
